//! Metrics: histogram quantiles against exact ones on random data, the Prometheus text format,
//! the log line and the health summary.

use std::time::Duration;

use ailurus::metrics::{Edge, Histogram, Metrics, Stage, PROM_BOUNDS_S};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Nearest-rank quantile of sorted values.
fn exact(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn quantiles_match_exact_ones_within_the_bucket_width() {
    let mut rng = Rng(12345);
    for trial in 0..20 {
        let h = Histogram::default();
        let n = 1 + (rng.next() * 2000.0) as usize;
        // Log-uniform between 20 us and 20 s.
        let mut ms: Vec<f64> = (0..n).map(|_| 0.02 * 1e6f64.powf(rng.next())).collect();
        for &v in &ms {
            h.record(Duration::from_secs_f64(v / 1e3));
        }
        ms.sort_by(f64::total_cmp);
        let snap = h.snapshot();
        assert_eq!(snap.count, n as u64);
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let (got, want) = (snap.quantile_ms(q), exact(&ms, q));
            assert!((got - want).abs() <= 0.07 * want + 0.002, "trial {trial} q {q}: {got} vs {want}");
        }
        assert!((snap.max_ms() - ms[n - 1]).abs() < 0.002);
        let mean = ms.iter().sum::<f64>() / n as f64;
        assert!((snap.mean_ms() - mean).abs() < 0.01 * mean + 0.002);
    }
    assert!(Histogram::default().snapshot().quantile_ms(0.5).is_nan());
}

#[test]
fn take_resets_the_window() {
    let h = Histogram::default();
    h.record(Duration::from_millis(5));
    assert_eq!(h.take().count, 1);
    assert_eq!(h.snapshot().count, 0);
}

/// Parse the exposition: every sample line is `name{labels} value` or `name value`, every
/// metric has HELP and TYPE first.
/// The value of `name{labels}` among `samples(text)`; panics naming it when missing.
fn sample(s: &[(String, String, f64)], text: &str, name: &str, labels: &str) -> f64 {
    s.iter()
        .find(|(n, l, _)| n == name && l == labels)
        .unwrap_or_else(|| panic!("{name}{{{labels}}} missing:\n{text}"))
        .2
}

fn samples(text: &str) -> Vec<(String, String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap().to_string();
            assert!(["counter", "gauge", "histogram"].contains(&it.next().unwrap()), "{line}");
            typed.insert(name);
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n.to_string(), l.strip_suffix('}').unwrap_or_else(|| panic!("{line}")).to_string()),
            None => (head.to_string(), String::new()),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n));
        assert!(typed.contains(&name) || typed.contains(&base), "no TYPE before {line}");
        out.push((name, labels, v));
    }
    out
}

#[test]
fn prometheus_text_is_well_formed_and_consistent() {
    let m = Metrics::new(&["files", "http"]);
    m.set_target_ms(100.0);
    for ms in [10, 50, 150, 400, 2500] {
        m.record(Stage::Middle, Duration::from_millis(ms));
        m.published(Duration::from_millis(ms), 336, 512);
    }
    m.edge_counter(Edge::SourceToPre).fetch_add(3, std::sync::atomic::Ordering::Relaxed);
    m.sinks[1].dropped.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    let line = m.log_line();
    assert!(
        line.contains("5 frames") && line.contains("336px M=512") && line.contains("source_to_preprocess 3"),
        "{line}"
    );
    let text = m.render_prometheus();
    let s = samples(&text);
    let get = |name: &str, labels: &str| sample(&s, &text, name, labels);
    assert_eq!(get("ailurus_frames_published_total", ""), 5.0);
    assert_eq!(get("ailurus_deadline_misses_total", ""), 3.0);
    assert_eq!(get("ailurus_frames_dropped_total", "edge=\"source_to_preprocess\""), 3.0);
    assert_eq!(get("ailurus_frames_dropped_total", "edge=\"sink:http\""), 2.0);
    assert_eq!(get("ailurus_setting_input_size", ""), 336.0);
    assert_eq!(get("ailurus_setting_m", ""), 512.0);
    assert_eq!(get("ailurus_budget_target_seconds", ""), 0.1);
    // Histogram buckets are cumulative and end at the count.
    let mut prev = 0.0;
    for le in PROM_BOUNDS_S {
        let v = get("ailurus_stage_latency_seconds_bucket", &format!("stage=\"middle\",le=\"{le}\""));
        assert!(v >= prev);
        prev = v;
    }
    assert_eq!(get("ailurus_stage_latency_seconds_bucket", "stage=\"middle\",le=\"0.1\""), 2.0);
    assert_eq!(get("ailurus_stage_latency_seconds_bucket", "stage=\"middle\",le=\"+Inf\""), 5.0);
    assert_eq!(get("ailurus_stage_latency_seconds_count", "stage=\"middle\""), 5.0);
    assert!((get("ailurus_stage_latency_seconds_sum", "stage=\"middle\"") - 3.11).abs() < 1e-9);
    let p50 = get("ailurus_stage_latency_recent_seconds", "stage=\"capture_to_publish\",quantile=\"0.5\"");
    assert!((p50 - 0.15).abs() < 0.01, "{p50}");
    assert!(get("ailurus_fps", "") > 0.0);
}

#[test]
fn health_says_stuck_only_when_stuck() {
    let m = Metrics::new(&[]);
    let h = m.health();
    assert_eq!(h.since_last_frame, None);
    assert!(!h.is_stuck(Duration::from_secs(60)), "just started");
    assert!(h.is_stuck(Duration::ZERO), "no frame ever, limit passed");
    m.published(Duration::from_millis(1), 448, 1024);
    assert!(!m.health().is_stuck(Duration::from_secs(60)));
    m.lane_infer_started(0);
    assert!(m.health().inferring_for.is_some());
    m.lane_infer_finished(0);
    assert!(m.health().inferring_for.is_none());
}

#[test]
fn lanes_and_out_of_order_drops_are_shown_in_the_log_and_prometheus() {
    let m = Metrics::new(&["files"]);
    m.set_lanes(2);
    m.published(Duration::from_millis(80), 224, 256);
    m.out_of_order.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
    let line = m.log_line();
    assert!(line.contains("2 lane(s)") && line.contains("out_of_order 3") && line.contains("FPS"), "{line}");
    let text = m.render_prometheus();
    let s = samples(&text);
    let get = |name: &str, labels: &str| sample(&s, &text, name, labels);
    assert_eq!(get("ailurus_frames_dropped_total", "edge=\"out_of_order\""), 3.0);
    assert_eq!(get("ailurus_lanes", ""), 2.0);
    assert!(get("ailurus_fps", "") > 0.0);
    let p50 = get("ailurus_stage_latency_recent_seconds", "stage=\"capture_to_publish\",quantile=\"0.5\"");
    assert!((p50 - 0.08).abs() < 0.01, "{p50}");
}

#[test]
fn health_reports_the_longest_running_lane() {
    let m = Metrics::new(&[]);
    m.lane_infer_started(1);
    std::thread::sleep(Duration::from_millis(20));
    m.lane_infer_started(0);
    let long = m.health().inferring_for.unwrap();
    assert!(long >= Duration::from_millis(20), "{long:?}");
    m.lane_infer_finished(0);
    assert!(m.health().inferring_for.is_some(), "lane 1 still runs");
    m.lane_infer_finished(1);
    assert!(m.health().inferring_for.is_none());
}
