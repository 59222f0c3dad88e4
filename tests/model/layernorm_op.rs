//! LayerNorm as one op (src/model/layernorm.rs): the kernel against an f64 reference on random
//! rows, at 1 and 2 threads; and the swapped model parts against tract's six-node form, on the
//! tiny test ViT and on the real model, which must keep the pattern the swap looks for.

use crate::common;

use std::path::Path;

use ailurus::model::layernorm::{layer_norm, reference, swap};
use ailurus::model::{cut, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff as max_diff, tokens, uniform as random};

#[test]
fn layer_norm_matches_the_f64_reference_on_random_rows() {
    // One row and many (partial and whole 64-row blocks), widths below, at and past the 16
    // lanes, and the model's 384; an offset of 100 checks the centring (a one-pass variance
    // would lose digits there).
    for (i, &(rows, c)) in [(1, 1), (3, 7), (64, 16), (65, 33), (200, 384)].iter().enumerate() {
        for offset in [0.0f32, 100.0] {
            let seed = 30 * i as u64;
            let x: Vec<f32> = random(rows * c, seed).iter().map(|v| v * 3.0 + offset).collect();
            let gamma: Vec<f32> = random(c, seed + 1).iter().map(|v| v + 1.0).collect();
            let beta = random(c, seed + 2);
            let want = reference(&x, &gamma, &beta, c, 1e-6);
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 2] {
                let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
                let mut got = vec![f32::NAN; rows * c];
                multithread_tract_scope(ex, || layer_norm(&x, &gamma, &beta, c, 1e-6, &mut got)).unwrap();
                let err = max_diff(&got, &want);
                // Within f32 rounding; at offset 100 the inputs themselves carry 7.6e-6 of
                // rounding (one ulp), about 2e-5 after the division by the spread.
                let tol = if offset > 0.0 { 5e-5 } else { 2e-5 };
                assert!(err < tol, "[{rows}x{c}] offset {offset} {threads} thread(s): max error {err}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(bits(f) == bits(&got), "[{rows}x{c}]: 1 and 2 threads differ in bits"),
                }
            }
        }
    }
}

#[test]
fn layer_norm_rejects_mismatched_inputs() {
    let x = vec![0f32; 12];
    let mut out = vec![0f32; 12];
    let e = layer_norm(&x, &[1.0; 4], &[0.0; 3], 4, 1e-6, &mut out).unwrap_err().to_string();
    assert!(e.contains("LayerNorm: x 12 values, out 12, gamma 4, beta 3 for rows of 4"), "{e}");
    let e = layer_norm(&x, &[1.0; 5], &[0.0; 5], 5, 1e-6, &mut out).unwrap_err().to_string();
    assert!(e.contains("for rows of 5"), "{e}");
}

/// Swapped and unswapped optimised plans of one decluttered part: the number of LayerNorms
/// swapped, and the largest output difference on `inputs` relative to the largest output.
fn swapped_vs_tract(decl: &TypedModel, inputs: TVec<TValue>) -> (usize, f32) {
    let mut b = decl.clone();
    let n = swap(&mut b).unwrap();
    (n, common::relative_plan_diff(decl.clone(), b, &inputs))
}

fn key_bias(t: usize) -> TValue {
    Tensor::from_shape(&[1, 1, 1, t], &vec![0f32; t]).unwrap().into()
}

/// `per_block`: LayerNorms in one block; the middle also has the final norm.
fn check_model(manifest: &Path, size: u32, cut_at: usize, per_block: usize, tol: f32) {
    let m = Manifest::load(manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let blocks = m.num_blocks();
    let s = size as usize;
    let img: TValue = Tensor::from_shape(&[1, 3, s, s], &common::noise_image(size, 5)).unwrap().into();
    let (n, d) = swapped_vs_tract(&cut::stem_decluttered(&base, &m, size, cut_at).unwrap(), tvec!(img));
    assert_eq!(n, per_block * cut_at, "LayerNorms swapped in the stem (blocks 0..{cut_at})");
    assert!(d < tol, "stem: swapped vs tract relative max diff {d}");
    let n_tok = m.tokens.prefix + (s / m.tokens.patch as usize).pow(2);
    let middle = cut::middle_decluttered(&base, &m, cut_at, true).unwrap();
    let (n, d) = swapped_vs_tract(&middle, tvec!(tokens(n_tok, m.tokens.width, 7), key_bias(n_tok)));
    assert_eq!(n, per_block * (blocks - cut_at) + 1, "LayerNorms swapped in the middle (with the final norm)");
    assert!(d < tol, "middle: swapped vs tract relative max diff {d}");
}

#[test]
fn swapped_tiny_vit_equals_tract_layer_norms() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    for cut_at in [1, 2] {
        check_model(&manifest, 56, cut_at, 2, 1e-5);
    }
}

#[test]
fn swapped_real_model_equals_tract_layer_norms_and_keeps_the_pattern() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    check_model(&manifest, 224, 4, 2, 1e-5);
}
