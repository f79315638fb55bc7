//! Backend and thread selection: the one place that names concrete Burn backends.

use anyhow::{bail, Result};
use burn::tensor::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Flex,
    Ndarray,
    Wgpu,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "flex" => Ok(Backend::Flex),
            "ndarray" => Ok(Backend::Ndarray),
            "wgpu" => Ok(Backend::Wgpu),
            other => Err(format!("unknown backend {other:?} (expected flex, ndarray or wgpu)")),
        }
    }
}

impl Backend {
    pub fn device(self) -> Result<Device> {
        match self {
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            Backend::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => wgpu_device(),
            #[allow(unreachable_patterns)]
            other => bail!("this specdec was built without the `{other}` backend: rebuild with `--features {other}`"),
        }
    }
}

/// The graphics adapter a wgpu device runs on, as its driver names it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GpuAdapter {
    pub name: String,
    pub driver: String,
    pub driver_info: String,
    /// Vulkan, Metal, Dx12, Gl.
    pub api: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu (a software rasterizer: lavapipe, llvmpipe,
    /// WARP, SwiftShader) or Other.
    pub device_type: String,
    /// True for a software adapter: its figures measure this CPU, not a GPU.
    pub software: bool,
    /// Whether the device computes in f16 (the adapter's shader-f16 feature).
    #[serde(default)]
    pub f16: bool,
}

#[cfg(feature = "wgpu")]
static WGPU: std::sync::OnceLock<std::result::Result<(Device, GpuAdapter), String>> = std::sync::OnceLock::new();

/// The wgpu device and its adapter (initialised once per process: Burn's runtime cannot be set
/// up twice), or why there is none.
#[cfg(feature = "wgpu")]
fn wgpu_init() -> Result<(Device, GpuAdapter)> {
    WGPU.get_or_init(|| {
        let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| e.to_string())?;
        let info = setup.adapter.get_info();
        let device_type = format!("{:?}", info.device_type);
        let adapter = GpuAdapter {
            name: info.name,
            driver: info.driver,
            driver_info: info.driver_info,
            api: format!("{:?}", info.backend),
            software: device_type == "Cpu",
            device_type,
            f16: device.supports_dtype(burn::tensor::DType::F16),
        };
        Ok((device, adapter))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("no usable wgpu adapter ({e}): install a GPU driver with Vulkan, Metal or DX12 (on Linux without a GPU, Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"))
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    wgpu_init().map(|(device, _)| device)
}

/// The adapter behind `--backend wgpu` (initialising it), or why there is none.
pub fn gpu_adapter() -> Result<GpuAdapter> {
    #[cfg(feature = "wgpu")]
    return wgpu_init().map(|(_, adapter)| adapter);
    #[cfg(not(feature = "wgpu"))]
    bail!("this specdec was built without the `wgpu` backend: rebuild with `--features wgpu`")
}

/// Bytes the device's allocator holds for live tensors, on devices that report it (Burn's CubeCL
/// devices; not the host backends, whose memory is the process's RSS).
fn device_bytes_in_use(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_in_use)
}

/// Runs `load` and returns what it made with the device bytes it left in use (a model's weights),
/// on devices that report their memory.
pub fn with_device_bytes<T>(device: &Device, load: impl FnOnce() -> T) -> (T, Option<u64>) {
    let before = device_bytes_in_use(device);
    let made = load();
    let held = device_bytes_in_use(device).zip(before).map(|(after, before)| after.saturating_sub(before));
    (made, held)
}

/// Bytes the device's allocator has reserved (live tensors plus pages kept for reuse).
pub fn device_bytes_reserved(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved)
}

/// Sizes the global rayon pool the CPU backends compute on; returns the thread count in use.
pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    Ok(n)
}

/// Peak resident set size of this process (Linux: VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
