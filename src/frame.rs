//! Frames and masks: the values that flow between pipeline stages.
//!
//! Owns the pixel containers and their metadata. Must not know about sources, models or sinks.

use std::sync::{Arc, Mutex};
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
    /// The stream's name (`[streams.NAME]`; empty for the one `[source]`): which camera, for
    /// sinks and metrics. Set by the pipeline; an `Arc`, so stamping a frame allocates nothing.
    pub stream: Arc<str>,
    /// The stream's index in the pipeline (0 for the one `[source]`).
    pub stream_index: usize,
    /// Bumped every time the source (re)connects or restarts its stream (a reopened camera, a
    /// reconnected RTSP server, a looped file back at its start): frames of different epochs
    /// are not consecutive, so whoever compares a frame with the previous one of its stream
    /// (temporal reuse) must start afresh when it changes. Sources without reconnects leave 0.
    pub epoch: u64,
}

/// The name of the one unnamed stream (`[source]`): "", shared, so stamping allocates nothing.
pub fn unnamed() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
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
            stream: unnamed(),
            stream_index: 0,
            epoch: 0,
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
            stream: unnamed(),
            stream_index: 0,
            epoch: 0,
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A bounded pool of pixel buffers, so that a source does not allocate a fresh RGB buffer per
/// frame. `take` hands out a buffer (reused when one is free), `give` returns one; buffers beyond
/// the capacity are simply dropped. Shared between a source and whoever recycles its frames.
#[derive(Debug)]
pub struct FramePool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
}

impl FramePool {
    /// A pool that keeps at most `capacity` free buffers.
    pub fn new(capacity: usize) -> FramePool {
        FramePool { free: Mutex::new(Vec::with_capacity(capacity)), capacity }
    }

    /// A buffer of exactly `len` bytes (contents unspecified), reusing a free one if possible.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Give a buffer back for reuse (dropped when the pool is full).
    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.capacity && buf.capacity() > 0 {
            free.push(buf);
        }
    }

    /// Number of free buffers held now.
    pub fn free_len(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_and_respects_capacity() {
        let pool = FramePool::new(2);
        let a = pool.take(12);
        assert_eq!(a.len(), 12);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(12);
        assert_eq!(b.as_ptr(), ptr, "a returned buffer is handed out again");
        pool.give(b);
        pool.give(vec![1; 4]);
        pool.give(vec![1; 4]);
        assert_eq!(pool.free_len(), 2, "no more than the capacity is kept");
        assert_eq!(pool.take(7).len(), 7);
    }
}
