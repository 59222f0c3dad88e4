//! The bf16 kernels against f64 references of the rounded operands.

use super::*;
use crate::model::sgemm::tests::lcg;

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3F80);
    // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
    assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
    // 1 + 3 * 2^-8: halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up to the even one.
    assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
    assert_eq!(to_bf16(1.0 + 1.0 / 128.0 + 1.0 / 1024.0), 0x3F81);
    assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
}

#[test]
fn packing_round_trips_the_rounded_weight() {
    for &(k, n) in &[(1, 1), (7, 33), (64, 32), (5, 70)] {
        let w = lcg(k * n, (k * 31 + n) as u64);
        let p = Packed16::pack(&w, k, n);
        let back = p.unpack();
        for (a, b) in w.iter().zip(&back) {
            assert_eq!(from_bf16(to_bf16(*a)), *b, "[{k}, {n}]");
        }
    }
}

/// Every bf16 kernel this CPU has against the f64 product of the rounded operands: tile
/// edges (rows, columns), odd K, K past one chunk, with and without bias, one and several
/// row blocks.
#[test]
fn every_kernel_matches_the_rounded_f64_product() {
    let kernels: Vec<Kernel> =
        [Kernel::Amx, Kernel::Avx512Bf16, Kernel::Portable].into_iter().filter(|k| k.supported()).collect();
    eprintln!("bf16 kernels tested: {kernels:?}");
    for (i, &(t, k, n)) in [(1, 2, 1), (13, 7, 33), (25, 300, 65), (200, 64, 100), (5, 384, 32)].iter().enumerate() {
        let x = lcg(t * k, 3 * i as u64 + 1);
        let w = Packed16::pack(&lcg(k * n, 3 * i as u64 + 2), k, n);
        let bias = lcg(n, 3 * i as u64 + 3);
        for b in [None, Some(&bias[..])] {
            let want = reference(&x, &w, b, t);
            for &kernel in &kernels {
                let mut out = vec![f32::NAN; t * n];
                linear_16_at(kernel, &x, &w, b, None, t, &mut out).unwrap();
                let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                // f32 sums of exact products: rounding only, relative to sqrt(k) terms.
                assert!(
                    err < 1e-5 * (k as f32).max(16.0),
                    "[{t}x{k}]x[{k}x{n}] {kernel:?} bias {}: {err}",
                    b.is_some()
                );
            }
        }
    }
}

/// Rounding the operands costs ~3 significant digits, not more: the bf16 product stays
/// within 2^-7 (relative to the magnitude of the sums) of the exact f32 one.
#[test]
fn bf16_stays_close_to_the_f32_product() {
    let (t, k, n) = (40, 384, 96);
    let x = lcg(t * k, 7);
    let wf = lcg(k * n, 8);
    let w = Packed16::pack(&wf, k, n);
    let exact = super::super::linear::reference(&x, &wf, None, t, k, n);
    let mut out = vec![0f32; t * n];
    linear_16(&x, &w, None, None, t, &mut out).unwrap();
    let scale = exact.iter().map(|v| v.abs()).fold(0.0, f32::max);
    let err = out.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(err < scale / 128.0, "max error {err} for sums up to {scale}");
    assert!(err > 0.0, "bf16 rounding should change something");
}

/// The fused attention with both products in bf16, every kernel this CPU has, against the
/// f64 formula on the bf16-rounded q, k, v: odd T and D (padding of the pairs and panels),
/// several row blocks, key bias on and off. The softmax weights are rounded too, so the
/// tolerance is bf16's (2^-8 of the output's magnitude), not f32's; and the kernels agree
/// with each other to f32 rounding.
#[test]
fn bf16_attention_matches_the_rounded_f64_formula() {
    use crate::model::attention::{attend_with, reference, Products};
    let kernels: Vec<Kernel> =
        [Kernel::Amx, Kernel::Avx512Bf16, Kernel::Portable].into_iter().filter(|k| k.supported()).collect();
    let r = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| from_bf16(to_bf16(v))).collect() };
    for (i, &(t, h, d, block)) in [(1, 1, 2, 4), (37, 3, 7, 16), (70, 2, 64, 32), (33, 1, 33, 256)].iter().enumerate() {
        let q = lcg(t * h * d, 10 + i as u64);
        let k = lcg(t * h * d, 20 + i as u64);
        let v = lcg(t * h * d, 30 + i as u64);
        let bias: Vec<f32> = lcg(t, 40 + i as u64).iter().map(|b| b * 4.0).collect();
        for b in [None, Some(&bias[..])] {
            let want = reference(&r(&q), &r(&k), &r(&v), b, t, h, d);
            let scale = want.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-3);
            let mut first: Option<Vec<f32>> = None;
            for &kernel in &kernels {
                let mut out = vec![f32::NAN; t * h * d];
                attend_with(Products::Bf16(kernel), block, &q, &k, &v, b, t, h, d, &mut out).unwrap();
                let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(err < scale / 256.0, "[{t}, {h}, {d}] block {block} {kernel:?}: {err} of {scale}");
                if let Some(f) = &first {
                    let e = out.iter().zip(f).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(e < 1e-5, "[{t}, {h}, {d}] kernels disagree by {e}");
                }
                first = Some(out);
            }
        }
    }
}

#[test]
fn equal_weights_are_packed_once() {
    let w = lcg(64 * 40, 11);
    let a = intern(Packed16::pack(&w, 64, 40));
    let b = intern(Packed16::pack(&w, 64, 40));
    assert!(Arc::ptr_eq(&a, &b));
    let c = intern(Packed16::pack(&lcg(64 * 40, 12), 64, 40));
    assert!(!Arc::ptr_eq(&a, &c));
}

#[test]
fn precision_names() {
    use crate::choice::Named;
    assert_eq!(Precision::from_name("bf16"), Some(Precision::Bf16));
    assert_eq!(Precision::from_name("f16"), Some(Precision::F16));
    assert!(Precision::F32.supported());
}
