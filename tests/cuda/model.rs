//! The full model on the GPU through the real load path (`Segmenter` with `[model] device =
//! "cuda"`: tract-cuda for stem / middle / head, and `[reduce] device = "cuda"`: `CudaAilurus` for
//! the clustering), at 448 and 896, with and without reduction: times and mask IoU against the
//! unreduced GPU run. Prints `TABLE|` rows for tools/gpu-check.sh; no timing assertions, but the
//! reduced masks must stay close (IoU >= 0.9; the target is 0.97 at a 1.5x speed-up).
//! Prints SKIP and passes without a CUDA driver, tract-cuda's libraries, or the model file.
#![cfg(feature = "cuda")]

use std::path::Path;
use std::time::{Duration, Instant};

use ailurus::choice::Device;
use ailurus::engine::{Setting, StageTimes};
use ailurus::model::cuda::ModelRuntime;
use ailurus::model::{Manifest, SegmenterLane, SegmenterOptions};
use ailurus::reduce::cuda::driver_present;
use ailurus::reduce::ReduceConfig;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// The first photo, preprocessed to `[1, 3, s, s]` (a synthetic gradient when photos are missing).
fn input(root: &Path, m: &Manifest, s: usize) -> Vec<f32> {
    let photo = std::fs::read_dir(root.join(".cache/photos"))
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).min())
        .and_then(|p| image::open(p).ok())
        .map(|i| i.to_rgb8())
        .unwrap_or_else(|| {
            image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8]))
        });
    let norm = ailurus::pre::Normalize { mean: m.input.mean, std: m.input.std };
    let mut out = Vec::new();
    let (w, h) = photo.dimensions();
    ailurus::pre::preprocess(&mut Default::default(), photo.as_raw(), (w as usize, h as usize), s, &norm, &mut out);
    out
}

fn mask(raw: &[f32], th: f32) -> Vec<u8> {
    raw.iter().map(|&p| (p > th) as u8).collect()
}

#[test]
fn full_model_on_the_gpu_with_and_without_reduction() {
    if let Err(e) = full_model() {
        panic!("{e}");
    }
}

fn full_model() -> Res<()> {
    if !driver_present() {
        crate::common::gpu_skip(
            "full_model_on_the_gpu",
            "no CUDA driver (libcuda.so); the GPU model path is unverified here",
        );
        return Ok(());
    }
    // AILURUS_ROOT: the checkout, when the binary runs away from where it was built.
    let root_dir =
        std::env::var_os("AILURUS_ROOT").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), std::path::PathBuf::from);
    let root = root_dir.as_path();
    let manifest_path = root.join("models/vit_s_focus.toml");
    let manifest = Manifest::load(&manifest_path)?;
    if !manifest.onnx_path().is_file() {
        println!("SKIP full_model_on_the_gpu: {} missing (tools/fetch_assets.sh)", manifest.onnx_path().display());
        return Ok(());
    }
    if let Err(e) = ModelRuntime::select(Device::Cuda) {
        crate::common::gpu_skip("full_model_on_the_gpu", &e.to_string());
        return Ok(());
    }
    let sizes = [448u32, 896];
    let opts = SegmenterOptions {
        sizes: sizes.to_vec(),
        reduce: ReduceConfig { device: "cuda".into(), ..ReduceConfig::default() },
        with_full: true,
        verify_sha256: false,
        fixed_middle: Vec::new(),
        fixed_unreduced: false,
        device: Device::Cuda,
    };
    let t0 = Instant::now();
    let mut seg = SegmenterLane::load(&manifest_path, &opts)?;
    assert_eq!(seg.segmenter().runtime(), "cuda");
    println!("plans for {sizes:?} prepared and warmed up on tract-cuda in {:.1} s", t0.elapsed().as_secs_f64());
    let th = manifest.output.threshold;
    let mut times = StageTimes::default();
    for s in sizes {
        let g = (s / manifest.tokens.patch) as usize;
        let n = g * g;
        let x = input(root, &manifest, s as usize);
        let mut full_t = Vec::new();
        let mut base_out = Vec::new();
        for it in 0..6 {
            let t = Instant::now();
            seg.infer_full(&x, s, &mut base_out)?;
            if it > 0 {
                full_t.push(t.elapsed());
            }
        }
        let full_ms = median(full_t);
        println!("TABLE|model|{s}|{n}|{n}|{full_ms:.2}|-|-|1.000|1.00x");
        let base_mask = mask(&base_out, th);
        for m in [n / 2, n / 4] {
            let (mut total, mut red_t) = (Vec::new(), Vec::new());
            let mut out = Vec::new();
            for it in 0..6 {
                let t = Instant::now();
                seg.run_parts(&x, Setting { input_size: s, m }, &mut times, &mut out)?;
                if it > 0 {
                    total.push(t.elapsed());
                    red_t.push(times.reduce);
                }
            }
            let (tot, rms) = (median(total), median(red_t));
            let iou = ailurus::eval::iou(&mask(&out, th), &base_mask);
            println!(
                "TABLE|model|{s}|{n}|{m}|{tot:.2}|{rms:.2}|{:.1}%|{iou:.3}|{:.2}x",
                100.0 * rms / tot,
                full_ms / tot
            );
            assert!(iou >= 0.9, "{s}px M={m}: mask IoU {iou:.3} vs the unreduced GPU run");
        }
    }
    Ok(())
}
