//! `synthetic` source: a deterministic moving scene (a bright disc circling over a soft
//! gradient, with a frame counter bar), for trying the pipeline and for tests without a camera
//! or photos. Frame `n` is always the same picture.
//!
//! Owns only the pattern. Must not read files or devices.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::clock::{Clock, Pacer, RealClock};
use super::health::SourceHealth;
use super::{FrameSource, SourceError};
use crate::frame::{Frame, FramePool};

/// The `synthetic` source.
pub struct SyntheticSource {
    name: String,
    width: u32,
    height: u32,
    /// Frames to produce (0 = endless).
    frames: u64,
    seq: u64,
    pacer: Option<Pacer>,
    pool: Arc<FramePool>,
    health: Arc<SourceHealth>,
}

impl SyntheticSource {
    /// `frames` = 0 is endless; `fps` = 0 is unpaced.
    pub fn new(width: u32, height: u32, frames: u64, fps: f64) -> SyntheticSource {
        Self::with_clock(width, height, frames, fps, Arc::new(RealClock))
    }

    pub fn with_clock(width: u32, height: u32, frames: u64, fps: f64, clock: Arc<dyn Clock>) -> SyntheticSource {
        let name = format!("synthetic {width}x{height}");
        SyntheticSource {
            health: Arc::new(SourceHealth::new(name.clone(), "source", true)),
            name,
            width,
            height,
            frames,
            seq: 0,
            pacer: (fps > 0.0).then(|| Pacer::new(clock, fps)),
            pool: Arc::new(FramePool::new(4)),
        }
    }
}

/// Draw frame `n` into `rgb` (`w * h * 3` bytes).
pub fn draw(n: u64, w: u32, h: u32, rgb: &mut [u8]) {
    let (wf, hf) = (w as f32, h as f32);
    let t = n as f32 * 0.1;
    let (cx, cy) = (wf * (0.5 + 0.3 * t.cos()), hf * (0.5 + 0.3 * t.sin()));
    let r2 = (0.15 * wf.min(hf)).powi(2);
    let bar = ((n % 64) as f32 / 64.0 * wf) as u32;
    for y in 0..h {
        for x in 0..w {
            let i = (y as usize * w as usize + x as usize) * 3;
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let px = if dx * dx + dy * dy <= r2 {
                [240, 200, 40]
            } else if y < h / 32 + 1 && x < bar {
                [255, 255, 255]
            } else {
                [(40.0 + 60.0 * x as f32 / wf) as u8, (60.0 + 40.0 * y as f32 / hf) as u8, 90]
            };
            rgb[i..i + 3].copy_from_slice(&px);
        }
    }
}

impl FrameSource for SyntheticSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.frames > 0 && self.seq >= self.frames {
            return Ok(None);
        }
        if let Some(p) = self.pacer.as_mut() {
            p.pace();
        }
        let mut rgb = self.pool.take(self.width as usize * self.height as usize * 3);
        draw(self.seq, self.width, self.height, &mut rgb);
        let frame = Frame {
            seq: self.seq,
            captured: Instant::now(),
            captured_wall: SystemTime::now(),
            width: self.width,
            height: self.height,
            rgb,
            origin: format!("synthetic#{}", self.seq),
            stream: crate::frame::unnamed(),
            stream_index: 0,
            epoch: 0,
        };
        self.seq += 1;
        self.health.frame();
        Ok(Some(frame))
    }

    fn recycle(&mut self, frame: Frame) {
        self.pool.give(frame.rgb);
    }

    fn health(&self) -> Option<Arc<SourceHealth>> {
        Some(self.health.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_move_and_end() {
        let mut a = SyntheticSource::new(64, 48, 3, 0.0);
        let mut b = SyntheticSource::new(64, 48, 0, 0.0);
        let f0 = a.next_frame().unwrap().unwrap();
        let g0 = b.next_frame().unwrap().unwrap();
        assert_eq!(f0.rgb, g0.rgb);
        let f1 = a.next_frame().unwrap().unwrap();
        assert_ne!(f0.rgb, f1.rgb, "the scene moves");
        assert_eq!((f1.seq, f1.width, f1.height, f1.rgb.len()), (1, 64, 48, 64 * 48 * 3));
        a.recycle(f1);
        assert!(a.next_frame().unwrap().is_some());
        assert!(a.next_frame().unwrap().is_none(), "ends after `frames`");
        assert_eq!(a.health().unwrap().frames(), 3);
    }
}
