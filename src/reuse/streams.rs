//! Per-stream reuse caches (issue #19): with several `[streams.NAME]` on one lane, frames of
//! the streams take turns, and each stream's frame must be compared with that stream's last
//! frame, not with the other camera's. A lane keeps one [`StreamCache`] per stream it has seen
//! (the encoder's per-block keys, values, branch outputs and references, the head output and
//! the head's maps, the refresh state, and with `carry_clusters` the carried partition, its
//! references and the carried middle's caches) and swaps the stream's in when its frames
//! arrive: a swap of buffers, no copy.
//!
//! Memory: one cache holds 5 `[T, C]` f32 buffers per block plus the head output and the own
//! head's maps (`head/`: every up-layer's input and the logits); for the shipped ViT-S at 448 px
//! (T = 1025, C = 384, 12 blocks) that is 5 * 1025 * 384 * 4 B * 12 = 94.5 MB + 0.8 MB + 14.4 MB
//! (measured from the buffers' capacity, `ReuseLane::cache_bytes`, in tests/model/reuse.rs). So
//! caches are allocated lazily (on a stream's first frame on the lane) and at most `[reuse]
//! max_streams` are kept per lane: beyond that the least recently used stream's cache is dropped
//! (its next frame is computed in full).
//!
//! A reset ([`ReuseLane::reset`], the pipeline's `stream_break`: a reconnect, a new frame size)
//! applies to the current stream's cache only.
//!
//! Must not: decide when a stream breaks (the pipeline does), or run anything.

use super::carry::ParkedCarry;
use super::encoder::ParkedCaches;
use super::head::HeadCache;
use super::ReuseLane;

/// One stream's reuse state while it is not the lane's current stream.
pub struct StreamCache {
    enc: ParkedCaches,
    head_out: Vec<f32>,
    /// The own head's per-layer maps (`head.rs`), which belong to `head_out`.
    head: HeadCache,
    last_size: u32,
    since_refresh: u32,
    period: u32,
    last_m: usize,
    /// The carried clusters and the carried middle (reuse + reduction with `carry_clusters`),
    /// and whether the stream's last frame ran them.
    carry: ParkedCarry,
    carried: bool,
}

impl Default for StreamCache {
    /// Empty: the stream's next frame is a reset (computed in full).
    fn default() -> Self {
        StreamCache {
            enc: ParkedCaches::default(),
            head_out: Vec::new(),
            head: HeadCache::default(),
            last_size: 0,
            since_refresh: 0,
            period: 0,
            last_m: usize::MAX,
            carry: ParkedCarry::default(),
            carried: false,
        }
    }
}

impl StreamCache {
    fn bytes(&self) -> usize {
        self.enc.bytes()
            + self.head_out.capacity() * std::mem::size_of::<f32>()
            + self.head.bytes()
            + self.carry.bytes()
    }
}

/// The parked caches of a lane, by stream index, least recently used first.
#[derive(Default)]
pub struct Parked {
    /// The stream whose state the lane holds now (None: none switched to yet).
    current: Option<usize>,
    others: Vec<(usize, StreamCache)>,
}

impl ReuseLane {
    /// Swap in stream `stream`'s cache (see the module doc). False when `[reuse] max_streams`
    /// is below 2: one cache, which the caller must reset on a switch (the old behaviour).
    pub fn switch_stream(&mut self, stream: usize) -> bool {
        let max = self.cfg.max_streams;
        if max < 2 {
            return false;
        }
        if self.parked.current == Some(stream) {
            return true;
        }
        let mut cache = match self.parked.others.iter().position(|(s, _)| *s == stream) {
            Some(i) => self.parked.others.remove(i).1,
            None => StreamCache::default(),
        };
        self.swap_stream_state(&mut cache);
        if let Some(old) = self.parked.current.replace(stream) {
            self.parked.others.push((old, cache));
        }
        // The current one counts: at most max - 1 parked, the oldest dropped.
        while self.parked.others.len() + 1 > max as usize {
            let (s, c) = self.parked.others.remove(0);
            log::debug!("[reuse] lane drops stream {s}'s cache ({:.1} MB): max_streams {max}", c.bytes() as f64 / 1e6);
        }
        true
    }

    /// The stream whose cache the lane holds now.
    pub fn current_stream(&self) -> Option<usize> {
        self.parked.current
    }

    /// The streams with a parked cache (least recently used first).
    pub fn parked_streams(&self) -> Vec<usize> {
        self.parked.others.iter().map(|(s, _)| *s).collect()
    }

    /// Bytes held by the current stream's caches and the parked ones.
    pub fn cache_bytes(&self) -> (usize, usize) {
        let own = self.enc.cache_bytes()
            + self.head_out.capacity() * std::mem::size_of::<f32>()
            + self.head_cache.bytes()
            + self.carry.bytes();
        (own, self.parked.others.iter().map(|(_, c)| c.bytes()).sum())
    }

    fn swap_stream_state(&mut self, c: &mut StreamCache) {
        self.enc.swap_caches(&mut c.enc);
        std::mem::swap(&mut self.head_out, &mut c.head_out);
        std::mem::swap(&mut self.head_cache, &mut c.head);
        std::mem::swap(&mut self.last_size, &mut c.last_size);
        std::mem::swap(&mut self.since_refresh, &mut c.since_refresh);
        std::mem::swap(&mut self.period, &mut c.period);
        std::mem::swap(&mut self.last_m, &mut c.last_m);
        self.carry.swap_state(&mut c.carry);
        std::mem::swap(&mut self.carried, &mut c.carried);
    }

    /// Drop the parked streams' caches (the reducer changed, `reconfigure`: what they hold was
    /// computed with the old one): each one's next frame is computed in full.
    pub(super) fn drop_parked(&mut self) {
        self.parked.others.clear();
    }
}
