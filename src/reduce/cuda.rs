//! `CudaAilurus`: the `ailurus` reducer (spatial-aware DPC-KNN) on an NVIDIA GPU, through cudarc.
//!
//! Owns: the probe of the CUDA driver, the device buffers (grown on demand, reused frame to frame)
//! and the launch sequence of `kernels/ailurus.cu` (compiled for the device's arch and cached on
//! disk by `cuda/nvrtc.rs`). `build_for_device` picks GPU or CPU for `[reduce] device`.
//! Must not: panic when CUDA is missing (every cudarc entry point is guarded by its
//! `is_culib_present()` probe, and context creation by `catch_unwind`), or round differently from
//! the CPU reference: the arithmetic contract is the header of `kernels/ailurus.cu`, and results are
//! bit-identical to a CPU implementation that follows it (sequential no-FMA dot products, f32
//! `total_cmp` orders, `exp` in f64).

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::result::NvrtcError;
use cudarc::nvrtc::Ptx;

use super::{AilurusConfig, Delta, Fallback, ReduceConfig, ReduceError, Reducer, Reduction, Strategy};
use crate::choice::Device;

mod nvrtc;
pub use nvrtc::{
    cache_dir, cache_file_name, compiled_kernels, nvrtc_archs, nvrtc_compile, nvrtc_options, nvrtc_present,
    nvrtc_version, pick_arch,
};

/// The kernel source, compiled at start-up.
pub const KERNEL_SRC: &str = include_str!("../../kernels/ailurus.cu");
const KERNELS: [&str; 13] = [
    "ail_sqnorm",
    "ail_pairwise",
    "ail_density",
    "ail_delta",
    "ail_spread",
    "ail_rank",
    "ail_compact",
    "ail_assign",
    "ail_count",
    "ail_offsets",
    "ail_scatter",
    "ail_merge",
    "ail_unfold",
];
/// The kernels of kernels/ailurus.cu, in `KERNELS` order.
#[derive(Debug, Clone, Copy)]
enum K {
    Sqnorm,
    Pairwise,
    Density,
    Delta,
    Spread,
    Rank,
    Compact,
    Assign,
    Count,
    Offsets,
    Scatter,
    Merge,
    Unfold,
}

/// Threads of the block-per-row / scan-tile kernels and of the single-block scans (the
/// `AIL_RED` and `AIL_SCAN` defines of the kernel file).
const RED: u32 = 256;
const SCAN: u32 = 1024;

/// Why the GPU path is unavailable or failed. One line each, naming the device or library.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("cuda: the NVIDIA driver library (libcuda.so) is not installed or not loadable")]
    NoDriver,
    #[error("cuda: NVRTC (libnvrtc.so.12) is not loadable (JetPack: cuda-nvrtc; else LD_LIBRARY_PATH)")]
    NoNvrtc,
    #[error("cuda device {device}: {op}: {source}")]
    Driver {
        device: usize,
        op: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("cuda: NVRTC {op} for {arch}: {source}{log}")]
    Nvrtc {
        arch: String,
        op: &'static str,
        log: String,
        #[source]
        source: NvrtcError,
    },
    #[error("cuda device {device}: NVRTC {nvrtc} supports no arch <= sm_{arch}")]
    NoArch { device: usize, arch: i32, nvrtc: String },
    #[error("cuda device {device}: the driver panicked during {op} (missing symbol?): {msg}")]
    Panicked { device: usize, op: &'static str, msg: String },
    #[error("reduce.strategy {strategy:?} has no CUDA implementation (only \"ailurus\")")]
    Strategy { strategy: String },
    #[error("cuda device {device}: {what}")]
    Usage { device: usize, what: &'static str },
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor), e.g. (8, 7) on Jetson Orin.
    pub capability: (i32, i32),
    /// NVRTC version (major, minor).
    pub nvrtc: (i32, i32),
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = self.capability;
        let (v, w) = self.nvrtc;
        write!(f, "cuda:{} {} (sm_{a}{b}), NVRTC {v}.{w}", self.ordinal, self.name)
    }
}

/// The NVIDIA driver library is loadable.
pub fn driver_present() -> bool {
    // SAFETY: a dlopen probe without other side effects.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn drv(device: usize, op: &'static str) -> impl Fn(DriverError) -> CudaError {
    move |source| CudaError::Driver { device, op, source }
}

/// Run `f`, turning a panic inside cudarc (e.g. a symbol missing from an old driver) into an error.
fn no_panic<T>(device: usize, op: &'static str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(CudaError::Panicked { device, op, msg: msg.unwrap_or_default().lines().next().unwrap_or("").to_string() })
    })
}

/// Open device `ordinal`: driver and NVRTC present, context created. Says exactly what is missing.
pub fn open(ordinal: usize) -> Result<(Arc<CudaContext>, DeviceInfo), CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let nvrtc = nvrtc_version()?;
    no_panic(ordinal, "context creation", || {
        let ctx = CudaContext::new(ordinal).map_err(drv(ordinal, "create context"))?;
        let name = ctx.name().map_err(drv(ordinal, "device name"))?;
        let capability = ctx.compute_capability().map_err(drv(ordinal, "compute capability"))?;
        Ok((ctx, DeviceInfo { ordinal, name, capability, nvrtc }))
    })
}

/// Probe device `ordinal` (for `check`/`inspect` and the fallback log line).
pub fn probe(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    open(ordinal).map(|(_, info)| info)
}

/// The reducer for `cfg.device`: "cuda" gives the GPU reducer or the reason it cannot;
/// "cuda-or-cpu" falls back to the CPU reducer with one warning line; "cpu" is the CPU reducer.
pub fn build_for_device(cfg: &ReduceConfig) -> Result<Box<dyn Reducer>, CudaError> {
    let gpu = || -> Result<Box<dyn Reducer>, CudaError> {
        if cfg.strategy.get() != Strategy::Ailurus {
            return Err(CudaError::Strategy { strategy: cfg.strategy.to_string() });
        }
        Ok(Box::new(CudaAilurus::new(0, &cfg.ailurus)?))
    };
    match cfg.device.get() {
        Device::Cuda => gpu(),
        Device::CudaOrCpu => gpu().or_else(|e| {
            log::warn!("[reduce] device \"cuda-or-cpu\": running on the CPU: {e}");
            Ok(super::build(cfg))
        }),
        Device::Cpu => Ok(super::build(cfg)),
    }
}

struct Kernels {
    f: Vec<CudaFunction>,
}

impl Kernels {
    fn get(&self, k: K) -> &CudaFunction {
        // `f` was loaded from KERNELS, which K indexes.
        &self.f[k as usize]
    }
}

/// Device buffers, sized for up to `n_cap` tokens of `c_cap` channels.
struct Buffers {
    n_cap: usize,
    c_cap: usize,
    x: CudaSlice<f32>,
    sq: CudaSlice<f32>,
    d: CudaSlice<f32>,
    rho: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    keyo: CudaSlice<u32>,
    scoreo: CudaSlice<u32>,
    /// `scoreo` with the coverage blocks' best tokens on top (`ail_spread`).
    rankkey: CudaSlice<u32>,
    is_centre: CudaSlice<i32>,
    cid: CudaSlice<i32>,
    centers: CudaSlice<u32>,
    assign: CudaSlice<u32>,
    counts: CudaSlice<u32>,
    offsets: CudaSlice<u32>,
    members: CudaSlice<u32>,
    merged: CudaSlice<f32>,
    sizes: CudaSlice<f32>,
    full: CudaSlice<f32>,
}

impl Buffers {
    fn new(s: &Arc<CudaStream>, n: usize, c: usize, dev: usize) -> Result<Buffers, CudaError> {
        let e = drv(dev, "allocate buffers");
        Ok(Buffers {
            n_cap: n,
            c_cap: c,
            x: s.alloc_zeros(n * c).map_err(&e)?,
            sq: s.alloc_zeros(n).map_err(&e)?,
            d: s.alloc_zeros(n * n).map_err(&e)?,
            rho: s.alloc_zeros(n).map_err(&e)?,
            delta: s.alloc_zeros(n).map_err(&e)?,
            keyo: s.alloc_zeros(n).map_err(&e)?,
            scoreo: s.alloc_zeros(n).map_err(&e)?,
            rankkey: s.alloc_zeros(n).map_err(&e)?,
            is_centre: s.alloc_zeros(n).map_err(&e)?,
            cid: s.alloc_zeros(n).map_err(&e)?,
            centers: s.alloc_zeros(n).map_err(&e)?,
            assign: s.alloc_zeros(n).map_err(&e)?,
            counts: s.alloc_zeros(n).map_err(&e)?,
            offsets: s.alloc_zeros(n).map_err(&e)?,
            members: s.alloc_zeros(n).map_err(&e)?,
            merged: s.alloc_zeros(n * c).map_err(&e)?,
            sizes: s.alloc_zeros(n).map_err(&e)?,
            full: s.alloc_zeros(n * c).map_err(&e)?,
        })
    }
}

/// Shape of the last reduction (what the device buffers hold).
#[derive(Debug, Clone, Copy, Default)]
struct Last {
    n: usize,
    c: usize,
    m: usize,
}

/// The `ailurus` reducer on the GPU. Bit-identical to a CPU reducer that follows the arithmetic
/// contract of `kernels/ailurus.cu`. Memory: O(N^2) for the distance matrix (64 MiB at N = 4096).
pub struct CudaAilurus {
    info: DeviceInfo,
    arch: String,
    k: usize,
    radius: usize,
    windowed: bool,
    delta_radius: usize,
    spatial: bool,
    spread: usize,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    buf: Option<Buffers>,
    last: Last,
    _ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaAilurus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaAilurus({}, {})", self.info, self.arch)
    }
}

/// Launch kernel `$f` on stream `$s`, arguments in the kernel's signature order (inside `unsafe`).
macro_rules! launch {
    ($s:expr, $f:expr, $cfg:expr, $e:expr; $($arg:expr),+ $(,)?) => {{
        let mut lb = $s.launch_builder($f);
        $(lb.arg($arg);)+
        lb.launch($cfg).map_err($e)?;
    }};
}

fn blocks(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(threads).max(1), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaAilurus {
    /// Open device `ordinal`, load (or compile and cache) the kernels. Start-up cost only.
    pub fn new(ordinal: usize, cfg: &AilurusConfig) -> Result<CudaAilurus, CudaError> {
        let (ctx, info) = open(ordinal)?;
        let archs = nvrtc_archs()?;
        let arch = pick_arch(info.capability, &archs).ok_or_else(|| CudaError::NoArch {
            device: ordinal,
            arch: info.capability.0 * 10 + info.capability.1,
            nvrtc: format!("{}.{}", info.nvrtc.0, info.nvrtc.1),
        })?;
        let t0 = Instant::now();
        let (bin, cached) = compiled_kernels(&arch, info.nvrtc)?;
        let module = match ctx.load_module(Ptx::from_binary(bin)) {
            Ok(m) => m,
            Err(_) if cached => {
                // A stale or corrupt cache entry: compile afresh (and overwrite it).
                if let Some(p) = cache_dir().map(|d| d.join(cache_file_name(KERNEL_SRC, &arch, info.nvrtc))) {
                    let _ = std::fs::remove_file(p);
                }
                let (bin, _) = compiled_kernels(&arch, info.nvrtc)?;
                ctx.load_module(Ptx::from_binary(bin)).map_err(drv(ordinal, "load kernels"))?
            }
            Err(e) => return Err(drv(ordinal, "load kernels")(e)),
        };
        let f = KERNELS
            .iter()
            .map(|k| module.load_function(k).map_err(drv(ordinal, "load kernel function")))
            .collect::<Result<Vec<_>, _>>()?;
        // One stream, synchronised by us: cudarc's per-buffer event tracking is pure overhead.
        // SAFETY: every buffer of this reducer is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv(ordinal, "create stream"))?;
        log::info!(
            "cuda: {info}: kernels for {arch} {} in {:.0} ms",
            if cached { "loaded from cache" } else { "compiled" },
            t0.elapsed().as_secs_f64() * 1e3
        );
        Ok(CudaAilurus {
            arch,
            k: cfg.k,
            radius: cfg.radius,
            windowed: cfg.delta.get() == Delta::Window,
            delta_radius: cfg.delta_radius,
            spatial: cfg.fallback.get() == Fallback::Spatial,
            spread: cfg.spread,
            stream,
            kernels: Kernels { f },
            buf: None,
            last: Last::default(),
            info,
            _ctx: ctx,
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The target the kernels were built for ("sm_87", or "compute_XY" when JIT-compiled).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn err(&self, op: &'static str) -> impl Fn(DriverError) -> CudaError {
        drv(self.info.ordinal, op)
    }

    fn ensure_buffers(&mut self, n: usize, c: usize) -> Result<(), CudaError> {
        let fits = self.buf.as_ref().is_some_and(|b| b.n_cap >= n && b.c_cap >= c);
        if !fits {
            let (n_cap, c_cap) = self.buf.as_ref().map_or((n, c), |b| (b.n_cap.max(n), b.c_cap.max(c)));
            self.buf = None; // free first: the distance matrix is the big one
            self.buf = Some(Buffers::new(&self.stream, n_cap, c_cap, self.info.ordinal)?);
        }
        Ok(())
    }

    /// Every kernel of one reduction, then the downloads into `out`.
    fn run(
        &mut self,
        tokens: &[f32],
        c: usize,
        (h, w): (usize, usize),
        m: usize,
        out: &mut Reduction,
    ) -> Result<(), CudaError> {
        let n = h * w;
        self.ensure_buffers(n, c)?;
        let s = self.stream.clone();
        let b = self.buf.as_mut().expect("buffers allocated by ensure_buffers");
        let e = drv(self.info.ordinal, "run kernels");
        let k = &self.kernels;
        let (ni, ci, hi, wi, mi) = (n as i32, c as i32, h as i32, w as i32, m as i32);
        let (ki, ri, dri) = (
            self.k.min(i32::MAX as usize) as i32,
            self.radius.min(1 << 20) as i32,
            self.delta_radius.min(1 << 20) as i32,
        );
        let (windowed, spatial) = (self.windowed as i32, self.spatial as i32);
        let side = super::spread_block(self.spread, (h, w), m).min(1 << 20) as i32;
        let sqrt_c = (c as f32).sqrt();
        s.memcpy_htod(tokens, &mut b.x).map_err(&e)?;
        let cfg = |grid: (u32, u32), block: (u32, u32)| LaunchConfig {
            grid_dim: (grid.0.max(1), grid.1.max(1), 1),
            block_dim: (block.0, block.1, 1),
            shared_mem_bytes: 0,
        };
        let per = |items: usize, threads: u32| cfg(((items as u32).div_ceil(threads), 1), (threads, 1));
        let tiles = (n as u32).div_ceil(64);
        // SAFETY (all launches): argument lists match the kernel signatures in kernels/ailurus.cu,
        // every buffer holds at least n (n*c, n*n) elements, grids cover exactly n (m) items.
        unsafe {
            launch!(s, k.get(K::Sqnorm), per(n, 256), &e; &b.x, &ni, &ci, &mut b.sq);
            launch!(s, k.get(K::Pairwise), cfg((tiles, tiles), (16, 16)), &e; &b.x, &b.sq, &ni, &ci, &sqrt_c, &mut b.d);
            launch!(s, k.get(K::Density), per(n, 128), &e; &b.d, &hi, &wi, &ki, &ri, &mut b.rho, &mut b.keyo);
            launch!(s, k.get(K::Delta), cfg((n as u32, 1), (RED, 1)), &e;
                &b.d, &b.rho, &b.keyo, &hi, &wi, &windowed, &dri, &mut b.scoreo, &mut b.delta);
            launch!(s, k.get(K::Spread), per(n, 256), &e; &b.scoreo, &hi, &wi, &side, &mut b.rankkey);
            launch!(s, k.get(K::Rank), per(n, RED), &e; &b.rankkey, &ni, &mi, &mut b.is_centre);
            launch!(s, k.get(K::Compact), cfg((1, 1), (SCAN, 1)), &e; &b.is_centre, &ni, &mut b.cid, &mut b.centers);
            launch!(s, k.get(K::Assign), per(n, 128), &e;
                &b.d, &b.cid, &b.centers, &hi, &wi, &ri, &mi, &spatial, &mut b.assign);
            s.memset_zeros(&mut b.counts).map_err(&e)?;
            launch!(s, k.get(K::Count), per(n, 256), &e; &b.assign, &ni, &mut b.counts);
            launch!(s, k.get(K::Offsets), cfg((1, 1), (SCAN, 1)), &e; &b.counts, &mi, &mut b.offsets);
            launch!(s, k.get(K::Scatter), per(n, RED), &e; &b.assign, &b.offsets, &ni, &mut b.members);
            launch!(s, k.get(K::Merge), cfg((m as u32, 1), (128, 1)), &e;
                &b.x, &b.members, &b.offsets, &b.counts, &ci, &mut b.merged, &mut b.sizes);
        }
        out.m = m;
        out.c = c;
        out.assign.resize(n, 0);
        out.centers.resize(m, 0);
        out.sizes.resize(m, 0.0);
        out.merged.resize(m * c, 0.0);
        let e = drv(self.info.ordinal, "download results");
        s.memcpy_dtoh(&b.assign.slice(0..n), &mut out.assign[..]).map_err(&e)?;
        s.memcpy_dtoh(&b.centers.slice(0..m), &mut out.centers[..]).map_err(&e)?;
        s.memcpy_dtoh(&b.sizes.slice(0..m), &mut out.sizes[..]).map_err(&e)?;
        s.memcpy_dtoh(&b.merged.slice(0..m * c), &mut out.merged[..]).map_err(&e)?;
        s.synchronize().map_err(&e)?;
        self.last = Last { n, c, m };
        Ok(())
    }

    /// Unfold on the GPU with the assignment of the last `reduce`: `full[i] = merged[assign[i]]`.
    /// `merged` is `[m, c]` (e.g. the middle blocks' output), `full` gets `[n, c]`.
    pub fn unfold(&mut self, merged: &[f32], full: &mut [f32]) -> Result<(), CudaError> {
        let Last { n, c, m } = self.last;
        let b = match self.buf.as_mut() {
            Some(b) if merged.len() >= m * c && full.len() >= n * c && n > 0 => b,
            _ => {
                return Err(CudaError::Usage {
                    device: self.info.ordinal,
                    what: "unfold needs a reduce first, merged [m, c] and full [n, c]",
                })
            }
        };
        let e = drv(self.info.ordinal, "unfold");
        let s = &self.stream;
        let (ni, ci) = (n as i32, c as i32);
        s.memcpy_htod(&merged[..m * c], &mut b.merged).map_err(&e)?;
        // SAFETY: matches ail_unfold's signature; `full` and `merged` hold n*c and m*c values.
        unsafe {
            launch!(s, self.kernels.get(K::Unfold), blocks(n * c, 256), &e; &b.merged, &b.assign, &ni, &ci, &mut b.full);
        }
        s.memcpy_dtoh(&b.full.slice(0..n * c), &mut full[..n * c]).map_err(&e)?;
        s.synchronize().map_err(&e)
    }

    /// rho and delta of the last reduction (diagnostics for the equivalence tests).
    pub fn last_density_delta(&self, rho: &mut Vec<f32>, delta: &mut Vec<f32>) -> Result<(), CudaError> {
        let n = self.last.n;
        rho.resize(n, 0.0);
        delta.resize(n, 0.0);
        if let Some(b) = self.buf.as_ref().filter(|_| n > 0) {
            let e = self.err("download diagnostics");
            self.stream.memcpy_dtoh(&b.rho.slice(0..n), &mut rho[..]).map_err(&e)?;
            self.stream.memcpy_dtoh(&b.delta.slice(0..n), &mut delta[..]).map_err(&e)?;
            self.stream.synchronize().map_err(&e)?;
        }
        Ok(())
    }
}

impl Reducer for CudaAilurus {
    fn name(&self) -> &'static str {
        "ailurus"
    }

    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        (h, w): (usize, usize),
        m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError> {
        let n = h * w;
        if c == 0 || tokens.len() != n * c || n > i32::MAX as usize / 2 {
            return Err(ReduceError::Shape { reducer: "ailurus (cuda)", n: tokens.len() / c.max(1), c, h, w });
        }
        if n == 0 {
            *out = Reduction { c, ..Reduction::default() };
            return Ok(());
        }
        let device = self.info.ordinal;
        self.run(tokens, c, (h, w), m.clamp(1, n), out).map_err(|e| ReduceError::Device {
            reducer: "ailurus",
            device: format!("cuda:{device}"),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn block_sizes_match_the_kernel_defines() {
        let src = super::KERNEL_SRC;
        assert!(src.contains(&format!("#define AIL_RED {}", super::RED)));
        assert!(src.contains(&format!("#define AIL_SCAN {}", super::SCAN)));
        for k in super::KERNELS {
            assert!(src.contains(&format!("{k}(")), "{k} is not defined in kernels/ailurus.cu");
        }
        assert_eq!(super::KERNELS[super::K::Merge as usize], "ail_merge");
        assert_eq!(super::KERNELS[super::K::Unfold as usize], "ail_unfold");
    }
}
