//! `[model] device` through the real `Segmenter` load path and the CLI, on the tiny test model
//! (tests/data/tiny_vit): "cpu" runs tract's CPU plans; "cuda" without a usable GPU (no driver, or a build
//! without `--features cuda`) is a one-line start-up error naming the field, exit 2;
//! "cuda-or-cpu" falls back with one log line and gives bit-identical output to "cpu".
//!
//! On a machine where tract-cuda works (tools/gpu-check.sh) the same tests compare the GPU run with
//! the CPU run within a tolerance instead, and "cuda" must load.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ailurus::choice::Device;
use ailurus::engine::{Setting, StageTimes};
use ailurus::model::{ModelError, ModelRuntime, SegmenterLane, SegmenterOptions};
use ailurus::reduce::ReduceConfig;

fn data(name: &str) -> PathBuf {
    common::root().join("tests/data").join(name)
}

/// tract-cuda can run here (feature on, driver and libraries present).
fn gpu_here() -> bool {
    ModelRuntime::select(Device::Cuda).is_ok_and(|rt| rt.is_gpu())
}

use common::noise_image as image;

fn options(device: Device, sizes: &[u32]) -> SegmenterOptions {
    SegmenterOptions {
        sizes: sizes.to_vec(),
        reduce: ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() },
        with_full: true,
        verify_sha256: true,
        fixed_middle: vec![20],
        fixed_unreduced: true,
        device,
    }
}

/// Outputs of every (size, M) setting plus the uncut model, for one segmenter.
fn outputs(seg: &mut SegmenterLane, sizes: &[u32]) -> Vec<Vec<f32>> {
    let mut all = Vec::new();
    let mut times = StageTimes::default();
    for (k, &s) in sizes.iter().enumerate() {
        let x = image(s, 11 + k as u64);
        let n = ((s / 14) * (s / 14)) as usize;
        for m in [n, 20, 9] {
            let mut out = Vec::new();
            seg.run_parts(&x, Setting { input_size: s, m }, &mut times, &mut out).unwrap();
            all.push(out);
        }
        let mut out = Vec::new();
        seg.infer_full(&x, s, &mut out).unwrap();
        all.push(out);
    }
    all
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn cpu_runs_tracts_cpu_plans() {
    let seg = SegmenterLane::load(&data("tiny_vit.toml"), &options(Device::Cpu, &[56])).unwrap();
    assert_eq!(seg.segmenter().runtime(), "cpu");
}

#[test]
fn cuda_without_a_gpu_is_a_one_line_error_naming_the_field() {
    let loaded = SegmenterLane::load(&data("tiny_vit.toml"), &options(Device::Cuda, &[56]));
    if gpu_here() {
        let seg = loaded.expect("tract-cuda works here, so device \"cuda\" must load");
        assert_eq!(seg.segmenter().runtime(), "cuda");
        return;
    }
    common::gpu_skip(
        "cuda_without_a_gpu (GPU part)",
        "tract-cuda cannot run here: checking the start-up error instead",
    );
    let e = loaded.map(|_| ()).unwrap_err();
    assert!(matches!(e, ModelError::Device { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(msg.contains("[model] device \"cuda\""), "does not name the field: {msg}");
    assert!(msg.contains("tiny_vit.onnx"), "does not name the model file: {msg}");
    if cfg!(feature = "cuda") {
        assert!(msg.contains("tract-cuda is unavailable"), "{msg}");
    } else {
        assert!(msg.contains("--features cuda"), "{msg}");
    }
}

#[test]
fn cuda_or_cpu_matches_cpu() {
    // (tiny_vit_baked bakes its token count in: its middle cannot run reduced at all.)
    let (sizes, manifest) = ([56, 112], data("tiny_vit.toml"));
    let mut cpu = SegmenterLane::load(&manifest, &options(Device::Cpu, &sizes)).unwrap();
    let mut either = SegmenterLane::load(&manifest, &options(Device::CudaOrCpu, &sizes)).unwrap();
    let (a, b) = (outputs(&mut cpu, &sizes), outputs(&mut either, &sizes));
    if either.segmenter().runtime() == "cuda" {
        // tract-cuda: different kernels, different rounding (cuBLAS, fused softmax).
        let d = max_diff(&a, &b);
        assert!(d < 1e-3, "GPU vs CPU max diff {d}");
        println!("tract-cuda vs CPU on the tiny model: max diff {d:e}");
    } else {
        assert!(!gpu_here(), "cuda-or-cpu fell back although tract-cuda works here");
        common::gpu_skip("cuda_or_cpu_matches_cpu (GPU part)", "tract-cuda cannot run here: checking the CPU fallback");
        let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert!(bits(&a) == bits(&b), "cuda-or-cpu on the CPU is not bit-identical to cpu");
    }
}

/// The ailurus binary: AILURUS_BIN (tools/gpu-check.sh --prebuilt) or the one cargo built.
fn bin() -> PathBuf {
    std::env::var_os("AILURUS_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ailurus")), PathBuf::from)
}

fn ailurus(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(common::root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ailurus");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A config for the tiny model on `device`, and a small photo to segment.
fn setup(dir: &Path, device: &str) -> (String, String) {
    let cfg = dir.join(format!("{device}.toml"));
    let text = format!(
        "[model]\nmanifest = {:?}\ninput_size = 56\ndevice = {device:?}\n[reduce]\ncut = 2\nm = 9\n",
        data("tiny_vit.toml").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    let img = dir.join("photo.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])).save(&img).unwrap();
    (cfg.display().to_string(), img.display().to_string())
}

#[test]
fn cli_cuda_fails_at_start_up_with_exit_2_and_cuda_or_cpu_falls_back() {
    if !bin().is_file() {
        // Only in a --prebuilt bundle without the binary; cargo always builds it.
        println!("SKIP cli_cuda_fails_at_start_up: {} missing (set AILURUS_BIN)", bin().display());
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let out = out.to_str().unwrap();
    let (cfg, img) = setup(d.path(), "cuda");
    let (code, err) = ailurus(&["segment", "--config", &cfg, "--out", out, &img]);
    if gpu_here() {
        assert_eq!(code, 0, "{err}");
    } else {
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("[model] device \"cuda\""), "{err}");
    }
    let (cfg, img) = setup(d.path(), "cuda-or-cpu");
    let (code, err) = ailurus(&["segment", "--config", &cfg, "--out", out, &img]);
    assert_eq!(code, 0, "{err}");
    let lines = err.lines().filter(|l| l.contains("[model] device")).count();
    if gpu_here() {
        assert_eq!(lines, 0, "{err}");
    } else {
        assert_eq!(lines, 1, "one fallback line: {err}");
        assert!(err.contains("running the encoder on the CPU"), "{err}");
    }
}
