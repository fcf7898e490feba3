//! What the loader knows about values: shapes with a symbolic batch dimension, and
//! constants (initializers, `Constant` nodes, folded shape arithmetic) on the host.
//!
//! Every run-time tensor is a Burn `Tensor<B, 4>`: a value of rank r <= 4 is stored with
//! its shape padded by trailing 1s (`[N, K]` as `[N, K, 1, 1]`), which keeps axis indices
//! unchanged, so Concat, Slice, ReduceMean and broadcasting need no rank bookkeeping.

use crate::error::RuntimeError;
use onnx_protobuf::{tensor_proto::DataType, TensorProto};

/// One dimension: the symbolic batch size N, or a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The batch size, known only when the model runs.
    Batch,
    /// A fixed size.
    Fixed(usize),
}

impl Dim {
    /// The size with batch size `n`.
    pub fn at(self, n: usize) -> usize {
        match self {
            Dim::Batch => n,
            Dim::Fixed(v) => v,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Batch => f.write_str("N"),
            Dim::Fixed(v) => write!(f, "{v}"),
        }
    }
}

/// Formats a shape like `[N, 3, 32, 32]`.
pub fn show(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// An integer that may be the batch size (shape arithmetic on `Shape` outputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymInt {
    /// A plain value.
    Val(i64),
    /// The batch size N.
    Batch,
}

/// A value known at load time.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    /// Float tensor (row-major).
    F32 {
        /// Shape.
        dims: Vec<usize>,
        /// Values.
        data: Vec<f32>,
    },
    /// Integer tensor (int64 / int32 in the file; may hold the symbolic batch size).
    Int {
        /// Shape.
        dims: Vec<usize>,
        /// Values.
        data: Vec<SymInt>,
    },
}

impl Const {
    /// Shape.
    pub fn dims(&self) -> &[usize] {
        match self {
            Const::F32 { dims, .. } | Const::Int { dims, .. } => dims,
        }
    }

    /// Plain integer values (error if one is symbolic or the tensor is float).
    pub fn ints(&self, what: &str) -> Result<Vec<i64>, String> {
        match self {
            Const::Int { data, .. } => data
                .iter()
                .map(|v| match v {
                    SymInt::Val(v) => Ok(*v),
                    SymInt::Batch => Err(format!("{what} depends on the batch size")),
                })
                .collect(),
            Const::F32 { .. } => Err(format!("{what} must be an integer tensor")),
        }
    }
}

/// Element count of `dims`, None on overflow.
pub fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Reads an initializer or `Constant` value. Only float32, int64 and int32 are accepted.
pub fn from_proto(t: &TensorProto) -> Result<Const, String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = numel(&dims).ok_or("dimensions overflow")?;
    if !t.external_data.is_empty() {
        return Err("external data is not supported (the file must be self-contained)".into());
    }
    let raw = &t.raw_data;
    let bad_len = |have: usize| format!("{have} values for shape {dims:?} ({n} needed)");
    match t.data_type {
        x if x == DataType::FLOAT as i32 => {
            let data: Vec<f32> = if !raw.is_empty() {
                if raw.len() != n.checked_mul(4).ok_or("size overflow")? {
                    return Err(bad_len(raw.len() / 4));
                }
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            } else {
                t.float_data.clone()
            };
            if data.len() != n {
                return Err(bad_len(data.len()));
            }
            Ok(Const::F32 { dims, data })
        }
        x if x == DataType::INT64 as i32 || x == DataType::INT32 as i32 => {
            let wide = x == DataType::INT64 as i32;
            let data: Vec<i64> = if !raw.is_empty() {
                let size = if wide { 8 } else { 4 };
                if raw.len() != n.checked_mul(size).ok_or("size overflow")? {
                    return Err(bad_len(raw.len() / size));
                }
                if wide {
                    raw.chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect()
                } else {
                    raw.chunks_exact(4)
                        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                        .collect()
                }
            } else if wide {
                t.int64_data.clone()
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            };
            if data.len() != n {
                return Err(bad_len(data.len()));
            }
            Ok(Const::Int {
                dims,
                data: data.into_iter().map(SymInt::Val).collect(),
            })
        }
        other => Err(format!(
            "tensor data type {other} is not supported (float32, int64, int32 are)"
        )),
    }
}

/// The shape a rank <= 4 value has in its `Tensor<B, 4>` (trailing 1s).
pub fn physical(shape: &[usize]) -> Result<[usize; 4], RuntimeError> {
    if shape.len() > 4 {
        return Err(RuntimeError::Model(format!(
            "a tensor of rank {} (at most 4 are supported)",
            shape.len()
        )));
    }
    let mut p = [1; 4];
    p[..shape.len()].copy_from_slice(shape);
    Ok(p)
}
