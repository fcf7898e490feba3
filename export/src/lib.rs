//! Export: genotype + trained weights -> compact network (BatchNorm folded, training-only
//! parts removed) -> one self-contained ONNX file.
//!
//! ```no_run
//! use splitnas_export::{export, Metadata};
//! use splitnas_models::{Genotype, NetworkConfig};
//! let cfg = NetworkConfig::new(Genotype::resolve("DARTS_V2").unwrap());
//! let net = cfg.init::<burn::backend::Flex>(&Default::default()).unwrap();
//! let meta = Metadata::untrained(&cfg);
//! let report = export(&net, &cfg, &meta, "model.onnx".as_ref()).unwrap();
//! println!("{} parameters, {} MACs", report.parameters, report.macs);
//! ```
//!
//! [`fold`] folds a BatchNorm into the convolution before it, [`compact`] builds the
//! compact network from a Burn [`Network`] (and runs it with Burn), [`onnx`] writes it.
//! [`quantize`] turns a float ONNX file into an int8 QDQ one (post-training quantization,
//! calibrated with the runtime's `Observed` hook). Dependency direction: `export ->
//! models`, `export -> runtime`.
#![warn(missing_docs)]

pub mod compact;
pub mod fold;
pub mod onnx;
pub mod plan;
pub mod quantize;

pub use compact::{compact, CompactError, CompactNetwork};
pub use onnx::Metadata;

use burn::tensor::backend::Backend;
use protobuf::Message;
use splitnas_models::{Network, NetworkConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why an export failed. No partial output file is left behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Weights that do not fit the genotype.
    #[error(transparent)]
    Compact(#[from] CompactError),
    /// Metadata inconsistent with the network.
    #[error("metadata: {0}")]
    Metadata(String),
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Protobuf encoding failed.
    #[error("cannot encode the ONNX model: {0}")]
    Encode(String),
}

/// What [`export`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    /// The ONNX file.
    pub path: PathBuf,
    /// Weights and biases in the file.
    pub parameters: usize,
    /// Parameters of the network before folding (auxiliary head excluded).
    pub parameters_before: usize,
    /// Multiply-accumulates per image (convolutions and classifier).
    pub macs: u64,
    /// File size in bytes.
    pub file_bytes: u64,
    /// ONNX nodes.
    pub nodes: usize,
    /// Wall time of the export.
    pub seconds: f64,
}

impl Metadata {
    /// Metadata of an untrained template: mean 0 and std 1 per input channel, classes
    /// `class0`..`classK-1`, data set `none`.
    pub fn untrained(cfg: &NetworkConfig) -> Self {
        Self {
            genotype: cfg.genotype.to_darts(),
            mean: vec![0.0; cfg.in_channels],
            std: vec![1.0; cfg.in_channels],
            classes: (0..cfg.classes).map(|i| format!("class{i}")).collect(),
            dataset: "none".into(),
        }
    }

    fn check(&self, cfg: &NetworkConfig) -> Result<(), ExportError> {
        let bad = |m: String| Err(ExportError::Metadata(m));
        if self.mean.len() != cfg.in_channels || self.std.len() != cfg.in_channels {
            return bad(format!(
                "mean has {} and std {} values; the network has {} input channels",
                self.mean.len(),
                self.std.len(),
                cfg.in_channels
            ));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std value {s} is not positive"));
        }
        if self.classes.len() != cfg.classes {
            return bad(format!(
                "{} class names for {} classes",
                self.classes.len(),
                cfg.classes
            ));
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so `path` is either the old file or the complete new one (`splitnas_host::fs`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    splitnas_host::fs::write_atomic(path, bytes).map_err(|e| ExportError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Serializes the ONNX model of `net` (built from `cfg`) with `meta`.
pub fn to_onnx_bytes<B: Backend>(
    net: &Network<B>,
    cfg: &NetworkConfig,
    meta: &Metadata,
) -> Result<(CompactNetwork, Vec<u8>), ExportError> {
    meta.check(cfg)?;
    let compact = compact(net, cfg)?;
    let model = onnx::to_model(&compact, meta);
    let bytes = model
        .write_to_bytes()
        .map_err(|e| ExportError::Encode(e.to_string()))?;
    Ok((compact, bytes))
}

/// Exports `net` (built from `cfg`) to the ONNX file `path` (atomically).
pub fn export<B: Backend>(
    net: &Network<B>,
    cfg: &NetworkConfig,
    meta: &Metadata,
    path: &Path,
) -> Result<ExportReport, ExportError> {
    let t0 = Instant::now();
    let (compact, bytes) = to_onnx_bytes(net, cfg, meta)?;
    write_atomic(path, &bytes)?;
    let aux = net
        .auxiliary
        .as_ref()
        .map_or(0, splitnas_models::count_parameters);
    Ok(ExportReport {
        path: path.to_path_buf(),
        parameters: compact.parameters(),
        parameters_before: splitnas_models::count_parameters(net) - aux,
        macs: compact.macs(),
        file_bytes: bytes.len() as u64,
        nodes: compact.nodes.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
