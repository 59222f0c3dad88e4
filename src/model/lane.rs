//! `SegmenterLane`: one inference lane of the real model, the `Engine` the pipeline drives.
//!
//! It holds the shared plans (`Arc<Segmenter>`) and its own tract states, reducer and token
//! buffers, owned by the lane's thread: no lock on the per-frame path, and the weights exist
//! once however many lanes run. One frame reads like the method:
//! stem -> reduce -> middle -> unfold -> head.
//!
//! Must not: pre- or postprocess frames (pipeline stages), or build plans (`segmenter.rs`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tract_onnx::prelude::*;

use super::device::Part;
use super::segmenter::{middle_tokens, Segmenter, SizePlans, PAD_BIAS};
use super::ModelError;
use crate::engine::{Engine, EngineError, Setting, SizeInfo, StageTimes};
use crate::reduce::{self, Partition, ReduceConfig, Reducer, Reduction};

/// One input size's states.
struct SizeStates {
    stem: Part,
    head: Part,
    full: Option<Part>,
}

/// Per-frame scratch buffers of the reduction path (reused frame to frame).
#[derive(Default)]
struct Scratch {
    reduction: Reduction,
    /// This frame ran the reducer (the setting asked for M < N; the reducer may still give N).
    reduced: bool,
    /// The token grid and input size of this frame (for `Engine::partition`).
    grid: (usize, usize),
    input_size: u32,
    middle_in: Vec<f32>,
    bias: Vec<f32>,
    full_tokens: Vec<f32>,
}

/// A lane's own states of the shared plans, its reducer and its scratch.
pub(crate) struct LaneState {
    sizes: Vec<SizeStates>,
    middle: Part,
    fixed: Vec<(usize, Part)>,
    reducer: Box<dyn Reducer>,
    /// Proportional attention: log cluster sizes as key bias (else zeros; the bias input is
    /// always there, for the padding).
    key_bias: bool,
    scratch: Scratch,
}

/// The stem's output for the middle: `(prefix + n) x c` tokens.
struct Stem {
    tokens: TValue,
}

impl LaneState {
    /// States for every plan of `seg`, and the reducer `[reduce]` describes.
    pub(crate) fn spawn(seg: &Segmenter) -> Result<LaneState, ModelError> {
        let shown = seg.manifest.onnx_path().display().to_string();
        let build = |source: anyhow::Error| ModelError::Build { path: shown.clone(), source };
        let spawn_size = |p: &SizePlans| -> TractResult<SizeStates> {
            Ok(SizeStates {
                stem: p.stem.spawn()?,
                head: p.head.spawn()?,
                full: p.full.as_ref().map(|f| f.spawn()).transpose()?,
            })
        };
        let sizes = seg.plans.iter().map(spawn_size).collect::<TractResult<_>>().map_err(build)?;
        let fixed = seg.fixed.iter().map(|(t, p)| Ok((*t, p.spawn()?))).collect::<TractResult<_>>().map_err(build)?;
        let reducer = reduce::build_on_device(&seg.reduce)
            .map_err(|source| ModelError::Reducer { path: shown.clone(), source })?;
        Ok(LaneState {
            sizes,
            middle: seg.middle.spawn().map_err(build)?,
            fixed,
            reducer,
            key_bias: seg.reduce.proportional_attention,
            scratch: Scratch::default(),
        })
    }

    /// Run the cut model; `times` gets stem/reduce/middle/head. Returns the M actually used.
    pub(crate) fn run(
        &mut self,
        seg: &Segmenter,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let (i, plans) = seg.plans(setting.input_size).ok_or(EngineError::NoPlan(setting.input_size))?;
        let err = |source| EngineError::Infer { input_size: setting.input_size, m: setting.m, source };
        let t0 = Instant::now();
        let stem = self.stem(seg, i, input, setting.input_size).map_err(err)?;
        times.stem = t0.elapsed();
        self.after_stem(seg, i, plans, &stem, setting, times, out)
    }

    /// Reuse + reduction (issue #19): the stem's tokens (`prefix + n` rows of width C, blocks
    /// 0..cut-1 already run, here by the reuse encoder) -> reduce -> middle -> unfold -> head,
    /// exactly as [`Self::run`] after its stem. `times` gets reduce/middle/head. Returns the M used.
    pub(crate) fn run_after_stem(
        &mut self,
        seg: &Segmenter,
        tokens: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let (i, plans) = seg.plans(setting.input_size).ok_or(EngineError::NoPlan(setting.input_size))?;
        let err = |source| EngineError::Infer { input_size: setting.input_size, m: setting.m, source };
        let (c, prefix, n) = (seg.manifest.tokens.width, seg.manifest.tokens.prefix, plans.info.n_tokens);
        if tokens.len() != (prefix + n) * c {
            return Err(err(anyhow::anyhow!(
                "{} stem values, expected (prefix {prefix} + {n} tokens) x {c}",
                tokens.len()
            )));
        }
        let stem = Stem { tokens: Tensor::from_shape(&[1, prefix + n, c], tokens).map_err(err)?.into() };
        self.after_stem(seg, i, plans, &stem, setting, times, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn after_stem(
        &mut self,
        seg: &Segmenter,
        i: usize,
        plans: &SizePlans,
        stem: &Stem,
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let err = |source| EngineError::Infer { input_size: setting.input_size, m: setting.m, source };
        let t1 = Instant::now();
        let m = self.reduce(seg, plans, stem, setting.m).map_err(err)?;
        let t2 = Instant::now();
        let mid = self.middle(seg, stem, m).map_err(err)?;
        let t3 = Instant::now();
        self.unfold(seg, f32s(&mid).map_err(err)?, plans.info.n_tokens);
        let t4 = Instant::now();
        self.head(seg, i, plans.info.n_tokens, out).map_err(err)?;
        times.reduce = (t2 - t1) + (t4 - t3);
        times.middle = t3 - t2;
        times.head = t4.elapsed();
        Ok(m)
    }

    /// Image -> patch embedding -> blocks 0..cut-1: prefix + n tokens.
    fn stem(&mut self, seg: &Segmenter, size_idx: usize, input: &[f32], size: u32) -> TractResult<Stem> {
        let s = size as usize;
        let x = Tensor::from_shape(&[1, 3, s, s], input)?;
        let out = self.sizes[size_idx].stem.run(tvec!(x.into()))?;
        let tokens = out.into_iter().next().context("the stem gave no output")?;
        let (c, prefix, n) = (seg.manifest.tokens.width, seg.manifest.tokens.prefix, seg.plans[size_idx].info.n_tokens);
        let got = f32s(&tokens)?.len();
        if got != (prefix + n) * c {
            bail!("stem gave {got} values, expected (prefix {prefix} + {n} tokens) x {c}");
        }
        Ok(Stem { tokens })
    }

    /// Cluster the patch tokens into `m` merged tokens (when `m` < n). Returns the M used.
    fn reduce(&mut self, seg: &Segmenter, plans: &SizePlans, stem: &Stem, m: usize) -> TractResult<usize> {
        let (c, prefix, n) = (seg.manifest.tokens.width, seg.manifest.tokens.prefix, plans.info.n_tokens);
        self.scratch.reduced = m < n;
        (self.scratch.grid, self.scratch.input_size) = (plans.grid, plans.info.input_size);
        if !self.scratch.reduced {
            return Ok(n);
        }
        let tokens = f32s(&stem.tokens)?;
        self.reducer.reduce(&tokens[prefix * c..], c, plans.grid, m, &mut self.scratch.reduction)?;
        Ok(self.scratch.reduction.m)
    }

    /// Blocks cut..L-1 + final norm on prefix + m tokens (padded; padding masked as keys), with
    /// the log cluster sizes as key bias when proportional attention is on.
    fn middle(&mut self, seg: &Segmenter, stem: &Stem, m: usize) -> TractResult<TValue> {
        let (c, prefix) = (seg.manifest.tokens.width, seg.manifest.tokens.prefix);
        let tokens = f32s(&stem.tokens)?;
        let sc = &mut self.scratch;
        let reduced = sc.reduced;
        sc.middle_in.clear();
        sc.middle_in.extend_from_slice(&tokens[..prefix * c]);
        sc.middle_in.extend_from_slice(if reduced { &sc.reduction.merged[..m * c] } else { &tokens[prefix * c..] });
        let t = middle_tokens(prefix, m);
        sc.middle_in.resize(t * c, 0.0);
        sc.bias.clear();
        sc.bias.resize(prefix, 0.0);
        if reduced && self.key_bias {
            sc.bias.extend(sc.reduction.sizes[..m].iter().map(|s| s.ln()));
        } else {
            sc.bias.resize(prefix + m, 0.0);
        }
        sc.bias.resize(t, PAD_BIAS);
        let inputs: TVec<TValue> = tvec!(
            Tensor::from_shape(&[1, t, c], &sc.middle_in)?.into(),
            Tensor::from_shape(&[1, 1, 1, t], &sc.bias)?.into()
        );
        let middle = match self.fixed.iter_mut().find(|(ft, _)| *ft == t) {
            Some((_, st)) => st,
            None => &mut self.middle,
        };
        middle.run(inputs)?.into_iter().next().context("the middle gave no output")
    }

    /// Back to prefix + n tokens: every member of a cluster gets its merged token.
    fn unfold(&mut self, seg: &Segmenter, mid: &[f32], n: usize) {
        let (c, prefix) = (seg.manifest.tokens.width, seg.manifest.tokens.prefix);
        let sc = &mut self.scratch;
        sc.full_tokens.clear();
        sc.full_tokens.extend_from_slice(&mid[..prefix * c]);
        if sc.reduced {
            sc.full_tokens.resize((prefix + n) * c, 0.0);
            reduce::unfold(&mid[prefix * c..], c, &sc.reduction.assign[..n], &mut sc.full_tokens[prefix * c..]);
        } else {
            sc.full_tokens.extend_from_slice(&mid[prefix * c..(prefix + n) * c]);
        }
    }

    /// The decoder on the full token grid -> raw output into `out`.
    fn head(&mut self, seg: &Segmenter, size_idx: usize, n: usize, out: &mut Vec<f32>) -> TractResult<()> {
        let (c, prefix) = (seg.manifest.tokens.width, seg.manifest.tokens.prefix);
        let x = Tensor::from_shape(&[1, prefix + n, c], &self.scratch.full_tokens)?;
        let y = self.sizes[size_idx].head.run(tvec!(x.into()))?;
        copy_out(&y[0], out)
    }
}

/// One inference lane of the real model (see the module doc).
pub struct SegmenterLane {
    seg: Arc<Segmenter>,
    st: LaneState,
}

impl SegmenterLane {
    pub(crate) fn new(seg: Arc<Segmenter>) -> Result<SegmenterLane, ModelError> {
        let st = LaneState::spawn(&seg)?;
        Ok(SegmenterLane { seg, st })
    }

    /// Load a model and give one lane over it (single-frame tools and tests).
    pub fn load(manifest_path: &std::path::Path, opts: &super::SegmenterOptions) -> Result<SegmenterLane, ModelError> {
        Arc::new(Segmenter::load(manifest_path, opts)?).lane()
    }

    /// The shared plans.
    pub fn segmenter(&self) -> &Arc<Segmenter> {
        &self.seg
    }

    /// Swap the reducer (bench, config reload).
    pub fn set_reducer(&mut self, r: Box<dyn Reducer>) {
        self.st.reducer = r;
    }

    /// `[reduce] proportional_attention`, from the next frame on (config reload): the middle
    /// always has the key-bias input, so no plan changes.
    pub fn set_key_bias(&mut self, on: bool) {
        self.st.key_bias = on;
    }

    pub fn key_bias(&self) -> bool {
        self.st.key_bias
    }

    /// Run the cut model; `times` gets stem/reduce/middle/head. Returns the M actually used.
    pub fn run_parts(
        &mut self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        self.st.run(&self.seg, input, setting, times, out)
    }

    /// The uncut model (built with `with_full`).
    pub fn infer_full(&mut self, input: &[f32], size: u32, out: &mut Vec<f32>) -> Result<(), EngineError> {
        let (i, plans) = self.seg.plans(size).ok_or(EngineError::NoPlan(size))?;
        let full = self.st.sizes[i].full.as_mut().ok_or(EngineError::NoPlan(size))?;
        let err = |source| EngineError::Infer { input_size: size, m: plans.info.n_tokens, source };
        let s = size as usize;
        let x = Tensor::from_shape(&[1, 3, s, s], input).map_err(err)?;
        let y = full.run(tvec!(x.into())).map_err(err)?;
        copy_out(&y[0], out).map_err(err)
    }
}

impl Engine for SegmenterLane {
    fn sizes(&self) -> &[SizeInfo] {
        self.seg.sizes()
    }

    fn infer(
        &mut self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        self.run_parts(input, setting, times, out)
    }

    /// The reducer is built before it replaces the running one: one that cannot be built (a
    /// CUDA reducer without a GPU) leaves the lane as it was.
    fn reconfigure(&mut self, reduce: &ReduceConfig) -> Result<(), EngineError> {
        self.st.reconfigure(reduce)
    }

    // --- #21 cluster view: expose the last frame's partition (a copy; nothing drawn here).
    fn partition(&self, out: &mut Partition) -> bool {
        self.st.partition(out)
    }
}

impl LaneState {
    /// A new reducer and key bias from the next frame on (one that cannot be built leaves the
    /// lane as it was).
    pub(crate) fn reconfigure(&mut self, reduce: &ReduceConfig) -> Result<(), EngineError> {
        self.reducer = reduce::build_on_device(reduce).map_err(EngineError::Reconfigure)?;
        self.key_bias = reduce.proportional_attention;
        Ok(())
    }

    /// The last frame's partition, when it was reduced.
    pub(crate) fn partition(&self, out: &mut Partition) -> bool {
        let sc = &self.scratch;
        if sc.reduced {
            out.copy_from(&sc.reduction, sc.grid, sc.input_size);
        }
        sc.reduced
    }
}

/// The f32 data of a tract tensor.
pub fn f32s(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

fn copy_out(t: &TValue, out: &mut Vec<f32>) -> TractResult<()> {
    let v = f32s(t)?;
    out.clear();
    out.extend_from_slice(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The runtime path (decluttered parts, `Runtime::prepare`, `Box<dyn State>`, the middle's
    //! memory sizing hint) is what tract-cuda gets; here it runs on tract's own CPU runtime, so it
    //! is checked without a GPU against the plain CPU plans.
    use std::path::Path;

    use super::*;
    use crate::choice::Device;
    use crate::model::cut::{self, Base};
    use crate::model::device::Placement;
    use crate::model::{Manifest, ModelRuntime, SegmenterOptions};

    fn tiny() -> (Base, Manifest) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
        let manifest = Manifest::load(&path).unwrap();
        (cut::load_base(&manifest.onnx_path()).unwrap(), manifest)
    }

    fn image(size: u32) -> Vec<f32> {
        (0..3 * (size * size) as usize).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect()
    }

    fn opts(sizes: Vec<u32>, with_full: bool, fixed: Vec<usize>) -> SegmenterOptions {
        SegmenterOptions {
            sizes,
            reduce: ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() },
            with_full,
            verify_sha256: false,
            fixed_middle: fixed,
            fixed_unreduced: with_full,
            device: Device::Cpu,
        }
    }

    /// A reload's `proportional_attention` reaches the running lane (it used to be fixed at
    /// start-up while the reload log said the reducer changed).
    #[test]
    fn key_bias_follows_set_key_bias() {
        let (base, manifest) = tiny();
        let seg =
            Arc::new(Segmenter::build(base, manifest, &opts(vec![112], false, vec![]), Placement::Plain).unwrap());
        let mut lane = seg.lane().unwrap();
        assert!(lane.key_bias());
        let (x, setting, mut times) = (image(112), Setting { input_size: 112, m: 20 }, StageTimes::default());
        let mut run = |lane: &mut SegmenterLane| {
            let mut out = Vec::new();
            lane.run_parts(&x, setting, &mut times, &mut out).unwrap();
            out
        };
        let on = run(&mut lane);
        lane.set_key_bias(false);
        let off = run(&mut lane);
        let d = on.iter().zip(&off).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(d > 1e-4, "switching proportional attention off changed nothing ({d})");
        lane.set_key_bias(true);
        assert_eq!(run(&mut lane), on, "switching it back on gives the first output again");
    }

    /// Two lanes of one segmenter share its plans (one copy of the weights) and, run on the same
    /// input, give the same bits: their states are independent.
    #[test]
    fn lanes_share_plans_and_agree() {
        let (base, manifest) = tiny();
        let seg =
            Arc::new(Segmenter::build(base, manifest, &opts(vec![112], false, vec![20]), Placement::Plain).unwrap());
        let (mut a, mut b) = (seg.lane().unwrap(), seg.lane().unwrap());
        assert!(Arc::ptr_eq(a.segmenter(), b.segmenter()));
        let x = image(112);
        let mut times = StageTimes::default();
        for m in [20, 64] {
            let (mut oa, mut ob) = (Vec::new(), Vec::new());
            a.run_parts(&x, Setting { input_size: 112, m }, &mut times, &mut oa).unwrap();
            b.run_parts(&x, Setting { input_size: 112, m }, &mut times, &mut ob).unwrap();
            assert_eq!(oa, ob, "M={m}");
        }
    }

    #[test]
    fn runtime_prepared_parts_match_the_plain_cpu_plans() {
        let (base, manifest) = tiny();
        let o = opts(vec![56, 112], true, vec![20]);
        let plain = Arc::new(Segmenter::build(base.clone(), manifest.clone(), &o, Placement::Plain).unwrap());
        let rt = Placement::Runtime(ModelRuntime::select(Device::Cpu).unwrap());
        let prepared = Arc::new(Segmenter::build(base, manifest, &o, rt).unwrap());
        assert_eq!((plain.runtime(), prepared.runtime()), ("cpu", "cpu"));
        let (mut plain, mut prepared) = (plain.lane().unwrap(), prepared.lane().unwrap());
        let mut times = StageTimes::default();
        for s in [56u32, 112] {
            let x = image(s);
            let n = ((s / 14) * (s / 14)) as usize;
            // Unreduced, reduced (T = 1 + 20, not the hint's T), and the full model.
            for m in [n, 20] {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let setting = Setting { input_size: s, m };
                let ma = plain.run_parts(&x, setting, &mut times, &mut a).unwrap();
                let mb = prepared.run_parts(&x, setting, &mut times, &mut b).unwrap();
                assert_eq!(ma, mb);
                let d = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                assert!(d < 1e-5, "{s}px M={m}: runtime-prepared parts differ from the plain plans by {d}");
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            plain.infer_full(&x, s, &mut a).unwrap();
            prepared.infer_full(&x, s, &mut b).unwrap();
            let d = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-5, "{s}px full model: {d}");
        }
    }
}
