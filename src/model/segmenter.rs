//! `Segmenter`: the real model's plans, prepared once and shared (`Arc`) by every inference
//! lane: stem and head per input size, one middle with a symbolic token count (plus fixed-T
//! middles on the CPU), on the CPU or on tract-cuda per `[model] device`. A lane
//! (`lane.rs`) spawns its own states from these plans, so the weights exist once in memory
//! however many lanes run.
//!
//! On tract-cuda the middle keeps its symbolic token count `T`: tract-cuda resolves symbols per
//! run (it is built for LLMs' symbolic sequence lengths), and its device memory arena is laid out
//! once for a hint (`T` = prefix + N at the first input size) and re-sized per run from the actual
//! `T`. So there is still one middle plan (one copy of its weights on the device), not one per M.
//!
//! Must not: hold per-frame state (that is the lane's), or pre/postprocess frames (pipeline
//! stages do).

use std::path::Path;
use std::time::Instant;

use tract_core::runtime::RunOptions;
use tract_onnx::prelude::*;

use super::cut::{self, Base};
use super::device::{self, Placement, Plan};
use super::manifest::{sha256_file, Manifest};
use super::{ModelConfig, ModelError};
use crate::choice::Device;
use crate::engine::SizeInfo;
use crate::reduce::{ReduceConfig, Strategy};

use super::lane::LaneState;
use crate::engine::{Setting, StageTimes};

pub use super::lane::SegmenterLane;

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
    /// `[model] device` (see `device.rs`).
    pub device: Device,
}

impl SegmenterOptions {
    /// The options `[model]` and `[reduce]` describe, with plans for `sizes` (empty: `[model]
    /// input_size`). With `[model] fixed_middle`, `[reduce] m` gets a fixed-T middle.
    pub fn from_config(model: &ModelConfig, reduce: &ReduceConfig, sizes: &[u32]) -> SegmenterOptions {
        let sizes = if sizes.is_empty() { vec![model.input_size] } else { sizes.to_vec() };
        let reducing = reduce.strategy.get() != Strategy::None;
        SegmenterOptions {
            fixed_middle: if model.fixed_middle && reducing { vec![reduce.m] } else { Vec::new() },
            fixed_unreduced: model.fixed_middle,
            sizes,
            reduce: reduce.clone(),
            with_full: false,
            verify_sha256: true,
            device: model.device.get(),
        }
    }
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

/// The plans of one input size.
pub(crate) struct SizePlans {
    pub(crate) info: SizeInfo,
    pub(crate) grid: (usize, usize),
    pub(crate) stem: Plan,
    pub(crate) head: Plan,
    pub(crate) full: Option<Plan>,
}

/// The prepared model, shared by every lane.
pub struct Segmenter {
    pub(crate) manifest: Manifest,
    pub(crate) sizes: Vec<SizeInfo>,
    pub(crate) plans: Vec<SizePlans>,
    /// The middle with a symbolic token count: serves every M.
    pub(crate) middle: Plan,
    /// Middles with a fixed (padded) token count, for the Ms the config chooses: with concrete
    /// shapes tract picks its wider matmul kernel (see `[model] fixed_middle`). CPU only.
    pub(crate) fixed: Vec<(usize, Plan)>,
    /// The tract runtime the parts run on ("cpu" or "cuda").
    runtime: String,
    /// `[reduce]` at build time: what each new lane's reducer starts with.
    pub(crate) reduce: ReduceConfig,
}

fn plain_plan(model: TypedModel) -> TractResult<Plan> {
    Ok(Plan::Plain(model.into_runnable()?))
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
    middle: Plan,
    /// (padded token count, plan) for `[model] fixed_middle` (CPU placement only).
    fixed: Vec<(usize, Plan)>,
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
    ) -> Result<Plan, ModelError> {
        let build = |source: anyhow::Error| ModelError::Build { path: self.shown.to_string(), source };
        let rt = match self.placement {
            Placement::Plain => return plain().and_then(plain_plan).map_err(build),
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
                    rt.device().to_string(),
                    rt.name()
                );
            }
        }
        Ok(Plan::Prepared(prepared))
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
                Some(part)
            } else {
                None
            };
            plans.push(SizePlans { info: SizeInfo { input_size: s, n_tokens: g * g }, grid: (g, g), stem, head, full });
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
        let mut fixed: Vec<(usize, Plan)> = Vec::new();
        for mm in ms {
            let t = middle_tokens(prefix, mm);
            if fixed.iter().any(|(ft, _)| *ft == t) {
                continue;
            }
            let t0 = Instant::now();
            let plan = cut::concretize(&decl, t).and_then(plain_plan).map_err(build)?;
            log::debug!("middle plan for {t} tokens built in {:.2} s", t0.elapsed().as_secs_f64());
            fixed.push((t, plan));
        }
        let middle = cut::optimize(decl).and_then(plain_plan).map_err(build)?;
        Ok(Parts { plans, middle, fixed })
    }
}

impl Segmenter {
    /// The segmenter `[model]` and `[reduce]` describe (the manifest path resolved by the
    /// caller), with plans for `sizes` (empty: `[model] input_size`). Applies `[model] threads`
    /// and `cpu_ops` first: they decide the CPU plans.
    pub fn from_config(
        model: &ModelConfig,
        reduce: &ReduceConfig,
        manifest_path: &Path,
        sizes: &[u32],
    ) -> Result<Segmenter, ModelError> {
        super::configure_cpu(model);
        Self::load(manifest_path, &SegmenterOptions::from_config(model, reduce, sizes))
    }

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
            Placement::for_device(opts.device).map_err(|source| ModelError::Device { path: shown.clone(), source })?;
        let seg = Self::build(base, manifest, opts, placement);
        super::memory::trim();
        seg
    }

    /// Prepare every part on `placement`; "cuda-or-cpu" falls back to the CPU plans (one log
    /// line) when tract-cuda cannot prepare or warm up a part.
    pub(crate) fn build(
        base: Base,
        manifest: Manifest,
        opts: &SegmenterOptions,
        placement: Placement,
    ) -> Result<Segmenter, ModelError> {
        let shown = manifest.onnx_path().display().to_string();
        let on = |placement: &Placement| -> Result<Segmenter, ModelError> {
            let builder = PartBuilder { base: &base, manifest: &manifest, placement, shown: &shown };
            let parts = builder.build(opts)?;
            let seg = Segmenter {
                sizes: parts.plans.iter().map(|p| p.info).collect(),
                plans: parts.plans,
                middle: parts.middle,
                fixed: parts.fixed,
                runtime: placement.name(),
                reduce: opts.reduce.clone(),
                manifest: manifest.clone(),
            };
            if matches!(placement, Placement::Runtime(rt) if rt.is_gpu()) {
                seg.warm_up(opts.device)?;
            }
            Ok(seg)
        };
        match on(&placement) {
            Err(ModelError::Device { source, .. }) if opts.device == Device::CudaOrCpu => {
                log::warn!("{source}; running the encoder on the CPU");
                on(&Placement::Plain)
            }
            r => r,
        }
    }

    /// One unreduced run per input size on zeros, at load, on a throw-away lane: tract-cuda's
    /// first run pays for kernel compilation and cuBLAS/cuDNN set-up, which must not land on the
    /// first frame (nor fail there: a failure here is a start-up error, or the "cuda-or-cpu"
    /// fallback).
    fn warm_up(&self, device: Device) -> Result<(), ModelError> {
        let t0 = Instant::now();
        let fail = |source: anyhow::Error| ModelError::Device {
            path: self.manifest.onnx_path().display().to_string(),
            source: super::GpuModelError::WarmUp { device: device.to_string(), runtime: self.runtime.clone(), source },
        };
        let mut lane = LaneState::spawn(self)?;
        for info in &self.sizes {
            let s = info.input_size as usize;
            let input = vec![0.0; 3 * s * s];
            let setting = Setting { input_size: info.input_size, m: info.n_tokens };
            lane.run(self, &input, setting, &mut StageTimes::default(), &mut Vec::new()).map_err(|e| fail(e.into()))?;
        }
        log::info!(
            "[model] device {:?}: parts warmed up on {} in {:.1} s",
            device.to_string(),
            self.runtime,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// A new inference lane: its own states of these plans, its own reducer and scratch.
    pub fn lane(self: &std::sync::Arc<Self>) -> Result<SegmenterLane, ModelError> {
        SegmenterLane::new(self.clone())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn cut(&self) -> usize {
        self.reduce.cut
    }

    /// Input sizes with a plan, and their token counts.
    pub fn sizes(&self) -> &[SizeInfo] {
        &self.sizes
    }

    /// The tract runtime the encoder parts run on: "cpu" or "cuda".
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    pub(crate) fn plans(&self, size: u32) -> Option<(usize, &SizePlans)> {
        self.plans.iter().enumerate().find(|(_, p)| p.info.input_size == size)
    }
}
