//! Frames and masks: the values that flow between pipeline stages.
//!
//! Owns the pixel containers and their metadata. Must not know about sources, models or sinks.

use std::time::{Instant, SystemTime};

/// One decoded camera/file frame, always packed RGB8 (row-major, 3 bytes per pixel).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Monotonic sequence number assigned by the source (gaps mean dropped frames).
    pub seq: u64,
    /// When the frame was captured, on the process's monotonic clock.
    pub captured: Instant,
    /// Wall-clock capture time (for headers and file names).
    pub captured_wall: SystemTime,
    pub width: u32,
    pub height: u32,
    /// Packed RGB8, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// Where the frame came from (file name or device), for logs.
    pub origin: String,
}

impl Frame {
    /// A black frame of the given size, captured now.
    pub fn new(seq: u64, width: u32, height: u32) -> Frame {
        Frame {
            seq,
            captured: Instant::now(),
            captured_wall: SystemTime::now(),
            width,
            height,
            rgb: vec![0; width as usize * height as usize * 3],
            origin: String::new(),
        }
    }

    /// Wrap an `image` RGB buffer.
    pub fn from_rgb_image(seq: u64, img: image::RgbImage, origin: impl Into<String>) -> Frame {
        let (width, height) = img.dimensions();
        Frame {
            seq,
            captured: Instant::now(),
            captured_wall: SystemTime::now(),
            width,
            height,
            rgb: img.into_raw(),
            origin: origin.into(),
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A segmentation result at frame resolution.
#[derive(Debug, Clone, Default)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    /// Class id per pixel (saliency models: 0 = background, 1 = salient).
    pub classes: Vec<u8>,
    /// Per-pixel score in [0,1] for saliency models (the probability of class 1); empty for
    /// K-class models.
    pub scores: Vec<f32>,
    /// Number of classes the ids range over (2 for saliency).
    pub num_classes: u32,
}
