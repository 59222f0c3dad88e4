//! Fused attention (`[model] cpu_ops = "ailurus"`, src/model/attention.rs): the kernel against the
//! textbook formula on random inputs, at 1 and 2 threads; and the fused model parts against
//! tract's own attention, on the tiny test ViT and on the real model, which must also keep the
//! graph pattern the fusion looks for (a new export that changes it would silently lose the
//! speed-up otherwise).

use crate::common;

use std::path::Path;

use ailurus::model::attention::{attend, attend_at, attend_in_blocks, fuse, reference, ROWS};
use ailurus::model::isa::Level;
use ailurus::model::{cut, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff as max_diff, tokens, uniform as random};

/// Shapes that cover one partial block, exact blocks and a partial last block, one head and
/// several, and the real model's head size.
const SHAPES: [(usize, usize, usize); 6] =
    [(1, 1, 4), (5, 2, 8), (37, 3, 16), (ROWS, 2, 8), (ROWS + 45, 6, 64), (600, 1, 5)];

#[test]
fn attend_matches_the_textbook_formula_on_random_inputs() {
    for (i, &(t, h, d)) in SHAPES.iter().enumerate() {
        let seed = 10 * i as u64;
        // Logits of a few units, like the model's (q and k carry d^-1/4 each).
        let scale = 2.0 / (d as f32).sqrt();
        let q: Vec<f32> = random(t * h * d, seed + 1).iter().map(|x| x * scale * 2.0).collect();
        let k = random(t * h * d, seed + 2);
        let v = random(t * h * d, seed + 3);
        // Key bias: proportional attention (log sizes) and padding keys (-1e9), never on key 0.
        let bias: Vec<f32> = random(t, seed + 4)
            .iter()
            .enumerate()
            .map(|(n, x)| if n > 0 && n % 7 == 3 { -1.0e9 } else { x.abs() * 2.0 })
            .collect();
        for b in [None, Some(&bias[..])] {
            let want = reference(&q, &k, &v, b, t, h, d);
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 2] {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; t * h * d];
                multithread_tract_scope(ex, || attend(&q, &k, &v, b, t, h, d, &mut got)).unwrap();
                let err = max_diff(&got, &want);
                assert!(err < 2e-5, "[{t},{h},{d}] bias {} {threads} thread(s): max error {err}", b.is_some());
                // Deterministic: the thread count (and which thread's scratch a block lands in)
                // must not change a single bit.
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(bits(f) == bits(&got), "[{t},{h},{d}]: 1 and 2 threads differ in bits"),
                }
            }
            // Every ISA level this CPU has (the portable kernel always) against the reference.
            for level in Level::all_supported() {
                let mut got = vec![f32::NAN; t * h * d];
                attend_at(level, ROWS, &q, &k, &v, b, t, h, d, &mut got).unwrap();
                let err = max_diff(&got, &want);
                assert!(err < 2e-5, "[{t},{h},{d}] {level}: max error {err}");
            }
            // Any block size gives the same answer (a block-boundary bug shows here).
            for block in [1, 3, 16, t.max(1)] {
                let mut got = vec![f32::NAN; t * h * d];
                attend_in_blocks(block, &q, &k, &v, b, t, h, d, &mut got).unwrap();
                let err = max_diff(&got, &want);
                assert!(err < 2e-5, "[{t},{h},{d}] {block}-row blocks: max error {err}");
            }
        }
    }
}

#[test]
fn attend_rejects_mismatched_inputs() {
    let x = vec![0f32; 2 * 3 * 4];
    let mut out = vec![0f32; 2 * 3 * 4];
    let e = attend(&x, &x[1..], &x, None, 2, 3, 4, &mut out).unwrap_err().to_string();
    assert!(e.contains("FusedAttention"), "{e}");
    let e = attend(&x, &x, &x, Some(&[0.0; 3]), 2, 3, 4, &mut out).unwrap_err().to_string();
    assert!(e.contains("key bias has 3 values for T = 2"), "{e}");
}

/// Fused and unfused optimised plans of one decluttered part: the number of attentions fused,
/// and the largest output difference on `inputs`.
fn fused_vs_tract(decl: &TypedModel, inputs: TVec<TValue>) -> (usize, f32) {
    let mut fused = decl.clone();
    let n = fuse(&mut fused).unwrap();
    let run = |g: TypedModel| g.into_optimized().unwrap().into_runnable().unwrap().run(inputs.clone()).unwrap();
    let (a, b) = (run(decl.clone()), run(fused));
    let f = |t: &TValue| ailurus::model::f32s(t).unwrap().to_vec();
    (n, max_diff(&f(&a[0]), &f(&b[0])))
}

/// Key bias with padding rows masked, as the runtime feeds the middle.
fn key_bias(t: usize, real: usize, seed: u64) -> TValue {
    let b: Vec<f32> =
        random(t, seed).iter().enumerate().map(|(i, x)| if i < real { x.abs() } else { -1.0e9 }).collect();
    Tensor::from_shape(&[1, 1, 1, t], &b).unwrap().into()
}

fn check_model(manifest: &Path, size: u32, cut_at: usize, stem_blocks: usize, tol: f32) {
    let m = Manifest::load(manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let blocks = m.num_blocks();
    let s = size as usize;
    let img: TValue = Tensor::from_shape(&[1, 3, s, s], &common::noise_image(size, 5)).unwrap().into();
    let (n, d) = fused_vs_tract(&cut::stem_decluttered(&base, &m, size, cut_at).unwrap(), tvec!(img));
    assert_eq!(n, stem_blocks, "attentions fused in the stem (blocks 0..{cut_at})");
    assert!(d < tol, "stem: fused vs tract max diff {d}");

    let c = m.tokens.width;
    let n_tok = m.tokens.prefix + (s / m.tokens.patch as usize).pow(2);
    let middle = cut::middle_decluttered(&base, &m, cut_at, true).unwrap();
    // Symbolic T at the real count, and fixed T with padding rows, as the runtime runs both.
    let (n, d) = fused_vs_tract(&middle, tvec!(tokens(n_tok, c, 7), key_bias(n_tok, n_tok, 8)));
    assert_eq!(n, blocks - cut_at, "attentions fused in the middle (blocks {cut_at}..{blocks})");
    assert!(d < tol, "middle: fused vs tract max diff {d}");
    let padded = n_tok.div_ceil(4) * 4 + 4;
    let sym = middle.symbols.sym("T");
    let fixed = middle.set_symbols(&std::collections::HashMap::from([(sym, (padded as i64).to_dim())])).unwrap();
    let (n, d) = fused_vs_tract(&fixed, tvec!(tokens(padded, c, 9), key_bias(padded, n_tok, 10)));
    assert_eq!(n, blocks - cut_at, "attentions fused in the fixed-T middle");
    assert!(d < tol, "fixed-T middle: fused vs tract max diff {d}");
}

#[test]
fn fused_tiny_vit_equals_tract_attention() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    let m = Manifest::load(&manifest).unwrap();
    for cut_at in [1, 2] {
        check_model(&manifest, 56, cut_at, cut_at, 1e-5);
    }
    assert!(m.num_blocks() > 2);
}

#[test]
fn fused_real_model_equals_tract_attention_and_keeps_the_pattern() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    check_model(&manifest, 224, 4, 4, 1e-4);
}

/// A subset of query rows (the reuse executor's active rows, `attend_rows_with`) gets exactly
/// what the full attention gives those rows, bit for bit, on every kind of products this CPU
/// has (each f32 ISA level, the bf16 and f16 kernels), with and without a key bias; and the
/// f32 rows match the textbook formula.
#[test]
fn a_subset_of_rows_equals_those_rows_of_the_full_attention() {
    use ailurus::model::attention::{attend_rows_with, attend_with, Products};
    use ailurus::model::{bf16, f16};
    let mut kinds: Vec<Products> = Level::all_supported().into_iter().map(Products::F32).collect();
    kinds.extend(
        [bf16::Kernel::Amx, bf16::Kernel::Avx512Bf16, bf16::Kernel::Portable]
            .into_iter()
            .filter(|k| k.supported())
            .map(Products::Bf16),
    );
    kinds.extend(
        [f16::Kernel::Avx512Fp16, f16::Kernel::NeonFp16, f16::Kernel::Portable]
            .into_iter()
            .filter(|k| k.supported())
            .map(Products::F16),
    );
    let (t, h, d) = (300, 3, 16);
    let (q, k, v) = (random(t * h * d, 91), random(t * h * d, 92), random(t * h * d, 93));
    let bias: Vec<f32> = (0..t).map(|i| ((i % 5) as f32 + 1.0).ln()).collect();
    let rows = [0usize, 5, 6, 130, 255, 256, 299];
    let qa: Vec<f32> = rows.iter().flat_map(|&r| q[r * h * d..(r + 1) * h * d].to_vec()).collect();
    for bias in [None, Some(&bias[..])] {
        let want = reference(&q, &k, &v, bias, t, h, d);
        for &p in &kinds {
            let mut full = vec![f32::NAN; t * h * d];
            attend_with(p, ROWS, &q, &k, &v, bias, t, h, d, &mut full).unwrap();
            let mut some = vec![f32::NAN; rows.len() * h * d];
            attend_rows_with(p, ROWS, &qa, &k, &v, bias, rows.len(), t, h, d, &mut some).unwrap();
            for (i, &r) in rows.iter().enumerate() {
                let (a, b) = (&some[i * h * d..(i + 1) * h * d], &full[r * h * d..(r + 1) * h * d]);
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{p:?} bias {}: row {r}",
                    bias.is_some()
                );
                if let Products::F32(_) = p {
                    let err = max_diff(a, &want[r * h * d..(r + 1) * h * d]);
                    assert!(err < 1e-5, "{p:?}: row {r} off the formula by {err}");
                }
            }
        }
    }
}
