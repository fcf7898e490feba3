//! Post-training quantization: a float ONNX file plus calibration images -> a standard
//! QDQ ONNX file (int8 weights per output channel, int8 asymmetric activations per
//! tensor, int32 biases), the format `splitnas quantize` writes and the runtime runs.
//!
//! ```no_run
//! use splitnas_export::quantize::{quantize, Method, QuantizeOptions};
//! let float = std::fs::read("model.onnx").unwrap();
//! let images = vec![0.0f32; 8 * 28 * 28]; // normalized NCHW calibration images
//! let opts = QuantizeOptions::new(Method::Entropy);
//! let (int8, report) = quantize(&float, &images, 8, &opts).unwrap();
//! println!("{} tensors quantized, {} bytes", report.tensors(), int8.len());
//! ```
//!
//! Steps: [`graph`] folds `Conv -> BatchNormalization`; the runtime's calibration hook
//! (`splitnas_runtime::Observed`) runs the folded float graph on the images and
//! [`calibrate`] turns every run-time tensor's values into a range and int8 parameters
//! (two passes: min / max, then a histogram for `percentile` and `entropy`); [`weights`]
//! quantizes weights and biases; [`rewrite`] writes the QDQ graph.

pub mod calibrate;
mod graph;
pub mod rewrite;
pub mod weights;

pub use calibrate::{Method, QParams};
pub use graph::fold_batch_norms;

use burn::backend::Flex;
use onnx_protobuf::{Message, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use splitnas_runtime::{Observed, RuntimeError};
use std::collections::HashMap;

/// Metadata key of the quantization settings (one JSON object).
pub const METADATA_KEY: &str = "quantization";
/// Lowest default-domain opset of a QDQ file (per-axis DequantizeLinear).
pub const MIN_OPSET: i64 = 13;

/// Why quantization failed. No output is produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// The float file is not one the runtime can load (or its folded form is not).
    #[error("the float model cannot be loaded: {0}")]
    Load(#[source] RuntimeError),
    /// The file is already quantized.
    #[error("the model is already quantized (node {node} is a {op})")]
    AlreadyQuantized {
        /// The first QuantizeLinear / DequantizeLinear node.
        node: String,
        /// Its operator.
        op: String,
    },
    /// No calibration images.
    #[error("no calibration images (at least 1 is needed)")]
    NoCalibration,
    /// The calibration floats do not hold `images` images of the model's input shape.
    #[error("{values} calibration values are not {images} images of {c}x{h}x{w}", c = .shape[0], h = .shape[1], w = .shape[2])]
    CalibrationShape {
        /// Values given.
        values: usize,
        /// Images announced.
        images: usize,
        /// `[C, H, W]` of the model's input.
        shape: [usize; 3],
    },
    /// Running the model on the calibration images failed.
    #[error("calibration run: {0}")]
    Calibrate(#[source] RuntimeError),
    /// A tensor took a value that is not finite on the calibration images.
    #[error("tensor '{tensor}' is {value} on the calibration images: its range is not finite")]
    NonFinite {
        /// The tensor (its name in the float file; the graph input for bad images).
        tensor: String,
        /// The first value that is not finite.
        value: f32,
    },
    /// A weight the quantizer cannot handle.
    #[error("node {node}: unsupported weight: {problem}")]
    Weight {
        /// The node.
        node: String,
        /// What is wrong.
        problem: String,
    },
    /// A graph the QDQ format cannot express.
    #[error("unsupported graph: {0}")]
    Unsupported(String),
    /// Protobuf encoding failed.
    #[error("cannot encode the ONNX model: {0}")]
    Encode(String),
    /// An inconsistency inside the quantizer (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Settings of [`quantize`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// How activation ranges are taken from the calibration values.
    pub method: Method,
    /// Images per calibration run (memory: all activations of this many images).
    pub batch: usize,
    /// Data set of the calibration images, for the metadata.
    pub dataset: Option<String>,
    /// Seed that drew the calibration sample, for the metadata.
    pub seed: Option<u64>,
}

impl QuantizeOptions {
    /// `method`, batches of 32 images, no provenance.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            batch: 32,
            dataset: None,
            seed: None,
        }
    }
}

/// What [`quantize`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The method.
    pub method: Method,
    /// Calibration images.
    pub calibration_images: usize,
    /// Run-time tensors with a Q/DQ pair (the graph input included).
    pub activations: usize,
    /// Distinct activation scales (tensors after MaxPool, Slice, ... share their input's).
    pub scales: usize,
    /// Weights quantized to int8 per channel.
    pub weights: usize,
    /// Biases quantized to int32.
    pub biases: usize,
    /// Bias values saturated to the int32 range.
    pub biases_clamped: usize,
    /// BatchNormalizations folded into the convolution before them.
    pub batchnorms_folded: usize,
    /// Nodes in the QDQ graph.
    pub nodes: usize,
    /// Size of the QDQ file in bytes.
    pub bytes: usize,
}

impl Report {
    /// Quantized tensors: activations, weights and biases.
    pub fn tensors(&self) -> usize {
        self.activations + self.weights + self.biases
    }
}

/// Quantizes the float ONNX model `float_onnx` with `n_images` calibration images
/// (`calibration`: normalized floats, NCHW, as the model takes them); returns the QDQ
/// file's bytes (see [`rewrite`]) and a report.
pub fn quantize(
    float_onnx: &[u8],
    calibration: &[f32],
    n_images: usize,
    opts: &QuantizeOptions,
) -> Result<(Vec<u8>, Report), QuantizeError> {
    if n_images == 0 {
        return Err(QuantizeError::NoCalibration);
    }
    let mut model = ModelProto::parse_from_bytes(float_onnx)
        .map_err(|e| QuantizeError::Load(RuntimeError::Decode(e.to_string())))?;
    let qdq = model.graph.as_ref().and_then(|g| {
        g.node
            .iter()
            .find(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")
    });
    if let Some(n) = qdq {
        return Err(QuantizeError::AlreadyQuantized {
            node: graph::display(n),
            op: n.op_type.clone(),
        });
    }
    // the runtime's checks (wire format, opset, every node), on the file as given
    let device = Default::default();
    let original =
        Observed::<Flex>::from_bytes(float_onnx, &device).map_err(QuantizeError::Load)?;
    let shape = original.input_shape();
    let image = shape.iter().product::<usize>();
    if n_images.checked_mul(image) != Some(calibration.len()) {
        return Err(QuantizeError::CalibrationShape {
            values: calibration.len(),
            images: n_images,
            shape,
        });
    }
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| QuantizeError::Internal("no graph".into()))?;
    let folded = graph::fold_batch_norms(g);
    let observed = if folded > 0 {
        let bytes = model
            .write_to_bytes()
            .map_err(|e| QuantizeError::Encode(e.to_string()))?;
        Observed::<Flex>::from_bytes(&bytes, &device).map_err(QuantizeError::Load)?
    } else {
        original
    };
    let stats = collect(&observed, calibration, image, opts)?;
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| QuantizeError::Internal("no graph".into()))?;
    // the one graph input that is not an initializer (the runtime checked there is one)
    let inits = graph::initializers(g);
    let input = g
        .input
        .iter()
        .find(|i| !inits.contains_key(i.name.as_str()))
        .ok_or_else(|| QuantizeError::Internal("no image input".into()))?
        .name
        .clone();
    let params: HashMap<String, QParams> = stats
        .iter()
        .map(|(name, s)| {
            // the input is the normalized image: every pixel value matters (entropy would
            // cut Fashion-MNIST's bright pixels, the tail beyond the background's spike)
            let method = if *name == input {
                Method::MinMax
            } else {
                opts.method
            };
            let (lo, hi) = s.range(method);
            (name.clone(), calibrate::qparams(lo, hi))
        })
        .collect();
    let (qg, counts) = rewrite::rewrite(g, &input, &params)?;
    let nodes = qg.node.len();
    let out = qdq_model(&model, qg, n_images, opts);
    let bytes = out
        .write_to_bytes()
        .map_err(|e| QuantizeError::Encode(e.to_string()))?;
    let report = Report {
        method: opts.method,
        calibration_images: n_images,
        activations: counts.activations,
        scales: counts.scales,
        weights: counts.weights,
        biases: counts.biases,
        biases_clamped: counts.biases_clamped,
        batchnorms_folded: folded,
        nodes,
        bytes: bytes.len(),
    };
    Ok((bytes, report))
}

/// The statistics of every run-time tensor over the calibration images: min / max, and a
/// second pass for the histogram when the method needs one.
fn collect(
    observed: &Observed<Flex>,
    images: &[f32],
    image: usize,
    opts: &QuantizeOptions,
) -> Result<HashMap<String, calibrate::TensorStats>, QuantizeError> {
    let mut stats: HashMap<String, calibrate::TensorStats> = observed
        .names()
        .map(|n| (n.to_string(), Default::default()))
        .collect();
    let batch = opts.batch.max(1) * image;
    for pass in 0..1 + usize::from(opts.method.needs_histogram()) {
        for chunk in images.chunks(batch) {
            let mut bad: Option<(String, f32)> = None;
            let run = observed.run(chunk, chunk.len() / image, |name, values| {
                let Some(s) = stats.get_mut(name).filter(|_| bad.is_none()) else {
                    return;
                };
                if pass == 0 {
                    if let Err(v) = s.observe_range(values) {
                        bad = Some((name.to_string(), v));
                    }
                } else {
                    s.observe_histogram(values);
                }
            });
            if let Some((tensor, value)) = bad {
                return Err(QuantizeError::NonFinite { tensor, value });
            }
            run.map_err(QuantizeError::Calibrate)?;
        }
    }
    Ok(stats)
}

/// The QDQ model: `g` with the float model's IR version (at least 7), opsets (the default
/// domain raised to [`MIN_OPSET`]), producer and metadata, plus [`METADATA_KEY`].
fn qdq_model(
    float: &ModelProto,
    g: onnx_protobuf::GraphProto,
    images: usize,
    opts: &QuantizeOptions,
) -> ModelProto {
    let mut opset_import: Vec<OperatorSetIdProto> = float.opset_import.clone();
    for o in &mut opset_import {
        if o.domain.is_empty() || o.domain == "ai.onnx" {
            o.version = o.version.max(MIN_OPSET);
        }
    }
    let settings = serde_json::json!({
        "method": opts.method.name(),
        "calibration_images": images,
        "dataset": opts.dataset,
        "seed": opts.seed,
        "weights": "int8 symmetric per-channel",
        "activations": "int8 asymmetric per-tensor",
    });
    let mut metadata_props: Vec<StringStringEntryProto> = float
        .metadata_props
        .iter()
        .filter(|p| p.key != METADATA_KEY)
        .cloned()
        .collect();
    metadata_props.push(StringStringEntryProto {
        key: METADATA_KEY.into(),
        value: settings.to_string(),
        ..Default::default()
    });
    ModelProto {
        ir_version: float.ir_version.max(7),
        opset_import,
        producer_name: float.producer_name.clone(),
        producer_version: float.producer_version.clone(),
        domain: float.domain.clone(),
        model_version: float.model_version,
        graph: protobuf::MessageField::some(g),
        metadata_props,
        ..Default::default()
    }
}
