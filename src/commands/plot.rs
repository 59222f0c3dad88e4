//! A tiny PNG chart renderer: line/scatter plots with axes, numeric ticks, a legend and a title,
//! drawn pixel by pixel on an `image::RgbImage` with an embedded 5x7 bitmap font.
//!
//! Used for the bench's Pareto plot (speed-up vs fidelity, one curve per strategy) and latency
//! over time. Owns only drawing: it must not compute metrics or read bench files. Points are
//! joined in the order given (sort them first for a curve); non-finite points are skipped.
//!
//! Kept rather than `plotters`: its bitmap backend needs a TrueType font at run time (system
//! fonts through font-kit, or a bundled font file) for any text, and a bench machine or a
//! device image may have neither. This is the one copy: `examples/bench_hog` draws with it too.

use std::path::Path;

use image::{Rgb, RgbImage};

/// One named set of points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: [u8; 3],
    /// Join the points with a line (otherwise markers only).
    pub line: bool,
}

/// A chart: title, axis labels and series. Ranges are automatic (extended to whole ticks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Distinct colours for series, in order.
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

const BG: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

impl Plot {
    /// Render and write a PNG of `width` x `height` pixels.
    pub fn save(&self, path: &Path, width: u32, height: u32) -> Result<(), image::ImageError> {
        self.render(width, height).save_with_format(path, image::ImageFormat::Png)
    }

    /// Render to an image (white background).
    pub fn render(&self, width: u32, height: u32) -> RgbImage {
        let mut img = RgbImage::from_pixel(width.max(1), height.max(1), BG);
        let ax = self.axes(width, height);
        let s = ax.scale;
        let mut c = Canvas { img: &mut img };
        // Grid, ticks and labels.
        for &t in &ax.xticks {
            let x = ax.px(t, ax.y.0).0;
            c.vline(x, ax.top, ax.bottom, GRID);
            c.vline(x, ax.bottom, ax.bottom + 3 * s as i64, INK);
            let label = fmt_tick(t, ax.xstep);
            c.text_centered(&label, x, ax.bottom + 5 * s as i64, s, INK);
        }
        for &t in &ax.yticks {
            let y = ax.px(ax.x.0, t).1;
            c.hline(ax.left, ax.right, y, GRID);
            c.hline(ax.left - 3 * s as i64, ax.left, y, INK);
            let label = fmt_tick(t, ax.ystep);
            let w = text_width(&label, s);
            c.text(&label, ax.left - 5 * s as i64 - w, y - 3 * s as i64, s, INK);
        }
        // Frame.
        c.hline(ax.left, ax.right, ax.top, INK);
        c.hline(ax.left, ax.right, ax.bottom, INK);
        c.vline(ax.left, ax.top, ax.bottom, INK);
        c.vline(ax.right, ax.top, ax.bottom, INK);
        // Title and axis labels.
        let cx = (ax.left + ax.right) / 2;
        c.text_centered(&self.title, width as i64 / 2, 4 * s as i64, s, INK);
        c.text_centered(&self.x_label, cx, ax.bottom + 16 * s as i64, s, INK);
        let cy = (ax.top + ax.bottom) / 2;
        c.text_up(&self.y_label, 3 * s as i64, cy + text_width(&self.y_label, s) / 2, s, INK);
        // Data.
        for se in &self.series {
            let col = Rgb(se.color);
            let pts: Vec<(i64, i64)> =
                se.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| ax.px(x, y)).collect();
            if se.line {
                for w in pts.windows(2) {
                    c.line(w[0], w[1], s, col);
                }
            }
            for &p in &pts {
                c.marker(p, 2 * s as i64, col);
            }
        }
        self.legend(&mut c, &ax);
        img
    }

    fn legend(&self, c: &mut Canvas, ax: &Axes) {
        let named: Vec<&Series> = self.series.iter().filter(|s| !s.name.is_empty()).collect();
        if named.is_empty() {
            return;
        }
        let s = ax.scale as i64;
        let row = 10 * s;
        let w = named.iter().map(|se| text_width(&se.name, ax.scale)).max().unwrap_or(0) + 20 * s;
        let h = row * named.len() as i64 + 4 * s;
        let (x0, y0) = (ax.right - w - 4 * s, ax.top + 4 * s);
        c.fill((x0, y0), (x0 + w, y0 + h), BG);
        c.hline(x0, x0 + w, y0, INK);
        c.hline(x0, x0 + w, y0 + h, INK);
        c.vline(x0, y0, y0 + h, INK);
        c.vline(x0 + w, y0, y0 + h, INK);
        for (i, se) in named.iter().enumerate() {
            let y = y0 + 2 * s + row * i as i64 + 4 * s;
            let col = Rgb(se.color);
            if se.line {
                c.line((x0 + 3 * s, y), (x0 + 13 * s, y), ax.scale, col);
            }
            c.marker((x0 + 8 * s, y), 2 * s, col);
            c.text(&se.name, x0 + 17 * s, y - 3 * s, ax.scale, INK);
        }
    }

    fn axes(&self, width: u32, height: u32) -> Axes {
        let scale = if width.min(height) >= 600 { 2 } else { 1 };
        let pts = self.series.iter().flat_map(|s| &s.points).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x, mut y) = ((f64::INFINITY, f64::NEG_INFINITY), (f64::INFINITY, f64::NEG_INFINITY));
        for &(px, py) in pts {
            x = (x.0.min(px), x.1.max(px));
            y = (y.0.min(py), y.1.max(py));
        }
        let (x, xstep, xticks) = ticks(x);
        let (y, ystep, yticks) = ticks(y);
        let label_w = yticks.iter().map(|&t| text_width(&fmt_tick(t, ystep), scale)).max().unwrap_or(0);
        let s = scale as i64;
        let left = 14 * s + label_w + 6 * s;
        let right = width as i64 - 12 * s;
        let top = 16 * s;
        let bottom = height as i64 - 30 * s;
        Axes {
            scale,
            pad: 4 * s,
            left,
            right: right.max(left + 1),
            top,
            bottom: bottom.max(top + 1),
            x,
            y,
            xstep,
            ystep,
            xticks,
            yticks,
        }
    }
}

/// Pixel frame of the plot area and the data ranges it shows.
struct Axes {
    scale: u32,
    /// Inset of the data area inside the frame, pixels.
    pad: i64,
    left: i64,
    right: i64,
    top: i64,
    bottom: i64,
    x: (f64, f64),
    y: (f64, f64),
    xstep: f64,
    ystep: f64,
    xticks: Vec<f64>,
    yticks: Vec<f64>,
}

impl Axes {
    fn px(&self, x: f64, y: f64) -> (i64, i64) {
        // Inset by `pad` so markers on the range's edge are drawn whole inside the frame.
        let fx = (x - self.x.0) / (self.x.1 - self.x.0);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0);
        let (l, r) = (self.left + self.pad, (self.right - self.pad).max(self.left + self.pad));
        let (t, b) = (self.top + self.pad, (self.bottom - self.pad).max(self.top + self.pad));
        let px = l as f64 + fx * (r - l) as f64;
        let py = b as f64 - fy * (b - t) as f64;
        (px.round() as i64, py.round() as i64)
    }
}

/// A 1-2-5 step giving about 5 ticks over `(lo, hi)`; the range extended to whole steps.
fn ticks((lo, hi): (f64, f64)) -> ((f64, f64), f64, Vec<f64>) {
    let (lo, hi) = if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let (a, b) = ((lo / step).floor(), (hi / step).ceil());
    let ticks = (0..=(b - a) as i64).map(|i| (a + i as f64) * step).collect();
    ((a * step, b * step), step, ticks)
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        format!("{:.decimals$}", 0.0)
    } else {
        s
    }
}

fn text_width(s: &str, scale: u32) -> i64 {
    (s.chars().count() as i64 * 6 - 1).max(0) * scale as i64
}

/// Clipped drawing primitives.
struct Canvas<'a> {
    img: &'a mut RgbImage,
}

impl Canvas<'_> {
    fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    fn fill(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.put(x, y, c);
            }
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: Rgb<u8>) {
        self.fill((x0.min(x1), y), (x0.max(x1), y), c);
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: Rgb<u8>) {
        self.fill((x, y0.min(y1)), (x, y0.max(y1)), c);
    }

    /// Bresenham line of `thick` pixels.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thick: u32, c: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let t = thick as i64;
        loop {
            self.fill((x - t / 2, y - t / 2), (x + (t - 1) / 2, y + (t - 1) / 2), c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A filled disc of radius `r`.
    fn marker(&mut self, (cx, cy): (i64, i64), r: i64, c: Rgb<u8>) {
        for y in -r..=r {
            for x in -r..=r {
                if x * x + y * y <= r * r + r {
                    self.put(cx + x, cy + y, c);
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y).
    fn text(&mut self, s: &str, x: i64, y: i64, scale: u32, c: Rgb<u8>) {
        self.glyphs(s, scale, c, |col, row| (x + col, y + row));
    }

    fn text_centered(&mut self, s: &str, cx: i64, y: i64, scale: u32, c: Rgb<u8>) {
        self.text(s, cx - text_width(s, scale) / 2, y, scale, c);
    }

    /// Text rotated 90° counter-clockwise (reading bottom to top), starting at (x, y_bottom).
    fn text_up(&mut self, s: &str, x: i64, y_bottom: i64, scale: u32, c: Rgb<u8>) {
        self.glyphs(s, scale, c, |col, row| (x + row, y_bottom - col));
    }

    /// Draw every set font pixel at `at(column, row)` in text-space pixels.
    fn glyphs(&mut self, s: &str, scale: u32, c: Rgb<u8>, at: impl Fn(i64, i64) -> (i64, i64)) {
        let k = scale as i64;
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (gx, bits) in g.iter().enumerate() {
                for gy in 0..7 {
                    if bits >> gy & 1 == 0 {
                        continue;
                    }
                    for dy in 0..k {
                        for dx in 0..k {
                            let (px, py) = at((i as i64 * 6 + gx as i64) * k + dx, gy as i64 * k + dy);
                            self.put(px, py, c);
                        }
                    }
                }
            }
        }
    }
}

/// The 5 column bytes of a character (bit 0 = top row); `?` for anything outside ASCII 32..126.
fn glyph(ch: char) -> [u8; 5] {
    let i = ch as usize;
    let i = if (32..127).contains(&i) { i - 32 } else { '?' as usize - 32 };
    FONT[i]
}

/// Classic 5x7 font, ASCII 32..126, column-major, bit 0 at the top.
#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], [0x00, 0x00, 0x5F, 0x00, 0x00], [0x00, 0x07, 0x00, 0x07, 0x00], // space ! "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], [0x24, 0x2A, 0x7F, 0x2A, 0x12], [0x23, 0x13, 0x08, 0x64, 0x62], // # $ %
    [0x36, 0x49, 0x55, 0x22, 0x50], [0x00, 0x05, 0x03, 0x00, 0x00], [0x00, 0x1C, 0x22, 0x41, 0x00], // & ' (
    [0x00, 0x41, 0x22, 0x1C, 0x00], [0x14, 0x08, 0x3E, 0x08, 0x14], [0x08, 0x08, 0x3E, 0x08, 0x08], // ) * +
    [0x00, 0x50, 0x30, 0x00, 0x00], [0x08, 0x08, 0x08, 0x08, 0x08], [0x00, 0x60, 0x60, 0x00, 0x00], // , - .
    [0x20, 0x10, 0x08, 0x04, 0x02], [0x3E, 0x51, 0x49, 0x45, 0x3E], [0x00, 0x42, 0x7F, 0x40, 0x00], // / 0 1
    [0x42, 0x61, 0x51, 0x49, 0x46], [0x21, 0x41, 0x45, 0x4B, 0x31], [0x18, 0x14, 0x12, 0x7F, 0x10], // 2 3 4
    [0x27, 0x45, 0x45, 0x45, 0x39], [0x3C, 0x4A, 0x49, 0x49, 0x30], [0x01, 0x71, 0x09, 0x05, 0x03], // 5 6 7
    [0x36, 0x49, 0x49, 0x49, 0x36], [0x06, 0x49, 0x49, 0x29, 0x1E], [0x00, 0x36, 0x36, 0x00, 0x00], // 8 9 :
    [0x00, 0x56, 0x36, 0x00, 0x00], [0x08, 0x14, 0x22, 0x41, 0x00], [0x14, 0x14, 0x14, 0x14, 0x14], // ; < =
    [0x00, 0x41, 0x22, 0x14, 0x08], [0x02, 0x01, 0x51, 0x09, 0x06], [0x32, 0x49, 0x79, 0x41, 0x3E], // > ? @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], [0x7F, 0x49, 0x49, 0x49, 0x36], [0x3E, 0x41, 0x41, 0x41, 0x22], // A B C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], [0x7F, 0x49, 0x49, 0x49, 0x41], [0x7F, 0x09, 0x09, 0x09, 0x01], // D E F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], [0x7F, 0x08, 0x08, 0x08, 0x7F], [0x00, 0x41, 0x7F, 0x41, 0x00], // G H I
    [0x20, 0x40, 0x41, 0x3F, 0x01], [0x7F, 0x08, 0x14, 0x22, 0x41], [0x7F, 0x40, 0x40, 0x40, 0x40], // J K L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], [0x7F, 0x04, 0x08, 0x10, 0x7F], [0x3E, 0x41, 0x41, 0x41, 0x3E], // M N O
    [0x7F, 0x09, 0x09, 0x09, 0x06], [0x3E, 0x41, 0x51, 0x21, 0x5E], [0x7F, 0x09, 0x19, 0x29, 0x46], // P Q R
    [0x46, 0x49, 0x49, 0x49, 0x31], [0x01, 0x01, 0x7F, 0x01, 0x01], [0x3F, 0x40, 0x40, 0x40, 0x3F], // S T U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], [0x3F, 0x40, 0x38, 0x40, 0x3F], [0x63, 0x14, 0x08, 0x14, 0x63], // V W X
    [0x07, 0x08, 0x70, 0x08, 0x07], [0x61, 0x51, 0x49, 0x45, 0x43], [0x00, 0x7F, 0x41, 0x41, 0x00], // Y Z [
    [0x02, 0x04, 0x08, 0x10, 0x20], [0x00, 0x41, 0x41, 0x7F, 0x00], [0x04, 0x02, 0x01, 0x02, 0x04], // \ ] ^
    [0x40, 0x40, 0x40, 0x40, 0x40], [0x00, 0x01, 0x02, 0x04, 0x00], [0x20, 0x54, 0x54, 0x54, 0x78], // _ ` a
    [0x7F, 0x48, 0x44, 0x44, 0x38], [0x38, 0x44, 0x44, 0x44, 0x20], [0x38, 0x44, 0x44, 0x48, 0x7F], // b c d
    [0x38, 0x54, 0x54, 0x54, 0x18], [0x08, 0x7E, 0x09, 0x01, 0x02], [0x0C, 0x52, 0x52, 0x52, 0x3E], // e f g
    [0x7F, 0x08, 0x04, 0x04, 0x78], [0x00, 0x44, 0x7D, 0x40, 0x00], [0x20, 0x40, 0x44, 0x3D, 0x00], // h i j
    [0x7F, 0x10, 0x28, 0x44, 0x00], [0x00, 0x41, 0x7F, 0x40, 0x00], [0x7C, 0x04, 0x18, 0x04, 0x78], // k l m
    [0x7C, 0x08, 0x04, 0x04, 0x78], [0x38, 0x44, 0x44, 0x44, 0x38], [0x7C, 0x14, 0x14, 0x14, 0x08], // n o p
    [0x08, 0x14, 0x14, 0x18, 0x7C], [0x7C, 0x08, 0x04, 0x04, 0x08], [0x48, 0x54, 0x54, 0x54, 0x20], // q r s
    [0x04, 0x3F, 0x44, 0x40, 0x20], [0x3C, 0x40, 0x40, 0x20, 0x7C], [0x1C, 0x20, 0x40, 0x20, 0x1C], // t u v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], [0x44, 0x28, 0x10, 0x28, 0x44], [0x0C, 0x50, 0x50, 0x50, 0x3C], // w x y
    [0x44, 0x64, 0x54, 0x4C, 0x44], [0x00, 0x08, 0x36, 0x41, 0x00], [0x00, 0x00, 0x7F, 0x00, 0x00], // z { |
    [0x00, 0x41, 0x36, 0x08, 0x00], [0x08, 0x04, 0x08, 0x10, 0x08],                                 // } ~
];

#[cfg(test)]
mod tests {
    use super::*;

    fn pareto() -> Plot {
        Plot {
            title: "Pareto: speed-up vs fidelity".into(),
            x_label: "speed-up (x)".into(),
            y_label: "mask IoU".into(),
            series: vec![
                Series {
                    name: "lowres".into(),
                    points: vec![(1.0, 1.0), (1.5, 0.83), (2.4, 0.82), (3.3, 0.80)],
                    color: PALETTE[0],
                    line: true,
                },
                Series {
                    name: "ailurus".into(),
                    points: vec![(1.52, 0.84), (2.01, 0.68)],
                    color: PALETTE[1],
                    line: false,
                },
            ],
        }
    }

    #[test]
    fn saved_png_has_the_size_and_ink_where_points_lie() {
        let p = pareto();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pareto.png");
        p.save(&path, 640, 420).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 420));
        let ax = p.axes(640, 420);
        for se in &p.series {
            for &(x, y) in &se.points {
                let (px, py) = ax.px(x, y);
                assert!(ax.left <= px && px <= ax.right && ax.top <= py && py <= ax.bottom, "({x},{y}) outside");
                let c = *img.get_pixel(px as u32, py as u32);
                // The legend may cover a point; then it is still not background.
                assert_ne!(c, BG, "no ink at ({x},{y}) -> ({px},{py})");
            }
        }
        // A point's own colour is there (the ailurus marker at 2.01 is far from the legend).
        let (px, py) = ax.px(2.01, 0.68);
        assert_eq!(*img.get_pixel(px as u32, py as u32), Rgb(PALETTE[1]));
        // The lower-right corner of the plot area (no data, legend or grid line) stays background.
        assert_eq!(*img.get_pixel(ax.right as u32 - 2, ax.bottom as u32 - 2), BG);
    }

    #[test]
    fn ticks_cover_the_data_with_round_steps() {
        let ((lo, hi), step, t) = ticks((0.013, 0.087));
        assert_eq!(step, 0.02);
        assert!(lo <= 0.013 && hi >= 0.087);
        assert!((3..=7).contains(&t.len()), "{t:?}");
        assert_eq!(fmt_tick(t[0], step), "0.00");
        let ((lo, hi), step, _) = ticks((1200.0, 1200.0));
        assert!(lo < 1200.0 && hi > 1200.0 && step > 0.0);
        let ((lo, hi), _, _) = ticks((f64::INFINITY, f64::NEG_INFINITY));
        assert_eq!((lo, hi), (0.0, 1.0));
        assert_eq!(fmt_tick(-0.0000001, 0.5), "0.0");
    }

    #[test]
    fn empty_tiny_and_odd_plots_do_not_panic() {
        let mut p = Plot::default();
        assert_eq!(p.render(10, 5).dimensions(), (10, 5));
        p.series.push(Series {
            name: "ünïcode ~".into(),
            points: vec![(f64::NAN, 1.0), (2.0, 2.0)],
            color: [0, 0, 0],
            line: true,
        });
        assert_eq!(p.render(1, 1).dimensions(), (1, 1));
        assert_eq!(p.render(300, 200).dimensions(), (300, 200));
    }
}
