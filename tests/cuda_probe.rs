//! The CUDA probe and fallback paths, which must work on machines without a GPU: no panic, one-line
//! reasons, `cuda-or-cpu` falls back, `cuda` fails. Also NVRTC compilation and the on-disk kernel
//! cache, which need NVRTC but no GPU (CI puts the PyPI wheel's libnvrtc on LD_LIBRARY_PATH:
//! `LD_LIBRARY_PATH=.cache/cuda-tools/nvidia/cuda_nvrtc/lib`); without it that part prints SKIP.
#![cfg(feature = "cuda")]

#[path = "common/mod.rs"]
mod common;

use ailurus::model::cuda::{GpuModelError, ModelRuntime};
use ailurus::reduce::cuda::{
    build_for_device, cache_file_name, compiled_kernels, driver_present, nvrtc_compile, nvrtc_present, nvrtc_version,
    probe, CudaAilurus, CudaError, KERNEL_SRC,
};
use ailurus::reduce::{AilurusConfig, ReduceConfig, Reduction};

fn cfg(device: &str) -> ReduceConfig {
    ReduceConfig { device: device.into(), ..ReduceConfig::default() }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error message is not one line: {s:?}");
    s
}

#[test]
fn reducer_probe_and_fallback_never_panic() {
    let mut out = Reduction::default();
    let x: Vec<f32> = (0..16 * 8).map(|v| (v % 7) as f32).collect();
    if driver_present() {
        // A machine with a driver: "cuda" must give a working reducer (or a one-line reason).
        match build_for_device(&cfg("cuda")) {
            Ok(mut r) => r.reduce(&x, 8, (4, 4), 3, &mut out).unwrap(),
            Err(e) => common::gpu_skip("reducer_probe_and_fallback_never_panic", &one_line(&e)),
        }
        return;
    }
    common::gpu_skip(
        "reducer_probe_and_fallback_never_panic (GPU part)",
        "no CUDA driver: checking the driverless paths",
    );
    let e = probe(0).unwrap_err();
    assert!(matches!(e, CudaError::NoDriver), "{e}");
    assert!(one_line(&e).contains("libcuda"), "{e}");
    let e = CudaAilurus::new(0, &AilurusConfig::default()).unwrap_err();
    assert!(matches!(e, CudaError::NoDriver), "{e}");
    let e = build_for_device(&cfg("cuda")).map(|_| ()).unwrap_err();
    println!("reduce.device = \"cuda\" fails with: {}", one_line(&e));
    // Falls back with one log line, and the CPU reducer works.
    let mut r = build_for_device(&cfg("cuda-or-cpu")).unwrap();
    r.reduce(&x, 8, (4, 4), 3, &mut out).unwrap();
    assert_eq!(out.assign.len(), 16);
    let mut r = build_for_device(&cfg("cpu")).unwrap();
    r.reduce(&x, 8, (4, 4), 3, &mut out).unwrap();
}

#[test]
fn gpu_only_strategies_are_refused_by_name() {
    let c = ReduceConfig { strategy: "tome".into(), device: "cuda".into(), ..ReduceConfig::default() };
    if let Err(e) = build_for_device(&c) {
        let msg = one_line(&e);
        assert!(msg.contains("libcuda") || msg.contains("tome") || msg.contains("cuda"), "{msg}");
    }
}

#[test]
fn model_runtime_probe_and_fallback_never_panic() {
    let cpu = ModelRuntime::select(ailurus::choice::Device::CudaOrCpu).unwrap();
    match ModelRuntime::select(ailurus::choice::Device::Cuda) {
        Ok(rt) => {
            assert!(rt.is_gpu());
            assert_eq!(rt.name(), "cuda");
        }
        Err(e) => {
            assert!(matches!(e, GpuModelError::Unavailable { .. }), "{e}");
            println!("model.device = \"cuda\" fails with: {}", one_line(&e));
            common::gpu_skip("model_runtime_probe_and_fallback_never_panic (GPU part)", &one_line(&e));
            assert!(!cpu.is_gpu(), "cuda-or-cpu must fall back to the CPU when cuda is unavailable");
        }
    }
}

#[test]
fn nvrtc_compiles_the_kernels_and_caches_them() {
    if !nvrtc_present() {
        assert!(matches!(nvrtc_compile(KERNEL_SRC, "sm_87"), Err(CudaError::NoNvrtc)));
        common::gpu_skip("nvrtc_compiles_the_kernels_and_caches_them", "libnvrtc not loadable (set LD_LIBRARY_PATH)");
        return;
    }
    let ver = nvrtc_version().unwrap();
    let cubin = nvrtc_compile(KERNEL_SRC, "sm_87").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&cubin[..4], b"\x7fELF", "sm_87 gives a CUBIN (ELF)");
    let ptx = nvrtc_compile(KERNEL_SRC, "compute_90").unwrap_or_else(|e| panic!("{e}"));
    let ptx = String::from_utf8_lossy(&ptx);
    for k in
        ["ail_pairwise", "ail_density", "ail_delta", "ail_spread", "ail_rank", "ail_assign", "ail_merge", "ail_unfold"]
    {
        assert!(ptx.contains(&format!(".entry {k}")), "{k} missing from the PTX");
    }
    assert!(!ptx.contains("fma.rn.f32"), "an f32 FMA would break CPU/GPU bit-identity");
    // A compile error is one line naming the arch and the first error.
    let e = nvrtc_compile("extern \"C\" __global__ void k() { undefined_thing(); }", "sm_87").unwrap_err();
    let msg = one_line(&e);
    assert!(msg.contains("sm_87") && msg.contains("undefined_thing"), "{msg}");

    // The disk cache: first call compiles and writes, second reads.
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("AILURUS_KERNEL_CACHE", dir.path());
    let (a, cached_a) = compiled_kernels("sm_87", ver).unwrap();
    let (b, cached_b) = compiled_kernels("sm_87", ver).unwrap();
    std::env::remove_var("AILURUS_KERNEL_CACHE");
    assert!(!cached_a && cached_b, "compile, then cache hit");
    assert_eq!(a, b);
    assert!(dir.path().join(cache_file_name(KERNEL_SRC, "sm_87", ver)).is_file());
    println!("NVRTC {}.{}: kernels compile for sm_87 ({} bytes) and compute_90; cache OK", ver.0, ver.1, a.len());
}
