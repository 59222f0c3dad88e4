//! docs/grafana/ailurus.json: valid dashboard JSON, and every series its queries name exists in
//! a real `/metrics` scrape of the http sink (fed by the pipeline's `Metrics` and the source's
//! `Liveness`, as `ailurus run` wires them), with the label values the queries match on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ailurus::metrics::{Metrics, Stage, STAGES};
use ailurus::sink::http::{HttpConfig, HttpSink};
use ailurus::sink::Sink;
use ailurus::status::{Health, Liveness, StatusProvider};

struct Runtime {
    metrics: Metrics,
    liveness: Liveness,
}

impl StatusProvider for Runtime {
    fn prometheus(&self) -> String {
        self.metrics.render_prometheus() + &self.liveness.prometheus()
    }
    fn health(&self) -> Health {
        Health::Ok
    }
}

/// Every `ailurus_...` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ailurus_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The `label="value"` matchers of an expression (not `=~`), and the labels of `by (...)`.
fn matchers(expr: &str) -> (Vec<String>, Vec<String>) {
    let mut pairs = Vec::new();
    for (i, _) in expr.match_indices("=\"") {
        let start = expr[..i].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |j| j + 1);
        let end = expr[i + 2..].find('"').map(|j| i + 2 + j + 1).unwrap();
        pairs.push(expr[start..end].to_string());
    }
    let mut by = Vec::new();
    for (i, _) in expr.match_indices("by (") {
        let list = &expr[i + 4..i + 4 + expr[i + 4..].find(')').unwrap()];
        by.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    (pairs, by)
}

#[test]
fn the_dashboard_queries_only_series_that_metrics_serves() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/ailurus.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(dash["title"], "ailurus");
    let panels = dash["panels"].as_array().expect("panels");
    let ids: HashSet<u64> = panels.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");

    // A real scrape: the runtime's metrics after some frames and one log window.
    let rt = Arc::new(Runtime { metrics: Metrics::new(&["http"]), liveness: Liveness::new(Duration::from_secs(10)) });
    for st in STAGES {
        rt.metrics.record(st, Duration::from_millis(20));
    }
    rt.metrics.record(Stage::EndToEnd, Duration::from_millis(90));
    rt.metrics.published(Duration::from_millis(90), 224, 64);
    rt.liveness.frame_done();
    let _ = rt.metrics.log_line();
    let cfg = HttpConfig { enabled: true, port: 0, ..Default::default() };
    let provider: Arc<dyn StatusProvider> = rt.clone();
    let mut sink = HttpSink::build(&cfg, Some(provider)).unwrap();
    sink.publish(&crate::http_endpoints::output(1, 16, 16)).unwrap();
    let scrape = crate::http_endpoints::get(sink.local_addr(), "/metrics").text();
    let series: HashSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();

    let mut exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();
    exprs.extend(
        dash["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["query"].as_str()).map(String::from),
    );
    assert!(exprs.len() >= 12, "{} queries", exprs.len());
    let mut checked = 0;
    for e in &exprs {
        for name in metric_names(e) {
            assert!(series.contains(name.as_str()), "the dashboard queries {name}, which /metrics does not serve: {e}");
            checked += 1;
        }
        let (pairs, by) = matchers(e);
        for pair in pairs {
            assert!(scrape.contains(&pair), "no series in /metrics has {pair}: {e}");
        }
        for label in by.iter().filter(|l| !["le", "instance", "job"].contains(&l.as_str())) {
            assert!(scrape.contains(&format!("{label}=\"")), "no series in /metrics has a label {label}: {e}");
        }
    }
    for want in ["ailurus_camera_up", "ailurus_fps", "ailurus_setting_m", "ailurus_setting_input_size"] {
        assert!(exprs.iter().any(|e| e.contains(want)), "the dashboard shows {want}");
    }
    assert!(exprs.iter().any(|e| e.contains("ailurus_frames_dropped_total") && e.contains("by (edge)")));
    assert!(checked >= 15, "{checked} series names checked");
    // The checker itself: a name that is not served is caught.
    assert!(!series.contains("ailurus_no_such_series"));
    assert_eq!(metric_names("rate(ailurus_x_total{a=\"b\"}[1m])"), ["ailurus_x_total"]);
    assert_eq!(
        matchers("sum by (le, stage) (x{stage=\"reduce\",i=~\"$i\"})"),
        (vec!["stage=\"reduce\"".into()], vec!["le".into(), "stage".into()])
    );
}
