//! The cluster view (`sink::clusters::draw`) against a slow, per-pixel reference of the same
//! picture, on random partitions of several grids and image sizes; and the property the
//! preview check relies on: a partition of M clusters shows exactly M fill colours.

use std::collections::HashSet;

use ailurus::reduce::Partition;
use ailurus::sink::clusters::{cluster_colour, draw, label_rect, mark_radius, view_size, INK, PAPER};

pub struct Rng(pub u64);
impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // xorshift64*: the raw state's low bits of consecutive draws are linearly related.
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n as u64) as usize
    }
}

/// A random partition of a `gh x gw` grid into `m` clusters: each cluster grows from a random
/// seed token by random steps to neighbours (so clusters are mostly connected, as real ones),
/// every id is used, the centre is the seed.
pub fn random_partition(rng: &mut Rng, (gh, gw): (usize, usize), m: usize, input_size: u32) -> Partition {
    let n = gh * gw;
    let mut assign = vec![u32::MAX; n];
    let mut centers = Vec::with_capacity(m);
    while centers.len() < m {
        let t = rng.below(n);
        if assign[t] == u32::MAX {
            assign[t] = centers.len() as u32;
            centers.push(t as u32);
        }
    }
    while assign.contains(&u32::MAX) {
        let t = rng.below(n);
        if assign[t] != u32::MAX {
            continue;
        }
        let (y, x) = (t / gw, t % gw);
        let nb = [(y.wrapping_sub(1), x), (y + 1, x), (y, x.wrapping_sub(1)), (y, x + 1)][rng.below(4)];
        if nb.0 < gh && nb.1 < gw && assign[nb.0 * gw + nb.1] != u32::MAX {
            assign[t] = assign[nb.0 * gw + nb.1];
        }
    }
    let mut sizes = vec![0; m];
    for &a in &assign {
        sizes[a as usize] += 1;
    }
    Partition { input_size, grid: (gh, gw), m, assign, centers, sizes }
}

/// The token of pixel `(x, y)`: the pixel centre mapped onto the model input (the frame is
/// resized whole), then onto the grid; in floating point, straight from the definition.
fn token(p: &Partition, x: u32, y: u32, w: u32, h: u32) -> usize {
    let (gh, gw) = p.grid;
    let tx = (((x as f64 + 0.5) / w as f64) * gw as f64).floor().min(gw as f64 - 1.0) as usize;
    let ty = (((y as f64 + 0.5) / h as f64) * gh as f64).floor().min(gh as f64 - 1.0) as usize;
    ty * gw + tx
}

/// The picture, pixel by pixel: the cluster's colour; black where the pixel to the right or
/// below belongs to another cluster; then for each centre token a white square with a black
/// outline at the middle of the token's pixels (found by scanning every pixel).
fn reference(p: &Partition, w: u32, h: u32) -> Vec<[u8; 3]> {
    let cl = |x, y| p.assign[token(p, x, y, w, h)];
    let mut img = vec![[0u8; 3]; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let c = cl(x, y);
            let border = (x + 1 < w && cl(x + 1, y) != c) || (y + 1 < h && cl(x, y + 1) != c);
            img[(y * w + x) as usize] = if border { INK } else { cluster_colour(c) };
        }
    }
    for &t in &p.centers {
        let (mut x0, mut x1, mut y0, mut y1) = (u32::MAX, 0, u32::MAX, 0);
        for y in 0..h {
            for x in 0..w {
                if token(p, x, y, w, h) == t as usize {
                    (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
                }
            }
        }
        let (cx, cy) = (((x0 + x1) / 2) as i64, ((y0 + y1) / 2) as i64);
        let r = mark_radius((x1 - x0 + 1) as usize, (y1 - y0 + 1) as usize) as i64;
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                let d = (x - cx).abs().max((y - cy).abs());
                if d <= r + 1 {
                    img[(y as u32 * w + x as u32) as usize] = if d == r + 1 { INK } else { PAPER };
                }
            }
        }
    }
    img
}

#[test]
fn draw_matches_the_per_pixel_reference() {
    let mut rng = Rng(0x005e_edc1_u64);
    let cases = [((16, 16), 64, 224, (224, 224)), ((16, 16), 64, 224, (512, 384)), ((8, 8), 5, 112, (97, 131))];
    let cases = cases.into_iter().chain([((32, 32), 300, 448, (640, 480)), ((4, 4), 16, 56, (20, 12))]);
    for ((gh, gw), m, size, (fw, fh)) in cases {
        let p = random_partition(&mut rng, (gh, gw), m, size);
        let (w, h) = view_size(&p, fw, fh);
        assert!(w >= 8 * gw as u32 && h >= 8 * gh as u32, "view of {fw}x{fh}: {w}x{h}");
        let img = draw(&p, w, h).unwrap();
        let text = format!("M={m} N={} {size}px", gh * gw);
        let (_, ly, lw, lh) = label_rect(&text, w, h);
        assert_eq!((ly, lw, img.dimensions()), (h, w, (w, h + lh)), "the label is a strip below the picture");
        let want = reference(&p, w, h);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(img.get_pixel(x, y).0, want[(y * w + x) as usize], "M={m} {w}x{h}: pixel ({x},{y})");
            }
        }
        let strip: Vec<[u8; 3]> =
            (h..h + lh).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| img.get_pixel(x, y).0).collect();
        assert!(strip.iter().all(|&c| c == INK || c == PAPER), "the strip is black and white");
        let text_px = strip.iter().filter(|&&c| c == PAPER).count();
        assert!(text_px > 30, "the label shows text ({text_px} white pixels)");
    }
}

#[test]
fn m_clusters_show_m_distinct_fill_colours() {
    let mut rng = Rng(77);
    for m in [1, 2, 64, 200] {
        let p = random_partition(&mut rng, (16, 16), m, 224);
        let (w, h) = view_size(&p, 224, 224);
        let img = draw(&p, w, h).unwrap();
        let fills: HashSet<[u8; 3]> = img.pixels().map(|px| px.0).filter(|&c| c != INK && c != PAPER).collect();
        assert_eq!(fills.len(), m, "M={m}");
    }
}

#[test]
fn a_broken_partition_is_an_error_not_a_panic() {
    let mut p = random_partition(&mut Rng(3), (4, 4), 4, 56);
    p.assign[5] = 9;
    assert_eq!(draw(&p, 64, 64).unwrap_err(), "cluster id 9 out of 0..4");
    let p = random_partition(&mut Rng(3), (4, 4), 4, 56);
    assert!(draw(&p, 3, 64).unwrap_err().contains("cannot show a 4x4 token grid"));
}
