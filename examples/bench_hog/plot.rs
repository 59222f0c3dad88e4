//! The bench_hog picture: latency, input size and M over time, with the target and the hog's
//! start, drawn with the project's one chart renderer (`src/commands/plot.rs`) as three
//! panels stacked into one PNG.

#[path = "../../src/commands/plot.rs"]
#[allow(dead_code)]
mod chart;

use chart::{Plot, Series, PALETTE};
use image::{Rgb, RgbImage};

pub struct Point {
    pub t: f64,
    pub latency_ms: f64,
    pub size: u32,
    pub m: usize,
}

const W: u32 = 1400;
const PANEL_H: u32 = 420;

fn series(name: &str, points: Vec<(f64, f64)>, color: [u8; 3], line: bool) -> Series {
    Series { name: name.into(), points, color, line }
}

/// A vertical line at `t` from `lo` to `hi`, as a two-point series.
fn marker(name: &str, t: f64, lo: f64, hi: f64) -> Series {
    series(name, vec![(t, lo), (t, hi)], [0, 0, 0], true)
}

/// Draw the three panels.
pub fn draw(pts: &[Point], target_ms: f64, hog_t: f64, sizes: &[u32]) -> RgbImage {
    let t_max = pts.iter().map(|p| p.t).fold(1.0, f64::max);
    let lat_hi = pts.iter().map(|p| p.latency_ms).fold(target_ms, f64::max);
    let mut latency = Plot {
        title: "capture to mask latency per frame".into(),
        x_label: "time (s)".into(),
        y_label: "latency (ms)".into(),
        series: vec![series("target", vec![(0.0, target_ms), (t_max, target_ms)], [220, 30, 30], true)],
    };
    for (i, &s) in sizes.iter().enumerate() {
        let p: Vec<(f64, f64)> = pts.iter().filter(|p| p.size == s).map(|p| (p.t, p.latency_ms)).collect();
        latency.series.push(series(&format!("{s} px"), p, PALETTE[i % PALETTE.len()], false));
    }
    let mut size = Plot {
        title: "input size".into(),
        x_label: "time (s)".into(),
        y_label: "px".into(),
        series: vec![series("size", pts.iter().map(|p| (p.t, p.size as f64)).collect(), PALETTE[0], true)],
    };
    let mut m = Plot {
        title: "M (tokens in the middle blocks)".into(),
        x_label: "time (s)".into(),
        y_label: "M".into(),
        series: vec![series("M", pts.iter().map(|p| (p.t, p.m as f64)).collect(), PALETTE[1], true)],
    };
    if hog_t.is_finite() {
        latency.series.push(marker("hog starts", hog_t, 0.0, lat_hi));
        let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(1));
        size.series.push(marker("hog starts", hog_t, lo as f64, hi as f64));
        let m_hi = pts.iter().map(|p| p.m).max().unwrap_or(1);
        m.series.push(marker("hog starts", hog_t, 0.0, m_hi as f64));
    }
    let mut img = RgbImage::from_pixel(W, 3 * PANEL_H, Rgb([255, 255, 255]));
    for (i, p) in [latency, size, m].iter().enumerate() {
        image::imageops::overlay(&mut img, &p.render(W, PANEL_H), 0, (i as u32 * PANEL_H) as i64);
    }
    img
}
