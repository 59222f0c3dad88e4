//! Several streams, one budget controller each: two streams with very different latency
//! targets over one shared engine end up at different settings (the tight one smaller), and
//! one source keeps the one controller with `[budget] target_ms`.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use ailurus::engine::{Engine, Setting};
use ailurus::frame::Frame;
use ailurus::metrics::Metrics;
use ailurus::pipeline::streams::Streams;
use ailurus::pipeline::{Parts, Pipeline, PipelineConfig, SourceMode};
use ailurus::sink::{Output, Sink, SinkError};
use ailurus::source::{FrameSource, SourceError};

/// A frame every 5 ms (a camera: no busy loop).
struct Paced(FakeSource);

impl FrameSource for Paced {
    fn name(&self) -> &str {
        "paced"
    }
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        std::thread::sleep(Duration::from_millis(5));
        self.0.next_frame()
    }
}

/// Stream index, setting, the target the output carries, latency.
type Published = (usize, Setting, f64, Duration);

/// Every published mask's [`Published`].
#[derive(Clone, Default)]
struct ByStream(Arc<Mutex<Vec<Published>>>);

impl Sink for ByStream {
    fn name(&self) -> &'static str {
        "by-stream"
    }
    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        let s = Setting { input_size: out.input_size, m: out.m };
        self.0.lock().unwrap().push((out.frame.stream_index, s, out.target_ms, out.latency));
        Ok(())
    }
}

/// The table's fidelity order (56/16 best, then 56/8, 56/4, 28/4): the reference ranks.
fn rank(s: Setting) -> usize {
    match (s.input_size, s.m) {
        (56, 16) => 0,
        (56, 8) => 1,
        (56, 4) => 2,
        _ => 3,
    }
}

#[test]
fn each_stream_keeps_its_own_target() {
    // Inference costs 40 ms at 56 px / M = N, 20 ms at 28 px: the tight stream's 30 ms cannot
    // afford full size (its controller must come down), the loose one's 10 s affords anything.
    let mut eng = FakeEngine::new(Duration::from_millis(40));
    eng.by_setting = true;
    let cfg = budget(true);
    let controller = controller(&eng, &cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let src = || Box::new(Paced(FakeSource::new(0))) as Box<dyn FrameSource>;
    let streams = Streams::start(vec![("loose".into(), src()), ("tight".into(), src())], stop.clone()).unwrap();
    let info = streams.info();
    info[1].counters.target_override_ms.store(30f64.to_bits(), Relaxed);
    let rec = ByStream::default();
    let metrics = Arc::new(Metrics::new(&["by-stream"]));
    let eng = Arc::new(eng);
    let parts = Parts {
        engines: vec![Box::new(FakeLane(eng.clone())) as Box<dyn Engine>],
        io: eng,
        source: Box::new(streams),
        mode: SourceMode::Pull,
        sinks: vec![Box::new(rec.clone())],
        controller,
        metrics,
        config: PipelineConfig {
            log_every_s: 60.0,
            drain_timeout_s: 5.0,
            sink_queue: 256,
            max_frames: 60,
            ..PipelineConfig::default()
        },
        streams: info.iter().map(|i| i.counters.clone()).collect(),
    };
    let p = Pipeline::start(parts, stop).unwrap();
    let (loose_c, tight_c) = (p.stream_controller(0).unwrap(), p.stream_controller(1).unwrap());
    assert!(p.stream_controller(2).is_none());
    assert_eq!(loose_c.lock().unwrap().config().target_ms, cfg.target_ms, "no target_ms: [budget]'s");
    assert_eq!(tight_c.lock().unwrap().config().target_ms, 30.0);
    p.wait().unwrap();

    let seen = rec.0.lock().unwrap().clone();
    let of = |i: usize| seen.iter().filter(|s| s.0 == i).map(|s| (s.1, s.2)).collect::<Vec<_>>();
    let (loose, tight) = (of(0), of(1));
    assert!(loose.len() >= 20 && tight.len() >= 20, "both streams served: {} and {}", loose.len(), tight.len());
    assert!(
        loose.iter().all(|s| s.1 == cfg.target_ms) && tight.iter().all(|s| s.1 == 30.0),
        "outputs carry their target"
    );
    // After the first few frames (the cost model learning the real costs): the loose stream runs
    // full fidelity, the tight one never does, and is always below the loose one's setting.
    let settle = 8;
    for (s, _) in &loose[settle..] {
        assert_eq!(rank(*s), 0, "loose stream (10 s target) left full fidelity: {loose:?}");
    }
    for (s, _) in &tight[settle..] {
        assert!(rank(*s) > 0, "tight stream (30 ms target) ran 56 px M=N (40 ms): {tight:?}");
    }
    // The per-stream metrics show each controller's target and last setting.
    assert_eq!(info[0].counters.target(), cfg.target_ms);
    assert_eq!(info[1].counters.target(), 30.0);
    let last = |i: usize| Setting {
        input_size: info[i].counters.input_size.load(Relaxed) as u32,
        m: info[i].counters.m.load(Relaxed) as usize,
    };
    assert_eq!(last(0), loose.last().unwrap().0);
    assert_eq!(last(1), tight.last().unwrap().0);
    assert!(rank(last(1)) > rank(last(0)));
    // Deadline misses are counted against each stream's own target: the 10 s one never misses.
    assert_eq!(info[0].counters.deadline_misses.load(Relaxed), 0);
    let late = |i: usize| seen.iter().filter(|s| s.0 == i && s.3.as_secs_f64() * 1e3 > s.2).count() as u64;
    assert_eq!(info[1].counters.deadline_misses.load(Relaxed), late(1), "misses of the 30 ms stream");
}

#[test]
fn one_source_keeps_one_controller_at_the_budget_target() {
    let eng = FakeEngine::new(Duration::from_millis(1));
    let cfg = budget(true);
    let controller = controller(&eng, &cfg);
    let rec = ByStream::default();
    let eng = Arc::new(eng);
    let parts = Parts {
        engines: vec![Box::new(FakeLane(eng.clone())) as Box<dyn Engine>],
        io: eng,
        source: Box::new(FakeSource::new(10)),
        mode: SourceMode::Pull,
        sinks: vec![Box::new(rec.clone())],
        controller,
        metrics: Arc::new(Metrics::new(&["by-stream"])),
        config: PipelineConfig { log_every_s: 60.0, drain_timeout_s: 5.0, sink_queue: 64, ..PipelineConfig::default() },
        streams: Vec::new(),
    };
    let p = Pipeline::start(parts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(p.stream_controller(1).is_none(), "one source: one controller");
    assert!(Arc::ptr_eq(&p.controller(), &p.stream_controller(0).unwrap()));
    let c = p.controller();
    p.wait().unwrap();
    assert_eq!(c.lock().unwrap().config().target_ms, cfg.target_ms);
    assert_eq!(c.lock().unwrap().status().frames, 10, "every frame decided by the one controller");
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|s| s.0 == 0 && s.2 == cfg.target_ms && rank(s.1) == 0));
}

#[test]
fn a_budget_reload_keeps_each_streams_own_target() {
    let eng = FakeEngine::new(Duration::from_millis(1));
    let cfg = budget(true);
    let controller = controller(&eng, &cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let src = || Box::new(Paced(FakeSource::new(0))) as Box<dyn FrameSource>;
    let streams = Streams::start(vec![("a".into(), src()), ("b".into(), src())], stop.clone()).unwrap();
    let info = streams.info();
    info[0].counters.target_override_ms.store(80f64.to_bits(), Relaxed);
    let eng = Arc::new(eng);
    let parts = Parts {
        engines: vec![Box::new(FakeLane(eng.clone())) as Box<dyn Engine>],
        io: eng,
        source: Box::new(streams),
        mode: SourceMode::Pull,
        sinks: vec![],
        controller,
        metrics: Arc::new(Metrics::new(&[])),
        config: PipelineConfig { log_every_s: 60.0, drain_timeout_s: 5.0, ..PipelineConfig::default() },
        streams: info.iter().map(|i| i.counters.clone()).collect(),
    };
    let p = Pipeline::start(parts, stop).unwrap();
    let table = ailurus::budget::CalibrationTable::parse(TABLE, "test table").unwrap();
    p.update_budget(&ailurus::budget::BudgetConfig { target_ms: 700.0, ..cfg.clone() }, &table).unwrap();
    let target = |i: usize| p.stream_controller(i).unwrap().lock().unwrap().config().target_ms;
    assert_eq!((target(0), target(1)), (80.0, 700.0), "a's own target stays; b follows [budget]");
    assert_eq!((info[0].counters.target(), info[1].counters.target()), (80.0, 700.0));
    p.stop();
    p.wait().unwrap();
}
