//! The BatchNorm, ReLU and 1x1 convolution after the head's deconvolutions, done as each block
//! writes its pixels (src/model/deconv/epilogue.rs): on random inputs, the fused op against the
//! deconvolution followed by the same steps as separate passes (bit for bit: the same f32
//! operations in the same order) and against the f64 textbook formula, on every ISA level and
//! bf16 kernel this CPU has, at 1 and 2 threads; and the fused head against tract's, on the tiny
//! test ViT and the real model, which must keep the pattern the fusion looks for.

use crate::common;

use std::path::Path;

use ailurus::model::deconv::{deconv_at, deconv_bf16, deconv_fused, f32_taps, fuse, reference, Epilogue, Taps};
use ailurus::model::isa::Level;
use ailurus::model::{cut, pointwise, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff as max_diff, uniform as random};

/// The epilogue as separate passes over a deconvolution's output `[co, hw]` in f32 (tract's
/// `Mul`, `Add`, `Max`, then the plane sum over channels in order).
fn unfused(e: &Epilogue, y: &[f32], co: usize, hw: usize) -> Vec<f32> {
    let at = |v: &Option<Vec<f32>>, o: usize| v.as_ref().map(|v| v[if v.len() == 1 { 0 } else { o }]);
    let mut y = y.to_vec();
    for o in 0..co {
        for v in &mut y[o * hw..][..hw] {
            if let Some(s) = at(&e.scale, o) {
                *v *= s;
            }
            if let Some(t) = at(&e.shift, o) {
                *v += t;
            }
            if let Some(f) = at(&e.floor, o) {
                *v = v.max(f);
            }
        }
    }
    let Some(p) = &e.project else { return y };
    let mut out = vec![0f32; p.len() / co * hw];
    for (j, row) in out.chunks_mut(hw).enumerate() {
        for o in 0..co {
            for (a, v) in row.iter_mut().zip(&y[o * hw..][..hw]) {
                *a += p[j * co + o] * v;
            }
        }
    }
    out
}

/// The same in f64 from the f64 scatter.
#[allow(clippy::too_many_arguments)]
fn textbook(e: &Epilogue, x: &[f32], k: &[f32], b: &[f32], ci: usize, h: usize, w: usize, co: usize) -> Vec<f32> {
    let y = reference(x, k, b, ci, h, w, co);
    let hw = 4 * h * w;
    let at = |v: &Option<Vec<f32>>, o: usize, none: f64| {
        v.as_ref().map_or(none, |v| v[if v.len() == 1 { 0 } else { o }] as f64)
    };
    let z: Vec<f64> = (0..co * hw)
        .map(|i| {
            let o = i / hw;
            (y[i] as f64 * at(&e.scale, o, 1.0) + at(&e.shift, o, 0.0)).max(at(&e.floor, o, f64::NEG_INFINITY))
        })
        .collect();
    let Some(p) = &e.project else { return z.iter().map(|v| *v as f32).collect() };
    (0..p.len() / co * hw)
        .map(|i| (0..co).map(|o| p[i / hw * co + o] as f64 * z[o * hw + i % hw]).sum::<f64>() as f32)
        .collect()
}

/// Epilogues over `co` channels: BatchNorm + ReLU per channel, a scalar shift alone, BatchNorm +
/// ReLU + a projection to one channel (the focus head's last layer), a projection to two alone.
fn epilogues(co: usize, seed: u64) -> Vec<Epilogue> {
    let bn = |s| Epilogue {
        scale: Some(random(co, s)),
        shift: Some(random(co, s + 1)),
        floor: Some(vec![0.0]),
        project: None,
    };
    vec![
        bn(seed),
        Epilogue { shift: Some(vec![0.25]), ..Default::default() },
        Epilogue { project: Some(random(co, seed + 3)), ..bn(seed + 4) },
        Epilogue { project: Some(random(2 * co, seed + 5)), ..Default::default() },
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

fn executor(threads: usize) -> Executor {
    if threads > 1 {
        Executor::multithread(threads)
    } else {
        Executor::SingleThread
    }
}

const SHAPES: [(usize, usize, usize, usize); 4] = [(1, 1, 1, 1), (3, 5, 7, 2), (8, 9, 4, 5), (4, 70, 30, 3)];

#[test]
fn epilogue_equals_the_separate_passes_on_every_level() {
    for (i, &(ci, h, w, co)) in SHAPES.iter().enumerate() {
        let seed = 500 + 20 * i as u64;
        let (x, k, b) = (random(ci * h * w, seed), random(co * ci * 16, seed + 1), random(co, seed + 2));
        for e in epilogues(co, seed + 3) {
            let n = e.channels_out(co) * 4 * h * w;
            let want = textbook(&e, &x, &k, &b, ci, h, w, co);
            for level in
                [Level::Avx512, Level::Avx2, Level::Neon, Level::Portable].into_iter().filter(|l| l.supported())
            {
                let mut plain = vec![f32::NAN; co * 4 * h * w];
                deconv_at(level, &x, &k, &b, ci, h, w, co, &mut plain).unwrap();
                let separate = unfused(&e, &plain, co, 4 * h * w);
                let taps = f32_taps(&k, ci, co);
                for threads in [1, 2] {
                    let case = format!("C_in {ci}, {h}x{w}, C_out {co}, {e:?}, {level}, {threads} thread(s)");
                    let mut got = vec![f32::NAN; n];
                    multithread_tract_scope(executor(threads), || {
                        deconv_fused(level, &x, &k, None, &b, ci, h, w, co, Some(&e), &mut got)
                    })
                    .unwrap();
                    assert!(bits(&got) == bits(&separate), "{case}: fused differs from the separate passes");
                    let err = max_diff(&got, &want);
                    assert!(err < 1e-4, "{case}: max error {err} against the f64 formula");
                    // What the swapped op runs at avx512 and avx2: the packed taps without the
                    // kernel.
                    if ailurus::model::sgemm::packs(level) {
                        let mut held = vec![f32::NAN; n];
                        multithread_tract_scope(executor(threads), || {
                            deconv_fused(level, &x, &[], Some(&taps.0), &b, ci, h, w, co, Some(&e), &mut held)
                        })
                        .unwrap();
                        assert!(bits(&held) == bits(&separate), "{case}: taps without the kernel differ");
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_epilogue_equals_the_separate_passes() {
    use ailurus::model::bf16::Kernel;
    for (i, &(ci, h, w, co)) in SHAPES.iter().enumerate() {
        let seed = 700 + 20 * i as u64;
        let (x, k, b) = (random(ci * h * w, seed), random(co * ci * 16, seed + 1), random(co, seed + 2));
        let taps = Taps::pack(&k, ci, co);
        for e in epilogues(co, seed + 3) {
            for kernel in [Kernel::Amx, Kernel::Avx512Bf16, Kernel::Portable].into_iter().filter(|k| k.supported()) {
                let mut plain = vec![f32::NAN; co * 4 * h * w];
                deconv_bf16(kernel, &x, &taps, &b, ci, h, w, co, None, &mut plain).unwrap();
                let separate = unfused(&e, &plain, co, 4 * h * w);
                for threads in [1, 2] {
                    let mut got = vec![f32::NAN; e.channels_out(co) * 4 * h * w];
                    multithread_tract_scope(executor(threads), || {
                        deconv_bf16(kernel, &x, &taps, &b, ci, h, w, co, Some(&e), &mut got)
                    })
                    .unwrap();
                    assert!(
                        bits(&got) == bits(&separate),
                        "C_in {ci}, {h}x{w}, C_out {co}, {e:?}, {kernel:?}, {threads} thread(s): fused differs"
                    );
                }
            }
        }
    }
}

#[test]
fn epilogue_rejects_values_that_do_not_fit() {
    let (x, k, b) = (vec![0.0; 9], vec![0.0; 32], vec![0.0; 2]);
    let bad = [
        Epilogue { scale: Some(vec![1.0; 3]), ..Default::default() },
        Epilogue { project: Some(vec![1.0; 3]), ..Default::default() },
    ];
    for e in bad {
        let mut out = vec![0f32; 2 * 4 * 9];
        let r = deconv_fused(Level::Portable, &x, &k, None, &b, 1, 3, 3, 2, Some(&e), &mut out);
        assert!(r.unwrap_err().to_string().contains("epilogue"), "{e:?}");
    }
    // One channel written: an output sized for two is refused.
    let e = Epilogue { project: Some(vec![1.0; 2]), ..Default::default() };
    let mut out = vec![0f32; 2 * 4 * 9];
    assert!(deconv_fused(Level::Portable, &x, &k, None, &b, 1, 3, 3, 2, Some(&e), &mut out).is_err());
}

/// The head at `size` with every CPU op of ours and the fusion, against tract's own head:
/// (epilogues, projections) fused, the largest difference; no BatchNorm/ReLU pass, 1x1
/// convolution or f32 deconvolution kernel is left in the plan where the op holds its taps.
fn check_head(manifest: &Path, size: u32, expect: (usize, usize), tol: f32) {
    let m = Manifest::load(manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let decl = cut::head_decluttered(&base, &m, size).unwrap();
    let mut ours = decl.clone();
    ailurus::model::deconv::swap(&mut ours).unwrap();
    pointwise::swap(&mut ours).unwrap();
    assert_eq!(fuse(&mut ours).unwrap(), expect, "epilogues fused in the head at {size}px");
    let ours = ours.into_optimized().unwrap();
    for n in ours.nodes() {
        let name = n.op.name();
        assert!(!["PlaneSum", "OptBinChain", "Max"].iter().any(|s| name.contains(s)), "{size}px: {} left", n.name);
    }
    if ailurus::model::sgemm::packs(ailurus::model::isa::level()) {
        let kernels = ours
            .nodes()
            .iter()
            .filter(|n| n.outputs[0].fact.konst.as_ref().is_some_and(|k| k.rank() == 4 && k.shape()[2..] == [4, 4]));
        assert_eq!(kernels.count(), 0, "{size}px: a deconvolution kernel stays in the plan beside its taps");
    }
    let t = m.tokens.prefix + (size / m.tokens.patch) as usize * (size / m.tokens.patch) as usize;
    let toks: TValue = Tensor::from_shape(&[1, t, m.tokens.width], &random(t * m.tokens.width, 7)).unwrap().into();
    let a = decl.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(toks.clone())).unwrap();
    let b = ours.into_runnable().unwrap().run(tvec!(toks)).unwrap();
    let f = |v: &TValue| ailurus::model::f32s(v).unwrap().to_vec();
    let d = max_diff(&f(&a[0]), &f(&b[0]));
    assert!(d < tol, "head at {size}px: fused vs tract max diff {d}");
}

#[test]
fn fused_tiny_vit_head_equals_tract() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    for size in [56, 112] {
        check_head(&manifest, size, (1, 1), 1e-5);
    }
}

#[test]
fn fused_real_model_head_equals_tract_and_keeps_the_pattern() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    check_head(&manifest, 224, (3, 1), 1e-4);
}

/// The real head's deconvolutions chained in `[H, W, C]` (`deconv::chain`, levels `avx512` and
/// `avx2`) give
/// the bits of the unchained head, and the chain covers both pairs.
#[test]
fn chained_real_model_head_equals_unchained_bit_for_bit() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    if !ailurus::model::sgemm::packs(ailurus::model::isa::level()) {
        eprintln!("no packing level: the chain needs the packed f32 taps; skipped");
        return;
    }
    let m = Manifest::load(&manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let size = 224;
    let mut plain = cut::head_decluttered(&base, &m, size).unwrap();
    ailurus::model::deconv::swap(&mut plain).unwrap();
    pointwise::swap(&mut plain).unwrap();
    fuse(&mut plain).unwrap();
    let mut chained = plain.clone();
    assert_eq!(ailurus::model::deconv::chain(&mut chained).unwrap(), 2, "pairs chained");
    let t = m.tokens.prefix + (size / m.tokens.patch) as usize * (size / m.tokens.patch) as usize;
    let toks: TValue = Tensor::from_shape(&[1, t, m.tokens.width], &random(t * m.tokens.width, 11)).unwrap().into();
    let run = |g: TypedModel| {
        let out = g.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(toks.clone())).unwrap();
        ailurus::model::f32s(&out[0]).unwrap().to_vec()
    };
    let (a, b) = (run(plain), run(chained));
    assert!(bits(&a) == bits(&b), "chained head differs by {}", max_diff(&a, &b));
}
