//! The head's transposed convolutions as sub-pixel convolutions (`[model] cpu_ops = "ailurus"`,
//! src/model/deconv/): the kernel against the textbook scatter on random inputs, at 1 and 2
//! threads; and the head with the swap against tract's own `Deconv`, on the tiny test ViT (one
//! ConvTranspose) and the real model (three), which must keep the shape the swap looks for.

use crate::common;

use std::path::Path;

use ailurus::model::deconv::{deconv, deconv_at, deconv_fused, f32_taps, reference, swap};
use ailurus::model::isa::Level;
use ailurus::model::{cut, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff as max_diff, uniform as random};

#[test]
fn deconv_matches_the_textbook_scatter_on_random_inputs() {
    // (C_in, H, W, C_out): single pixels, odd sizes, non-square, and one tall enough for several
    // row blocks (2048 / (30 + 2) = 64 rows per block -> 2 blocks at H = 70).
    for (i, &(ci, h, w, co)) in
        [(1, 1, 1, 1), (3, 5, 7, 2), (8, 9, 4, 5), (4, 70, 30, 3), (2, 2, 130, 4)].iter().enumerate()
    {
        let seed = 100 * i as u64;
        let x = random(ci * h * w, seed + 1);
        let k = random(co * ci * 16, seed + 2);
        let b = random(co, seed + 3);
        let want = reference(&x, &k, &b, ci, h, w, co);
        for level in [Level::Avx512, Level::Avx2, Level::Neon, Level::Portable].into_iter().filter(|l| l.supported()) {
            let mut first: Option<Vec<u32>> = None;
            for threads in [1, 2] {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; co * 4 * h * w];
                multithread_tract_scope(ex, || deconv_at(level, &x, &k, &b, ci, h, w, co, &mut got)).unwrap();
                let err = max_diff(&got, &want);
                assert!(err < 1e-5, "C_in {ci}, {h}x{w}, C_out {co}, {level}, {threads} thread(s): max error {err}");
                let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                match &first {
                    None => first = Some(bits),
                    Some(f) => assert!(*f == bits, "C_in {ci}, {h}x{w}, C_out {co}, {level}: 1 and 2 threads differ"),
                }
                // With the kernel's packed taps (what the swapped op holds): the same bits.
                let taps = f32_taps(&k, ci, co);
                let mut with = vec![f32::NAN; co * 4 * h * w];
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                multithread_tract_scope(ex, || {
                    deconv_fused(level, &x, &k, Some(&taps.0), &b, ci, h, w, co, None, &mut with)
                })
                .unwrap();
                let bits_with: Vec<u32> = with.iter().map(|v| v.to_bits()).collect();
                assert!(
                    first.as_ref() == Some(&bits_with),
                    "C_in {ci}, {h}x{w}, C_out {co}, {level}: packed taps differ"
                );
            }
        }
    }
}

#[test]
fn deconv_rejects_mismatched_inputs() {
    let mut out = vec![0f32; 2 * 4 * 3 * 3];
    let e = deconv(&[0.0; 9], &[0.0; 32], &[0.0; 2], 1, 3, 3, 2, &mut out[1..]).unwrap_err().to_string();
    assert!(e.contains("SubpixelDeconv"), "{e}");
}

/// The head at `size` with and without the swap: how many were swapped and the largest output
/// difference on random tokens.
fn check_head(manifest: &Path, size: u32, expect: usize, tol: f32) {
    let m = Manifest::load(manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let decl = cut::head_decluttered(&base, &m, size).unwrap();
    let mut swapped = decl.clone();
    assert_eq!(swap(&mut swapped).unwrap(), expect, "transposed convolutions swapped in the head at {size}px");
    let t = m.tokens.prefix + (size / m.tokens.patch) as usize * (size / m.tokens.patch) as usize;
    let toks: TValue = Tensor::from_shape(&[1, t, m.tokens.width], &random(t * m.tokens.width, 7)).unwrap().into();
    let run = |g: TypedModel| g.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(toks.clone())).unwrap();
    let (a, b) = (run(decl), run(swapped));
    let f = |v: &TValue| ailurus::model::f32s(v).unwrap().to_vec();
    let d = max_diff(&f(&a[0]), &f(&b[0]));
    assert!(d < tol, "head at {size}px: sub-pixel vs tract max diff {d}");
}

#[test]
fn subpixel_tiny_vit_head_equals_tract() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    for size in [56, 112] {
        check_head(&manifest, size, 1, 1e-5);
    }
}

#[test]
fn subpixel_real_model_head_equals_tract_and_keeps_the_pattern() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    check_head(&manifest, 224, 3, 1e-4);
}

/// `[model] precision = "bf16"`: the sub-pixel deconvolution with the products in bf16, on every
/// bf16 kernel this CPU has, against the textbook scatter of the bf16-rounded input and kernel
/// (f32 sums: tolerance of f32 rounding over C_in x 4 taps), and the kernels against each other.
/// Odd C_in pads a channel pair; H = 70 gives several row blocks.
#[test]
fn bf16_deconv_matches_the_scatter_of_the_rounded_operands() {
    use ailurus::model::bf16::{from_bf16, to_bf16, Kernel};
    use ailurus::model::deconv::{deconv_bf16, Taps};
    let kernels: Vec<Kernel> =
        [Kernel::Amx, Kernel::Avx512Bf16, Kernel::Portable].into_iter().filter(|k| k.supported()).collect();
    let r = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| from_bf16(to_bf16(v))).collect() };
    for (i, &(ci, h, w, co)) in
        [(1, 1, 1, 1), (3, 5, 7, 2), (8, 9, 4, 40), (4, 70, 30, 3), (33, 6, 6, 64)].iter().enumerate()
    {
        let seed = 300 + 10 * i as u64;
        let x = random(ci * h * w, seed + 1);
        let k = random(co * ci * 16, seed + 2);
        let b = random(co, seed + 3);
        let want = reference(&r(&x), &r(&k), &b, ci, h, w, co);
        let taps = Taps::pack(&k, ci, co);
        let mut first: Option<Vec<f32>> = None;
        for &kernel in &kernels {
            for threads in [1, 2] {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; co * 4 * h * w];
                multithread_tract_scope(ex, || deconv_bf16(kernel, &x, &taps, &b, ci, h, w, co, None, &mut got))
                    .unwrap();
                let err = max_diff(&got, &want);
                assert!(err < 1e-5 * (ci as f32).max(4.0), "C_in {ci}, {h}x{w}, C_out {co}, {kernel:?}: {err}");
                if let Some(f) = &first {
                    assert!(max_diff(f, &got) < 1e-5, "C_in {ci}, {h}x{w}, C_out {co}: kernels/threads disagree");
                }
                first = Some(got);
            }
        }
        // And it did round: the f32 deconvolution differs.
        let exact = reference(&x, &k, &b, ci, h, w, co);
        assert!(max_diff(first.as_ref().unwrap(), &exact) > 0.0 || ci * co == 1);
    }
}

/// Every plan that swaps the same kernel shares one copy of its packed taps (the memory target).
#[test]
fn equal_kernels_share_one_packed_copy() {
    let (a, b) = (random(3 * 5 * 16, 7), random(3 * 5 * 16, 8));
    let (x, y, z) = (f32_taps(&a, 3, 5), f32_taps(&a.clone(), 3, 5), f32_taps(&b, 3, 5));
    assert!(std::sync::Arc::ptr_eq(&x.0, &y.0));
    assert!(!std::sync::Arc::ptr_eq(&x.0, &z.0));
    // Tap 6 (ky 1, kx 2) of output channel 4, input channel 2.
    assert_eq!(x.0 .0[6].at(2, 4), a[(4 * 3 + 2) * 16 + 6]);
}
