//! The stage loops: source, preprocess, infer, postprocess. Each runs on its own thread (see
//! `Pipeline::start`) and ends when its input closes or the stop flag is set.
//!
//! Buffers travel with the frame and come back through small pool channels (model input:
//! infer -> preprocess; raw output: postprocess -> infer; frames: postprocess -> source), and
//! masks are reused once every sink has let go of them, so a steady stream allocates little.
//!
//! With several inference lanes (one `infer_loop` per lane) frames may finish out of order;
//! `post_loop` puts them back in ticket order (see `Reorder`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::slot::{Closed, SlotReceiver, SlotSender};
use super::{RateLimited, Shared, SinkRunner};
use crate::engine::{Engine, Setting, StageTimes};
use crate::frame::{Frame, Mask};
use crate::metrics::Stage;
use crate::pre::Resampler;
use crate::reduce::Partition;
use crate::sink::Output;
use crate::source::{FrameSource, SourceError};

/// A frame ready for inference.
pub(super) struct Job {
    /// Preprocessing order (strictly increasing; the order frames are published in).
    ticket: u64,
    frame: Frame,
    setting: Setting,
    input: Vec<f32>,
    times: StageTimes,
    predicted_cost_ms: f64,
}

/// An inferred frame.
pub(super) struct Done {
    ticket: u64,
    frame: Frame,
    setting: Setting,
    raw: Vec<f32>,
    times: StageTimes,
    /// The token partition at the cut (None: unreduced).
    partition: Option<Arc<Partition>>,
}

/// Where preprocess gets frames from.
pub(super) enum Feed {
    Pull(Box<dyn FrameSource>, Receiver<Frame>),
    Live(SlotReceiver<Frame>),
}

/// Sleep up to `d` in short slices, returning early when `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// One read from the source, with bad frames counted and outages retried with backoff.
/// `Ok(None)`: end of stream; `Err(())`: nothing this time (retry).
fn read_source(
    sh: &Shared,
    src: &mut dyn FrameSource,
    backoff: &mut Duration,
    log: &mut RateLimited,
) -> Result<Option<Frame>, ()> {
    match src.next_frame() {
        Ok(Some(f)) => {
            *backoff = Duration::ZERO;
            sh.metrics.frames_captured.fetch_add(1, Relaxed);
            Ok(Some(f))
        }
        Ok(None) => Ok(None),
        Err(e @ SourceError::BadFrame { .. }) => {
            sh.metrics.bad_frames.fetch_add(1, Relaxed);
            log.warn(|| format!("{e} (skipped)"));
            Err(())
        }
        Err(e) => {
            *backoff = (*backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
            log.warn(|| format!("{e} (retrying in {:.1}s)", backoff.as_secs_f64()));
            nap(*backoff, &sh.stop);
            Err(())
        }
    }
}

pub(super) fn source_loop(sh: &Shared, mut src: Box<dyn FrameSource>, tx: SlotSender<Frame>, back: Receiver<Frame>) {
    let (mut backoff, mut log) = (Duration::ZERO, RateLimited::new(Duration::from_secs(10)));
    while !sh.stop.load(Relaxed) {
        while let Ok(f) = back.try_recv() {
            src.recycle(f);
        }
        match read_source(sh, src.as_mut(), &mut backoff, &mut log) {
            Ok(Some(f)) => match tx.put(f) {
                Ok(Some(old)) => src.recycle(old),
                Ok(None) => {}
                Err(Closed(_)) => break,
            },
            Ok(None) => {
                log::info!("source {}: end of stream", src.name());
                break;
            }
            Err(()) => {}
        }
    }
}

/// Exponentially weighted mean of a duration, for the just-in-time lead.
fn ewma(avg: &mut Duration, x: Duration) {
    *avg = if avg.is_zero() { x } else { avg.mul_f64(0.8) + x.mul_f64(0.2) };
}

pub(super) fn pre_loop(sh: &Shared, mut feed: Feed, tx: SlotSender<Job>, pool: Receiver<Vec<f32>>) {
    let max = sh.max_in_flight();
    let (mut backoff, mut log) = (Duration::ZERO, RateLimited::new(Duration::from_secs(10)));
    let mut rs = Resampler::default();
    let (mut pre_avg, mut read_avg) = (Duration::ZERO, Duration::ZERO);
    let mut ticket = 0u64;
    'frames: loop {
        let lead = pre_avg + read_avg + Duration::from_millis(5);
        if !sh.gate.wait_turn(max, lead, sh.config.overlap, &sh.stop) {
            break;
        }
        let t_read = Instant::now();
        let frame = match &mut feed {
            Feed::Pull(src, back) => {
                while let Ok(f) = back.try_recv() {
                    src.recycle(f);
                }
                match read_source(sh, src.as_mut(), &mut backoff, &mut log) {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        log::info!("source {}: end of stream", src.name());
                        sh.gate.release();
                        break;
                    }
                    Err(()) => {
                        sh.gate.release();
                        continue;
                    }
                }
            }
            Feed::Live(rx) => loop {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(f) => break f,
                    Err(closed) => {
                        if closed || sh.stop.load(Relaxed) {
                            sh.gate.release();
                            break 'frames;
                        }
                    }
                }
            },
        };
        if matches!(feed, Feed::Pull(..)) {
            ewma(&mut read_avg, t_read.elapsed());
        }
        let d = sh.controller(frame.stream_index).decide();
        let mut input = pool.try_recv().unwrap_or_default();
        let mut times = StageTimes::default();
        let t = Instant::now();
        sh.io.preprocess(&frame, d.setting.input_size, &mut rs, &mut input);
        times.preprocess = t.elapsed();
        ewma(&mut pre_avg, times.preprocess);
        sh.metrics.record(Stage::Preprocess, times.preprocess);
        sh.gate.update(|g| g.pending = Some(Instant::now()));
        ticket += 1;
        let job = Job { ticket, frame, setting: d.setting, input, times, predicted_cost_ms: d.predicted_cost_ms };
        match tx.put(job) {
            Ok(None) => {}
            Ok(Some(_old)) => sh.gate.release(),
            Err(Closed(_)) => {
                sh.gate.release();
                break;
            }
        }
    }
}

/// What an inference lane's thread owns.
pub(super) struct Lane {
    pub(super) index: usize,
    pub(super) engine: Box<dyn Engine>,
    /// Reloaded `[reduce]` configs (`Pipeline::update_reduce`).
    pub(super) reconfigure: Receiver<crate::reduce::ReduceConfig>,
    /// Partition buffers coming back from postprocess (no sink holds them any more).
    pub(super) parts: Receiver<Arc<Partition>>,
}

/// One inference lane: takes prepared inputs (shared with the other lanes) and runs them on
/// its own engine.
pub(super) fn infer_loop(
    sh: &Shared,
    own: Lane,
    rx: &SlotReceiver<Job>,
    tx: &SlotSender<Done>,
    input_pool: Sender<Vec<f32>>,
    raw_pool: Receiver<Vec<f32>>,
) {
    let Lane { index: lane, mut engine, reconfigure, parts } = own;
    let mut log = RateLimited::new(Duration::from_secs(10));
    let mut spare = None;
    let mut breaks = StreamBreaks::default();
    while let Some(job) = rx.recv() {
        breaks.follow(engine.as_mut(), &job.frame);
        while let Ok(cfg) = reconfigure.try_recv() {
            match engine.reconfigure(&cfg) {
                Ok(()) => log::info!("lane {lane}: reducer now {} (reload)", cfg.strategy),
                Err(e) => log::error!("lane {lane}: {e}; the running reducer stays"),
            }
        }
        let Job { ticket, frame, setting, input, mut times, predicted_cost_ms } = job;
        let start = Instant::now();
        let expect =
            Duration::from_secs_f64(((predicted_cost_ms * 0.95) / 1e3 - times.preprocess.as_secs_f64()).max(0.0));
        sh.gate.update(|g| {
            g.pending = None;
            g.busy_until[lane] = Some(start + expect);
            g.running[lane] = Some(ticket);
            g.refreshed = false;
        });
        let setting = sh.controller(frame.stream_index).refine(setting);
        let mut raw = raw_pool.try_recv().unwrap_or_default();
        sh.metrics.lane_infer_started(lane);
        let res = engine
            .infer(&input, setting, &mut times, &mut raw)
            .and_then(|_| crate::engine::check_output(&raw, setting.input_size));
        sh.metrics.lane_infer_finished(lane);
        // The lane is free for the next input; it still counts as running this ticket until
        // the result is handed on, so postprocess waits for it (see `Reorder`).
        sh.gate.update(|g| g.busy_until[lane] = None);
        let _ = input_pool.try_send(input);
        if let Err(e) = res {
            sh.metrics.failed_frames.fetch_add(1, Relaxed);
            log.warn(|| format!("frame {}: {e} (skipped)", frame.seq));
            sh.gate.update(|g| g.running[lane] = None);
            sh.gate.release();
            continue;
        }
        let cost = times.preprocess + times.inference();
        let reuse = engine.reuse_info();
        sh.observe_cost(frame.stream_index, setting, cost.as_secs_f64() * 1e3, reuse.as_ref());
        if let Some(r) = &reuse {
            let expected = sh.controller(frame.stream_index).reuse().active();
            sh.metrics.set_reuse(r.active, expected);
            if let Some(c) = sh.streams.get(frame.stream_index) {
                c.reuse_active.store(expected.unwrap_or(r.active).to_bits(), Relaxed);
            }
            log::debug!(
                "frame {} stream {}: {}px M={} threshold {} active {:.3} (expected {:.3}{}) cost {:.0} ms (predicted {:.0})",
                frame.seq,
                frame.stream_index,
                setting.input_size,
                setting.m,
                r.threshold,
                r.active,
                expected.unwrap_or(1.0),
                if r.scheduled_refresh { ", scheduled refresh" } else { "" },
                cost.as_secs_f64() * 1e3,
                predicted_cost_ms
            );
        } else {
            log::debug!(
                "frame {} stream {}: {}px M={} cost {:.0} ms (predicted {:.0})",
                frame.seq,
                frame.stream_index,
                setting.input_size,
                setting.m,
                cost.as_secs_f64() * 1e3,
                predicted_cost_ms
            );
        }
        for (stage, d) in [
            (Stage::Stem, times.stem),
            (Stage::Reduce, times.reduce),
            (Stage::Middle, times.middle),
            (Stage::Head, times.head),
        ] {
            sh.metrics.record(stage, d);
        }
        let partition = take_partition(engine.as_ref(), &parts, &mut spare);
        // At most `lanes + 1` frames are in flight and postprocess takes results as they come
        // (holding them itself when out of order), so it takes the previous result within one
        // postprocess; waiting that long loses nothing and builds no latency.
        let put = tx.put_within(Done { ticket, frame, setting, raw, times, partition }, POST_PATIENCE);
        sh.gate.update(|g| g.running[lane] = None);
        match put {
            Ok(None) => {}
            Ok(Some(_old)) => sh.gate.release(),
            Err(Closed(_)) => {
                sh.gate.release();
                break;
            }
        }
    }
}

/// Temporal reuse (issue #19): tells an engine that keeps state across frames when the frame
/// sequence breaks. Per stream (by index): the last frame this lane ran of it (epoch, seq,
/// size). A switch of stream swaps in that stream's state (`Engine::switch_stream`), or breaks
/// when the engine keeps only one; a break of the stream's own sequence (a source reconnect or
/// looped file restart: a new epoch; a sequence number going back; a new frame size) resets
/// that stream's state only.
#[derive(Default)]
struct StreamBreaks {
    current: Option<usize>,
    last: Vec<Option<(u64, u64, u32, u32)>>,
}

impl StreamBreaks {
    fn follow(&mut self, engine: &mut dyn Engine, f: &Frame) {
        let i = f.stream_index;
        let mut broken = false;
        if self.current != Some(i) {
            broken = !engine.switch_stream(i) && self.current.is_some();
            self.current = Some(i);
        }
        if self.last.len() <= i {
            self.last.resize(i + 1, None);
        }
        let this = (f.epoch, f.seq, f.width, f.height);
        if self.last[i].is_some_and(|(epoch, seq, w, h)| (epoch, w, h) != (this.0, this.2, this.3) || this.1 <= seq) {
            broken = true;
        }
        self.last[i] = Some(this);
        if broken {
            engine.stream_break();
        }
    }
}

/// A copy of the engine's partition of the frame it just ran, in a recycled buffer (a fresh
/// one only while the pool warms up or sinks hold all of them); None for an unreduced frame.
/// `spare` keeps the buffer an unreduced frame did not use.
fn take_partition(
    engine: &dyn Engine,
    pool: &Receiver<Arc<Partition>>,
    spare: &mut Option<Arc<Partition>>,
) -> Option<Arc<Partition>> {
    let mut p = spare.take().or_else(|| pool.try_iter().find(|p| Arc::strong_count(p) == 1)).unwrap_or_default();
    if Arc::get_mut(&mut p).is_some_and(|buf| engine.partition(buf)) {
        return Some(p);
    }
    *spare = Some(p).filter(|p| Arc::strong_count(p) == 1);
    None
}

/// How long inference waits for postprocess to take the previous result before replacing it.
const POST_PATIENCE: Duration = Duration::from_millis(100);

/// Masks and frames kept until every sink has let go of them (then reused).
pub(super) const POOL: usize = 8;

/// A frame that finished while an older one is still being inferred on another lane is held
/// for at most `max(REORDER_MIN, its own inference time / 2)`: lanes finish close together
/// (they start one preprocessing apart), so the older frame normally arrives within moments
/// and both are published in order. An older frame that overruns by more is dropped and
/// counted (`out_of_order`) when it arrives after the newer one was published.
const REORDER_MIN: Duration = Duration::from_millis(20);
/// How often a held frame looks again whether the older ones are done.
const REORDER_POLL: Duration = Duration::from_millis(2);

/// Inferred frames waiting for their turn to be published, in ticket order (at most `lanes`
/// frames: a Vec with that capacity, so holding a frame does not allocate).
struct Reorder {
    held: Vec<(Done, Instant)>,
    /// The ticket of the last frame published (or dropped for max_frames).
    last: u64,
}

impl Reorder {
    /// The next frame that may be published now: the oldest held one, once no lane still
    /// infers an older frame, or it has waited long enough, or (`flush`) no more will come.
    fn next(&mut self, sh: &Shared, flush: bool) -> Option<Done> {
        let (done, since) = self.held.first()?;
        let ticket = done.ticket;
        let limit = REORDER_MIN.max(done.times.inference() / 2);
        let older_running = sh.gate.oldest_running().is_some_and(|t| t < ticket);
        if older_running && !flush && since.elapsed() < limit {
            return None;
        }
        Some(self.held.remove(0).0)
    }
}

pub(super) fn post_loop(
    sh: &Shared,
    rx: SlotReceiver<Done>,
    sinks: &[SinkRunner],
    raw_pool: Sender<Vec<f32>>,
    frame_back: Sender<Frame>,
    parts_back: Sender<Arc<Partition>>,
) {
    let mut rs = Resampler::default();
    let mut masks: VecDeque<Arc<Mask>> = VecDeque::with_capacity(POOL + 1);
    let mut frames: VecDeque<Arc<Frame>> = VecDeque::with_capacity(POOL + 1);
    let mut parts: VecDeque<Arc<Partition>> = VecDeque::with_capacity(POOL + 1);
    let max = sh.config.max_frames;
    let mut order = Reorder { held: Vec::with_capacity(sh.lanes + 2), last: 0 };
    let mut closed = false;
    loop {
        let done = match order.next(sh, closed) {
            Some(d) => d,
            None if closed => break,
            None => {
                let got = if order.held.is_empty() { rx.recv().ok_or(true) } else { rx.recv_timeout(REORDER_POLL) };
                match got {
                    Ok(d) => {
                        let at = order.held.partition_point(|(h, _)| h.ticket < d.ticket);
                        order.held.insert(at, (d, Instant::now()));
                    }
                    Err(gone) => closed = gone,
                }
                continue;
            }
        };
        let Done { ticket, frame, setting, raw, mut times, partition } = done;
        if ticket <= order.last {
            // A newer frame was already published: this one would go back in time.
            sh.metrics.out_of_order.fetch_add(1, Relaxed);
            let _ = raw_pool.try_send(raw);
            sh.gate.release();
            continue;
        }
        order.last = ticket;
        if max > 0 && sh.metrics.frames_published.load(Relaxed) >= max {
            sh.gate.release();
            continue;
        }
        let mut mask = match masks.iter().position(|m| Arc::strong_count(m) == 1) {
            Some(i) => masks.remove(i).unwrap_or_default(),
            None => Arc::new(Mask::default()),
        };
        let t = Instant::now();
        if let Some(m) = Arc::get_mut(&mut mask) {
            sh.io.postprocess(&raw, setting.input_size, frame.width, frame.height, &mut rs, m);
        }
        times.postprocess = t.elapsed();
        let _ = raw_pool.try_send(raw);
        let latency = frame.captured.elapsed();
        let target_ms = sh.streams.get(frame.stream_index).map_or_else(|| sh.metrics.target_ms(), |c| c.target());
        let out = Output {
            frame: Arc::new(frame),
            mask: mask.clone(),
            m: setting.m,
            input_size: setting.input_size,
            latency,
            partition,
            target_ms,
        };
        for s in sinks {
            s.offer(&out);
        }
        sh.metrics.record(Stage::Postprocess, times.postprocess);
        sh.metrics.published(latency, setting.input_size, setting.m);
        if let Some(c) = sh.streams.get(out.frame.stream_index) {
            c.published.fetch_add(1, Relaxed);
            c.latency_us.fetch_add(latency.as_micros() as u64, Relaxed);
            c.input_size.store(setting.input_size as u64, Relaxed);
            c.m.store(setting.m as u64, Relaxed);
            if latency.as_secs_f64() * 1e3 > target_ms {
                c.deadline_misses.fetch_add(1, Relaxed);
            }
        }
        {
            let mut c = sh.controller(out.frame.stream_index);
            c.observe_latency(latency.as_secs_f64() * 1e3, (times.preprocess + times.inference()).as_secs_f64() * 1e3);
            let st = c.status();
            sh.metrics.set_controller(st.unreachable, st.load);
            if st.reuse_active.is_some() {
                sh.metrics.set_reuse_factor(st.reuse_factor);
            }
        }
        sh.gate.release();
        masks.push_back(mask);
        if masks.len() > POOL {
            masks.pop_front();
        }
        if let Some(p) = out.partition {
            parts.push_back(p);
            if parts.len() > POOL {
                if let Some(p) = parts.pop_front().filter(|p| Arc::strong_count(p) == 1) {
                    let _ = parts_back.try_send(p);
                }
            }
        }
        frames.push_back(out.frame);
        if frames.len() > POOL {
            if let Some(f) = frames.pop_front().and_then(|f| Arc::try_unwrap(f).ok()) {
                let _ = frame_back.try_send(f);
            }
        }
        if max > 0 && sh.metrics.frames_published.load(Relaxed) >= max {
            sh.stop.store(true, Relaxed);
            sh.gate.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineError, SizeInfo};

    /// Records the calls `StreamBreaks` makes: "s<i>" for a switch, "break".
    struct Calls(Vec<String>, bool);

    impl Engine for Calls {
        fn sizes(&self) -> &[SizeInfo] {
            &[]
        }
        fn infer(&mut self, _: &[f32], _: Setting, _: &mut StageTimes, _: &mut Vec<f32>) -> Result<usize, EngineError> {
            Ok(0)
        }
        fn switch_stream(&mut self, stream: usize) -> bool {
            self.0.push(format!("s{stream}"));
            self.1
        }
        fn stream_break(&mut self) {
            self.0.push("break".into());
        }
    }

    fn frame(stream: usize, epoch: u64, seq: u64) -> Frame {
        let mut f = Frame::new(seq, 4, 4);
        (f.stream_index, f.epoch) = (stream, epoch);
        f
    }

    fn calls(per_stream: bool, frames: &[(usize, u64, u64)]) -> Vec<String> {
        let (mut e, mut b) = (Calls(Vec::new(), per_stream), StreamBreaks::default());
        for &(s, epoch, seq) in frames {
            b.follow(&mut e, &frame(s, epoch, seq));
            e.0.push("|".into());
        }
        e.0.concat().split('|').map(str::to_string).collect()
    }

    #[test]
    fn per_stream_state_survives_switches_and_a_reconnect_breaks_its_stream_only() {
        // Streams 0 and 1 alternate; stream 1 reconnects (epoch 1) at its third frame.
        let seq = [(0, 0, 1), (1, 0, 1), (0, 0, 2), (1, 0, 2), (0, 0, 3), (1, 1, 1), (0, 0, 4)];
        let got = calls(true, &seq);
        assert_eq!(got, ["s0", "s1", "s0", "s1", "s0", "s1break", "s0", ""]);
        // An engine with one state breaks at every switch (and never for one stream).
        let got = calls(false, &seq);
        assert_eq!(got, ["s0", "s1break", "s0break", "s1break", "s0break", "s1break", "s0break", ""]);
        assert_eq!(calls(false, &[(0, 0, 1), (0, 0, 2), (0, 0, 2)]), ["s0", "", "break", ""]);
    }
}
