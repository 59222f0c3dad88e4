//! `History`: the last few minutes of published frames at one point per frame (latency, budget
//! target, M, N, input size, drops), for the preview page's charts (`/history.json`).
//!
//! A ring with a fixed capacity, allocated once: `push` (from a sink's `publish`) never
//! allocates. Points older than the window are dropped as new ones come. Must not know about
//! HTTP; the http sink serves `json`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Output;

/// One published frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Publish count of the sink (1, 2, ...): the cursor of `?after=` (sequence numbers may
    /// restart with the source).
    pub gen: u64,
    pub seq: u64,
    /// When the sink got it, ms since the Unix epoch.
    pub published_unix_ms: f64,
    pub latency_ms: f64,
    /// The budget target then (0: none).
    pub target_ms: f64,
    pub m: usize,
    /// Patch tokens N at that input size (M = N: unreduced).
    pub n: usize,
    pub input_size: u32,
    /// Frames the source delivered between the previous published frame and this one that were
    /// not published (the gap in sequence numbers; 0 after a restart of the numbering).
    pub dropped: u64,
}

/// The columns of each row of `json`, in order.
pub const COLUMNS: [&str; 9] =
    ["gen", "seq", "published_unix_ms", "latency_ms", "target_ms", "m", "n", "input_size", "dropped"];

pub struct History {
    points: VecDeque<Point>,
    capacity: usize,
    window: Duration,
}

impl History {
    /// A history of the last `window` (at most `capacity` points).
    pub fn new(window: Duration, capacity: usize) -> History {
        let capacity = capacity.max(1);
        History { points: VecDeque::with_capacity(capacity), capacity, window }
    }

    /// Record `out`, published as the sink's `gen`-th frame at `now`.
    pub fn push(&mut self, gen: u64, out: &Output, now: SystemTime) {
        let dropped = match self.points.back() {
            Some(prev) if out.frame.seq > prev.seq => out.frame.seq - prev.seq - 1,
            _ => 0,
        };
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let p = Point {
            gen,
            seq: out.frame.seq,
            published_unix_ms: ms(now),
            latency_ms: out.latency.as_secs_f64() * 1e3,
            target_ms: out.target_ms,
            m: out.m,
            n: out.partition.as_ref().map_or(out.m, |p| p.n()),
            input_size: out.input_size,
            dropped,
        };
        let oldest = p.published_unix_ms - self.window.as_secs_f64() * 1e3;
        while self.points.front().is_some_and(|q| q.published_unix_ms < oldest) || self.is_full() {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    fn is_full(&self) -> bool {
        self.points.len() >= self.capacity
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    /// `{"stream":..,"window_s":..,"columns":[..],"rows":[[..],..]}` with the points after
    /// publish count `after` (all with None).
    pub fn json(&self, stream: &str, after: Option<u64>) -> String {
        let mut s = String::with_capacity(64 + 80 * self.points.len());
        let cols: Vec<String> = COLUMNS.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = write!(
            s,
            "{{\"stream\":{},\"window_s\":{},\"columns\":[{}],\"rows\":[",
            serde_json::Value::from(stream),
            self.window.as_secs_f64(),
            cols.join(",")
        );
        let mut first = true;
        for p in self.points.iter().filter(|p| after.is_none_or(|a| p.gen > a)) {
            if !first {
                s.push(',');
            }
            first = false;
            let _ = write!(
                s,
                "[{},{},{:.1},{:.2},{:.1},{},{},{},{}]",
                p.gen, p.seq, p.published_unix_ms, p.latency_ms, p.target_ms, p.m, p.n, p.input_size, p.dropped
            );
        }
        s.push_str("]}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::frame::{Frame, Mask};

    fn out(seq: u64) -> Output {
        Output {
            frame: Arc::new(Frame::new(seq, 4, 4)),
            mask: Arc::new(Mask::default()),
            m: 64,
            input_size: 224,
            latency: Duration::from_millis(100),
            partition: None,
            target_ms: 250.0,
        }
    }

    #[test]
    fn keeps_the_window_counts_gaps_and_never_grows() {
        let mut h = History::new(Duration::from_secs(10), 4);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for (gen, seq) in [(1, 5), (2, 6), (3, 9), (4, 2), (5, 3)] {
            h.push(gen, &out(seq), t0 + Duration::from_secs(gen));
        }
        assert!(h.points.capacity() < 8, "the ring does not grow");
        let kept: Vec<_> = h.points().map(|p| (p.gen, p.dropped)).collect();
        assert_eq!(kept, [(2, 0), (3, 2), (4, 0), (5, 0)], "capacity bound; a restart is not a drop");
        h.push(6, &out(4), t0 + Duration::from_secs(14));
        let kept: Vec<_> = h.points().map(|p| p.gen).collect();
        assert_eq!(kept, [4, 5, 6], "points older than the window go");
        let j: serde_json::Value = serde_json::from_str(&h.json("cam", Some(4))).unwrap();
        assert_eq!(j["stream"], "cam");
        assert_eq!(j["columns"].as_array().unwrap().len(), COLUMNS.len());
        let rows = j["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], 5);
        assert_eq!(rows[1][5], 64);
    }
}
