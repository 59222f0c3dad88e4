//! The tiny DINOv2-shaped test model (tests/data/tiny_vit.onnx, from tools/make_tiny_vit.py) goes
//! through the same tract cutting code as the real model: stem + middle + head must equal the
//! uncut graph, at two input sizes, with and without the proportional-attention key bias, and the
//! middle must run on fewer tokens than the stem produced.

use std::path::{Path, PathBuf};

use ailurus::engine::{Setting, StageTimes};
use ailurus::model::{SegmenterLane, SegmenterOptions};
use ailurus::reduce::{ReduceConfig, ReduceError, Reducer, Reduction};

use crate::common;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

use common::max_abs_diff as max_diff;
use common::noise_image as image;

fn options(sizes: &[u32], cut: usize, proportional_attention: bool) -> SegmenterOptions {
    SegmenterOptions {
        sizes: sizes.to_vec(),
        reduce: ReduceConfig { strategy: "none".into(), cut, proportional_attention, ..ReduceConfig::default() },
        with_full: true,
        verify_sha256: true,
        fixed_middle: Vec::new(),
        fixed_unreduced: false,
        device: ailurus::choice::Device::Cpu,
    }
}

fn run_cut(seg: &mut SegmenterLane, input: &[f32], size: u32) -> Vec<f32> {
    let mut out = Vec::new();
    let mut times = StageTimes::default();
    let m = seg.run_parts(input, Setting { input_size: size, m: usize::MAX }, &mut times, &mut out).unwrap();
    let g = (size / 14) as usize;
    assert_eq!(m, g * g, "unreduced run must keep every token");
    out
}

#[test]
fn stem_middle_head_equals_the_uncut_model() {
    let sizes = [56, 112];
    let mut by_bias: Vec<Vec<Vec<f32>>> = Vec::new();
    for pa in [false, true] {
        let mut seg = SegmenterLane::load(&data("tiny_vit.toml"), &options(&sizes, 2, pa)).unwrap();
        let mut outs = Vec::new();
        for (k, &s) in sizes.iter().enumerate() {
            let input = image(s, 7 + k as u64);
            let mut full = Vec::new();
            seg.infer_full(&input, s, &mut full).unwrap();
            assert_eq!(full.len(), (s * s) as usize);
            let spread = full.iter().cloned().fold(f32::MIN, f32::max) - full.iter().cloned().fold(f32::MAX, f32::min);
            assert!(spread > 0.05, "the tiny model's output is nearly constant ({spread}) at {s}");
            let cut = run_cut(&mut seg, &input, s);
            let d = max_diff(&full, &cut);
            assert!(d < 1e-4, "cut vs uncut at {s}px, proportional_attention={pa}: max diff {d}");
            outs.push(cut);
        }
        by_bias.push(outs);
    }
    // An all-zero key bias must not change the output.
    for (a, b) in by_bias[0].iter().zip(&by_bias[1]) {
        let d = max_diff(a, b);
        assert!(d < 1e-5, "zero key bias changed the output by {d}");
    }
}

#[test]
fn every_cut_point_reproduces_the_uncut_model_at_the_smallest_size() {
    for cut in 1..4 {
        let mut seg = SegmenterLane::load(&data("tiny_vit.toml"), &options(&[28], cut, false)).unwrap();
        let input = image(28, 100 + cut as u64);
        let mut full = Vec::new();
        seg.infer_full(&input, 28, &mut full).unwrap();
        let d = max_diff(&full, &run_cut(&mut seg, &input, 28));
        assert!(d < 1e-4, "cut at block {cut}: max diff {d}");
    }
}

/// Merges horizontally adjacent token pairs (the grid width is even): either into one token of
/// size 2 (`dup = false`), or into the same mean written twice, each of size 1 (`dup = true`).
struct PairMean {
    dup: bool,
}

impl Reducer for PairMean {
    fn name(&self) -> &'static str {
        "pair-mean"
    }

    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        (h, w): (usize, usize),
        _m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError> {
        let n = h * w;
        if tokens.len() != n * c || w % 2 != 0 {
            return Err(ReduceError::Shape { reducer: "pair-mean", n: tokens.len() / c, c, h, w });
        }
        let pairs = n / 2;
        out.c = c;
        out.merged.clear();
        out.sizes.clear();
        out.assign.clear();
        out.centers.clear();
        for p in 0..pairs {
            let (a, b) = (2 * p, 2 * p + 1);
            let mean: Vec<f32> = (0..c).map(|j| 0.5 * (tokens[a * c + j] + tokens[b * c + j])).collect();
            let copies = if self.dup { 2 } else { 1 };
            for _ in 0..copies {
                out.merged.extend_from_slice(&mean);
                out.sizes.push(2.0 / copies as f32);
            }
            if self.dup {
                out.assign.extend([a as u32, b as u32]);
                out.centers.extend([a as u32, b as u32]);
            } else {
                out.assign.extend([p as u32, p as u32]);
                out.centers.push(a as u32);
            }
        }
        out.m = out.sizes.len();
        Ok(())
    }
}

/// The middle runs on fewer tokens (dynamic attention Reshapes), and the key bias is wired into
/// every attention: N/2 merged tokens with bias log 2 equal N tokens holding each mean twice with
/// bias 0 (after unfolding), because a key that appears twice gets twice the softmax weight.
/// The fixed-shape middle plans (`[model] fixed_middle`) must compute exactly what the symbolic
/// plan computes, for reduced and unreduced token counts, padded or not (17 -> 20 tokens at
/// 56 px; 9 and 13 -> 12 and 16), and the padding rows must not leak into the output.
#[test]
fn fixed_middle_plans_equal_the_symbolic_plan() {
    let sizes = [56, 112];
    let mut sym_opts = options(&sizes, 2, true);
    sym_opts.reduce.strategy = "ailurus".into();
    let mut fixed_opts = sym_opts.clone();
    fixed_opts.fixed_middle = vec![8, 12, 15, 48];
    fixed_opts.fixed_unreduced = true;
    let mut sym = SegmenterLane::load(&data("tiny_vit.toml"), &sym_opts).unwrap();
    let mut fixed = SegmenterLane::load(&data("tiny_vit.toml"), &fixed_opts).unwrap();
    let mut times = StageTimes::default();
    for (s, m) in [(56, 8), (56, 12), (56, 15), (56, 16), (112, 48), (112, 64), (112, 40)] {
        let input = image(s, 3 + m as u64);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ma = sym.run_parts(&input, Setting { input_size: s, m }, &mut times, &mut a).unwrap();
        let mb = fixed.run_parts(&input, Setting { input_size: s, m }, &mut times, &mut b).unwrap();
        assert_eq!(ma, mb);
        let d = max_diff(&a, &b);
        assert!(d < 1e-5, "fixed vs symbolic middle at {s}px M={m}: max diff {d}");
    }
    assert_eq!(ailurus::model::segmenter::middle_tokens(1, 1024), 1028);
    assert_eq!(ailurus::model::segmenter::middle_tokens(1, 15), 16);
}

#[test]
fn proportional_attention_on_merged_tokens_equals_duplicated_tokens() {
    let s = 56;
    let mut seg = SegmenterLane::load(&data("tiny_vit.toml"), &options(&[s], 2, true)).unwrap();
    let input = image(s, 42);
    let mut times = StageTimes::default();
    let (mut merged, mut dup, mut full) = (Vec::new(), Vec::new(), Vec::new());
    seg.set_reducer(Box::new(PairMean { dup: false }));
    let m = seg.run_parts(&input, Setting { input_size: s, m: 8 }, &mut times, &mut merged).unwrap();
    assert_eq!(m, 8);
    seg.set_reducer(Box::new(PairMean { dup: true }));
    // m = 15 < N = 16, so the reduction path (and the bias from the sizes) is used.
    let m = seg.run_parts(&input, Setting { input_size: s, m: 15 }, &mut times, &mut dup).unwrap();
    assert_eq!(m, 16);
    let d = max_diff(&merged, &dup);
    assert!(d < 1e-4, "merged+log2 bias vs duplicated tokens: max diff {d}");
    // And the merge really changed something compared with the unreduced model.
    seg.infer_full(&input, s, &mut full).unwrap();
    assert!(max_diff(&full, &merged) > 1e-3, "pair merging left the output unchanged");
}

/// The baked variant runs uncut and unreduced at its export size, but its middle cannot run on
/// fewer tokens: that must be a clean error, never a panic or a silently wrong output.
#[test]
fn baked_token_count_fails_cleanly_on_fewer_tokens() {
    let s = 56;
    let loaded = SegmenterLane::load(&data("tiny_vit_baked.toml"), &options(&[s], 2, false));
    let mut seg = match loaded {
        Ok(seg) => seg,
        // Refusing at load time (the symbolic-T middle cannot be typed) is also a clean failure.
        Err(e) => {
            let msg = e.to_string();
            eprintln!("baked model refused at load: {msg}");
            assert!(msg.contains("tiny_vit_baked.onnx") && !msg.contains('\n'), "{msg}");
            return;
        }
    };
    let input = image(s, 3);
    let mut full = Vec::new();
    seg.infer_full(&input, s, &mut full).unwrap();
    let d = max_diff(&full, &run_cut(&mut seg, &input, s));
    assert!(d < 1e-4, "baked model, unreduced cut: max diff {d}");
    seg.set_reducer(Box::new(PairMean { dup: false }));
    let mut out = Vec::new();
    let r = seg.run_parts(&input, Setting { input_size: s, m: 8 }, &mut StageTimes::default(), &mut out);
    match r {
        Ok(_) => panic!("the baked middle ran on 9 tokens although 17 are baked in"),
        Err(e) => eprintln!("baked model refused at run time: {e}"),
    }
}

/// The lane exposes the partition of the frame it just ran (#21, the cluster view): the
/// reducer's assignment and centres for a reduced frame, reusing the caller's buffers; nothing
/// for an unreduced one.
#[test]
fn the_lane_exposes_the_partition_of_its_last_reduced_frame() {
    use ailurus::engine::Engine;
    use ailurus::reduce::Partition;
    let mut lane = SegmenterLane::load(&data("tiny_vit.toml"), &options(&[56], 2, true)).unwrap();
    let x = image(56, 3);
    let n = 16; // 56 px / 14 px patches = 4 x 4
    let (mut times, mut out, mut p) = (StageTimes::default(), Vec::new(), Partition::default());
    let m = lane.run_parts(&x, Setting { input_size: 56, m: 5 }, &mut times, &mut out).unwrap();
    assert!(lane.partition(&mut p), "a reduced frame has a partition");
    assert_eq!((p.m, p.grid, p.input_size, p.n()), (m, (4, 4), 56, n));
    assert_eq!(p.check(), Ok(()));
    assert_eq!(p.sizes.iter().sum::<u32>() as usize, n);
    for (c, &t) in p.centers.iter().enumerate() {
        assert_eq!(p.assign[t as usize] as usize, c, "centre {t} belongs to its own cluster");
    }
    let ptr = p.assign.as_ptr();
    lane.run_parts(&x, Setting { input_size: 56, m: 6 }, &mut times, &mut out).unwrap();
    assert!(lane.partition(&mut p));
    assert_eq!(p.assign.as_ptr(), ptr, "the copy reuses the buffer");
    lane.run_parts(&x, Setting { input_size: 56, m: n }, &mut times, &mut out).unwrap();
    let before = p.clone();
    assert!(!lane.partition(&mut p), "an unreduced frame has none");
    assert_eq!(p, before, "and leaves the buffer alone");
}
