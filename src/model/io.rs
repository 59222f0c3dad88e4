//! The model's input and output conventions, from its manifest: how a frame becomes the model
//! input (resize + normalise, `pre`), and how the raw output (`[K, s, s]` logits or `[1, s, s]`
//! saliency) becomes a class mask at frame size. The pipeline's preprocess and postprocess
//! stages (and the single-frame runner) call these; the model's inference never does.

use crate::engine::{Engine, EngineError, FrameIo, Setting, StageTimes};
use crate::frame::{Frame, Mask};
use crate::pre::{self, Normalize, Resampler};

use super::Manifest;

/// What the raw output is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputKind {
    /// `[1, s, s]` probabilities; a pixel is salient (class 1) above `threshold`.
    Saliency { threshold: f32 },
    /// `[K, s, s]` logits; the class is the argmax.
    Classes,
}

/// A model's input normalisation and output kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Io {
    pub norm: Normalize,
    pub output: OutputKind,
}

impl Io {
    pub fn of(manifest: &Manifest) -> Io {
        let output = if manifest.is_saliency() {
            OutputKind::Saliency { threshold: manifest.output.threshold }
        } else {
            OutputKind::Classes
        };
        Io { norm: Normalize { mean: manifest.input.mean, std: manifest.input.std }, output }
    }
}

impl FrameIo for Io {
    /// Frame -> model input for `input_size` (`[1, 3, s, s]`, normalised) into `out` (reused).
    fn preprocess(&self, frame: &Frame, input_size: u32, rs: &mut Resampler, out: &mut Vec<f32>) {
        let size = (frame.width as usize, frame.height as usize);
        pre::preprocess(rs, &frame.rgb, size, input_size as usize, &self.norm, out);
    }

    /// Raw output -> mask at `w x h` (see [`to_mask`]).
    fn postprocess(&self, raw: &[f32], input_size: u32, w: u32, h: u32, rs: &mut Resampler, mask: &mut Mask) {
        to_mask(self.output, raw, input_size, w, h, rs, mask);
    }
}

/// Raw model output (`[K, s, s]` logits, or `[1, s, s]` saliency probabilities) -> mask at
/// `w x h`: upsample, then threshold (saliency) or argmax (classes). Reuses `mask`'s buffers.
pub fn to_mask(kind: OutputKind, raw: &[f32], input_size: u32, w: u32, h: u32, rs: &mut Resampler, mask: &mut Mask) {
    let s = input_size as usize;
    let (wu, hu) = (w as usize, h as usize);
    let px = wu * hu;
    mask.width = w;
    mask.height = h;
    mask.classes.resize(px, 0);
    if let OutputKind::Saliency { threshold: th } = kind {
        mask.num_classes = 2;
        mask.scores.resize(px, 0.0);
        rs.resize_plane(&raw[..s * s], (s, s), (wu, hu), &mut mask.scores);
        for (c, &p) in mask.classes.iter_mut().zip(&mask.scores) {
            *c = (p > th) as u8;
        }
    } else {
        let k = raw.len() / (s * s);
        mask.num_classes = k as u32;
        // Upsample class by class, keeping a running max in `scores`.
        mask.scores.resize(px * 2, 0.0);
        let (best, plane) = mask.scores.split_at_mut(px);
        best.fill(f32::NEG_INFINITY);
        for class in 0..k {
            rs.resize_plane(&raw[class * s * s..(class + 1) * s * s], (s, s), (wu, hu), plane);
            for ((b, c), &v) in best.iter_mut().zip(mask.classes.iter_mut()).zip(plane.iter()) {
                if v > *b {
                    *b = v;
                    *c = class as u8;
                }
            }
        }
        mask.scores.clear();
    }
}

/// One frame through preprocess -> infer -> postprocess, with reusable scratch: the one
/// single-frame runner behind `segment`, `eval`, `bench` and `calibrate`.
#[derive(Default)]
pub struct FrameRunner {
    pub rs: Resampler,
    pub input: Vec<f32>,
    pub raw: Vec<f32>,
    /// The stage times of the last frame.
    pub times: StageTimes,
    /// The M the middle ran on in the last frame.
    pub m_used: usize,
}

impl FrameRunner {
    pub fn run(
        &mut self,
        io: &dyn FrameIo,
        engine: &mut dyn Engine,
        frame: &Frame,
        setting: Setting,
        mask: &mut Mask,
    ) -> Result<(), EngineError> {
        let t0 = std::time::Instant::now();
        io.preprocess(frame, setting.input_size, &mut self.rs, &mut self.input);
        self.times.preprocess = t0.elapsed();
        self.m_used = engine.infer(&self.input, setting, &mut self.times, &mut self.raw)?;
        crate::engine::check_output(&self.raw, setting.input_size)?;
        let t1 = std::time::Instant::now();
        io.postprocess(&self.raw, setting.input_size, frame.width, frame.height, &mut self.rs, mask);
        self.times.postprocess = t1.elapsed();
        Ok(())
    }
}
