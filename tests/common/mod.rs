//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project root: AILURUS_ROOT when a test binary runs away from the checkout it was built
/// in (tools/gpu-check.sh --prebuilt), else the build's checkout.
pub fn root() -> PathBuf {
    std::env::var_os("AILURUS_ROOT").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The asset cache (tools/fetch_assets.sh), honouring AILURUS_CACHE.
pub fn cache() -> PathBuf {
    std::env::var_os("AILURUS_CACHE").map(PathBuf::from).unwrap_or_else(|| root().join(".cache"))
}

/// The real model's manifest, or a loud failure telling how to fetch it. Tests on the real
/// model are skipped only when AILURUS_SKIP_REAL=1 is set explicitly.
pub fn real_manifest() -> Option<PathBuf> {
    if std::env::var_os("AILURUS_SKIP_REAL").is_some() {
        eprintln!("AILURUS_SKIP_REAL set: skipping a real-model test");
        return None;
    }
    let onnx = cache().join("models/vit_s_focus.onnx");
    assert!(onnx.is_file(), "{} is missing: run tools/fetch_assets.sh (or set AILURUS_SKIP_REAL=1)", onnx.display());
    Some(root().join("models/vit_s_focus.toml"))
}

pub fn photo(name: &str) -> PathBuf {
    cache().join("photos").join(name)
}

/// `n` deterministic pseudo-random values, uniform in [-1, 1) (xorshift).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `[1,3,size,size]` deterministic pseudo-random image data in about [-2, 2].
pub fn noise_image(size: u32, seed: u64) -> Vec<f32> {
    uniform(3 * size as usize * size as usize, seed).into_iter().map(|v| 2.0 * v).collect()
}

/// The largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `[1, t, c]` tokens from [`uniform`].
pub fn tokens(t: usize, c: usize, seed: u64) -> tract_onnx::prelude::TValue {
    tract_onnx::prelude::Tensor::from_shape(&[1, t, c], &uniform(t * c, seed)).unwrap().into()
}

/// Optimise two decluttered versions of one part with tract, run both on `inputs`, and return
/// the largest difference of their first outputs, relative to `a`'s largest magnitude (at
/// least 1): how the tests compare a part with our ops swapped in against tract's.
pub fn relative_plan_diff(
    a: tract_onnx::prelude::TypedModel,
    b: tract_onnx::prelude::TypedModel,
    inputs: &tract_onnx::prelude::TVec<tract_onnx::prelude::TValue>,
) -> f32 {
    use tract_onnx::prelude::*;
    let run = |g: TypedModel| {
        let out = g.into_optimized().unwrap().into_runnable().unwrap().run(inputs.clone()).unwrap();
        ailurus::model::f32s(&out[0]).unwrap().to_vec()
    };
    let (a, b) = (run(a), run(b));
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    max_abs_diff(&a, &b) / scale
}

/// Whether `AILURUS_REQUIRE_GPU=1` is set (tools/gpu-check.sh): every GPU test must then really
/// run on the GPU.
pub fn require_gpu() -> bool {
    std::env::var_os("AILURUS_REQUIRE_GPU").is_some_and(|v| v == "1")
}

/// A GPU test that cannot exercise the GPU here: prints `SKIP <test>: <why>` and returns, so
/// the test passes on machines without one; with `AILURUS_REQUIRE_GPU=1` it fails instead. Every
/// GPU SKIP goes through here, so a GPU check cannot pass by skipping.
pub fn gpu_skip(test: &str, why: &str) {
    assert!(!require_gpu(), "AILURUS_REQUIRE_GPU=1, but {test} cannot run on the GPU here: {why}");
    println!("SKIP {test}: {why}");
}
