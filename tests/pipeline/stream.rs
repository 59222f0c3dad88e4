//! The threaded pipeline with a fake engine: frames flow in order with their own masks, drops
//! and failures are counted, a hung sink never stalls inference, and stopping works.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use ailurus::engine::Engine;
use ailurus::metrics::{Edge, Metrics, Stage};
use ailurus::pipeline::{Parts, Pipeline, PipelineConfig, SourceMode};
use ailurus::sink::Sink;

fn start(
    eng: FakeEngine,
    src: FakeSource,
    mode: SourceMode,
    sinks: Vec<Box<dyn Sink>>,
    config: PipelineConfig,
    budget_on: bool,
) -> (Pipeline, Arc<AtomicBool>) {
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let controller = controller(&eng, &budget(budget_on));
    let stop = Arc::new(AtomicBool::new(false));
    let eng = Arc::new(eng);
    let engines = (0..config.lanes).map(|_| Box::new(FakeLane(eng.clone())) as Box<dyn Engine>).collect();
    let parts = Parts {
        engines,
        io: eng,
        source: Box::new(src),
        mode,
        sinks,
        controller,
        metrics,
        config,
        streams: Vec::new(),
    };
    (Pipeline::start(parts, stop.clone()).unwrap(), stop)
}

fn cfg() -> PipelineConfig {
    PipelineConfig { log_every_s: 60.0, drain_timeout_s: 5.0, ..PipelineConfig::default() }
}

fn run_pull(overlap: bool) {
    let mut eng = FakeEngine::new(Duration::from_millis(1));
    eng.fail_seq = Some(7);
    // An output with a NaN (an f16 overflow, say) is a failed frame too, not an empty mask.
    eng.nan_seq = Some(20);
    let mut src = FakeSource::new(40);
    src.bad_at = Some(12);
    let rec = Recorder::default();
    let config = PipelineConfig { overlap, sink_queue: 64, ..cfg() };
    let (p, _) = start(eng, src, SourceMode::Pull, vec![Box::new(rec.clone())], config, true);
    let m = p.metrics();
    p.wait().unwrap();
    let seen = rec.0.lock().unwrap().clone();
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    let want: Vec<u64> = (0..40).filter(|&s| s != 7 && s != 12 && s != 20).collect();
    assert_eq!(seqs, want, "pull mode: every good frame, in order (overlap {overlap})");
    for s in &seen {
        assert_eq!(s.mask_byte, s.frame_byte, "frame {} got another frame's mask", s.seq);
        assert!(s.latency > Duration::ZERO);
        assert!([56, 28].contains(&s.input_size));
    }
    assert_eq!(m.frames_captured.load(Ordering::Relaxed), 39);
    assert_eq!(m.bad_frames.load(Ordering::Relaxed), 1);
    assert_eq!(m.failed_frames.load(Ordering::Relaxed), 2);
    assert_eq!(m.frames_published.load(Ordering::Relaxed), 37);
    for e in [Edge::PreToInfer, Edge::InferToPost] {
        assert_eq!(m.dropped(e), 0, "pull mode never prepares a frame that waits: {e:?}");
    }
    assert_eq!(m.stage(Stage::EndToEnd).count(), 37);
    assert_eq!(m.stage(Stage::Preprocess).count(), 39);
    assert_eq!(m.stage(Stage::Middle).count(), 37);
    assert_eq!(m.sinks[0].published.load(Ordering::Relaxed), 37);
    assert_eq!(m.sinks[0].dropped.load(Ordering::Relaxed), 0);
    let h = m.health();
    assert!(h.since_last_frame.is_some() && h.inferring_for.is_none());
    assert!(!h.is_stuck(Duration::from_secs(3600)));
}

#[test]
fn pull_mode_delivers_every_good_frame_in_order_overlapped() {
    run_pull(true);
}

#[test]
fn pull_mode_delivers_every_good_frame_in_order_sequential() {
    run_pull(false);
}

/// Run an endless live source (3 ms fake inference) with `config` (max_frames 15); check that
/// exactly 15 frames are published, in order. Returns the metrics.
fn live_source_stops_at_15_in_order(config: PipelineConfig) -> std::sync::Arc<ailurus::metrics::Metrics> {
    let eng = FakeEngine::new(Duration::from_millis(3));
    let rec = Recorder::default();
    let (p, _) = start(eng, FakeSource::new(0), SourceMode::Live, vec![Box::new(rec.clone())], config, true);
    let m = p.metrics();
    p.wait().unwrap();
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 15, "stops at max_frames");
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
    m
}

#[test]
fn live_source_faster_than_inference_drops_and_counts() {
    let m = live_source_stops_at_15_in_order(PipelineConfig { max_frames: 15, sink_queue: 64, ..cfg() });
    let dropped = m.dropped(Edge::SourceToPre);
    assert!(dropped > 0, "an endless fast source must lose frames at the first edge");
    // Every captured frame is published, dropped on an edge, or still in flight at the stop.
    let captured = m.frames_captured.load(Ordering::Relaxed);
    let accounted = 15 + dropped + m.dropped(Edge::PreToInfer) + m.dropped(Edge::InferToPost);
    assert!(captured >= accounted && captured <= accounted + 4, "captured {captured}, accounted {accounted}");
}

#[test]
fn a_hung_sink_never_stalls_inference() {
    let eng = FakeEngine::new(Duration::ZERO);
    let rec = Recorder::default();
    let config = PipelineConfig { sink_queue: 2, drain_timeout_s: 0.2, ..cfg() };
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Hang), Box::new(rec.clone()), Box::new(Failing)];
    let (p, _) = start(eng, FakeSource::new(50), SourceMode::Pull, sinks, config, false);
    let m = p.metrics();
    p.wait().unwrap();
    assert_eq!(m.frames_published.load(Ordering::Relaxed), 50, "inference never stalled");
    let got = rec.0.lock().unwrap().len() as u64;
    assert!(got > 0);
    assert_eq!(got + m.sinks[1].dropped.load(Ordering::Relaxed), 50, "the healthy sink got or counted every frame");
    let hang = &m.sinks[0];
    // One frame is stuck in publish. Every other one is dropped and counted: at the offer when
    // the queue is full, or at shutdown, when what is still queued is taken back (how many of
    // each depends on when the sink thread took its first frame). 50 only if that thread never
    // ran before the drain timeout.
    let dropped = hang.dropped.load(Ordering::Relaxed);
    assert!(dropped == 49 || dropped == 50, "dropped {dropped}");
    assert_eq!(hang.published.load(Ordering::Relaxed), 0);
    let failing = &m.sinks[2];
    assert_eq!(
        failing.errors.load(Ordering::Relaxed) + failing.dropped.load(Ordering::Relaxed),
        50,
        "every frame either failed (counted) or was dropped"
    );
    let text = m.render_prometheus();
    assert!(text.contains(&format!("ailurus_frames_dropped_total{{edge=\"sink:hang\"}} {dropped}")), "{text}");
}

#[test]
fn stop_flag_ends_an_endless_stream() {
    let eng = FakeEngine::new(Duration::from_millis(1));
    let rec = Recorder::default();
    let (p, stop) = start(eng, FakeSource::new(0), SourceMode::Pull, vec![Box::new(rec.clone())], cfg(), true);
    let m = p.metrics();
    while m.frames_published.load(Ordering::Relaxed) < 10 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    p.wait().unwrap();
    assert!(rec.0.lock().unwrap().len() >= 10);
}

#[test]
fn budget_update_reaches_the_controller_and_the_metrics() {
    let eng = FakeEngine::new(Duration::from_millis(1));
    let rec = Recorder::default();
    let config = PipelineConfig { sink_queue: 10_000, ..cfg() };
    let (p, stop) = start(eng, FakeSource::new(0), SourceMode::Pull, vec![Box::new(rec.clone())], config, true);
    let table = ailurus::budget::CalibrationTable::parse(TABLE, "test").unwrap();
    let mut b = budget(true);
    b.target_ms = 1234.0;
    p.update_budget(&b, &table).unwrap();
    assert_eq!(p.controller().lock().unwrap().config().target_ms, 1234.0);
    assert!(p.metrics().render_prometheus().contains("ailurus_budget_target_seconds 1.234"));
    b.sizes = vec![56, 112];
    assert!(p.update_budget(&b, &table).is_err(), "a size without a plan is refused");
    stop.store(true, Ordering::Relaxed);
    p.wait().unwrap();
    // With a generous budget the controller runs the highest-fidelity setting.
    let seen = rec.0.lock().unwrap().clone();
    assert!(seen.iter().skip(1).all(|s| s.input_size == 56 && s.m == 16), "{:?}", seen.last());
}

/// Every captured frame is published or counted somewhere (nothing in flight once the source
/// has ended and the pipeline drained).
fn assert_all_accounted(m: &Metrics, captured: u64) {
    let published = m.frames_published.load(Ordering::Relaxed);
    let failed = m.failed_frames.load(Ordering::Relaxed);
    let ooo = m.out_of_order.load(Ordering::Relaxed);
    let edges: u64 = [Edge::SourceToPre, Edge::PreToInfer, Edge::InferToPost].iter().map(|&e| m.dropped(e)).sum();
    assert_eq!(m.frames_captured.load(Ordering::Relaxed), captured);
    assert_eq!(
        published + failed + ooo + edges,
        captured,
        "published {published} + failed {failed} + out_of_order {ooo} + edge drops {edges} != captured {captured}"
    );
}

fn lanes_cfg(lanes: usize) -> PipelineConfig {
    PipelineConfig { lanes, sink_queue: 1000, ..cfg() }
}

#[test]
fn two_lanes_out_of_order_frames_are_dropped_and_counted_never_published() {
    // Every fifth frame is slow: the next frames overtake it on the other lane and are
    // published first, so the slow one arrives too late and is dropped (counted).
    let mut eng = FakeEngine::new(Duration::ZERO);
    eng.work_for = Some(|seq| Duration::from_millis(if seq % 5 == 0 { 150 } else { 4 + seq % 3 }));
    eng.fail_seq = Some(13);
    let rec = Recorder::default();
    let (p, _) = start(eng, FakeSource::new(40), SourceMode::Pull, vec![Box::new(rec.clone())], lanes_cfg(2), false);
    let m = p.metrics();
    p.wait().unwrap();
    let seen = rec.0.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0].seq < w[1].seq),
        "published in order: {:?}",
        seen.iter().map(|s| s.seq).collect::<Vec<_>>()
    );
    for s in &seen {
        assert_eq!(s.mask_byte, s.frame_byte, "frame {} got another frame's mask", s.seq);
    }
    assert_eq!(m.failed_frames.load(Ordering::Relaxed), 1);
    assert!(m.out_of_order.load(Ordering::Relaxed) > 0, "slow frames were overtaken");
    assert_eq!(m.frames_published.load(Ordering::Relaxed), seen.len() as u64);
    assert_all_accounted(&m, 40);
    assert!(m.log_line().contains(&format!("out_of_order {}", m.out_of_order.load(Ordering::Relaxed))));
    assert_eq!(m.stage(Stage::EndToEnd).count(), seen.len() as u64);
    let h = m.health();
    assert!(h.inferring_for.is_none(), "every lane idle at the end");
}

#[test]
fn two_lanes_with_jitter_publish_in_order_and_account_for_every_frame() {
    // Small jitter between lanes: frames finish slightly out of order and are put back in
    // order (a few may still be dropped on a loaded machine, but never published late).
    let mut eng = FakeEngine::new(Duration::ZERO);
    eng.work_for = Some(|seq| Duration::from_millis(10 + (seq * 7) % 5));
    let rec = Recorder::default();
    let (p, _) = start(eng, FakeSource::new(60), SourceMode::Pull, vec![Box::new(rec.clone())], lanes_cfg(2), true);
    let m = p.metrics();
    p.wait().unwrap();
    let seen = rec.0.lock().unwrap().clone();
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "published in order: {seqs:?}");
    assert!(seen.len() >= 40, "most frames published: {seqs:?}");
    assert_all_accounted(&m, 60);
}

/// `n` frames of a fixed 5 ms inference on `lanes` lanes, published in order and every one
/// accounted for; the metrics and the most inferences that ever ran at once. With
/// `rendezvous`, the first inference waits (bounded) until that many run at once.
fn run_fixed(lanes: usize, n: u64, rendezvous: Option<usize>) -> (Arc<Metrics>, usize) {
    let mut eng = FakeEngine::new(Duration::from_millis(5));
    eng.rendezvous = rendezvous;
    let concurrency = eng.concurrency.clone();
    let rec = Recorder::default();
    let (p, _) = start(eng, FakeSource::new(n), SourceMode::Pull, vec![Box::new(rec.clone())], lanes_cfg(lanes), false);
    let m = p.metrics();
    p.wait().unwrap();
    let seqs: Vec<u64> = rec.0.lock().unwrap().iter().map(|s| s.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "lanes {lanes}: in order {seqs:?}");
    assert_all_accounted(&m, n);
    (m, concurrency.peak.load(Ordering::SeqCst))
}

/// Lanes are what makes two lanes faster than one: inferences that run at the same time.
/// Counted, not timed (a wall-clock FPS ratio fails on a loaded machine): one lane never runs
/// two at once; on two lanes the first frame waits until a second inference has started,
/// which happens only if the other lane takes the next frame meanwhile.
#[test]
fn two_lanes_infer_concurrently_one_lane_never_does() {
    let n = 40;
    let (m1, peak1) = run_fixed(1, n, None);
    let (m2, peak2) = run_fixed(2, n, Some(2));
    assert_eq!(peak1, 1, "one lane: inferences at once");
    assert_eq!(peak2, 2, "two lanes: inferences at once (the first frame waited up to 10 s for a second)");
    assert_eq!(m1.lanes(), 1);
    assert_eq!(m2.lanes(), 2);
    assert!(m2.render_prometheus().contains("ailurus_lanes 2"));
}

#[test]
fn two_lanes_live_source_stops_at_max_frames_in_order() {
    let m = live_source_stops_at_15_in_order(PipelineConfig { max_frames: 15, ..lanes_cfg(2) });
    let captured = m.frames_captured.load(Ordering::Relaxed);
    let accounted = 15
        + m.dropped(Edge::SourceToPre)
        + m.dropped(Edge::PreToInfer)
        + m.dropped(Edge::InferToPost)
        + m.out_of_order.load(Ordering::Relaxed);
    // Up to lanes + 1 frames in flight at the stop, plus one in the source slot.
    assert!(captured >= accounted && captured <= accounted + 5, "captured {captured}, accounted {accounted}");
}

#[test]
fn overlap_off_with_two_lanes_still_delivers_every_frame_in_order() {
    let eng = FakeEngine::new(Duration::from_millis(2));
    let rec = Recorder::default();
    let config = PipelineConfig { overlap: false, ..lanes_cfg(2) };
    let (p, _) = start(eng, FakeSource::new(30), SourceMode::Pull, vec![Box::new(rec.clone())], config, false);
    let m = p.metrics();
    p.wait().unwrap();
    let seqs: Vec<u64> = rec.0.lock().unwrap().iter().map(|s| s.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_all_accounted(&m, 30);
}
