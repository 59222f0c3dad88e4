//! Several named sources in one pipeline: each source runs on its own thread into its own
//! latest-frame slot (what inference does not take is dropped and counted per stream), and
//! `Streams` hands preprocessing the next fresh frame round-robin over the streams, so every
//! camera with a fresh frame gets its turn and a stalled or dead one is simply skipped: it
//! never slows the others. The pipeline takes frames from it on demand (`SourceMode::Pull`).
//!
//! Frames are stamped with their stream's name and index; `recycle` sends a frame's buffer
//! back to its own source. Owns the stream threads. Must not preprocess or infer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::slot::{slot, Closed, SlotReceiver, SlotSender};
use crate::frame::Frame;
use crate::source::{FrameSource, SourceError, SourceHealth};

/// Per-stream counters, shared with metrics.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Frames the source delivered.
    pub captured: AtomicU64,
    /// Frames replaced in the stream's slot before preprocessing took them.
    pub dropped: Arc<AtomicU64>,
    /// Frames skipped as bad.
    pub bad: AtomicU64,
    /// Masks published (postprocess).
    pub published: AtomicU64,
    /// Sum of the published frames' capture-to-mask latency, microseconds.
    pub latency_us: AtomicU64,
    /// The stream's own latency target (`[streams.NAME] target_ms`, f64 bits; 0: none, the
    /// `[budget] target_ms` holds). Set once before the pipeline starts.
    pub target_override_ms: AtomicU64,
    /// The target its budget controller keeps (f64 bits), and the setting of its last
    /// published mask.
    pub target_ms: AtomicU64,
    pub input_size: AtomicU64,
    pub m: AtomicU64,
    /// Masks published later than the stream's own target.
    pub deadline_misses: AtomicU64,
    /// With temporal reuse: the active fraction its controller expects (f64 bits; 0 before
    /// the first reused frame).
    pub reuse_active: AtomicU64,
}

impl StreamCounters {
    /// The stream's own target, if it has one.
    pub fn target_override(&self) -> Option<f64> {
        Some(f64::from_bits(self.target_override_ms.load(Relaxed))).filter(|&t| t > 0.0)
    }

    pub fn target(&self) -> f64 {
        f64::from_bits(self.target_ms.load(Relaxed))
    }
}

/// One stream as the rest of the runtime sees it.
#[derive(Clone)]
pub struct StreamInfo {
    pub name: Arc<str>,
    pub health: Option<Arc<SourceHealth>>,
    pub counters: Arc<StreamCounters>,
}

struct Lane {
    rx: SlotReceiver<Frame>,
    back: Sender<Frame>,
    ended: bool,
}

/// The round-robin source over several streams (see the module doc).
pub struct Streams {
    name: String,
    lanes: Vec<Lane>,
    next: usize,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    info: Vec<StreamInfo>,
}

/// How long one wait for any fresh frame lasts before the stop flag is looked at again.
const WAIT_SLICE: Duration = Duration::from_millis(50);

fn run_stream(
    mut src: Box<dyn FrameSource>,
    name: Arc<str>,
    index: usize,
    tx: SlotSender<Frame>,
    back: Receiver<Frame>,
    counters: Arc<StreamCounters>,
    stop: Arc<AtomicBool>,
) {
    let mut failures = 0u32;
    while !stop.load(Relaxed) {
        while let Ok(f) = back.try_recv() {
            src.recycle(f);
        }
        match src.next_frame() {
            Ok(Some(mut f)) => {
                failures = 0;
                counters.captured.fetch_add(1, Relaxed);
                f.stream = name.clone();
                f.stream_index = index;
                match tx.put(f) {
                    Ok(Some(old)) => src.recycle(old),
                    Ok(None) => {}
                    Err(Closed(_)) => break,
                }
            }
            Ok(None) => {
                log::info!("stream {name}: end of stream");
                break;
            }
            Err(e) if e.is_frame_fault() => {
                counters.bad.fetch_add(1, Relaxed);
                log::debug!("stream {name}: {e} (skipped)");
            }
            Err(e) => {
                // Sources with their own reconnect never get here; others are retried slowly.
                failures = (failures + 1).min(6);
                log::warn!("stream {name}: {e} (retrying)");
                std::thread::sleep(Duration::from_millis(50 << failures));
            }
        }
    }
}

impl Streams {
    /// Start one thread per source. `sources`: (name, source), names unique.
    pub fn start(sources: Vec<(String, Box<dyn FrameSource>)>, stop: Arc<AtomicBool>) -> std::io::Result<Streams> {
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        let mut info = Vec::new();
        let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
        for (index, (name, src)) in sources.into_iter().enumerate() {
            let name: Arc<str> = Arc::from(name.as_str());
            let counters = Arc::new(StreamCounters::default());
            let (tx, rx) = slot(counters.dropped.clone());
            let (back_tx, back_rx) = crossbeam_channel::bounded(8);
            info.push(StreamInfo { name: name.clone(), health: src.health(), counters: counters.clone() });
            let stop2 = stop.clone();
            let h = std::thread::Builder::new()
                .name(format!("source-{name}"))
                .spawn(move || run_stream(src, name, index, tx, back_rx, counters, stop2))?;
            threads.push(h);
            lanes.push(Lane { rx, back: back_tx, ended: false });
        }
        Ok(Streams { name: format!("streams [{}]", names.join(", ")), lanes, next: 0, stop, threads, info })
    }

    /// The streams, in index order.
    pub fn info(&self) -> Vec<StreamInfo> {
        self.info.clone()
    }

    /// The next fresh frame, round-robin from the stream after the last one served.
    fn take_fresh(&mut self) -> Option<Frame> {
        let n = self.lanes.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let lane = &mut self.lanes[i];
            if lane.ended {
                continue;
            }
            match lane.rx.try_take() {
                Ok(f) => {
                    self.next = (i + 1) % n;
                    return Some(f);
                }
                Err(gone) => lane.ended = gone,
            }
        }
        None
    }
}

impl FrameSource for Streams {
    fn name(&self) -> &str {
        &self.name
    }

    /// Blocks until some stream has a fresh frame; `Ok(None)` once every stream has ended or
    /// on stop.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.stop.load(Relaxed) {
                return Ok(None);
            }
            if let Some(f) = self.take_fresh() {
                return Ok(Some(f));
            }
            if self.lanes.iter().all(|l| l.ended) {
                return Ok(None);
            }
            let mut sel = crossbeam_channel::Select::new();
            for l in self.lanes.iter().filter(|l| !l.ended) {
                l.rx.register(&mut sel);
            }
            let _ = sel.ready_timeout(WAIT_SLICE);
        }
    }

    fn recycle(&mut self, frame: Frame) {
        if let Some(l) = self.lanes.get(frame.stream_index) {
            let _ = l.back.try_send(frame);
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Closing the slots ends the threads at their next frame; a source blocked in a read
        // is left behind (as the single-source pipeline does).
        self.lanes.clear();
        for h in self.threads.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame every `every`, forever (or never, for a dead camera).
    struct Ticker {
        every: Option<Duration>,
        seq: u64,
        stop: Arc<AtomicBool>,
    }

    impl FrameSource for Ticker {
        fn name(&self) -> &str {
            "ticker"
        }
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            loop {
                if self.stop.load(Relaxed) {
                    return Ok(None);
                }
                match self.every {
                    Some(d) => {
                        std::thread::sleep(d);
                        self.seq += 1;
                        return Ok(Some(Frame::new(self.seq, 2, 2)));
                    }
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }

    #[test]
    fn fresh_streams_take_turns_and_a_dead_one_is_skipped() {
        let stop = Arc::new(AtomicBool::new(false));
        let tick = |every| Box::new(Ticker { every, seq: 0, stop: stop.clone() }) as Box<dyn FrameSource>;
        let sources = vec![
            ("fast".to_string(), tick(Some(Duration::from_millis(1)))),
            ("dead".to_string(), tick(None)),
            ("slow".to_string(), tick(Some(Duration::from_millis(4)))),
        ];
        let mut s = Streams::start(sources, stop.clone()).unwrap();
        let mut order = Vec::new();
        for _ in 0..40 {
            let f = s.next_frame().unwrap().unwrap();
            assert_eq!(&*f.stream, ["fast", "dead", "slow"][f.stream_index]);
            order.push(f.stream_index);
            // A consumer slower than both sources: each has a fresh frame at every turn.
            std::thread::sleep(Duration::from_millis(6));
        }
        assert!(!order.contains(&1), "the dead camera never delivers: {order:?}");
        // The reference: strict alternation between the two live streams.
        let alternations = order.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(alternations >= 36, "turns not taken in order: {order:?}");
        let info = s.info();
        assert_eq!(info.len(), 3);
        assert!(info[0].counters.dropped.load(Relaxed) > 0, "the fast stream's unused frames are counted");
        stop.store(true, Relaxed);
        assert!(s.next_frame().unwrap().is_none());
    }
}
