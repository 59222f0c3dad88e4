//! The fused MLP (src/model/mlp.rs): the op against the three ops it replaces (fc1, tract's
//! `GeluExact`, fc2 + residual) bit for bit, for every weight kind and kernel this CPU has, at 1
//! and 2 threads, on row counts that cross the op's chunks; against a slow f64 reference; and
//! the fused plans of the tiny ViT against the unfused ones, bit for bit.

use crate::common;

use std::path::Path;

use ailurus::model::bf16::{self, Half, Packed16, Precision};
use ailurus::model::isa::Level;
use ailurus::model::linear::{apply, Weight};
use ailurus::model::mlp::{self, Mlp, CHUNK};
#[cfg(target_arch = "x86_64")]
use ailurus::model::sgemm::PackedF32;
use ailurus::model::{attention, cut, f16, linear, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff, tokens, uniform as random};

/// tract's own `GeluExact` op on `h`, in place.
fn tract_gelu(h: &mut [f32]) {
    let op = tract_core::ops::nn::gelu_exact::gelu_exact();
    let t = Tensor::from_shape(&[h.len()], h).unwrap();
    let out = tract_core::internal::EvalOp::eval(
        &op,
        &tract_core::internal::EvalContext::out_of_plan(),
        tvec!(t.into_tvalue()),
    )
    .unwrap();
    h.copy_from_slice(ailurus::model::f32s(&out[0]).unwrap());
}

/// erf by its Maclaurin series in f64 for |x| < 3.5 (about 1e-10 after cancellation), and +-1
/// beyond (off by under 1e-6): enough for a reference with a 1e-4 tolerance.
fn erf64(x: f64) -> f64 {
    if x.abs() >= 3.5 {
        return x.signum();
    }
    let (mut term, mut sum, x2) = (x, x, x * x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// The MLP in f64: `r + gelu(x w1 + b1) w2 + b2`.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    w1: &[f32],
    b1: &[f32],
    w2: &[f32],
    b2: &[f32],
    r: &[f32],
    t: usize,
    k: usize,
    n1: usize,
    n2: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; t * n2];
    for i in 0..t {
        let h: Vec<f64> = (0..n1)
            .map(|j| {
                let s: f64 = b1[j] as f64 + (0..k).map(|p| x[i * k + p] as f64 * w1[p * n1 + j] as f64).sum::<f64>();
                0.5 * s * (1.0 + erf64(s / std::f64::consts::SQRT_2))
            })
            .collect();
        for j in 0..n2 {
            let s: f64 = (0..n1).map(|p| h[p] * w2[p * n2 + j] as f64).sum();
            out[i * n2 + j] = (r[i * n2 + j] as f64 + b2[j] as f64 + s) as f32;
        }
    }
    out
}

/// Every weight kind this CPU runs: f32 at each ISA level, f32 packed for AVX-512, and each
/// bf16 and f16 kernel it has.
fn kinds(
    w1: &[f32],
    w2: &[f32],
    (k, n1, n2): (usize, usize, usize),
) -> Vec<(String, Weight<'static>, Weight<'static>)> {
    let leak = |v: &[f32]| -> &'static [f32] { Box::leak(v.to_vec().into_boxed_slice()) };
    let (w1, w2) = (leak(w1), leak(w2));
    let mut out = vec![];
    for level in Level::all_supported() {
        out.push((
            format!("f32 {level}"),
            Weight::F32 { w: w1, k, n: n1, level },
            Weight::F32 { w: w2, k: n1, n: n2, level },
        ));
    }
    // The weights packed once, on each level whose tile reads them (their fc1 applies the GELU
    // in its stores where it copies tract's erf kernel on this CPU).
    #[cfg(target_arch = "x86_64")]
    for level in Level::all_supported().into_iter().filter(|l| ailurus::model::sgemm::packs(*l)) {
        let (p1, p2): (&'static PackedF32, &'static PackedF32) =
            (Box::leak(Box::new(PackedF32::pack(w1, k, n1))), Box::leak(Box::new(PackedF32::pack(w2, n1, n2))));
        out.push((format!("f32 packed {level}"), Weight::PackedF32(p1, level), Weight::PackedF32(p2, level)));
    }
    let halves: Vec<Half> = [bf16::Kernel::Amx, bf16::Kernel::Avx512Bf16, bf16::Kernel::Portable]
        .into_iter()
        .map(Half::from)
        .chain([f16::Kernel::Avx512Fp16, f16::Kernel::NeonFp16, f16::Kernel::Portable].into_iter().map(Half::from))
        .filter(|h| h.supported())
        .collect();
    for h in halves {
        let p1: &'static Packed16 = Box::leak(Box::new(Packed16::pack_as(h.format(), w1, k, n1)));
        let p2: &'static Packed16 = Box::leak(Box::new(Packed16::pack_as(h.format(), w2, n1, n2)));
        out.push((h.name().to_string(), Weight::Half(p1, h), Weight::Half(p2, h)));
    }
    out
}

#[test]
fn mlp_equals_fc1_gelu_fc2_bit_for_bit_on_every_kernel() {
    let (k, n1, n2) = (40, 96, 40);
    let w1: Vec<f32> = random(k * n1, 1).iter().map(|v| v * 3.0 / (k as f32).sqrt()).collect();
    let w2: Vec<f32> = random(n1 * n2, 2).iter().map(|v| v * 3.0 / (n1 as f32).sqrt()).collect();
    let (b1, b2) = (random(n1, 3), random(n2, 4));
    let kinds = kinds(&w1, &w2, (k, n1, n2));
    assert!(kinds.len() >= 3, "f32 portable, f32 at this CPU's level, bf16 and f16 portable at least");
    // One row, a partial tile, one chunk exactly, and rows past two chunks per thread.
    for (i, t) in [1, 7, CHUNK, 2 * CHUNK + 2 * 13 + 1].into_iter().enumerate() {
        let x = random(t * k, 10 + i as u64);
        let r = random(t * n2, 20 + i as u64);
        let want64 = reference(&x, &w1, &b1, &w2, &b2, &r, t, k, n1, n2);
        for &(ref name, wa, wb) in &kinds {
            // The three ops, one after the other.
            let mut h = vec![f32::NAN; t * n1];
            apply(wa, &x, Some(&b1), None, t, &mut h).unwrap();
            tract_gelu(&mut h);
            let mut want = vec![f32::NAN; t * n2];
            apply(wb, &h, Some(&b2), Some(&r), t, &mut want).unwrap();
            // The reference checks the three ops (so the fused one) are the MLP at all.
            let tol = if name.starts_with("f32") { 1e-4 } else { 0.08 };
            let err = max_abs_diff(&want, &want64);
            assert!(err < tol, "{name}, T = {t}: three ops vs f64 reference {err}");
            for threads in [1, 2] {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; t * n2];
                multithread_tract_scope(ex, || mlp::mlp((wa, Some(&b1)), (wb, Some(&b2)), Some(&r), &x, t, &mut got))
                    .unwrap();
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{name}, T = {t}, {threads} thread(s): fused differs from the three ops by {}",
                    max_abs_diff(&got, &want)
                );
            }
        }
    }
}

#[test]
fn mlp_rejects_mismatched_inputs() {
    let (w1, w2) = (vec![0f32; 4 * 8], vec![0f32; 6 * 4]);
    let level = Level::Portable;
    let (a, b) = (Weight::F32 { w: &w1, k: 4, n: 8, level }, Weight::F32 { w: &w2, k: 6, n: 4, level });
    let mut out = vec![0f32; 2 * 4];
    let e = mlp::mlp((a, None), (b, None), None, &[0.0; 8], 2, &mut out).unwrap_err().to_string();
    assert!(e.contains("fc1 gives 8 values a row, fc2 reads 6"), "{e}");
    let b = Weight::F32 { w: &w1, k: 8, n: 4, level };
    let e = mlp::mlp((a, None), (b, None), Some(&[0.0; 7]), &[0.0; 8], 2, &mut out).unwrap_err().to_string();
    assert!(e.contains("residual Some(7)"), "{e}");
}

/// The tiny ViT's middle, with attention fused and the linear layers swapped in `precision`:
/// its MLPs fused too (one per block) give the same output bits as without.
#[test]
fn fused_plans_equal_unfused_bit_for_bit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    let m = Manifest::load(&path).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let cut_at = 1;
    let middle = cut::middle_decluttered(&base, &m, cut_at, true).unwrap();
    let n_tok = m.tokens.prefix + 16;
    let bias: Vec<f32> = (0..n_tok).map(|i| (i % 3) as f32 * 0.5).collect();
    let inputs = tvec!(tokens(n_tok, m.tokens.width, 3), Tensor::from_shape(&[1, 1, 1, n_tok], &bias).unwrap().into());
    let precisions: Vec<Precision> = [Precision::F32, Precision::Bf16, Precision::F16]
        .into_iter()
        .filter(|p| p.format().is_none_or(|f| Half::best(f).supported()))
        .collect();
    for precision in precisions {
        let mut a = middle.clone();
        attention::fuse(&mut a).unwrap();
        linear::swap_at(&mut a, precision).unwrap();
        let mut b = a.clone();
        let fused = mlp::fuse(&mut b).unwrap();
        assert_eq!(fused, m.num_blocks() - cut_at, "{precision:?}: MLPs fused");
        let ops = |g: &TypedModel| g.eval_order().unwrap().iter().filter(|&&id| g.node(id).op_is::<Mlp>()).count();
        assert_eq!(ops(&b), fused, "{precision:?}: the fused ops are in the graph");
        let run = |g: TypedModel| {
            let out = g.into_optimized().unwrap().into_runnable().unwrap().run(inputs.clone()).unwrap();
            ailurus::model::f32s(&out[0]).unwrap().to_vec()
        };
        let (x, y) = (run(a), run(b));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{precision:?}: fused plan differs by {}",
            max_abs_diff(&x, &y)
        );
    }
}
