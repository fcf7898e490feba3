//! The compute devices (and with them the Burn backends) chosen at run time with
//! `--device`: their names, opening one once and saying which adapter it is (so a GPU run
//! never falls back to the CPU silently), and the memory its allocator holds.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The devices a search, a training, an export or an inference can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Burn's flex CPU backend (default; with the host kernels).
    Cpu,
    /// Burn's ndarray CPU backend (with the host kernels).
    Ndarray,
    /// NVIDIA GPU through CUDA (build with `--features cuda`).
    Cuda,
    /// GPU through wgpu: Vulkan, Metal or DirectX 12 (build with `--features wgpu`).
    Wgpu,
}

/// A device that is unknown, not compiled in or not present.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceError {
    /// Not one of the names.
    #[error("unknown device '{0}' (use cpu, ndarray, cuda or wgpu)")]
    Unknown(String),
    /// Compiled without the backend's feature.
    #[error("this binary was built without the '{0}' feature; rebuild with `--features {0}` (`cargo build --release [-p splitnas-runtime] --features {0}`)")]
    NotCompiled(&'static str),
    /// The backend is compiled in but finds no device.
    #[error("{device}: {reason}")]
    Unavailable {
        /// The device name.
        device: DeviceKind,
        /// What was looked for and what to install.
        reason: String,
    },
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

impl DeviceKind {
    /// Whether this is a GPU backend (Burn's generic ops, device memory).
    pub fn is_gpu(self) -> bool {
        matches!(self, DeviceKind::Cuda | DeviceKind::Wgpu)
    }
}

/// What [`open`] answered, per kind.
static OPENED: [OnceLock<Result<String, DeviceError>>; 4] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];

/// Whether this process opened a GPU ([`open`] succeeded for cuda or wgpu).
pub fn gpu_opened() -> bool {
    [DeviceKind::Cuda, DeviceKind::Wgpu]
        .iter()
        .any(|&k| matches!(OPENED[k as usize].get(), Some(Ok(_))))
}

/// Ends the process with `code`, for a binary's `main` once its work is written. After a
/// GPU was opened it flushes stdout and stderr and leaves with `_exit`, skipping the C
/// library's exit handlers: lavapipe (Mesa 22.3, under wgpu) was seen to crash in them
/// (a segfault in `free`, exit status 139 after every output line was written) while
/// the device's threads still ran. Without a GPU it is `std::process::exit`.
pub fn exit(code: i32) -> ! {
    #[cfg(unix)]
    if gpu_opened() {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: `_exit` ends the process at once; nothing after it runs, and the
        // output streams were flushed above (files are written atomically and closed
        // before a command returns).
        unsafe { libc::_exit(code) };
    }
    std::process::exit(code)
}

/// Opens the default device of `kind` (once per process; later calls return the first
/// answer) and describes it: the adapter and graphics API for wgpu, the device for CUDA,
/// the backend for the CPU. Fails, rather than letting Burn panic later, when the backend
/// is not compiled in or finds no device.
pub fn open(kind: DeviceKind) -> Result<String, DeviceError> {
    OPENED[kind as usize]
        .get_or_init(|| match kind {
            DeviceKind::Cpu => Ok(format!(
                "flex on the CPU ({} threads)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )),
            DeviceKind::Ndarray => Ok("ndarray on the CPU".into()),
            DeviceKind::Cuda => open_cuda(),
            DeviceKind::Wgpu => open_wgpu(),
        })
        .clone()
}

#[cfg(feature = "wgpu")]
fn open_wgpu() -> Result<String, DeviceError> {
    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, WgpuDevice};
    // cubecl panics when no adapter matches; look first
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if adapters.is_empty() {
        return Err(DeviceError::Unavailable {
            device: DeviceKind::Wgpu,
            reason: "no Vulkan, Metal or DirectX 12 adapter found (install the GPU's driver; \
                     on Debian without a GPU, `apt-get install mesa-vulkan-drivers` gives \
                     lavapipe, a Vulkan driver on the CPU)"
                .into(),
        });
    }
    let setup = init_setup::<AutoGraphicsApi>(&WgpuDevice::DefaultDevice, Default::default());
    let info = setup.adapter.get_info();
    Ok(format!(
        "wgpu on {} ({:?}, {:?}, driver {})",
        info.name, info.backend, info.device_type, info.driver_info
    ))
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu() -> Result<String, DeviceError> {
    Err(DeviceError::NotCompiled("wgpu"))
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<String, DeviceError> {
    use burn::tensor::backend::Backend;
    let device = burn::backend::cuda::CudaDevice::default();
    // the first operation initializes the CUDA context; a missing driver panics inside
    // cudarc, so catch it and say what is missing
    let probe = std::panic::catch_unwind(|| {
        let t = burn::tensor::Tensor::<burn::backend::Cuda, 1>::ones([1], &device);
        t.into_data().to_vec::<f32>().ok()
    });
    match probe {
        Ok(Some(v)) if v == [1.0] => Ok(format!(
            "cuda device {} ({})",
            device.index,
            <burn::backend::Cuda as burn::tensor::backend::Backend>::name(&device)
        )),
        _ => Err(DeviceError::Unavailable {
            device: DeviceKind::Cuda,
            reason: "no CUDA device could be used (check `nvidia-smi` and the driver)".into(),
        }),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<String, DeviceError> {
    Err(DeviceError::NotCompiled("cuda"))
}

/// What the device's allocator holds, in bytes (CubeCL's memory pools, CUDA and wgpu).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// Bytes in live tensors now.
    pub in_use: u64,
    /// Bytes the pools have reserved from the device. The pools keep their pages until
    /// cleaned up, so this is the high-water mark of the allocations so far (plus
    /// padding): the figure to compare between two runs.
    pub reserved: u64,
}

/// The memory of `kind`'s default device, or `None` where the backend exposes none (the
/// CPU backends allocate from the process heap: see [`host_rss`]).
pub fn memory(kind: DeviceKind) -> Option<DeviceMemory> {
    match kind {
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            use cubecl::Runtime;
            let client = burn::backend::wgpu::WgpuRuntime::client(&Default::default());
            client.memory_usage().ok().map(|u| DeviceMemory {
                in_use: u.bytes_in_use,
                reserved: u.bytes_reserved,
            })
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            use cubecl::Runtime;
            let client = cubecl::cuda::CudaRuntime::client(&Default::default());
            client.memory_usage().ok().map(|u| DeviceMemory {
                in_use: u.bytes_in_use,
                reserved: u.bytes_reserved,
            })
        }
        _ => None,
    }
}

/// The device kind of backend `B` (plain or under `Autodiff`), `None` for a backend
/// splitnas does not offer.
pub fn kind_of<B: burn::tensor::backend::Backend>() -> Option<DeviceKind> {
    use burn::backend::{Autodiff, Flex, NdArray};
    use std::any::TypeId;
    fn either<B: 'static, P: burn::tensor::backend::Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<P>() || TypeId::of::<B>() == TypeId::of::<Autodiff<P>>()
    }
    if either::<B, Flex>() {
        return Some(DeviceKind::Cpu);
    }
    if either::<B, NdArray>() {
        return Some(DeviceKind::Ndarray);
    }
    #[cfg(feature = "cuda")]
    if either::<B, burn::backend::Cuda>() {
        return Some(DeviceKind::Cuda);
    }
    #[cfg(feature = "wgpu")]
    if either::<B, burn::backend::Wgpu>() {
        return Some(DeviceKind::Wgpu);
    }
    None
}

/// MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The process's resident memory now and at its peak, in bytes (`VmRSS`, `VmHWM` of
/// `/proc/self/status`; `None` where there is no such file).
pub fn host_rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for kind in [
            DeviceKind::Cpu,
            DeviceKind::Ndarray,
            DeviceKind::Cuda,
            DeviceKind::Wgpu,
        ] {
            assert_eq!(kind.to_string().parse::<DeviceKind>(), Ok(kind));
        }
        assert_eq!("flex".parse::<DeviceKind>(), Ok(DeviceKind::Cpu));
        assert_eq!(
            "tpu".parse::<DeviceKind>(),
            Err(DeviceError::Unknown("tpu".into()))
        );
        assert!(open(DeviceKind::Cpu).unwrap().contains("CPU"));
        assert_eq!(
            kind_of::<burn::backend::Autodiff<burn::backend::Flex>>(),
            Some(DeviceKind::Cpu)
        );
        assert_eq!(
            kind_of::<burn::backend::NdArray>(),
            Some(DeviceKind::Ndarray)
        );
        assert_eq!(kind_of::<burn::backend::NdArray<f64>>(), None);
        assert_eq!(memory(DeviceKind::Cpu), None);
    }

    #[test]
    fn host_rss_reads_this_process() {
        let (now, peak) = host_rss().expect("Linux /proc");
        // a test process holds at least a megabyte, and the peak is never below now
        assert!(now > 1 << 20 && peak >= now, "{now} {peak}");
    }
}
