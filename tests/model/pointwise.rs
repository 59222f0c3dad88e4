//! The head's last 1x1 convolution as a weighted sum of channel planes (`[model] cpu_ops =
//! "ailurus"`, src/model/pointwise.rs): the op against the f64 textbook sum on random inputs at
//! 1 and 2 threads; and the head with the swap against tract's own `Conv`, on the tiny test ViT
//! and the real model, which must keep the shape the swap looks for.

use crate::common;

use std::path::Path;

use ailurus::model::pointwise::{plane_sum, reference, swap};
use ailurus::model::{cut, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use common::{max_abs_diff as max_diff, uniform as random};

#[test]
fn plane_sum_matches_the_textbook_sum_on_random_inputs() {
    // (C_in, pixels, C_out, bias values): one pixel, a partial block, several blocks with a
    // partial last one, several output channels, one bias shared by all.
    for (i, &(ci, hw, co, nb)) in
        [(1, 1, 1, 1), (3, 35, 1, 1), (64, 3 * 4096 + 17, 1, 1), (5, 9000, 3, 3), (2, 100, 2, 1)].iter().enumerate()
    {
        let seed = 10 * i as u64;
        let x = random(ci * hw, seed + 1);
        let k = random(co * ci, seed + 2);
        let b = random(nb, seed + 3);
        let want = reference(&x, &k, &b, ci, hw, co);
        let mut first: Option<Vec<u32>> = None;
        for threads in [1, 2] {
            let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
            let mut got = vec![f32::NAN; co * hw];
            multithread_tract_scope(ex, || plane_sum(&x, &k, &b, ci, hw, &mut got)).unwrap();
            let err = max_diff(&got, &want);
            assert!(err < 1e-5, "C_in {ci}, {hw} pixels, C_out {co}, {threads} thread(s): max error {err}");
            let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(f) => assert!(*f == bits, "C_in {ci}, {hw} pixels, C_out {co}: 1 and 2 threads differ"),
            }
        }
    }
}

#[test]
fn plane_sum_rejects_mismatched_inputs() {
    let mut out = vec![0f32; 10];
    assert!(plane_sum(&[0.0; 9], &[1.0; 2], &[0.0], 2, 5, &mut out).is_err(), "x one short");
    assert!(plane_sum(&[0.0; 10], &[1.0; 2], &[0.0; 3], 2, 5, &mut out).is_err(), "3 biases for 2 outputs");
}

/// The head at `size` with and without the swap (after the deconvolutions'): how many were
/// swapped and the largest output difference on random tokens.
fn check_head(manifest: &Path, size: u32, tol: f32) {
    let m = Manifest::load(manifest).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let mut decl = cut::head_decluttered(&base, &m, size).unwrap();
    ailurus::model::deconv::swap(&mut decl).unwrap();
    let mut swapped = decl.clone();
    assert_eq!(swap(&mut swapped).unwrap(), 1, "1x1 convolutions swapped in the head at {size}px");
    assert!(swapped.nodes().iter().any(|n| n.op.name() == "PlaneSum"));
    let t = m.tokens.prefix + (size / m.tokens.patch) as usize * (size / m.tokens.patch) as usize;
    let toks: TValue = Tensor::from_shape(&[1, t, m.tokens.width], &random(t * m.tokens.width, 7)).unwrap().into();
    let run = |g: TypedModel| g.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(toks.clone())).unwrap();
    let (a, b) = (run(decl), run(swapped));
    let f = |v: &TValue| ailurus::model::f32s(v).unwrap().to_vec();
    let d = max_diff(&f(&a[0]), &f(&b[0]));
    assert!(d < tol, "head at {size}px: plane sum vs tract max diff {d}");
}

#[test]
fn plane_sum_tiny_vit_head_equals_tract() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
    for size in [56, 112] {
        check_head(&manifest, size, 1e-5);
    }
}

#[test]
fn plane_sum_real_model_head_equals_tract_and_keeps_the_pattern() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    check_head(&manifest, 224, 1e-4);
}
