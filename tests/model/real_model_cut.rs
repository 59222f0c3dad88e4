//! The real DINOv2-S focus model, cut into stem / middle / head with tract, must reproduce the
//! uncut model; proportional attention must behave like duplicated keys.

use crate::common;

use ailurus::engine::{Setting, StageTimes};
use ailurus::model::{cut, SegmenterLane, SegmenterOptions};
use ailurus::pre::Resampler;
use ailurus::reduce::ReduceConfig;
use tract_onnx::prelude::*;

use common::max_abs_diff;

#[test]
fn cut_model_equals_uncut_model_on_real_photos() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    let sizes = vec![224, 448];
    let opts = SegmenterOptions {
        sizes: sizes.clone(),
        reduce: ReduceConfig { strategy: "none".into(), ..Default::default() },
        with_full: true,
        verify_sha256: true,
        fixed_middle: Vec::new(),
        fixed_unreduced: true,
        device: ailurus::choice::Device::Cpu,
    };
    let mut seg = SegmenterLane::load(&manifest, &opts).expect("load the real model");
    let (mut rs, mut input, mut a, mut b) = (Resampler::default(), vec![], vec![], vec![]);
    for photo in ["chelsea.png", "motorcycle_left.png"] {
        let frame = ailurus::source::folder::load_frame(&common::photo(photo), 0).unwrap();
        for &s in &sizes {
            ailurus::engine::FrameIo::preprocess(
                &ailurus::model::Io::of(seg.segmenter().manifest()),
                &frame,
                s,
                &mut rs,
                &mut input,
            );
            seg.infer_full(&input, s, &mut a).unwrap();
            let mut times = StageTimes::default();
            let m = seg.run_parts(&input, Setting { input_size: s, m: usize::MAX }, &mut times, &mut b).unwrap();
            assert_eq!(m, (s as usize / 14).pow(2));
            assert_eq!(a.len(), (s * s) as usize, "output is [1,1,{s},{s}]");
            let d = max_abs_diff(&a, &b);
            eprintln!("{photo} at {s}: max |uncut - cut| = {d:.2e} (proportional attention on, zero bias)");
            assert!(d <= 1e-4, "{photo} at {s}: cut differs from uncut by {d}");
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "saliency is a sigmoid output");
        }
    }
}

/// Proportional attention: adding log(2) to a key's logit must equal duplicating that key.
#[test]
fn key_bias_log2_equals_duplicated_tokens() {
    let Some(manifest_path) = common::real_manifest() else {
        return;
    };
    let m = ailurus::model::Manifest::load(&manifest_path).unwrap();
    let base = cut::load_base(&m.onnx_path()).unwrap();
    let stem = cut::stem(&base, &m, 224, 3).unwrap().into_runnable().unwrap();
    let middle = cut::middle(&base, &m, 3, true).unwrap().into_runnable().unwrap();
    let frame = ailurus::source::folder::load_frame(&common::photo("astronaut.png"), 0).unwrap();
    let seg_norm = ailurus::pre::Normalize { mean: m.input.mean, std: m.input.std };
    let mut input = vec![];
    ailurus::pre::preprocess(
        &mut Resampler::default(),
        &frame.rgb,
        (frame.width as usize, frame.height as usize),
        224,
        &seg_norm,
        &mut input,
    );
    let x = Tensor::from_shape(&[1, 3, 224, 224], &input).unwrap();
    let tokens = stem.run(tvec!(x.into())).unwrap().remove(0).into_tensor();
    let toks = ailurus::model::f32s(&tokens).unwrap().to_vec();
    let c = m.tokens.width;
    let t = toks.len() / c;
    // Take the first 40 tokens (cls + 39 patches); duplicate tokens 1..=10.
    let base_t = 40;
    let dup: Vec<usize> = (1..=10).collect();
    let run = |tok: &[f32], bias: &[f32]| -> Vec<f32> {
        let n = bias.len();
        let a = Tensor::from_shape(&[1, n, c], tok).unwrap();
        let b = Tensor::from_shape(&[1, 1, 1, n], bias).unwrap();
        let out = middle.run(tvec!(a.into(), b.into())).unwrap();
        ailurus::model::f32s(&out[0]).unwrap().to_vec()
    };
    assert!(t >= base_t);
    let orig = &toks[..base_t * c];
    let mut bias = vec![0.0f32; base_t];
    for &i in &dup {
        bias[i] = std::f32::consts::LN_2;
    }
    let with_bias = run(orig, &bias);
    let mut doubled = orig.to_vec();
    for &i in &dup {
        doubled.extend_from_slice(&orig[i * c..(i + 1) * c]);
    }
    let with_dups = run(&doubled, &vec![0.0; base_t + dup.len()]);
    let d = max_abs_diff(&with_bias, &with_dups[..base_t * c]);
    eprintln!("log2 key bias vs duplicated keys: max diff {d:.2e}");
    assert!(d < 1e-4, "key bias log 2 differs from duplicated keys by {d}");
    // And the bias must matter: without it the outputs differ clearly.
    let no_bias = run(orig, &vec![0.0; base_t]);
    assert!(max_abs_diff(&no_bias, &with_dups[..base_t * c]) > 1e-3);
}
