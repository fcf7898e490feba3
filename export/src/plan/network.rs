//! The microcontroller plan of an evaluation network straight from its configuration:
//! seeded weights, exported, quantized on two synthetic calibration images, compiled.
//! The plan's arena (SRAM), length (flash) and MACs depend on the shapes alone, not on
//! the weights' or the scales' values, so they are those of the trained network's plan
//! (`tests/compile.rs` checks it against a file quantized on Fashion-MNIST).

use super::{compile, Budget, CompileError, Compiled};
use crate::quantize::{quantize, Method, QuantizeError, QuantizeOptions};
use crate::{to_onnx_bytes, ExportError, Metadata};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use splitnas_models::{NetworkConfig, NetworkError};
use splitnas_runtime::{with_int8, Model, RuntimeError};

/// Why a configuration has no plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkPlanError {
    /// The sizes.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// Export.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Quantization.
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    /// Loading the int8 file.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The int8 engine did not take the file.
    #[error("the int8 engine does not run the quantized network: {0}")]
    NotInt8(String),
    /// Compilation.
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// The plan `splitnas compile` makes of `cfg`'s network (no budget checked).
pub fn network_plan(cfg: &NetworkConfig) -> Result<Compiled, NetworkPlanError> {
    let device = Default::default();
    Flex::seed(&device, 0);
    let mut net = cfg.init::<Flex>(&device)?;
    // The plan depends on the shapes alone; a zero classifier bias keeps it within the
    // int8 engine's accumulator bound (2^30 units of input x weight scale) whatever scale
    // the synthetic images give the pooled features (tiny in some random cells).
    if let Some(b) = net.classifier.bias.take() {
        net.classifier.bias = Some(b.map(|t| t.zeros_like()));
    }
    let (_, float) = to_onnx_bytes(&net, cfg, &Metadata::untrained(cfg))?;
    let image = cfg.in_channels * cfg.image_size * cfg.image_size;
    // two smooth synthetic images in [-1, 1]: every activation gets a nonzero range
    let calibration: Vec<f32> = (0..2 * image).map(|i| ((i as f32) * 0.37).sin()).collect();
    let (int8, _) = quantize(
        &float,
        &calibration,
        2,
        &QuantizeOptions::new(Method::MinMax),
    )?;
    let model = with_int8(true, || Model::<Flex>::from_bytes(&int8, &device))?;
    let program = model
        .int8_program()
        .ok_or_else(|| NetworkPlanError::NotInt8(model.engine_note().unwrap_or("").into()))?;
    Ok(compile(program, model.input_shape(), Budget::default())?)
}
