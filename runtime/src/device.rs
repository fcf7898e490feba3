//! Run-time choice of the device (and with it the Burn backend) for inference.

use crate::{Model, RuntimeError};
use std::path::Path;

pub use splitnas_host::device::{exit, open, DeviceError, DeviceKind};

/// A model loaded on one of the compiled-in backends.
#[derive(Debug)]
pub enum AnyModel {
    /// Flex (CPU).
    Cpu(Model<burn::backend::Flex>),
    /// NdArray (CPU; feature `ndarray`).
    #[cfg(feature = "ndarray")]
    Ndarray(Model<burn::backend::NdArray>),
    /// CUDA.
    #[cfg(feature = "cuda")]
    Cuda(Model<burn::backend::Cuda>),
    /// wgpu.
    #[cfg(feature = "wgpu")]
    Wgpu(Model<burn::backend::Wgpu>),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            AnyModel::Cpu($m) => $e,
            #[cfg(feature = "ndarray")]
            AnyModel::Ndarray($m) => $e,
            #[cfg(feature = "cuda")]
            AnyModel::Cuda($m) => $e,
            #[cfg(feature = "wgpu")]
            AnyModel::Wgpu($m) => $e,
        }
    };
}

impl AnyModel {
    /// Loads the ONNX bytes on `device`.
    pub fn from_bytes(bytes: &[u8], device: DeviceKind) -> Result<Self, RuntimeError> {
        Ok(match device {
            DeviceKind::Cpu => AnyModel::Cpu(Model::from_bytes(bytes, &Default::default())?),
            #[cfg(feature = "ndarray")]
            DeviceKind::Ndarray => {
                AnyModel::Ndarray(Model::from_bytes(bytes, &Default::default())?)
            }
            #[cfg(not(feature = "ndarray"))]
            DeviceKind::Ndarray => return Err(DeviceError::NotCompiled("ndarray").into()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => AnyModel::Cuda(Model::from_bytes(bytes, &Default::default())?),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => return Err(DeviceError::NotCompiled("cuda").into()),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => AnyModel::Wgpu(Model::from_bytes(bytes, &Default::default())?),
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu => return Err(DeviceError::NotCompiled("wgpu").into()),
        })
    }

    /// Loads the ONNX file at `path` on `device`.
    pub fn load(path: &Path, device: DeviceKind) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, device)
    }

    /// Logits of `n` images given as flat NCHW floats.
    pub fn run_host(&self, input: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        each!(self, m => m.run_host(input, n))
    }

    /// The model's input `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        each!(self, m => m.input_shape())
    }

    /// Number of logits per image.
    pub fn num_classes(&self) -> usize {
        each!(self, m => m.num_classes())
    }

    /// Per-channel mean from the metadata.
    pub fn mean(&self) -> Option<Vec<f32>> {
        each!(self, m => m.mean())
    }

    /// Per-channel standard deviation from the metadata.
    pub fn std(&self) -> Option<Vec<f32>> {
        each!(self, m => m.std())
    }

    /// Class names from the metadata.
    pub fn classes(&self) -> Option<Vec<String>> {
        each!(self, m => m.classes())
    }

    /// Genotype from the metadata.
    pub fn genotype(&self) -> Option<String> {
        each!(self, m => m.genotype().map(str::to_string))
    }

    /// Seconds of every step of the float engine, one image, op after op
    /// ([`crate::Model::step_times`]).
    pub fn step_times(&self, repeats: usize) -> Result<Vec<(String, f64)>, RuntimeError> {
        each!(self, m => m.step_times(repeats))
    }

    /// Run-time steps of the plan.
    pub fn steps(&self) -> usize {
        each!(self, m => m.steps())
    }

    /// `"int8"` or `"float"` (see [`Model::engine`]).
    pub fn engine(&self) -> &'static str {
        each!(self, m => m.engine())
    }

    /// Why a QDQ model runs on the float path (see [`Model::engine_note`]).
    pub fn engine_note(&self) -> Option<String> {
        each!(self, m => m.engine_note().map(str::to_string))
    }

    /// The stderr line of `run` and `bench` for a QDQ model: `engine: int8`, or
    /// `engine: float (why)`; None for a float model.
    pub fn engine_line(&self) -> Option<String> {
        match (self.engine(), self.engine_note()) {
            ("int8", _) => Some("engine: int8".into()),
            (_, Some(why)) => Some(format!("engine: float ({why})")),
            _ => None,
        }
    }
}
