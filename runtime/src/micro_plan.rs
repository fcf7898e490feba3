//! A microcontroller plan (`model.plan`, `splitnas compile`) run on the host with
//! `splitnas-micro`'s executor: the float input quantized with the plan's input
//! quantization (the int8 engine's `Quantize`, same rounding), the ops run on one arena,
//! the logits dequantized. `splitnas run` takes a plan where it takes an ONNX file, so
//! accuracy can be checked on a whole test set before flashing.
//!
//! ```no_run
//! let bytes = std::fs::read("model.plan").unwrap();
//! let plan = splitnas_runtime::micro_plan::PlanModel::new(bytes).unwrap();
//! let logits = plan.run_host(&vec![0.0; plan.input_len()], 1).unwrap();
//! ```

use splitnas_host::kernels::int8::quant;
use splitnas_micro::format::MAGIC;
use splitnas_micro::Plan;
pub use splitnas_micro::{PlanError, RunError};

/// Whether `bytes` start like a plan (its magic `SNPL`).
pub fn is_plan(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// A checked plan holding its bytes.
#[derive(Debug)]
pub struct PlanModel {
    bytes: Vec<u8>,
}

/// Why a plan did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanRunError {
    /// The input is not whole images.
    #[error("{values} input values for images of {per} values")]
    Input {
        /// Values given.
        values: usize,
        /// Values per image.
        per: usize,
    },
    /// The executor's error.
    #[error("running the plan: {0}")]
    Run(RunError),
}

impl PlanModel {
    /// Checks `bytes` (`Plan::parse`: every offset, op and lifetime).
    pub fn new(bytes: Vec<u8>) -> Result<Self, PlanError> {
        Plan::parse(&bytes)?;
        Ok(Self { bytes })
    }

    /// The plan, parsed again (each call checks it: a run parses once).
    fn plan(&self) -> Plan<'_> {
        // checked in `new`; parse is a pure function of the bytes
        Plan::parse(&self.bytes).expect("checked at construction")
    }

    /// The input image's shape `[d0, d1, d2]` (C, H, W for an image model).
    pub fn input_shape(&self) -> [usize; 3] {
        let p = self.plan();
        let t = p.tensor(p.input_id()).map_or([0; 3], |t| t.dims);
        t.map(|d| d as usize)
    }

    /// Values per input image.
    pub fn input_len(&self) -> usize {
        self.plan().input_len()
    }

    /// Logits per image.
    pub fn num_classes(&self) -> usize {
        self.plan().output_len()
    }

    /// Arena bytes.
    pub fn arena_len(&self) -> usize {
        self.plan().arena_len()
    }

    /// The quantized logits `[n, classes]` of `n` quantized images.
    pub fn run_codes(&self, x: &[i8], n: usize) -> Result<Vec<i8>, PlanRunError> {
        codes(&self.plan(), x, n)
    }

    /// Logits `[n, classes]` of `n` images given as flat floats: quantized as the int8
    /// engine quantizes its input, run, dequantized.
    pub fn run_host(&self, x: &[f32], n: usize) -> Result<Vec<f32>, PlanRunError> {
        let plan = self.plan();
        if x.len() != n * plan.input_len() {
            return Err(PlanRunError::Input {
                values: x.len(),
                per: plan.input_len(),
            });
        }
        let (iq, oq) = (plan.input_quant(), plan.output_quant());
        let mut q = vec![0i8; x.len()];
        quant::quantize(x, &[iq.scale], &[iq.zero], 1, &mut q);
        let codes = codes(&plan, &q, n)?;
        let mut y = vec![0f32; codes.len()];
        quant::dequantize(&codes, &[oq.scale], &[oq.zero], 1, &mut y);
        Ok(y)
    }
}

/// `plan` on `n` quantized images, one arena reused.
fn codes(plan: &Plan<'_>, x: &[i8], n: usize) -> Result<Vec<i8>, PlanRunError> {
    let (per, k) = (plan.input_len(), plan.output_len());
    if x.len() != n * per {
        return Err(PlanRunError::Input {
            values: x.len(),
            per,
        });
    }
    let mut arena = vec![0i8; plan.arena_len()];
    let mut y = vec![0i8; n * k];
    for (xi, yi) in x.chunks(per.max(1)).zip(y.chunks_mut(k.max(1))) {
        plan.run(&mut arena, xi, yi).map_err(PlanRunError::Run)?;
    }
    Ok(y)
}

/// What a plan does not hold and `splitnas run` wants: the normalization of images and
/// the class names, from the `.json` beside the plan (`model.plan` -> `model.json`:
/// `{"mean": [..], "std": [..], "classes": [..]}`, written by `splitnas compile` from the
/// ONNX file's metadata). Missing or malformed entries are absent.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PlanMeta {
    /// Per-channel mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// Class names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

impl PlanMeta {
    /// The metadata file of plan `file` (its extension replaced by `json`).
    pub fn path(file: &std::path::Path) -> std::path::PathBuf {
        file.with_extension("json")
    }

    /// The metadata beside plan `file`; empty when there is none.
    pub fn beside(file: &std::path::Path) -> Self {
        std::fs::read(Self::path(file))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Mean and std of `c` channels (std positive), when both are there.
    pub fn mean_std(&self, c: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        let (m, s) = (self.mean.clone()?, self.std.clone()?);
        (m.len() == c && s.len() == c && s.iter().all(|v| *v > 0.0)).then_some((m, s))
    }

    /// The class names of `k` logits.
    pub fn classes(&self, k: usize) -> Option<Vec<String>> {
        self.classes.clone().filter(|c| c.len() == k)
    }
}
