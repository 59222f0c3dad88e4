//! NVRTC for the `ailurus` kernels: compile `kernels/ailurus.cu` for a device's arch and cache the
//! binary on disk, keyed by source hash + arch + NVRTC version.
//!
//! Owns: the NVRTC probe, the compile options (the `// nvrtc-options:` line of the kernel source,
//! shared with tools/check_kernels.sh), the arch choice and the cache. Needs NVRTC but no GPU, so
//! it is tested on CI machines. Must not: call NVRTC before `nvrtc_present()` says it loads.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use super::{CudaError, KERNEL_SRC};

/// NVRTC is loadable (a GPU is not needed to compile).
pub fn nvrtc_present() -> bool {
    // SAFETY: a dlopen probe without other side effects.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut a, mut b) = (0, 0);
    // SAFETY: library present (checked above); plain out-parameters.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) }.result().map_err(|source| CudaError::Nvrtc {
        arch: "-".into(),
        op: "version",
        log: String::new(),
        source,
    })?;
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
