//! The linear layers on the `gemm` crate (src/model/linear.rs): the kernel against an f64
//! reference on random inputs at 1 and 2 threads, and the swapped model parts against tract's
//! own matmuls on the tiny test ViT and the real model, which must keep the einsum layouts the
//! swap looks for (a new export that changed them would silently lose the speed-up).

use crate::common;

use std::path::Path;

use ailurus::model::isa::Level;
use ailurus::model::linear::{linear, linear_at, linear_res_at, reference, swap, swap_with, Linear};
use ailurus::model::sgemm::{self, Gemm};
use ailurus::model::{attention, cut, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff as max_diff, tokens, uniform as random};

/// One row and many, odd sizes that leave partial register tiles, K = 0 (the bias alone), and
/// the real model's shapes.
const SHAPES: [(usize, usize, usize); 7] =
    [(1, 1, 1), (3, 5, 7), (17, 33, 9), (1025, 384, 64), (8, 0, 6), (129, 1536, 48), (64, 24, 1)];

#[test]
fn linear_matches_the_f64_reference_on_random_inputs() {
    for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
        let seed = 20 * i as u64;
        let x = random(t * k, seed + 1);
        let w: Vec<f32> = random(k * n, seed + 2).iter().map(|v| v / (k.max(1) as f32).sqrt()).collect();
        let bias = random(n, seed + 3);
        for b in [None, Some(&bias[..])] {
            let want = reference(&x, &w, b, t, k, n);
            let mut first: Option<Vec<f32>> = None;
            // Every ISA level this CPU has (the portable kernel always), at 1 and 2 threads.
            for (level, threads) in Level::all_supported().into_iter().flat_map(|l| [(l, 1), (l, 2)]) {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; t * n];
                multithread_tract_scope(ex, || linear_at(level, &x, &w, b, t, k, n, &mut got)).unwrap();
                let err = max_diff(&got, &want);
                assert!(
                    err < 1e-5,
                    "[{t}x{k}]x[{k}x{n}] bias {} {level} {threads} thread(s): max error {err}",
                    b.is_some()
                );
                match &first {
                    None => first = Some(got),
                    // Row blocks split the rows, never the sum: threads and levels may differ
                    // only in rounding, never by more than the reference tolerance.
                    Some(f) => assert!(max_diff(f, &got) < 1e-5, "[{t}x{k}]x[{k}x{n}]: {level} {threads} thread(s)"),
                }
            }
        }
    }
}

/// A folded residual: the rows start from it (plus the bias), at every level and 1 and 2
/// threads, against the f64 reference plus the residual.
#[test]
fn linear_with_a_residual_adds_it_to_every_row() {
    for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
        let seed = 40 * i as u64;
        let x = random(t * k, seed + 1);
        let w: Vec<f32> = random(k * n, seed + 2).iter().map(|v| v / (k.max(1) as f32).sqrt()).collect();
        let bias = random(n, seed + 3);
        let res = random(t * n, seed + 4);
        for b in [None, Some(&bias[..])] {
            let want: Vec<f32> = reference(&x, &w, b, t, k, n).iter().zip(&res).map(|(v, r)| v + r).collect();
            for (level, threads) in Level::all_supported().into_iter().flat_map(|l| [(l, 1), (l, 2)]) {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; t * n];
                multithread_tract_scope(ex, || linear_res_at(level, &x, &w, b, Some(&res), t, k, n, &mut got)).unwrap();
                let err = max_diff(&got, &want);
                assert!(err < 1e-5, "[{t}x{k}]x[{k}x{n}] + r, bias {} {level} {threads} thread(s): {err}", b.is_some());
            }
        }
    }
    let mut out = vec![0f32; 8];
    let e = linear_res_at(Level::Portable, &[0.0; 6], &[0.0; 12], None, Some(&[0.0; 7]), 2, 3, 4, &mut out);
    assert!(e.unwrap_err().to_string().contains("residual has 7 values for 8"));
}

/// The single-threaded GEMM of every level against the f64 product: B row-major and transposed
/// (the attention's `q kᵀ`), C overwritten and accumulated, strided A and C rows, tile edges
/// (12 x 32, 4 x 16) and K past one packed chunk (256).
#[test]
fn sgemm_matches_the_f64_product_at_every_level() {
    let levels = Level::all_supported();
    assert!(levels.contains(&Level::Portable), "{levels:?}");
    for (i, &(m, k, n)) in [(1, 1, 1), (13, 7, 33), (12, 300, 32), (25, 513, 65), (97, 64, 1025)].iter().enumerate() {
        for (transposed, accumulate) in [(false, false), (false, true), (true, false), (true, true)] {
            let seed = 100 + 10 * i as u64;
            let (rsa, rsc) = (k + 3, n + 5);
            let a = random(m * rsa, seed);
            let b = random(k * n, seed + 1);
            let c0 = random(m * rsc, seed + 2);
            let (rsb, csb) = if transposed { (1, k) } else { (n, 1) };
            let shape =
                Gemm { m, n, k, a: a.as_ptr(), rsa, b: b.as_ptr(), rsb, csb, c: std::ptr::null_mut(), rsc, accumulate };
            let want = sgemm::reference(&shape, &a, &b, &c0);
            for &level in &levels {
                let mut c = c0.clone();
                let g = Gemm { c: c.as_mut_ptr(), ..shape };
                // SAFETY: a, b, c hold the strided shapes above; the level is supported.
                unsafe { g.run(level) };
                let err = max_diff(&c, &want);
                let what = format!("[{m}x{k}]x[{k}x{n}] transposed {transposed} accumulate {accumulate} {level}");
                assert!(err < 2e-5 * (k as f32).sqrt().max(1.0), "{what}: max error {err}");
                // Padding between rows of C is never written.
                for r in 0..m {
                    assert_eq!(
                        c[r * rsc + n..r * rsc + rsc],
                        c0[r * rsc + n..r * rsc + rsc],
                        "{what}: row {r} padding"
                    );
                }
            }
        }
    }
}

#[test]
fn linear_rejects_mismatched_inputs() {
    let x = vec![0f32; 2 * 3];
    let w = vec![0f32; 3 * 4];
    let mut out = vec![0f32; 2 * 4];
    let e = linear(&x[1..], &w, None, 2, 3, 4, &mut out).unwrap_err().to_string();
    assert!(e.contains("Linear: x 5 values for [2, 3]"), "{e}");
    let e = linear(&x, &w, Some(&[0.0; 3]), 2, 3, 4, &mut out).unwrap_err().to_string();
    assert!(e.contains("bias has 3 values for N = 4"), "{e}");
}

/// Swapped and unswapped optimised plans of one decluttered part (attention fused in both, as
/// the runtime runs them): the number of linear layers swapped, and the largest output
/// difference on `inputs` relative to the output's largest magnitude.
fn swapped_vs_tract(decl: &TypedModel, inputs: TVec<TValue>) -> (usize, f32) {
    let mut a = decl.clone();
    attention::fuse(&mut a).unwrap();
    let mut b = a.clone();
    let n = swap(&mut b).unwrap();
    let (residuals, scales_left) = folds_in(&b);
    // Every block's two residual Adds (after the projection and fc2) are folded into the layer
    // before them, and no Mul scales a layer's output (layer scale, the q/k scaling) any more.
    assert_eq!(residuals * 3, n, "residual Adds folded: {residuals} of {n} linear layers");
    assert_eq!(scales_left, 0, "Muls still scaling a linear layer's output");
    (n, common::relative_plan_diff(a, b, &inputs))
}

/// In a swapped graph: the `Linear`s with a folded residual, and the `Mul`s that read a
/// `Linear`'s output (directly or through a `Reshape`).
fn folds_in(g: &TypedModel) -> (usize, usize) {
    let linear = |id: usize| g.node(id).op_as::<Linear>().is_some();
    let live: Vec<&TypedNode> = g.eval_order().unwrap().into_iter().map(|id| g.node(id)).collect();
    let residuals = live.iter().filter_map(|n| n.op_as::<Linear>()).filter(|l| l.residual).count();
    let scales = live
        .iter()
        .filter(|n| n.op.name() == "Mul")
        .filter(|n| {
            n.inputs.iter().any(|i| {
                let src = g.node(i.node);
                linear(src.id) || (src.op.name() == "Reshape" && src.inputs.iter().any(|j| linear(j.node)))
            })
        })
        .count();
    (residuals, scales)
}

fn key_bias(t: usize, real: usize) -> TValue {
    let b: Vec<f32> = (0..t).map(|i| if i < real { (i % 3) as f32 * 0.5 } else { -1.0e9 }).collect();
    Tensor::from_shape(&[1, 1, 1, t], &b).unwrap().into()
}

/// `per_block`: linear layers in one block (q, k, v, output projection, fc1, fc2).
fn check_model(manifest: &Path, size: u32, cut_at: usize, per_block: usize, tol: f32) {
    let m = Manifest::load(manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let blocks = m.num_blocks();
    let s = size as usize;
    let img: TValue = Tensor::from_shape(&[1, 3, s, s], &common::noise_image(size, 5)).unwrap().into();
    let (n, d) = swapped_vs_tract(&cut::stem_decluttered(&base, &m, size, cut_at).unwrap(), tvec!(img));
    assert_eq!(n, per_block * cut_at, "linear layers swapped in the stem (blocks 0..{cut_at})");
    assert!(d < tol, "stem: swapped vs tract relative max diff {d}");

    let c = m.tokens.width;
    let n_tok = m.tokens.prefix + (s / m.tokens.patch as usize).pow(2);
    let middle = cut::middle_decluttered(&base, &m, cut_at, true).unwrap();
    let (n, d) = swapped_vs_tract(&middle, tvec!(tokens(n_tok, c, 7), key_bias(n_tok, n_tok)));
    assert_eq!(n, per_block * (blocks - cut_at), "linear layers swapped in the middle");
    assert!(d < tol, "middle: swapped vs tract relative max diff {d}");
    let padded = n_tok.div_ceil(4) * 4 + 4;
    let sym = middle.symbols.sym("T");
    let fixed = middle.set_symbols(&std::collections::HashMap::from([(sym, (padded as i64).to_dim())])).unwrap();
    let (n, d) = swapped_vs_tract(&fixed, tvec!(tokens(padded, c, 9), key_bias(padded, n_tok)));
    assert_eq!(n, per_block * (blocks - cut_at), "linear layers swapped in the fixed-T middle");
    assert!(d < tol, "fixed-T middle: swapped vs tract relative max diff {d}");
}

#[test]
fn swapped_tiny_vit_equals_tract_matmuls() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    for cut_at in [1, 2] {
        check_model(&manifest, 56, cut_at, 6, 1e-5);
    }
}

#[test]
fn swapped_real_model_equals_tract_matmuls_and_keeps_the_layouts() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    check_model(&manifest, 224, 4, 6, 1e-5);
}

/// `[model] precision = "bf16"`: every linear layer of the tiny ViT's stem and middle is
/// swapped with its weight packed in bf16, and the plans stay within bf16 rounding of tract's
/// f32 matmuls (on CPUs without AVX512-BF16 the portable kernel runs: the same sums). The f32
/// weights leave the plans: the packed ones are the only copy.
#[test]
fn bf16_swap_stays_close_to_f32_and_drops_the_f32_weights() {
    use ailurus::model::bf16::Precision;
    use ailurus::model::linear::swap_at;
    let m = Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml")).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let c = m.tokens.width;
    let n_tok = m.tokens.prefix + 16;
    let middle = cut::middle_decluttered(&base, &m, 1, true).unwrap();
    let mut a = middle.clone();
    attention::fuse(&mut a).unwrap();
    let mut b = a.clone();
    let n = swap_at(&mut b, Precision::Bf16).unwrap();
    assert_eq!(n, 6 * (m.num_blocks() - 1), "linear layers swapped (bf16)");
    let inputs = tvec!(tokens(n_tok, c, 7), key_bias(n_tok, n_tok));
    let d = common::relative_plan_diff(a.clone(), b.clone(), &inputs);
    // Two roundings of ~2^-9 relative per product, through several blocks: well under 5%, and
    // not zero (it did round).
    assert!(d < 0.05 && d > 1e-6, "bf16 middle vs tract f32: relative max diff {d}");
    let consts = |g: &TypedModel| -> usize {
        g.clone()
            .into_optimized()
            .unwrap()
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<tract_core::ops::konst::Const>())
            .map(|k| k.val().len())
            .sum()
    };
    let mut f = a.clone();
    swap_with(&mut f, Precision::F32, false).unwrap();
    let (f32_consts, bf16_consts) = (consts(&f), consts(&b));
    // q, k, v, output projection (c x c) and fc1, fc2 (c x 2c: the tiny model's MLP is twice its
    // width, tools/make_tiny_vit.py) per block.
    let weights = (m.num_blocks() - 1) * (4 * c * c + 2 * c * 2 * c);
    assert!(
        f32_consts - bf16_consts >= weights * 9 / 10,
        "f32 plan constants {f32_consts}, bf16 plan {bf16_consts}: the linear weights ({weights}) should leave"
    );
    // At level avx512 the f32 swap packs the weights into the ops as well (sgemm::PackedF32):
    // they leave the plan's constants, as with bf16; elsewhere they stay.
    let mut p = a.clone();
    swap_with(&mut p, Precision::F32, true).unwrap();
    assert!(f32_consts - consts(&p) >= weights * 9 / 10, "f32 packed plan constants {}", consts(&p));
}
