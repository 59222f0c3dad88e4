//! Metrics: per-stage latency histograms, counters, and the Prometheus text rendering.
