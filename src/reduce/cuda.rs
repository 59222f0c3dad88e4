//! `CudaAilurus`: the `ailurus` reducer (spatial-aware DPC-KNN) on an NVIDIA GPU, through cudarc.
//!
//! Owns: the probe of the CUDA driver and NVRTC, compiling `kernels/ailurus.cu` with NVRTC for the
//! device's arch (the binary is cached on disk, keyed by source hash + arch + NVRTC version), the
//! device buffers (grown on demand, reused frame to frame) and the launch sequence.
//! Must not: panic when CUDA is missing (every cudarc entry point is guarded by its
//! `is_culib_present()` probe, and context creation by `catch_unwind`), or round differently from
//! the CPU reference: the arithmetic contract is the header of `kernels/ailurus.cu`, and results are
//! bit-identical to a CPU implementation that follows it (sequential no-FMA dot products, f32
//! `total_cmp` orders, `exp` in f64).

use std::ffi::{c_char, CString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::result::NvrtcError;
use cudarc::nvrtc::Ptx;

use super::{AilurusConfig, ReduceConfig, ReduceError, Reducer, Reduction};

/// The kernel source, compiled at start-up.
pub const KERNEL_SRC: &str = include_str!("../../kernels/ailurus.cu");
const KERNELS: [&str; 12] = [
    "ail_sqnorm", "ail_pairwise", "ail_density", "ail_delta", "ail_rank", "ail_compact",
    "ail_assign", "ail_count", "ail_offsets", "ail_scatter", "ail_merge", "ail_unfold",
];
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
    Driver { device: usize, op: &'static str, #[source] source: DriverError },
    #[error("cuda: NVRTC {op} for {arch}: {source}{log}")]
    Nvrtc { arch: String, op: &'static str, log: String, #[source] source: NvrtcError },
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

/// NVRTC is loadable (a GPU is not needed to compile).
pub fn nvrtc_present() -> bool {
    // SAFETY: a dlopen probe without other side effects.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The NVIDIA driver library is loadable.
pub fn driver_present() -> bool {
    // SAFETY: a dlopen probe without other side effects.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut a, mut b) = (0, 0);
    // SAFETY: library present (checked above); plain out-parameters.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) }
        .result()
        .map_err(|source| CudaError::Nvrtc { arch: "-".into(), op: "version", log: String::new(), source })?;
    Ok((a, b))
}

/// The real architectures (e.g. 87 for sm_87) this NVRTC can compile for.
pub fn nvrtc_archs() -> Result<Vec<i32>, CudaError> {
    nvrtc_version()?;
    let err = |source| CudaError::Nvrtc { arch: "-".into(), op: "supported archs", log: String::new(), source };
    let mut n = 0;
    // SAFETY: library present (nvrtc_version checked); the buffer has the size NVRTC reported.
    unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut n) }.result().map_err(err)?;
    let mut archs = vec![0; n.max(0) as usize];
    unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }.result().map_err(err)?;
    Ok(archs)
}

/// The `// nvrtc-options:` line of the kernel source (shared with tools/check_kernels.sh).
pub fn nvrtc_options(src: &str) -> Vec<String> {
    src.lines()
        .find_map(|l| l.strip_prefix("// nvrtc-options:"))
        .map(|o| o.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Compile `src` with NVRTC: `arch` "sm_XY" gives a CUBIN, "compute_XY" a NUL-terminated PTX.
pub fn nvrtc_compile(src: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::{result, sys};
    nvrtc_version()?;
    let err = |op, log: String| move |source| CudaError::Nvrtc { arch: arch.to_string(), op, log, source };
    let csrc = CString::new(src.replace('\0', " ")).unwrap_or_default();
    let prog = result::create_program(&csrc, Some(c"ailurus.cu")).map_err(err("create", String::new()))?;
    struct Guard(sys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once here.
            let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
        }
    }
    let g = Guard(prog);
    let mut opts = nvrtc_options(src);
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `g.0` is a live program for every call below.
    let compiled = unsafe { result::compile_program(g.0, &opts) };
    if let Err(source) = compiled {
        let log = unsafe { result::get_program_log(g.0) }.map(|l| c_chars_to_string(&l)).unwrap_or_default();
        let first = log.lines().find(|l| l.contains("error")).unwrap_or("").trim().to_string();
        return Err(err("compile", if first.is_empty() { first } else { format!(": {first}") })(source));
    }
    if arch.starts_with("sm_") {
        let mut size = 0usize;
        unsafe { sys::nvrtcGetCUBINSize(g.0, &mut size) }.result().map_err(err("get CUBIN", String::new()))?;
        let mut bin = vec![0u8; size];
        unsafe { sys::nvrtcGetCUBIN(g.0, bin.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(err("get CUBIN", String::new()))?;
        Ok(bin)
    } else {
        let ptx = unsafe { result::get_ptx(g.0) }.map_err(err("get PTX", String::new()))?;
        Ok(ptx.iter().map(|&c| c as u8).collect())
    }
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The target for a device of capability `cap`: its own `sm_XY` when NVRTC knows it, else PTX
/// for the newest older arch NVRTC knows (the driver JIT-compiles it).
pub fn pick_arch(cap: (i32, i32), supported: &[i32]) -> Option<String> {
    let want = cap.0 * 10 + cap.1;
    if supported.contains(&want) {
        return Some(format!("sm_{want}"));
    }
    supported.iter().filter(|&&a| a < want).max().map(|a| format!("compute_{a}"))
}

/// Where compiled kernels are cached: `$AILURUS_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ailurus/kernels`,
/// else `~/.cache/ailurus/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("AILURUS_KERNEL_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ailurus/kernels")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/ailurus/kernels")))
}

/// Cache file name for `src` compiled for `arch` by NVRTC `nvrtc`.
pub fn cache_file_name(src: &str, arch: &str, nvrtc: (i32, i32)) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(src.as_bytes());
    h.update(format!("\0{arch}\0nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    let hex: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let ext = if arch.starts_with("sm_") { "cubin" } else { "ptx" };
    format!("ailurus-{hex}-{arch}.{ext}")
}

/// The compiled kernels for `arch`: from the disk cache, else NVRTC (then cached; a cache that
/// cannot be written only costs a warning). Returns the binary and whether it came from the cache.
pub fn compiled_kernels(arch: &str, nvrtc: (i32, i32)) -> Result<(Vec<u8>, bool), CudaError> {
    let path = cache_dir().map(|d| d.join(cache_file_name(KERNEL_SRC, arch, nvrtc)));
    if let Some(bin) = path.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| !b.is_empty()) {
        return Ok((bin, true));
    }
    let bin = nvrtc_compile(KERNEL_SRC, arch)?;
    if let Some(p) = path {
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let written = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, &bin))
            .and_then(|_| std::fs::rename(&tmp, &p));
        if let Err(e) = written {
            log::warn!("cuda: cannot cache compiled kernels at {}: {e}", p.display());
        }
    }
    Ok((bin, false))
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
        if cfg.strategy != "ailurus" {
            return Err(CudaError::Strategy { strategy: cfg.strategy.clone() });
        }
        Ok(Box::new(CudaAilurus::new(0, &cfg.ailurus)?))
    };
    match cfg.device.as_str() {
        "cuda" => gpu(),
        "cuda-or-cpu" => gpu().or_else(|e| {
            log::warn!("[reduce] device \"cuda-or-cpu\": running on the CPU: {e}");
            Ok(super::build(cfg))
        }),
        _ => Ok(super::build(cfg)),
    }
}

struct Kernels {
    f: Vec<CudaFunction>,
}

impl Kernels {
    fn get(&self, name: &str) -> &CudaFunction {
        // KERNELS is the fixed list the module was loaded with: the index always exists.
        &self.f[KERNELS.iter().position(|k| *k == name).unwrap_or(0)]
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

fn blocks(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(threads).max(1), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
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
            windowed: cfg.delta == "window",
            delta_radius: cfg.delta_radius,
            spatial: cfg.fallback == "spatial",
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
    fn run(&mut self, tokens: &[f32], c: usize, (h, w): (usize, usize), m: usize, out: &mut Reduction) -> Result<(), CudaError> {
        let n = h * w;
        self.ensure_buffers(n, c)?;
        let s = self.stream.clone();
        let b = self.buf.as_mut().expect("buffers allocated by ensure_buffers");
        let e = drv(self.info.ordinal, "run kernels");
        let k = &self.kernels;
        let (ni, ci, hi, wi, mi) = (n as i32, c as i32, h as i32, w as i32, m as i32);
        let (ki, ri, dri) = (self.k.min(i32::MAX as usize) as i32, self.radius.min(1 << 20) as i32, self.delta_radius.min(1 << 20) as i32);
        let (windowed, spatial) = (self.windowed as i32, self.spatial as i32);
        let sqrt_c = (c as f32).sqrt();
        s.memcpy_htod(tokens, &mut b.x).map_err(&e)?;
        // SAFETY (all launches): argument lists match the kernel signatures in kernels/ailurus.cu,
        // every buffer holds at least n (n*c, n*n) elements, grids cover exactly n (m) items.
        unsafe {
            s.launch_builder(k.get("ail_sqnorm")).arg(&b.x).arg(&ni).arg(&ci).arg(&mut b.sq).launch(blocks(n, 256)).map_err(&e)?;
            let tiles = (n as u32).div_ceil(64);
            let cfg = LaunchConfig { grid_dim: (tiles, tiles, 1), block_dim: (16, 16, 1), shared_mem_bytes: 0 };
            s.launch_builder(k.get("ail_pairwise")).arg(&b.x).arg(&b.sq).arg(&ni).arg(&ci).arg(&sqrt_c).arg(&mut b.d).launch(cfg).map_err(&e)?;
            s.launch_builder(k.get("ail_density"))
                .arg(&b.d).arg(&hi).arg(&wi).arg(&ki).arg(&ri).arg(&mut b.rho).arg(&mut b.keyo)
                .launch(blocks(n, 128)).map_err(&e)?;
            let per_row = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (RED, 1, 1), shared_mem_bytes: 0 };
            s.launch_builder(k.get("ail_delta"))
                .arg(&b.d).arg(&b.rho).arg(&b.keyo).arg(&hi).arg(&wi).arg(&windowed).arg(&dri).arg(&mut b.scoreo).arg(&mut b.delta)
                .launch(per_row).map_err(&e)?;
            s.launch_builder(k.get("ail_rank")).arg(&b.scoreo).arg(&ni).arg(&mi).arg(&mut b.is_centre).launch(blocks(n, RED)).map_err(&e)?;
            let single = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SCAN, 1, 1), shared_mem_bytes: 0 };
            s.launch_builder(k.get("ail_compact")).arg(&b.is_centre).arg(&ni).arg(&mut b.cid).arg(&mut b.centers).launch(single).map_err(&e)?;
            s.launch_builder(k.get("ail_assign"))
                .arg(&b.d).arg(&b.cid).arg(&b.centers).arg(&hi).arg(&wi).arg(&ri).arg(&mi).arg(&spatial).arg(&mut b.assign)
                .launch(blocks(n, 128)).map_err(&e)?;
            s.memset_zeros(&mut b.counts).map_err(&e)?;
            s.launch_builder(k.get("ail_count")).arg(&b.assign).arg(&ni).arg(&mut b.counts).launch(blocks(n, 256)).map_err(&e)?;
            s.launch_builder(k.get("ail_offsets")).arg(&b.counts).arg(&mi).arg(&mut b.offsets).launch(single).map_err(&e)?;
            s.launch_builder(k.get("ail_scatter")).arg(&b.assign).arg(&b.offsets).arg(&ni).arg(&mut b.members).launch(blocks(n, RED)).map_err(&e)?;
            let per_cluster = LaunchConfig { grid_dim: (m as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            s.launch_builder(k.get("ail_merge"))
                .arg(&b.x).arg(&b.members).arg(&b.offsets).arg(&b.counts).arg(&ci).arg(&mut b.merged).arg(&mut b.sizes)
                .launch(per_cluster).map_err(&e)?;
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
            s.launch_builder(self.kernels.get("ail_unfold"))
                .arg(&b.merged).arg(&b.assign).arg(&ni).arg(&ci).arg(&mut b.full)
                .launch(blocks(n * c, 256)).map_err(&e)?;
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

    fn reduce(&mut self, tokens: &[f32], c: usize, (h, w): (usize, usize), m: usize, out: &mut Reduction) -> Result<(), ReduceError> {
        let n = h * w;
        if c == 0 || tokens.len() != n * c || n > i32::MAX as usize / 2 {
            return Err(ReduceError::Shape { reducer: "ailurus (cuda)", n: tokens.len() / c.max(1), c, h, w });
        }
        if n == 0 {
            *out = Reduction { c, ..Reduction::default() };
            return Ok(());
        }
        let device = self.info.ordinal;
        self.run(tokens, c, (h, w), m.clamp(1, n), out)
            .map_err(|e| ReduceError::Device { reducer: "ailurus", device: format!("cuda:{device}"), source: Box::new(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_choice_prefers_the_device_then_older_ptx() {
        let known = [75, 80, 86, 87, 89, 90];
        assert_eq!(pick_arch((8, 7), &known).as_deref(), Some("sm_87"));
        assert_eq!(pick_arch((12, 0), &known).as_deref(), Some("compute_90"));
        assert_eq!(pick_arch((7, 0), &known), None);
    }

    #[test]
    fn options_come_from_the_kernel_source() {
        let o = nvrtc_options(KERNEL_SRC);
        assert!(o.contains(&"--fmad=false".to_string()), "{o:?}");
        assert_eq!(nvrtc_options("no options line"), Vec::<String>::new());
    }

    #[test]
    fn cache_key_changes_with_source_arch_and_nvrtc() {
        let a = cache_file_name("x", "sm_87", (12, 6));
        assert!(a.starts_with("ailurus-") && a.ends_with("-sm_87.cubin"), "{a}");
        assert_ne!(a, cache_file_name("y", "sm_87", (12, 6)));
        assert_ne!(a, cache_file_name("x", "sm_90", (12, 6)));
        assert_ne!(a, cache_file_name("x", "sm_87", (12, 8)));
        assert!(cache_file_name("x", "compute_90", (12, 6)).ends_with(".ptx"));
    }
}
