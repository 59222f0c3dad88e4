//! A small plot drawn with the `image` crate: latency, input size and M over time, with the
//! target and the hog's start marked. Text uses a built-in 3x5 pixel font (upper case).

use image::{Rgb, RgbImage};

pub struct Point {
    pub t: f64,
    pub latency_ms: f64,
    pub size: u32,
    pub m: usize,
}

const W: u32 = 1400;
const H: u32 = 1000;
const LEFT: i64 = 90;
const RIGHT: i64 = W as i64 - 30;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([170, 170, 170]);
const LIGHT: Rgb<u8> = Rgb([232, 232, 232]);
const RED: Rgb<u8> = Rgb([220, 30, 30]);
const SIZE_COLOURS: [Rgb<u8>; 6] = [
    Rgb([31, 90, 200]),
    Rgb([30, 160, 60]),
    Rgb([240, 140, 0]),
    Rgb([200, 40, 160]),
    Rgb([120, 80, 40]),
    Rgb([0, 170, 170]),
];

fn glyph(c: char) -> [&'static str; 5] {
    match c {
        '0' | 'O' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["###", "..#", "###", "#..", "###"],
        '3' => ["###", "..#", "###", "..#", "###"],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' | 'S' => ["###", "#..", "###", "..#", "###"],
        '6' => ["###", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", "..#", "..#", "..#"],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "###"],
        '.' => ["...", "...", "...", "...", ".#."],
        '/' => ["..#", "..#", ".#.", "#..", "#.."],
        '-' => ["...", "...", "###", "...", "..."],
        '=' => ["...", "###", "...", "###", "..."],
        ':' => ["...", ".#.", "...", ".#.", "..."],
        '(' => [".#.", "#..", "#..", "#..", ".#."],
        ')' => [".#.", "..#", "..#", "..#", ".#."],
        'A' => [".#.", "#.#", "###", "#.#", "#.#"],
        'B' => ["##.", "#.#", "##.", "#.#", "##."],
        'C' => ["###", "#..", "#..", "#..", "###"],
        'D' => ["##.", "#.#", "#.#", "#.#", "##."],
        'E' => ["###", "#..", "##.", "#..", "###"],
        'F' => ["###", "#..", "##.", "#..", "#.."],
        'G' => ["###", "#..", "#.#", "#.#", "###"],
        'H' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'I' => ["###", ".#.", ".#.", ".#.", "###"],
        'K' => ["#.#", "#.#", "##.", "#.#", "#.#"],
        'L' => ["#..", "#..", "#..", "#..", "###"],
        'M' => ["#.#", "###", "###", "#.#", "#.#"],
        'N' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'P' => ["###", "#.#", "###", "#..", "#.."],
        'R' => ["##.", "#.#", "##.", "#.#", "#.#"],
        'T' => ["###", ".#.", ".#.", ".#.", ".#."],
        'U' => ["#.#", "#.#", "#.#", "#.#", "###"],
        'V' => ["#.#", "#.#", "#.#", "#.#", ".#."],
        'W' => ["#.#", "#.#", "###", "###", "#.#"],
        'X' => ["#.#", "#.#", ".#.", "#.#", "#.#"],
        'Y' => ["#.#", "#.#", ".#.", ".#.", ".#."],
        'Z' => ["###", "..#", ".#.", "#..", "###"],
        _ => ["...", "...", "...", "...", "..."],
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Text at (x, y) (top left), 3x5 glyphs scaled by `s`.
fn text(img: &mut RgbImage, x: i64, y: i64, s: i64, t: &str, c: Rgb<u8>) {
    for (i, ch) in t.to_uppercase().chars().enumerate() {
        for (r, row) in glyph(ch).iter().enumerate() {
            for (k, px) in row.chars().enumerate() {
                if px == '#' {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(img, x + i as i64 * 4 * s + k as i64 * s + dx, y + r as i64 * s + dy, c);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(t: &str, s: i64) -> i64 {
    t.chars().count() as i64 * 4 * s
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, dash: bool) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err, mut n) = (x0, y0, dx + dy, 0);
    loop {
        if !dash || (n / 6) % 2 == 0 {
            put(img, x, y, c);
        }
        n += 1;
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

fn square(img: &mut RgbImage, x: i64, y: i64, r: i64, c: Rgb<u8>) {
    for dy in -r..=r {
        for dx in -r..=r {
            put(img, x + dx, y + dy, c);
        }
    }
}

/// A "nice" tick step for a range.
fn step(range: f64, ticks: f64) -> f64 {
    let raw = range / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|k| k * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn fmt(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One panel: y axis from `lo` to `hi` between pixel rows `top` and `bot`; x axis shared.
struct Panel {
    top: i64,
    bot: i64,
    lo: f64,
    hi: f64,
    t_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> i64 {
        LEFT + ((t / self.t_max) * (RIGHT - LEFT) as f64).round() as i64
    }
    fn y(&self, v: f64) -> i64 {
        let f = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        self.bot - (f * (self.bot - self.top) as f64).round() as i64
    }
    fn frame(&self, img: &mut RgbImage, title: &str, x_labels: bool) {
        let dy = step(self.hi - self.lo, 5.0);
        let mut v = (self.lo / dy).ceil() * dy;
        while v <= self.hi + 1e-9 {
            let y = self.y(v);
            line(img, (LEFT, y), (RIGHT, y), LIGHT, false);
            let l = fmt(v);
            text(img, LEFT - 8 - text_width(&l, 2), y - 5, 2, &l, BLACK);
            v += dy;
        }
        let dx = step(self.t_max, 12.0);
        let mut t = 0.0;
        while t <= self.t_max + 1e-9 {
            let x = self.x(t);
            line(img, (x, self.top), (x, self.bot), LIGHT, false);
            if x_labels {
                let l = fmt(t);
                text(img, x - text_width(&l, 2) / 2, self.bot + 8, 2, &l, BLACK);
            }
            t += dx;
        }
        line(img, (LEFT, self.top), (LEFT, self.bot), BLACK, false);
        line(img, (LEFT, self.bot), (RIGHT, self.bot), BLACK, false);
        text(img, LEFT + 6, self.top - 16, 2, title, BLACK);
    }
}

fn colour(size: u32, sizes: &[u32]) -> Rgb<u8> {
    sizes.iter().position(|&s| s == size).map(|i| SIZE_COLOURS[i % SIZE_COLOURS.len()]).unwrap_or(GREY)
}

/// Draw the three panels.
pub fn draw(pts: &[Point], target_ms: f64, hog_t: f64, sizes: &[u32]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, WHITE);
    let t_max = pts.iter().map(|p| p.t).fold(1.0, f64::max) * 1.02;
    let lat_hi = pts.iter().map(|p| p.latency_ms).fold(target_ms * 1.3, f64::max) * 1.05;
    let lat = Panel { top: 60, bot: 520, lo: 0.0, hi: lat_hi, t_max };
    let (smin, smax) =
        (sizes.iter().copied().min().unwrap_or(0) as f64, sizes.iter().copied().max().unwrap_or(1) as f64);
    let size = Panel { top: 580, bot: 740, lo: smin - 28.0, hi: smax + 28.0, t_max };
    let m_hi = pts.iter().map(|p| p.m as f64).fold(1.0, f64::max) * 1.1;
    let mp = Panel { top: 800, bot: 940, lo: 0.0, hi: m_hi, t_max };
    lat.frame(&mut img, "CAPTURE TO MASK LATENCY (MS) PER FRAME", false);
    size.frame(&mut img, "INPUT SIZE (PX)", false);
    mp.frame(&mut img, "M (TOKENS IN THE MIDDLE BLOCKS)", true);
    text(&mut img, RIGHT - text_width("TIME (S)", 2), H as i64 - 24, 2, "TIME (S)", BLACK);
    // Target and hog start.
    let ty = lat.y(target_ms);
    line(&mut img, (LEFT, ty), (RIGHT, ty), RED, true);
    text(&mut img, RIGHT - text_width("TARGET", 2) - 4, ty - 14, 2, "TARGET", RED);
    if hog_t.is_finite() {
        for p in [&lat, &size, &mp] {
            let x = p.x(hog_t);
            line(&mut img, (x, p.top), (x, p.bot), BLACK, true);
        }
        text(&mut img, lat.x(hog_t) + 6, lat.top + 4, 2, "HOG STARTS", BLACK);
    }
    // Series: latency dots coloured by size (grey line between), size steps, M steps.
    for w in pts.windows(2) {
        line(&mut img, (lat.x(w[0].t), lat.y(w[0].latency_ms)), (lat.x(w[1].t), lat.y(w[1].latency_ms)), GREY, false);
        for (p, a, b) in [(&size, w[0].size as f64, w[1].size as f64), (&mp, w[0].m as f64, w[1].m as f64)] {
            let (x0, x1) = (p.x(w[0].t), p.x(w[1].t));
            line(&mut img, (x0, p.y(a)), (x1, p.y(a)), BLACK, false);
            line(&mut img, (x1, p.y(a)), (x1, p.y(b)), BLACK, false);
        }
    }
    for p in pts {
        let c = colour(p.size, sizes);
        square(&mut img, lat.x(p.t), lat.y(p.latency_ms), 3, c);
        square(&mut img, size.x(p.t), size.y(p.size as f64), 2, c);
    }
    // Legend.
    let mut x = LEFT + 420;
    for &s in sizes {
        square(&mut img, x, 24, 5, colour(s, sizes));
        let l = format!("{s} PX");
        text(&mut img, x + 10, 19, 2, &l, BLACK);
        x += text_width(&l, 2) + 40;
    }
    img
}
