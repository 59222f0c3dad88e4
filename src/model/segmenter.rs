//! `Segmenter`: the real model as a pipeline `Engine`: stem -> reduce -> middle -> unfold -> head.
//!
//! Built once (all tract plans prepared up front); `infer` reuses its tract states and token
//! buffers frame to frame.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tract_onnx::prelude::*;

use super::cut;
use super::manifest::{sha256_file, Manifest};
use super::ModelError;
use crate::frame::{Frame, Mask};
use crate::pipeline::{Engine, EngineError, Setting, SizeInfo, StageTimes};
use crate::pre::{self, Normalize, Resampler};
use crate::reduce::{self, ReduceConfig, Reducer, Reduction};

type Plan = Arc<TypedRunnableModel>;
type State = TypedSimpleState;

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
}

struct SizePlans {
    info: SizeInfo,
    grid: (usize, usize),
    stem: Mutex<State>,
    head: Mutex<State>,
    full: Option<Mutex<State>>,
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
    middle: Mutex<State>,
    key_bias: bool,
    cut: usize,
    reducer: Mutex<Box<dyn Reducer>>,
    scratch: Mutex<Scratch>,
    norm: Normalize,
}

/// The reducer for `[reduce] device`: the CUDA kernels with the `cuda` feature ("cuda" fails
/// loudly without a GPU, "cuda-or-cpu" falls back with one log line), else the CPU reducer.
fn build_reducer(cfg: &ReduceConfig, shown: &str) -> Result<Box<dyn Reducer>, ModelError> {
    #[cfg(feature = "cuda")]
    {
        crate::reduce::cuda::build_for_device(cfg)
            .map_err(|e| ModelError::Config { path: shown.to_string(), msg: format!("[reduce] device: {e}") })
    }
    #[cfg(not(feature = "cuda"))]
    match cfg.device.as_str() {
        "cuda" => Err(ModelError::Config {
            path: shown.to_string(),
            msg: "[reduce] device: \"cuda\" needs a build with `--features cuda`".into(),
        }),
        "cuda-or-cpu" => {
            log::warn!(
                "[reduce] device = \"cuda-or-cpu\": this build has no CUDA support; the reducer runs on the CPU"
            );
            Ok(reduce::build(cfg))
        }
        _ => Ok(reduce::build(cfg)),
    }
}

fn state(model: TypedModel) -> TractResult<State> {
    let plan: Plan = model.into_runnable()?;
    plan.spawn()
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
        let build = |source: anyhow::Error| ModelError::Build { path: shown.clone(), source };
        let mut plans = Vec::new();
        for &s in &opts.sizes {
            let g = (s / patch) as usize;
            let stem = cut::stem(&base, &manifest, s, cut).and_then(state).map_err(build)?;
            let head = cut::head(&base, &manifest, s).and_then(state).map_err(build)?;
            let full = if opts.with_full {
                Some(Mutex::new(cut::full(&base, &manifest, s).and_then(state).map_err(build)?))
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
        let key_bias = opts.reduce.proportional_attention;
        let middle = cut::middle(&base, &manifest, cut, key_bias).and_then(state).map_err(build)?;
        let norm = Normalize { mean: manifest.input.mean, std: manifest.input.std };
        Ok(Segmenter {
            sizes: plans.iter().map(|p| p.info).collect(),
            plans,
            middle: Mutex::new(middle),
            key_bias,
            cut,
            reducer: Mutex::new(build_reducer(&opts.reduce, &shown)?),
            scratch: Mutex::new(Scratch::default()),
            norm,
            manifest,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn cut(&self) -> usize {
        self.cut
    }

    /// Swap the reducer (bench, config reload).
    pub fn set_reducer(&self, r: Box<dyn Reducer>) {
        *self.reducer.lock().unwrap() = r;
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
        let t = prefix + m;
        let mut inputs: TVec<TValue> = tvec!(Tensor::from_shape(&[1, t, c], &sc.middle_in).map_err(err)?.into());
        if self.key_bias {
            sc.bias.clear();
            sc.bias.resize(prefix, 0.0);
            if reduced {
                sc.bias.extend(sc.reduction.sizes[..m].iter().map(|s| s.ln()));
            } else {
                sc.bias.resize(t, 0.0);
            }
            inputs.push(Tensor::from_shape(&[1, 1, 1, t], &sc.bias).map_err(err)?.into());
        }
        let t2 = Instant::now();
        let mid_out = self.middle.lock().unwrap().run(inputs).map_err(err)?;
        let t3 = Instant::now();
        let mid = f32s(&mid_out[0]).map_err(err)?;
        // Unfold back to P + N tokens.
        sc.full_tokens.clear();
        sc.full_tokens.extend_from_slice(&mid[..prefix * c]);
        if reduced {
            sc.full_tokens.resize((prefix + n) * c, 0.0);
            reduce::unfold(&mid[prefix * c..], c, &sc.reduction.assign[..n], &mut sc.full_tokens[prefix * c..]);
        } else {
            sc.full_tokens.extend_from_slice(&mid[prefix * c..]);
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
