//! The cluster view: one frame's token partition drawn as an image (`/clusters.png`,
//! `ailurus segment --clusters`).
//!
//! Every patch token's pixels are filled with its cluster's colour (distinct for every cluster
//! id), cluster borders are black, each centre token is marked by a white square with a black
//! outline, and a strip below the picture says `M=64 N=256 224px` in its left corner (below,
//! not over it: a label over the picture would hide the clusters under it). The picture has the
//! frame's size (scaled up for a frame too small to show the grid), so it lines up with the
//! frame, the mask and the overlay (the page clips the strip). Drawn only on request, never per
//! frame.
//!
//! Must not: compute a partition (`reduce`), or know about HTTP (`http.rs`).

use crate::reduce::Partition;

/// Cluster borders, the centre marks' outline and the label's background.
pub const INK: [u8; 3] = [0, 0, 0];
/// Centre marks and the label's text.
pub const PAPER: [u8; 3] = [255, 255, 255];

/// The colour of cluster `id`: distinct for every id below 2^18 (a bijective mix of the id's
/// bits, 6 bits per channel), each channel in 64..=253, so never [`INK`] or [`PAPER`]; ids next
/// to each other (clusters that are often neighbours) get very different colours.
pub fn cluster_colour(id: u32) -> [u8; 3] {
    const MASK: u32 = (1 << 18) - 1;
    // Each step is a bijection on 18 bits (odd multiplier, xor with a right shift).
    let mut x = id & MASK;
    x = x.wrapping_mul(0x9E3B) & MASK;
    x ^= x >> 9;
    x = x.wrapping_mul(0x5BD1) & MASK;
    x ^= x >> 7;
    let ch = |v: u32| (64 + 3 * (v & 63)) as u8;
    [ch(x), ch(x >> 6), ch(x >> 12)]
}

/// The size the view of a `width x height` frame is drawn at: the frame's, scaled up by an
/// integer factor until every token is at least 8 pixels wide and tall.
pub fn view_size(p: &Partition, width: u32, height: u32) -> (u32, u32) {
    let (gh, gw) = (p.grid.0.max(1) as u32, p.grid.1.max(1) as u32);
    let (w, h) = (width.max(1), height.max(1));
    let k = (8 * gw).div_ceil(w).max((8 * gh).div_ceil(h)).max(1);
    (w * k, h * k)
}

/// The token column (row) of pixel column `x` of `w` over a grid `g` tokens wide: the frame is
/// resized to the model input whole (no crop), pixel centres aligned.
pub fn token_of(x: u32, w: u32, g: usize) -> usize {
    (((2 * x as u64 + 1) * g as u64) / (2 * w as u64)).min(g as u64 - 1) as usize
}

/// Draw `p` at `width x height` (see [`view_size`]), plus the label strip below (the image is
/// `label_rect(..).3` taller); the problem when `p` fails [`Partition::check`] or the picture
/// is smaller than the grid.
pub fn draw(p: &Partition, width: u32, height: u32) -> Result<image::RgbImage, String> {
    p.check()?;
    let (gh, gw) = p.grid;
    if (width as usize) < gw || (height as usize) < gh {
        return Err(format!("a {width}x{height} image cannot show a {gh}x{gw} token grid"));
    }
    let w = width as usize;
    let cols: Vec<usize> = (0..width).map(|x| token_of(x, width, gw)).collect();
    let rows: Vec<usize> = (0..height).map(|y| token_of(y, height, gh)).collect();
    let cluster = |ty: usize, tx: usize| p.assign[ty * gw + tx];
    let colours: Vec<[u8; 3]> = (0..p.m as u32).map(cluster_colour).collect();
    let text = format!("M={} N={} {}px", p.m, p.n(), p.input_size);
    let (_, strip) = label_size(&text, width, height);
    let mut img = image::RgbImage::new(width, height + strip);
    let buf: &mut [u8] = &mut img;
    for (y, &ty) in rows.iter().enumerate() {
        let below = rows.get(y + 1).copied();
        let line = &mut buf[y * w * 3..(y + 1) * w * 3];
        for (x, (&tx, px)) in cols.iter().zip(line.chunks_exact_mut(3)).enumerate() {
            let c = cluster(ty, tx);
            let right = cols.get(x + 1).is_some_and(|&rx| cluster(ty, rx) != c);
            let down = below.is_some_and(|by| cluster(by, tx) != c);
            px.copy_from_slice(if right || down { &INK } else { &colours[c as usize] });
        }
    }
    for &t in &p.centers {
        let (ty, tx) = (t as usize / gw, t as usize % gw);
        mark(&mut img, span(&cols, tx), span(&rows, ty));
    }
    label(&mut img, &text, width, height);
    Ok(img)
}

/// The pixels `[first, last + 1)` whose token index (in `lut`) is `t` (a run: `lut` ascends).
fn span(lut: &[usize], t: usize) -> (usize, usize) {
    let lo = lut.partition_point(|&v| v < t);
    (lo, lut.partition_point(|&v| v <= t))
}

/// The half side of the centre mark in a token of `a x b` pixels.
pub fn mark_radius(a: usize, b: usize) -> usize {
    (a.min(b) / 6).max(1)
}

/// A white square (half side `r`) with a black outline at the middle of the token's pixels.
fn mark(img: &mut image::RgbImage, (x0, x1): (usize, usize), (y0, y1): (usize, usize)) {
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    let (cx, cy, r) = ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, mark_radius(x1 - x0, y1 - y0) as i64);
    let (w, h) = (img.width() as i64, (img.height() - img.height().min(label_height(img.width()))) as i64);
    for dy in -(r + 1)..=r + 1 {
        for dx in -(r + 1)..=r + 1 {
            let (x, y) = (cx as i64 + dx, cy as i64 + dy);
            if x < 0 || y < 0 || x >= w || y >= h {
                continue;
            }
            let ring = dx.abs() == r + 1 || dy.abs() == r + 1;
            img.put_pixel(x as u32, y as u32, image::Rgb(if ring { INK } else { PAPER }));
        }
    }
}

/// Our own 5x7 bitmap font for the dozen characters of the corner label: a font crate (and a
/// font file) for one short line of digits would be far more than the use.
fn glyph(ch: char) -> [u8; 7] {
    match ch {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        _ => [0; 7],
    }
}

/// The pixel scale of the label's glyphs on a picture `width` wide.
fn label_scale(width: u32) -> u32 {
    (width / 320).max(1)
}

/// The height of the label strip below a picture `width` wide.
fn label_height(width: u32) -> u32 {
    11 * label_scale(width)
}

fn label_size(text: &str, width: u32, _height: u32) -> (u32, u32) {
    let s = label_scale(width);
    (((text.chars().count() as u32 * 6 + 3) * s).min(width), label_height(width))
}

/// Where the label of `text` goes under a `width x height` picture: `(x, y, w, h)`, the
/// whole strip below the picture (black, the text white in its left corner).
pub fn label_rect(text: &str, width: u32, height: u32) -> (u32, u32, u32, u32) {
    (0, height, width, label_size(text, width, height).1)
}

/// `text` in white on the black strip below the `width x height` picture.
fn label(img: &mut image::RgbImage, text: &str, width: u32, height: u32) {
    let (_, y0, w, h) = label_rect(text, width, height);
    let s = label_scale(width);
    for y in y0..y0 + h {
        for x in 0..w {
            img.put_pixel(x, y, image::Rgb(INK));
        }
    }
    for (i, ch) in text.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                let (gx, gy) = ((2 + i as u32 * 6 + col) * s, y0 + (2 + row as u32) * s);
                for (x, y) in (0..s * s).map(|k| (gx + k % s, gy + k / s)) {
                    if x < w && y < y0 + h {
                        img.put_pixel(x, y, image::Rgb(PAPER));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_colours_are_distinct_and_never_ink_or_paper() {
        let mut seen = std::collections::HashSet::new();
        for id in 0..(1u32 << 18) {
            let c = cluster_colour(id);
            assert!(c != INK && c != PAPER && c.iter().all(|&v| (64..=253).contains(&v)));
            assert!(seen.insert(c), "id {id}: colour {c:?} repeats");
        }
    }

    #[test]
    fn tokens_of_pixels_cover_the_grid_in_runs() {
        for (w, g) in [(224, 16), (500, 32), (17, 16), (640, 14)] {
            let lut: Vec<usize> = (0..w).map(|x| token_of(x, w, g)).collect();
            assert!(lut.windows(2).all(|p| p[1] == p[0] || p[1] == p[0] + 1), "{w} px over {g}");
            assert_eq!((lut[0], *lut.last().unwrap()), (0, g - 1));
        }
    }
}
