//! Run-time choice of the compute device (and with it the Burn backend).

use burn::backend::Flex;
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;

pub use splitnas_host::device::{
    host_rss, kind_of, memory, mib, open, DeviceError, DeviceKind, DeviceMemory,
};

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

/// Calls `$f::<B>(&device, args..)` with the plain (inference) backend of `$kind`, like
/// [`with_autodiff_backend!`].
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        use $crate::device::DeviceKind;
        #[allow(unreachable_patterns)]
        match $kind {
            DeviceKind::Cpu => $f::<burn::backend::Flex>(&Default::default(), $($arg),*),
            DeviceKind::Ndarray => $f::<burn::backend::NdArray>(&Default::default(), $($arg),*),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => $f::<burn::backend::Cuda>(&Default::default(), $($arg),*),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => $f::<burn::backend::Wgpu>(&Default::default(), $($arg),*),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err($crate::device::DeviceError::NotCompiled("cuda").into()),
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu => Err($crate::device::DeviceError::NotCompiled("wgpu").into()),
        }
    }};
}

/// A module initialized from `seed` with the same weights on every device: on the CPU
/// backends `init` runs on the device itself (as it always has); on a GPU backend, whose
/// random generator is not the CPU's, `host_init` runs on flex and the weights are copied
/// to the device, so a seed means the same starting point on CPU and GPU. Burn's generator
/// on the device is seeded with `seed` too (drop path, dropout).
pub fn seeded<B, M, H, E>(
    device: &B::Device,
    seed: u64,
    host_init: impl FnOnce(&burn::tensor::Device<Flex>) -> Result<H, E>,
    init: impl FnOnce(&B::Device) -> Result<M, E>,
) -> Result<M, E>
where
    B: Backend,
    M: Module<B>,
    H: Module<Flex>,
{
    B::seed(device, seed);
    if kind_of::<B>().is_none_or(DeviceKind::is_gpu) {
        let host_device = Default::default();
        Flex::seed(&host_device, seed);
        let host = host_init(&host_device)?;
        let target = init(device)?;
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        // the two records come from the same module type on two backends: the encoding of
        // one decodes as the other (a failure is a bug, not bad input)
        let bytes = recorder
            .record(host.into_record(), ())
            .expect("encode the host weights");
        let record = recorder
            .load(bytes, device)
            .expect("the host weights decode on the device");
        Ok(target.load_record(record))
    } else {
        init(device)
    }
}
