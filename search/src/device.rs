//! Run-time choice of the compute device (and with it the Burn backend).

use serde::{Deserialize, Serialize};

/// The devices a search, training or benchmark can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Burn's flex CPU backend (default; fastest CPU backend for depthwise convolutions).
    Cpu,
    /// Burn's ndarray CPU backend.
    Ndarray,
    /// NVIDIA GPU (build with `--features cuda`).
    Cuda,
    /// wgpu GPU (build with `--features wgpu`).
    Wgpu,
}

/// A device that is unknown or not compiled in.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum DeviceError {
    /// Not one of the names.
    #[error("unknown device '{0}' (use cpu, ndarray, cuda or wgpu)")]
    Unknown(String),
    /// Compiled without the backend's feature.
    #[error("this binary was built without the '{0}' feature; rebuild with `cargo build --release --features {0}`")]
    NotCompiled(&'static str),
}

impl std::str::FromStr for DeviceKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(DeviceKind::Cpu),
            "ndarray" => Ok(DeviceKind::Ndarray),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            "wgpu" => Ok(DeviceKind::Wgpu),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Ndarray => "ndarray",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
        })
    }
}

/// Calls `$f::<B>(&device, args..)` with the autodiff backend of `$kind`, returning
/// `Err(DeviceError::NotCompiled)` (converted with `From`) for a backend not compiled in.
#[macro_export]
macro_rules! with_autodiff_backend {
    ($kind:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        use $crate::device::DeviceKind;
        #[allow(unreachable_patterns)]
        match $kind {
            DeviceKind::Cpu => $f::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default(), $($arg),*),
            DeviceKind::Ndarray => $f::<burn::backend::Autodiff<burn::backend::NdArray>>(&Default::default(), $($arg),*),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => $f::<burn::backend::Autodiff<burn::backend::Cuda>>(&Default::default(), $($arg),*),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => $f::<burn::backend::Autodiff<burn::backend::Wgpu>>(&Default::default(), $($arg),*),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err($crate::device::DeviceError::NotCompiled("cuda").into()),
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu => Err($crate::device::DeviceError::NotCompiled("wgpu").into()),
        }
    }};
}
