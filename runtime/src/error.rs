//! Typed errors of loading and running a model.

use std::path::PathBuf;

/// Why a model could not be loaded or run. Never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model (truncated or corrupt protobuf): {0}")]
    Decode(String),
    /// The model has no graph, input or output the runtime can use.
    #[error("unusable model: {0}")]
    Model(String),
    /// The default-domain operator set is outside 13..=18.
    #[error("ONNX operator set {0} is not supported (13 to 18 are)")]
    Opset(i64),
    /// An operator the registry does not know.
    #[error("node '{node}': operator {domain}{op} (opset {opset}) is not supported")]
    UnknownOp {
        /// `op_type`.
        op: String,
        /// Node name.
        node: String,
        /// `domain` prefix (`"domain."`, empty for the default domain).
        domain: String,
        /// Operator set of the model.
        opset: i64,
    },
    /// A node the runtime cannot build (bad attributes, shapes, missing inputs).
    #[error("node '{node}' ({op}): {problem}")]
    Node {
        /// Node name.
        node: String,
        /// `op_type`.
        op: String,
        /// What is wrong.
        problem: String,
    },
    /// An input tensor of the wrong shape.
    #[error("input of shape {found:?} does not fit the model's input {expected} ({name})")]
    InputShape {
        /// The model's input, e.g. `[N, 3, 32, 32]`.
        expected: String,
        /// What was given.
        found: Vec<usize>,
        /// The model's input name.
        name: String,
    },
    /// Input data and shape disagree, or an unreadable input file.
    #[error("{0}")]
    Input(String),
    /// A device that is unknown, not compiled in or not present.
    #[error(transparent)]
    Device(#[from] splitnas_host::device::DeviceError),
}

impl RuntimeError {
    pub(crate) fn node(node: &str, op: &str, problem: impl Into<String>) -> Self {
        RuntimeError::Node {
            node: node.to_string(),
            op: op.to_string(),
            problem: problem.into(),
        }
    }
}
