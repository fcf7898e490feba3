//! Run-time choice of the compute device (and with it the Burn backend).

pub use splitnas_host::device::{host_rss, memory, open, DeviceError, DeviceKind, DeviceMemory};

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
