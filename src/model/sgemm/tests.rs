//! The GEMM's tests: every level against the f64 product, and the weight packed once against
//! packing per call.

use super::*;

/// `n` deterministic pseudo-random values in [-0.5, 0.5) (the kernels' tests).
pub(crate) fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// The weight packed once, on every level that [`packs`], against the f64 product and with the
/// bits of packing per call at `avx512` (where the CPU has it: the AVX2 tile sums in the same
/// order), on shapes that cross the N blocks (`NC`), the K chunks (`KC`), a panel's last
/// columns (a 16-column half, then part of one) and a tile's last rows; and sharing by content.
#[cfg(target_arch = "x86_64")]
#[test]
fn packed_once_equals_packed_per_call() {
    let levels: Vec<Level> = Level::all_supported().into_iter().filter(|l| packs(*l)).collect();
    if levels.is_empty() {
        eprintln!("no packing level: skipped");
        return;
    }
    let shapes = [
        (1, 1, 1),
        (13, 7, 33),
        (25, 300, 400),
        (200, 600, 800),
        (7, 256, 384),
        (11, 5, 20),
        (9, 3, 48),
        (6, 2, 45),
        (5, 3, 27),
    ];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let a = lcg(m * k, 5 * i as u64 + 1);
        let w = lcg(k * n, 5 * i as u64 + 2);
        let c0 = lcg(m * n, 5 * i as u64 + 3);
        let p = PackedF32::pack(&w, k, n);
        for accumulate in [false, true] {
            let g = |c: &mut Vec<f32>| Gemm {
                m,
                n,
                k,
                a: a.as_ptr(),
                rsa: k,
                b: w.as_ptr(),
                rsb: n,
                csb: 1,
                c: c.as_mut_ptr(),
                rsc: n,
                accumulate,
            };
            let want = reference(&g(&mut c0.clone()), &a, &w, &c0);
            let mut per_call = c0.clone();
            if Level::Avx512.supported() {
                // SAFETY: the buffers hold the shapes; the CPU has AVX-512.
                unsafe { g(&mut per_call).run(Level::Avx512) };
            }
            for &level in &levels {
                let mut c = c0.clone();
                // SAFETY: the buffers hold the shapes; the level is supported.
                unsafe { g(&mut c).run_packed(&p, level) };
                let err = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(err < 1e-4, "[{m}x{k}]x[{k}x{n}] acc {accumulate} {level}: {err}");
                if Level::Avx512.supported() {
                    let same = per_call.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "[{m}x{k}]x[{k}x{n}] {level}: bits differ from avx512 packing per call");
                }
            }
        }
    }
    let w = lcg(64 * 40, 9);
    let (x, y) = (intern(PackedF32::pack(&w, 64, 40)), intern(PackedF32::pack(&w, 64, 40)));
    assert!(std::sync::Arc::ptr_eq(&x, &y));
    assert!(!std::sync::Arc::ptr_eq(&x, &intern(PackedF32::pack(&lcg(64 * 40, 10), 64, 40))));
}

/// Every level this CPU has (x86: avx512, avx2, portable; aarch64 under qemu in CI: neon,
/// portable) against the f64 product, B plain and transposed, overwritten and accumulated,
/// on tile edges and K past one chunk. Small shapes: this also runs under qemu.
#[test]
fn every_level_matches_the_f64_product() {
    let levels = Level::all_supported();
    assert!(levels.contains(&Level::Portable));
    #[cfg(target_arch = "aarch64")]
    assert!(levels.contains(&Level::Neon), "{levels:?}");
    for (i, &(m, k, n)) in [(1, 1, 1), (13, 7, 33), (25, 260, 65), (5, 64, 100)].iter().enumerate() {
        for (transposed, accumulate) in [(false, false), (false, true), (true, false), (true, true)] {
            let (rsa, rsc) = (k + 1, n + 2);
            let a = lcg(m * rsa, 3 * i as u64 + 1);
            // B's rows at a stride past n when not transposed (the attention's V rows).
            let b = lcg(k * (n + 3), 3 * i as u64 + 2);
            let c0 = lcg(m * rsc, 3 * i as u64 + 3);
            let (rsb, csb) = if transposed { (1, k) } else { (n + 3, 1) };
            let shape =
                Gemm { m, n, k, a: a.as_ptr(), rsa, b: b.as_ptr(), rsb, csb, c: std::ptr::null_mut(), rsc, accumulate };
            let want = reference(&shape, &a, &b, &c0);
            for &level in &levels {
                let mut c = c0.clone();
                // SAFETY: the buffers hold the strided shapes; the level is supported.
                unsafe { Gemm { c: c.as_mut_ptr(), ..shape }.run(level) };
                let err = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(err < 1e-4, "[{m}x{k}]x[{k}x{n}] t {transposed} acc {accumulate} {level}: {err}");
            }
        }
    }
}

/// The tiles' tail (bias, residual, GELU in their stores) gives the bits of the separate steps:
/// rows initialised to residual + bias, the product accumulated, then tract's GELU on the erf
/// kernel the tail copies (its AVX-512 one where the CPU has AVX-512F, its generic one
/// everywhere); on every level that [`packs`], on shapes across the K chunks, N blocks, a
/// panel's last columns and a tile's last rows, with every combination of bias, residual and
/// GELU.
#[cfg(target_arch = "x86_64")]
#[test]
fn tail_equals_init_product_gelu_bit_for_bit() {
    use tract_linalg::element_wise::{ElementWise, ElementWiseKer};
    let levels: Vec<Level> = Level::all_supported().into_iter().filter(|l| packs(*l)).collect();
    let mut erfs: Vec<(Erf, Box<dyn ElementWise<f32>>)> =
        vec![(Erf::Generic, tract_linalg::generic::erf::generic_erf_f32_4n::ew())];
    if std::arch::is_x86_feature_detected!("avx512f") {
        erfs.push((Erf::Avx512, tract_linalg::x86_64::erf::x86_64_avx512_erf_f32_64n::ew()));
    }
    for (erf, kernel) in &erfs {
        assert_eq!(Erf::of_kernel(kernel.name()), Some(*erf), "{}", kernel.name());
    }
    let gelus: Vec<Option<usize>> = std::iter::once(None).chain((0..erfs.len()).map(Some)).collect();
    for (i, &(m, k, n)) in
        [(1, 1, 1), (13, 7, 33), (25, 300, 400), (30, 600, 64), (7, 9, 20), (6, 4, 45), (5, 2, 27)].iter().enumerate()
    {
        let a = lcg(m * k, 7 * i as u64 + 1);
        // Scaled so that the sums reach erf's whole range (|x| past 4).
        let w: Vec<f32> = lcg(k * n, 7 * i as u64 + 2).iter().map(|v| v * 8.0).collect();
        let bias = lcg(n, 7 * i as u64 + 3);
        let res = lcg(m * n, 7 * i as u64 + 4);
        let p = PackedF32::pack(&w, k, n);
        for &level in &levels {
            for (b, r, &gelu) in [false, true]
                .into_iter()
                .flat_map(|b| [false, true].into_iter().map(move |r| (b, r)))
                .flat_map(|(b, r)| gelus.iter().map(move |g| (b, r, g)))
            {
                let (bias, res) = (b.then_some(&bias[..]), r.then_some(&res[..]));
                let mut want = vec![0f32; m * n];
                crate::model::weight::init_rows(&mut want, n, bias, res).unwrap();
                let g = |c: &mut Vec<f32>, accumulate| Gemm {
                    m,
                    n,
                    k,
                    a: a.as_ptr(),
                    rsa: k,
                    b: std::ptr::null(),
                    rsb: n,
                    csb: 1,
                    c: c.as_mut_ptr(),
                    rsc: n,
                    accumulate,
                };
                let mut got = vec![f32::NAN; m * n];
                let tail = Tail {
                    bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                    residual: res.map_or(std::ptr::null(), |r| r.as_ptr()),
                    gelu: gelu.map(|e| erfs[e].0),
                };
                // SAFETY: the buffers hold the shapes; the level is supported.
                unsafe {
                    g(&mut want, true).run_packed(&p, level);
                    g(&mut got, false).run_packed_tail(&p, tail, level);
                }
                if let Some(e) = gelu {
                    let mut arg = vec![0f32; 1024];
                    crate::model::mlp::gelu_exact(&mut want, &mut arg, &*erfs[e].1).unwrap();
                }
                let bad = got.iter().zip(&want).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                let named = gelu.map(|e| erfs[e].1.name());
                assert_eq!(
                    bad, 0,
                    "[{m}x{k}]x[{k}x{n}] {level} bias {b} residual {r} gelu {named:?}: {bad} values differ"
                );
            }
        }
    }
}
