//! The lock-free latency histogram: log-linear buckets (about 6% wide), one `fetch_add` per
//! sample (why our own rather than `hdrhistogram`: see the parent module's doc).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sub-buckets per power of two (4 bits: about 6% relative bucket width).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Largest recorded value, in microseconds (2^40 us is about 12 days).
const MAX_EXP: u32 = 39;
const NUM_BUCKETS: usize = ((MAX_EXP + 2 - SUB_BITS) as usize) * SUB as usize;
/// Prometheus `le` bounds, in seconds.
pub const PROM_BOUNDS_S: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];

fn bucket_of(us: u64) -> usize {
    let us = us.min((1u64 << (MAX_EXP + 1)) - 1);
    if us < SUB {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    let sub = (us >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// Smallest value (us) that falls into bucket `i`.
fn bucket_low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    (SUB + i % SUB) << (e - SUB_BITS)
}

/// A log-linear latency histogram with lock-free recording (microsecond resolution).
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    prom: [AtomicU64; PROM_BOUNDS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..NUM_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            prom: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        let s = d.as_secs_f64();
        for (b, &le) in self.prom.iter().zip(&PROM_BOUNDS_S) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// A copy of the counts (for quantiles).
    pub fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
            max_us: self.max_us.load(Relaxed),
        }
    }

    /// A copy of the counts, resetting them to zero (per-bucket atomic swap).
    pub fn take(&self) -> HistSnapshot {
        HistSnapshot {
            buckets: self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect(),
            count: self.count.swap(0, Relaxed),
            sum_us: self.sum_us.swap(0, Relaxed),
            max_us: self.max_us.swap(0, Relaxed),
        }
    }
}

/// Counts of one histogram at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistSnapshot {
    buckets: Vec<u64>,
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
}

impl HistSnapshot {
    /// The `q`-quantile (0..=1) in milliseconds: the middle of the bucket holding the sample of
    /// rank ceil(q * count), capped at the exact maximum. NaN when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = bucket_low(i) as f64;
                let hi = bucket_low(i + 1) as f64;
                return ((lo + hi) / 2.0).min(self.max_us as f64).max(lo) / 1e3;
            }
        }
        self.max_us as f64 / 1e3
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1e3
    }

    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum_us as f64 / self.count as f64 / 1e3
        }
    }
}

/// `h` in the Prometheus text format: its buckets, sum and count as `ailurus_NAME_*{LABEL}`.
pub(super) fn hist_lines(o: &mut String, name: &str, label: &str, h: &Histogram) {
    for (b, le) in h.prom.iter().zip(PROM_BOUNDS_S) {
        let _ = writeln!(o, "ailurus_{name}_bucket{{{label},le=\"{le}\"}} {}", b.load(Relaxed));
    }
    let count = h.count.load(Relaxed);
    let _ = writeln!(o, "ailurus_{name}_bucket{{{label},le=\"+Inf\"}} {count}");
    let _ = writeln!(o, "ailurus_{name}_sum{{{label}}} {}", h.sum_us.load(Relaxed) as f64 / 1e6);
    let _ = writeln!(o, "ailurus_{name}_count{{{label}}} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut prev = 0;
        for i in 0..NUM_BUCKETS - 1 {
            let (lo, hi) = (bucket_low(i), bucket_low(i + 1));
            assert!(hi > lo, "bucket {i}: {lo}..{hi}");
            assert_eq!(lo, if i == 0 { 0 } else { prev });
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            prev = hi;
        }
        assert_eq!(bucket_of(u64::MAX), NUM_BUCKETS - 1);
    }
}
