//! Runtime: load an ONNX file and run inference with Burn on a chosen device. Depends on
//! neither `splitnas-models` nor `splitnas-search`, so an edge build links no training code.
//!
//! ```no_run
//! use splitnas_runtime::Model;
//! type B = burn::backend::Flex;
//! let model = Model::<B>::load("model.onnx".as_ref(), &Default::default()).unwrap();
//! let [c, h, w] = model.input_shape();
//! let logits = model.run_host(&vec![0.0; c * h * w], 1).unwrap();
//! println!("{:?} {:?}", logits, model.classes());
//! ```
//!
//! Loading ([`load`]) walks the graph once: every node goes through the builder the
//! registry ([`ops`]) holds for its `op_type`, which checks attributes and shapes and either
//! plans a run-time step ([`plan`]) or, when its inputs are known at load time, computes a
//! constant (shape subgraphs are folded here). Running ([`exec`]) executes the plan with
//! Burn tensors. [`observe`] runs the plan unfolded and reports every run-time value
//! (calibration for post-training quantization).
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod error;
mod exec;
mod host;
mod hostconv;
pub mod input;
pub mod int8;
mod load;
pub mod micro_plan;
pub mod observe;
mod ops;
mod plan;
pub mod value;

pub use device::{AnyModel, DeviceKind};
pub use error::RuntimeError;
pub use exec::workers::{IMAGE_BATCH, MAX_WORKERS};
pub use int8::{int8_enabled, with_int8, INT8_ENV};
pub use observe::Observed;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use exec::workers::{self, Pools};
use plan::Planned;
/// The switch between the host kernels and Burn's generic ops on the CPU backends
/// (`SPLITNAS_HOST_KERNELS=0` turns the host kernels off; see `splitnas_host::route`).
pub use splitnas_host::{host_kernels, set_host_kernels, with_host_kernels, HOST_KERNELS_ENV};
use std::collections::HashMap;
use std::path::Path;

/// Operator sets of the default domain this runtime accepts.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=18;

/// A loaded model, ready to run on a Burn device.
#[derive(Debug)]
pub struct Model<B: Backend> {
    plan: Vec<Planned<B>>,
    values: usize,
    output: usize,
    input_name: String,
    input_shape: [usize; 3],
    classes_count: usize,
    metadata: HashMap<String, String>,
    opset: i64,
    device: B::Device,
    /// One-thread rayon pools, one per core, on the CPU backends (see [`MAX_WORKERS`],
    /// [`IMAGE_BATCH`]); `None` on GPU backends.
    pools: Option<Pools>,
    graph: workers::Graph,
    /// Whether the plan was built for the host kernels (`splitnas_host::route` at load
    /// time): execution follows the decision the plan was built with.
    on_host: bool,
    /// A QDQ model's int8 program (CPU backends), run instead of the plan.
    int8: Option<int8::Program>,
    /// Why a QDQ model runs on the float path.
    int8_note: Option<String>,
}

impl<B: Backend> Model<B> {
    /// Loads the ONNX file at `path`.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, device)
    }

    /// Loads an ONNX model from its bytes.
    pub fn from_bytes(bytes: &[u8], device: &B::Device) -> Result<Self, RuntimeError> {
        load::from_bytes(bytes, device)
    }

    /// `[C, H, W]` of one input image.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// Number of logits per image.
    pub fn num_classes(&self) -> usize {
        self.classes_count
    }

    /// The default-domain operator set of the file.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Run-time steps (nodes folded at load time or aliased are not counted; the int8
    /// engine's ops when it runs the model).
    pub fn steps(&self) -> usize {
        self.int8.as_ref().map_or(self.plan.len(), |p| p.ops.len())
    }

    /// The engine that runs the model: `"int8"` (a QDQ model on a CPU backend, in integer
    /// kernels) or `"float"` (Burn's float ops; QDQ models as fake quantization).
    pub fn engine(&self) -> &'static str {
        if self.int8.is_some() {
            "int8"
        } else {
            "float"
        }
    }

    /// Why a QDQ model runs on the float path (the node the int8 engine does not cover,
    /// a GPU backend, or the engine turned off); None otherwise.
    pub fn engine_note(&self) -> Option<&str> {
        self.int8_note.as_deref()
    }

    /// The int8 program the int8 engine runs (read-only: the microcontroller compiler
    /// translates it), None when the model runs on the float path ([`Self::engine_note`]).
    pub fn int8_program(&self) -> Option<&int8::Program> {
        self.int8.as_ref()
    }

    /// All `metadata_props`.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.metadata
            .get(key)
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// Per-channel mean from the metadata (None when absent or malformed).
    pub fn mean(&self) -> Option<Vec<f32>> {
        self.json::<Vec<f32>>("mean")
            .filter(|m| m.len() == self.input_shape[0])
    }

    /// Per-channel standard deviation from the metadata.
    pub fn std(&self) -> Option<Vec<f32>> {
        self.json::<Vec<f32>>("std")
            .filter(|s| s.len() == self.input_shape[0] && s.iter().all(|v| *v > 0.0))
    }

    /// Class names from the metadata.
    pub fn classes(&self) -> Option<Vec<String>> {
        self.json::<Vec<String>>("classes")
            .filter(|c| c.len() == self.classes_count)
    }

    /// Genotype (DARTS notation) from the metadata.
    pub fn genotype(&self) -> Option<&str> {
        self.metadata.get("genotype").map(String::as_str)
    }

    /// Logits `[N, classes]` of a batch `[N, C, H, W]`.
    pub fn run(&self, input: Tensor<B, 4>) -> Result<Tensor<B, 2>, RuntimeError> {
        let [n, c, h, w] = input.dims();
        if [c, h, w] != self.input_shape || n == 0 {
            let [ec, eh, ew] = self.input_shape;
            return Err(RuntimeError::InputShape {
                expected: format!("[N, {ec}, {eh}, {ew}]"),
                found: vec![n, c, h, w],
                name: self.input_name.clone(),
            });
        }
        if let Some(p) = &self.int8 {
            let y = host::with_floats(input, |xs| p.run(xs, n));
            let y = TensorData::new(y, [n, self.classes_count]);
            return Ok(Tensor::from_data(y, &self.device));
        }
        // SPLITNAS_PROFILE=1: op after op on the calling thread, timing each kind of op
        let profile = std::env::var_os("SPLITNAS_PROFILE").is_some();
        let y = match &self.pools {
            Some(Pools(pools)) if !profile && pools.len() > 1 && n >= IMAGE_BATCH => {
                workers::execute_images(&self.plan, self.values, input, self.output, pools)
            }
            Some(Pools(pools)) if !profile => workers::execute_parallel(
                &self.plan,
                &self.graph,
                self.values,
                input,
                self.output,
                n,
                &pools[..pools.len().min(MAX_WORKERS)],
            ),
            _ => exec::execute(
                &self.plan,
                self.values,
                input,
                self.output,
                n,
                profile,
                self.on_host,
                None,
            ),
        };
        Ok(y.reshape([n, self.classes_count]))
    }

    /// Seconds of every step of the float engine on one image `[1, C, H, W]` (zeros),
    /// op after op on the calling thread, each synchronized: the median of `repeats`
    /// runs after one warm-up, with the ONNX node each step runs (a fused ReLU counts
    /// with its convolution). What a single core spends per op: the latency table of
    /// `splitnas bench ops`. An error for files the int8 engine runs.
    pub fn step_times(&self, repeats: usize) -> Result<Vec<(String, f64)>, RuntimeError> {
        if self.int8.is_some() {
            return Err(RuntimeError::Model(
                "step times cover the float engine; this file runs on the int8 engine".into(),
            ));
        }
        let [c, h, w] = self.input_shape;
        let mut runs: Vec<Vec<f64>> = vec![];
        for i in 0..=repeats.max(1) {
            let x = Tensor::<B, 4>::zeros([1, c, h, w], &self.device);
            let mut t = Vec::with_capacity(self.plan.len());
            let y = exec::execute(
                &self.plan,
                self.values,
                x,
                self.output,
                1,
                false,
                self.on_host,
                Some(&mut t),
            );
            drop(y);
            if i > 0 {
                runs.push(t);
            }
        }
        Ok(self
            .plan
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
                v.sort_by(f64::total_cmp);
                (p.name.to_string(), v[v.len() / 2])
            })
            .collect())
    }

    /// Logits of `n` images given as flat NCHW floats.
    pub fn run_host(&self, input: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let [c, h, w] = self.input_shape;
        if input.len() != n * c * h * w {
            return Err(RuntimeError::Input(format!(
                "{} values for {n} images of {c}x{h}x{w}",
                input.len()
            )));
        }
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(input.to_vec(), [n, c, h, w]), &self.device);
        let y = self.run(x)?;
        y.into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| RuntimeError::Input(format!("{e:?}")))
    }
}
