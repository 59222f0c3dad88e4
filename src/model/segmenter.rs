//! `Segmenter`: the real model as a pipeline `Engine`: stem -> reduce -> middle -> unfold -> head.
//!
//! Built once (all tract plans prepared up front, on the CPU or on tract-cuda per `[model]
//! device`); `infer` reuses its tract states and token buffers frame to frame.
//!
//! On tract-cuda the middle keeps its symbolic token count `T`: tract-cuda resolves symbols per
//! run (it is built for LLMs' symbolic sequence lengths), and its device memory arena is laid out
//! once for a hint (`T` = prefix + N at the first input size) and re-sized per run from the actual
//! `T`. So there is still one middle plan (one copy of its weights on the device), not one per M.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tract_core::runtime::RunOptions;
use tract_onnx::prelude::*;

use super::cut::{self, Base};
use super::device::{self, Part, Placement};
use super::manifest::{sha256_file, Manifest};
use super::ModelError;
use crate::frame::{Frame, Mask};
use crate::pipeline::{Engine, EngineError, Setting, SizeInfo, StageTimes};
use crate::pre::{self, Normalize, Resampler};
use crate::reduce::{self, ReduceConfig, Reducer, Reduction};

type Plan = Arc<TypedRunnableModel>;

/// What to build.
#[derive(Debug, Clone)]
pub struct SegmenterOptions {
    /// Input sizes to prepare plans for (the first is the default).
    pub sizes: Vec<u32>,
    pub reduce: ReduceConfig,
    /// Also build the uncut model (for `check` and tests).
    pub with_full: bool,
    /// Verify the ONNX file's sha256 against the manifest.
    pub verify_sha256: bool,
    /// Patch-token counts M (merged tokens, or N unreduced) that get a middle plan with the
    /// token count fixed; every other M runs on the symbolic plan. An M at or above a size's
    /// token count is skipped there.
    pub fixed_middle: Vec<usize>,
    /// Also fix the middle for the unreduced token count at each size.
    pub fixed_unreduced: bool,
    /// `[model] device`: "cpu", "cuda" or "cuda-or-cpu" (see `device.rs`).
    pub device: String,
}

/// The middle runs on a token count rounded up to this multiple, the extra rows masked out of
/// attention by a key bias of [`PAD_BIAS`]. tract's fast row-wise softmax kernel needs rows
/// whose length is a multiple of 4 (1 cls + 1024 patches is not).
pub const MIDDLE_ALIGN: usize = 4;

/// Key bias of a padding row: exp(PAD_BIAS - max) is exactly 0 in f32, so a padding row is
/// never attended to and the real rows' outputs are unchanged.
pub const PAD_BIAS: f32 = -1.0e9;

/// The middle's token count for `prefix` + `m` tokens (padded to [`MIDDLE_ALIGN`]).
pub fn middle_tokens(prefix: usize, m: usize) -> usize {
    (prefix + m).div_ceil(MIDDLE_ALIGN) * MIDDLE_ALIGN
}

struct SizePlans {
    info: SizeInfo,
    grid: (usize, usize),
    stem: Mutex<Part>,
    head: Mutex<Part>,
    full: Option<Mutex<Part>>,
}

/// Per-frame scratch buffers of the reduction path.
#[derive(Default)]
struct Scratch {
    reduction: Reduction,
    middle_in: Vec<f32>,
    bias: Vec<f32>,
    full_tokens: Vec<f32>,
}

pub struct Segmenter {
    manifest: Manifest,
    sizes: Vec<SizeInfo>,
    plans: Vec<SizePlans>,
    /// The middle with a symbolic token count: serves every M.
    middle: Mutex<Part>,
    /// Middles with a fixed (padded) token count, for the Ms the config chooses: with concrete
    /// shapes tract picks its wider matmul kernel (see `[model] fixed_middle`). CPU only.
    fixed: Vec<(usize, Mutex<Part>)>,
    /// The tract runtime the parts run on ("cpu" or "cuda").
    runtime: String,
    /// Proportional attention: log cluster sizes as key bias (else zeros; the bias input is
    /// always there, for the padding).
    /// Changed by a config reload (`set_key_bias`).
    key_bias: AtomicBool,
    cut: usize,
    reducer: Mutex<Box<dyn Reducer>>,
    scratch: Mutex<Scratch>,
    norm: Normalize,
}

/// The reducer for `[reduce] device` (see [`reduce::build_on_device`]).
fn build_reducer(cfg: &ReduceConfig, shown: &str) -> Result<Box<dyn Reducer>, ModelError> {
    reduce::build_on_device(cfg).map_err(|msg| ModelError::Config { path: shown.to_string(), msg })
}

fn state(model: TypedModel) -> TractResult<TypedSimpleState> {
    let plan: Plan = model.into_runnable()?;
    plan.spawn()
}

/// Prepares the parts of one model on one placement.
struct PartBuilder<'a> {
    base: &'a Base,
    manifest: &'a Manifest,
    placement: &'a Placement,
    shown: &'a str,
}

/// Every prepared part.
struct Parts {
    plans: Vec<SizePlans>,
    middle: Part,
    /// (padded token count, plan) for `[model] fixed_middle` (CPU placement only).
    fixed: Vec<(usize, Part)>,
}

impl PartBuilder<'_> {
    /// One part: tract's CPU plan from `plain`, or `decluttered` prepared on the runtime (with a
    /// memory sizing hint for the symbol `hint.0`, if the model has it).
    fn part(
        &self,
        what: &str,
        plain: impl FnOnce() -> TractResult<TypedModel>,
        decluttered: impl FnOnce() -> TractResult<TypedModel>,
        hint: Option<(&str, i64)>,
    ) -> Result<Part, ModelError> {
        let build = |source: anyhow::Error| ModelError::Build { path: self.shown.to_string(), source };
        let rt = match self.placement {
            Placement::Plain => return plain().and_then(state).map(Part::Plain).map_err(build),
            Placement::Runtime(rt) => rt,
        };
        let device = |source| ModelError::Device { path: self.shown.to_string(), source };
        let model = decluttered().map_err(build)?;
        let mut options = RunOptions::default();
        if let Some(sym) = hint.and_then(|(name, v)| model.symbols.get(name).map(|s| (s, v))) {
            options.memory_sizing_hints.get_or_insert_with(Default::default).set(&sym.0, sym.1);
        }
        let prepared = if options.memory_sizing_hints.is_some() {
            // The arena sized from the hint is an optimisation: without it tract-cuda allocates
            // each device tensor on its own, which is slower but runs.
            rt.prepare_with_options(what, model.clone(), &options).or_else(|e| {
                log::warn!("{e}; retrying without a memory sizing hint");
                rt.prepare(what, model)
            })
        } else {
            rt.prepare(what, model)
        }
        .map_err(device)?;
        if rt.is_gpu() {
            if let Some((gpu, cpu)) = device::op_placement(&*prepared) {
                log::info!(
                    "[model] device {:?}: {what}: {gpu} ops on {}, {cpu} left on the CPU",
                    rt.device(),
                    rt.name()
                );
            }
        }
        Ok(Part::Prepared(prepared))
    }

    fn build(&self, opts: &SegmenterOptions) -> Result<Parts, ModelError> {
        let (base, m, cut) = (self.base, self.manifest, opts.reduce.cut);
        let patch = m.tokens.patch;
        let mut plans = Vec::new();
        for &s in &opts.sizes {
            let g = (s / patch) as usize;
            let stem = self.part(
                &format!("stem at {s}px"),
                || cut::stem(base, m, s, cut),
                || cut::stem_decluttered(base, m, s, cut),
                None,
            )?;
            let head = self.part(
                &format!("head at {s}px"),
                || cut::head(base, m, s),
                || cut::head_decluttered(base, m, s),
                None,
            )?;
            let full = if opts.with_full {
                let part = self.part(
                    &format!("full model at {s}px"),
                    || cut::full(base, m, s),
                    || cut::full_decluttered(base, m, s),
                    None,
                )?;
                Some(Mutex::new(part))
            } else {
                None
            };
            plans.push(SizePlans {
                info: SizeInfo { input_size: s, n_tokens: g * g },
                grid: (g, g),
                stem: Mutex::new(stem),
                head: Mutex::new(head),
                full,
            });
        }
        // The middle always has the key-bias input: proportional attention, and the padding
        // rows' mask (see `middle_tokens`).
        let prefix = m.tokens.prefix;
        let hint_t = middle_tokens(prefix, plans.first().map_or(0, |p| p.info.n_tokens));
        if !matches!(self.placement, Placement::Plain) {
            let middle = self.part(
                "middle",
                || cut::middle(base, m, cut, true),
                || cut::middle_decluttered(base, m, cut, true),
                Some(("T", hint_t as i64)),
            )?;
            return Ok(Parts { plans, middle, fixed: Vec::new() });
        }
        let build = |source: anyhow::Error| ModelError::Build { path: self.shown.to_string(), source };
        let decl = cut::middle_decluttered(base, m, cut, true).map_err(build)?;
        let mut ms = Vec::new();
        for p in &plans {
            let n = p.info.n_tokens;
            ms.extend(opts.fixed_middle.iter().copied().filter(|&mm| mm < n));
            if opts.fixed_unreduced {
                ms.push(n);
            }
        }
        let mut fixed: Vec<(usize, Part)> = Vec::new();
        for mm in ms {
            let t = middle_tokens(prefix, mm);
            if fixed.iter().any(|(ft, _)| *ft == t) {
                continue;
            }
            let t0 = Instant::now();
            let st = cut::concretize(&decl, t).and_then(state).map_err(build)?;
            log::debug!("middle plan for {t} tokens built in {:.2} s", t0.elapsed().as_secs_f64());
            fixed.push((t, Part::Plain(st)));
        }
        let middle = cut::optimize(decl).and_then(state).map(Part::Plain).map_err(build)?;
        Ok(Parts { plans, middle, fixed })
    }
}

impl Segmenter {
    /// Load the manifest at `manifest_path` and build every plan.
    pub fn load(manifest_path: &Path, opts: &SegmenterOptions) -> Result<Segmenter, ModelError> {
        let manifest = Manifest::load(manifest_path)?;
        Self::from_manifest(manifest, opts)
    }

    pub fn from_manifest(manifest: Manifest, opts: &SegmenterOptions) -> Result<Segmenter, ModelError> {
        let onnx = manifest.onnx_path();
        let shown = onnx.display().to_string();
        if !onnx.is_file() {
            return Err(ModelError::Missing { path: shown });
        }
        if opts.verify_sha256 && !manifest.sha256.is_empty() {
            let got = sha256_file(&onnx).map_err(|source| ModelError::Io { path: shown.clone(), source })?;
            if !got.eq_ignore_ascii_case(&manifest.sha256) {
                return Err(ModelError::Checksum { path: shown, got, want: manifest.sha256.clone() });
            }
        }
        let cfg_err = |msg: String| ModelError::Config { path: shown.clone(), msg };
        let cut = opts.reduce.cut;
        if cut == 0 || cut >= manifest.num_blocks() {
            return Err(cfg_err(format!(
                "[reduce] cut: {cut} must be in 1..{} (the model has {} blocks)",
                manifest.num_blocks(),
                manifest.num_blocks()
            )));
        }
        let patch = manifest.tokens.patch;
        for &s in &opts.sizes {
            if s % patch != 0 {
                return Err(cfg_err(format!("input size {s} is not a multiple of the patch size {patch}")));
            }
        }
        let delta = manifest.load_delta()?;
        let base = cut::load_base_with(&onnx, delta.as_ref())?;
        cut::check_names(&base, &manifest, &shown)?;
        let placement =
            Placement::for_device(&opts.device).map_err(|source| ModelError::Device { path: shown.clone(), source })?;
        Self::build(base, manifest, opts, placement)
    }

    /// Prepare every part on `placement`; "cuda-or-cpu" falls back to the CPU plans (one log
    /// line) when tract-cuda cannot prepare a part.
    pub(crate) fn build(
        base: Base,
        manifest: Manifest,
        opts: &SegmenterOptions,
        placement: Placement,
    ) -> Result<Segmenter, ModelError> {
        let shown = manifest.onnx_path().display().to_string();
        let builder = PartBuilder { base: &base, manifest: &manifest, placement: &placement, shown: &shown };
        let reducer = build_reducer(&opts.reduce, &shown)?;
        let on = |parts: Parts, runtime: String, reducer| {
            let norm = Normalize { mean: manifest.input.mean, std: manifest.input.std };
            Segmenter {
                sizes: parts.plans.iter().map(|p| p.info).collect(),
                plans: parts.plans,
                middle: Mutex::new(parts.middle),
                fixed: parts.fixed.into_iter().map(|(t, p)| (t, Mutex::new(p))).collect(),
                runtime,
                key_bias: AtomicBool::new(opts.reduce.proportional_attention),
                cut: opts.reduce.cut,
                reducer: Mutex::new(reducer),
                scratch: Mutex::new(Scratch::default()),
                norm,
                manifest: manifest.clone(),
            }
        };
        let gpu = matches!(&placement, Placement::Runtime(rt) if rt.is_gpu());
        let tried = builder.build(opts).and_then(|parts| {
            let seg = on(parts, placement.name(), reducer);
            if gpu {
                seg.warm_up(&opts.device)?;
            }
            Ok(seg)
        });
        match tried {
            Err(ModelError::Device { source, .. }) if opts.device == "cuda-or-cpu" => {
                log::warn!("{source}; running the encoder on the CPU");
                let plain =
                    PartBuilder { base: &base, manifest: &manifest, placement: &Placement::Plain, shown: &shown };
                Ok(on(plain.build(opts)?, Placement::Plain.name(), build_reducer(&opts.reduce, &shown)?))
            }
            r => r,
        }
    }

    /// One unreduced run per input size on zeros, at load: tract-cuda's first run pays for
    /// kernel compilation and cuBLAS/cuDNN set-up, which must not land on the first frame (nor
    /// fail there: a failure here is a start-up error, or the "cuda-or-cpu" fallback).
    fn warm_up(&self, device: &str) -> Result<(), ModelError> {
        let t0 = Instant::now();
        let (mut input, mut out, mut times) = (Vec::new(), Vec::new(), StageTimes::default());
        for info in &self.sizes {
            let s = info.input_size as usize;
            input.clear();
            input.resize(3 * s * s, 0.0);
            let setting = Setting { input_size: info.input_size, m: info.n_tokens };
            self.run_parts(&input, setting, &mut times, &mut out).map_err(|e| ModelError::Device {
                path: self.manifest.onnx_path().display().to_string(),
                source: super::GpuModelError::WarmUp {
                    device: device.to_string(),
                    runtime: self.runtime.clone(),
                    source: e.into(),
                },
            })?;
        }
        log::info!(
            "[model] device {device:?}: parts warmed up on {} in {:.1} s",
            self.runtime,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn cut(&self) -> usize {
        self.cut
    }

    /// The tract runtime the encoder parts run on: "cpu" or "cuda".
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// Swap the reducer (bench, config reload).
    pub fn set_reducer(&self, r: Box<dyn Reducer>) {
        *self.reducer.lock().unwrap() = r;
    }

    /// `[reduce] proportional_attention`, from the next frame on (config reload): the middle
    /// always has the key-bias input, so no plan changes.
    pub fn set_key_bias(&self, on: bool) {
        self.key_bias.store(on, Ordering::Relaxed);
    }

    pub fn key_bias(&self) -> bool {
        self.key_bias.load(Ordering::Relaxed)
    }

    fn plans(&self, size: u32) -> Result<&SizePlans, EngineError> {
        self.plans.iter().find(|p| p.info.input_size == size).ok_or(EngineError::NoPlan(size))
    }

    /// The uncut model (built with `with_full`).
    pub fn infer_full(&self, input: &[f32], size: u32, out: &mut Vec<f32>) -> Result<(), EngineError> {
        let p = self.plans(size)?;
        let full = p.full.as_ref().ok_or(EngineError::NoPlan(size))?;
        let err = |source| EngineError::Infer { input_size: size, m: p.info.n_tokens, source };
        let s = size as usize;
        let x = Tensor::from_shape(&[1, 3, s, s], input).map_err(err)?;
        let y = full.lock().unwrap().run(tvec!(x.into())).map_err(err)?;
        copy_out(&y[0], out).map_err(err)
    }

    /// Run the cut model; `times` gets stem/reduce/middle/head. Returns the M actually used.
    pub fn run_parts(
        &self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let p = self.plans(setting.input_size)?;
        let err = |source| EngineError::Infer { input_size: setting.input_size, m: setting.m, source };
        let s = setting.input_size as usize;
        let c = self.manifest.tokens.width;
        let prefix = self.manifest.tokens.prefix;
        let n = p.info.n_tokens;

        let t0 = Instant::now();
        let x = Tensor::from_shape(&[1, 3, s, s], input).map_err(err)?;
        let stem_out = p.stem.lock().unwrap().run(tvec!(x.into())).map_err(err)?;
        let tokens = f32s(&stem_out[0]).map_err(err)?;
        if tokens.len() != (prefix + n) * c {
            return Err(err(anyhow::anyhow!(
                "stem gave {} values, expected (prefix {prefix} + {n} tokens) x {c}",
                tokens.len()
            )));
        }
        let t1 = Instant::now();
        times.stem = t1 - t0;

        let mut guard = self.scratch.lock().unwrap();
        let sc = &mut *guard;
        let reduced = setting.m < n;
        let m = if reduced {
            let mut r = self.reducer.lock().unwrap();
            r.reduce(&tokens[prefix * c..], c, p.grid, setting.m, &mut sc.reduction).map_err(|e| err(e.into()))?;
            sc.reduction.m
        } else {
            n
        };
        // Middle input: prefix tokens then merged tokens (or all tokens).
        sc.middle_in.clear();
        sc.middle_in.extend_from_slice(&tokens[..prefix * c]);
        if reduced {
            sc.middle_in.extend_from_slice(&sc.reduction.merged[..m * c]);
        } else {
            sc.middle_in.extend_from_slice(&tokens[prefix * c..]);
        }
        // Pad to the middle's aligned token count; padding rows are zeros, masked as keys.
        let t = middle_tokens(prefix, m);
        sc.middle_in.resize(t * c, 0.0);
        let mut inputs: TVec<TValue> = tvec!(Tensor::from_shape(&[1, t, c], &sc.middle_in).map_err(err)?.into());
        sc.bias.clear();
        sc.bias.resize(prefix, 0.0);
        if reduced && self.key_bias() {
            sc.bias.extend(sc.reduction.sizes[..m].iter().map(|s| s.ln()));
        } else {
            sc.bias.resize(prefix + m, 0.0);
        }
        sc.bias.resize(t, PAD_BIAS);
        inputs.push(Tensor::from_shape(&[1, 1, 1, t], &sc.bias).map_err(err)?.into());
        let t2 = Instant::now();
        let middle = self.fixed.iter().find(|(ft, _)| *ft == t).map(|(_, st)| st).unwrap_or(&self.middle);
        let mid_out = middle.lock().unwrap().run(inputs).map_err(err)?;
        let t3 = Instant::now();
        let mid = f32s(&mid_out[0]).map_err(err)?;
        // Unfold back to P + N tokens.
        sc.full_tokens.clear();
        sc.full_tokens.extend_from_slice(&mid[..prefix * c]);
        if reduced {
            sc.full_tokens.resize((prefix + n) * c, 0.0);
            reduce::unfold(&mid[prefix * c..], c, &sc.reduction.assign[..n], &mut sc.full_tokens[prefix * c..]);
        } else {
            sc.full_tokens.extend_from_slice(&mid[prefix * c..(prefix + n) * c]);
        }
        let head_in = Tensor::from_shape(&[1, prefix + n, c], &sc.full_tokens).map_err(err)?;
        drop(guard);
        let t4 = Instant::now();
        times.reduce = (t2 - t1) + (t4 - t3);
        times.middle = t3 - t2;
        let y = p.head.lock().unwrap().run(tvec!(head_in.into())).map_err(err)?;
        times.head = t4.elapsed();
        copy_out(&y[0], out).map_err(err)?;
        Ok(m)
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

impl Engine for Segmenter {
    fn sizes(&self) -> &[SizeInfo] {
        &self.sizes
    }

    fn preprocess(&self, frame: &Frame, input_size: u32, scratch: &mut Resampler, out: &mut Vec<f32>) {
        pre::preprocess(
            scratch,
            &frame.rgb,
            (frame.width as usize, frame.height as usize),
            input_size as usize,
            &self.norm,
            out,
        );
    }

    fn infer(
        &self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        self.run_parts(input, setting, times, out).map(|_| ())
    }

    fn postprocess(&self, raw: &[f32], input_size: u32, w: u32, h: u32, scratch: &mut Resampler, mask: &mut Mask) {
        crate::post::to_mask(&self.manifest, raw, input_size, w, h, scratch, mask);
    }
}

#[cfg(test)]
mod tests {
    //! The runtime path (decluttered parts, `Runtime::prepare`, `Box<dyn State>`, the middle's
    //! memory sizing hint) is what tract-cuda gets; here it runs on tract's own CPU runtime, so it
    //! is checked without a GPU against the plain CPU plans.
    use super::*;
    use crate::model::ModelRuntime;

    fn tiny() -> (Base, Manifest) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
        let manifest = Manifest::load(&path).unwrap();
        (cut::load_base(&manifest.onnx_path()).unwrap(), manifest)
    }

    fn image(size: u32) -> Vec<f32> {
        (0..3 * (size * size) as usize).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect()
    }

    /// A reload's `proportional_attention` reaches the running segmenter (it used to be fixed at
    /// start-up while the reload log said the reducer changed).
    #[test]
    fn key_bias_follows_set_key_bias() {
        let (base, manifest) = tiny();
        let opts = SegmenterOptions {
            sizes: vec![112],
            reduce: ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() },
            with_full: false,
            verify_sha256: false,
            fixed_middle: vec![],
            fixed_unreduced: false,
            device: "cpu".into(),
        };
        let seg = Segmenter::build(base, manifest, &opts, Placement::Plain).unwrap();
        assert!(seg.key_bias());
        let (x, setting, mut times) = (image(112), Setting { input_size: 112, m: 20 }, StageTimes::default());
        let mut run = || {
            let mut out = Vec::new();
            seg.run_parts(&x, setting, &mut times, &mut out).unwrap();
            out
        };
        let on = run();
        seg.set_key_bias(false);
        let off = run();
        let d = on.iter().zip(&off).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(d > 1e-4, "switching proportional attention off changed nothing ({d})");
        seg.set_key_bias(true);
        assert_eq!(run(), on, "switching it back on gives the first output again");
    }

    #[test]
    fn runtime_prepared_parts_match_the_plain_cpu_plans() {
        let (base, manifest) = tiny();
        let opts = SegmenterOptions {
            sizes: vec![56, 112],
            reduce: ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() },
            with_full: true,
            verify_sha256: false,
            fixed_middle: vec![20],
            fixed_unreduced: true,
            device: "cpu".into(),
        };
        let plain = Segmenter::build(base.clone(), manifest.clone(), &opts, Placement::Plain).unwrap();
        let rt = Placement::Runtime(ModelRuntime::select("cpu").unwrap());
        let prepared = Segmenter::build(base, manifest, &opts, rt).unwrap();
        assert_eq!((plain.runtime(), prepared.runtime()), ("cpu", "cpu"));
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
