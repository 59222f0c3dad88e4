//! Per-class statistics of a mask for the MQTT `meta` message: each class's pixel fraction and
//! the bounding boxes of its largest 4-connected regions; and the run-length encoding of the
//! `mask` message (`masks = "rle"`).
//!
//! Owns only scratch buffers (kept between frames: no allocation per frame once they have
//! grown to the mask size). Must not know about MQTT or JSON beyond the serialisable structs.

use serde::Serialize;

/// One 4-connected region of equal class ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Region {
    #[serde(skip)]
    pub class: u8,
    /// Bounding box: left, top, width, height in mask pixels.
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub pixels: u32,
}

/// One class of the `meta` message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStat {
    pub id: u8,
    pub pixels: u64,
    pub fraction: f64,
    /// The largest regions, largest first (ties: top-most, then left-most).
    pub regions: Vec<Region>,
}

/// Connected components by a two-pass union-find over a raster mask.
#[derive(Default)]
pub struct Labeler {
    labels: Vec<u32>,
    parent: Vec<u32>,
    /// Per provisional label: the region it founded (merged into its root in pass 2).
    acc: Vec<Region>,
    regions: Vec<Region>,
}

fn find(parent: &mut [u32], mut a: u32) -> u32 {
    while parent[a as usize] != a {
        let up = parent[parent[a as usize] as usize];
        parent[a as usize] = up; // path halving
        a = up;
    }
    a
}

fn merge(into: &mut Region, r: &Region) {
    let (x1, y1) = ((into.x + into.w).max(r.x + r.w), (into.y + into.h).max(r.y + r.h));
    into.x = into.x.min(r.x);
    into.y = into.y.min(r.y);
    into.w = x1 - into.x;
    into.h = y1 - into.y;
    into.pixels += r.pixels;
}

impl Labeler {
    /// Every region of `classes` (`width * height`, raster order), in no particular order.
    pub fn regions(&mut self, classes: &[u8], width: usize, height: usize) -> &[Region] {
        debug_assert_eq!(classes.len(), width * height);
        self.labels.clear();
        self.labels.resize(classes.len(), 0);
        self.parent.clear();
        self.acc.clear();
        for y in 0..height {
            for x in 0..width {
                let i = y * width + x;
                let c = classes[i];
                let left = (x > 0 && classes[i - 1] == c).then(|| self.labels[i - 1]);
                let up = (y > 0 && classes[i - width] == c).then(|| self.labels[i - width]);
                let label = match (left, up) {
                    (Some(l), Some(u)) => {
                        let (rl, ru) = (find(&mut self.parent, l), find(&mut self.parent, u));
                        if rl != ru {
                            let (lo, hi) = (rl.min(ru), rl.max(ru));
                            self.parent[hi as usize] = lo;
                        }
                        l
                    }
                    (Some(l), None) => l,
                    (None, Some(u)) => u,
                    (None, None) => {
                        let l = self.parent.len() as u32;
                        self.parent.push(l);
                        self.acc.push(Region { class: c, x: x as u32, y: y as u32, w: 1, h: 1, pixels: 0 });
                        l
                    }
                };
                self.labels[i] = label;
                let r = &mut self.acc[label as usize];
                let (x, y) = (x as u32, y as u32);
                let one = Region { class: c, x, y, w: 1, h: 1, pixels: 1 };
                merge(r, &one);
            }
        }
        // Pass 2: fold every provisional label's region into its root's.
        for l in 0..self.acc.len() {
            let root = find(&mut self.parent, l as u32) as usize;
            if root != l {
                let r = self.acc[l];
                merge(&mut self.acc[root], &r);
                self.acc[l].pixels = 0;
            }
        }
        self.regions.clear();
        self.regions.extend(self.acc.iter().filter(|r| r.pixels > 0));
        &self.regions
    }

    /// Fill `out` with one entry per class id `0..num_classes`: its fraction and its `top`
    /// largest regions. Reuses `out`'s vectors.
    pub fn class_stats(
        &mut self,
        classes: &[u8],
        width: usize,
        height: usize,
        num_classes: usize,
        top: usize,
        out: &mut Vec<ClassStat>,
    ) {
        out.truncate(num_classes);
        while out.len() < num_classes {
            out.push(ClassStat { id: out.len() as u8, pixels: 0, fraction: 0.0, regions: Vec::with_capacity(top) });
        }
        for s in out.iter_mut() {
            s.pixels = 0;
            s.regions.clear();
        }
        self.regions(classes, width, height);
        self.regions.sort_unstable_by(|a, b| (a.class, b.pixels, a.y, a.x).cmp(&(b.class, a.pixels, b.y, b.x)));
        for r in &self.regions {
            if let Some(s) = out.get_mut(r.class as usize) {
                s.pixels += r.pixels as u64;
                if s.regions.len() < top {
                    s.regions.push(*r);
                }
            }
        }
        let total = classes.len().max(1) as f64;
        for s in out.iter_mut() {
            s.fraction = s.pixels as f64 / total;
        }
    }
}

/// `masks = "rle"` payload: a 24-byte header, then runs in raster order.
///
/// Header (little-endian): `b"AILR"`, version `1u8`, class count `u8`, 2 zero bytes, the frame's
/// sequence number `u64`, width `u32`, height `u32`. Each run: the class id `u8`, then the run
/// length as an unsigned LEB128 varint (7 bits per byte, low bits first, high bit = more).
pub fn rle_encode(classes: &[u8], width: u32, height: u32, num_classes: u32, seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"AILR");
    out.extend_from_slice(&[1, num_classes.min(255) as u8, 0, 0]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    let mut i = 0;
    while i < classes.len() {
        let c = classes[i];
        let run = classes[i..].iter().take_while(|&&v| v == c).count();
        out.push(c);
        let mut n = run as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        i += run;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slow reference: flood fill from every unvisited pixel.
    fn reference(classes: &[u8], w: usize, h: usize) -> Vec<Region> {
        let mut seen = vec![false; classes.len()];
        let mut out = Vec::new();
        for start in 0..classes.len() {
            if seen[start] {
                continue;
            }
            let c = classes[start];
            let (mut x0, mut y0, mut x1, mut y1, mut n) = (usize::MAX, usize::MAX, 0, 0, 0u32);
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                (x0, y0, x1, y1, n) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y), n + 1);
                let mut nb = Vec::new();
                if x > 0 {
                    nb.push(i - 1);
                }
                if x + 1 < w {
                    nb.push(i + 1);
                }
                if y > 0 {
                    nb.push(i - w);
                }
                if y + 1 < h {
                    nb.push(i + w);
                }
                for j in nb {
                    if !seen[j] && classes[j] == c {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            let r = Region {
                class: c,
                x: x0 as u32,
                y: y0 as u32,
                w: (x1 - x0 + 1) as u32,
                h: (y1 - y0 + 1) as u32,
                pixels: n,
            };
            out.push(r);
        }
        out
    }

    fn sorted(mut v: Vec<Region>) -> Vec<Region> {
        v.sort_by_key(|r| (r.class, r.y, r.x, r.w, r.h, r.pixels));
        v
    }

    /// xorshift, so the test needs no crate.
    fn masks() -> impl Iterator<Item = (Vec<u8>, usize, usize)> {
        let mut s = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..200).map(move |k| {
            let (w, h) = (1 + (next() % 23) as usize, 1 + (next() % 17) as usize);
            let classes = 1 + (k % 4) as u64;
            // Blobby masks: copy a neighbour most of the time.
            let mut m = vec![0u8; w * h];
            for i in 0..m.len() {
                m[i] = match next() % 4 {
                    0 => (next() % classes) as u8,
                    1 if i >= w => m[i - w],
                    _ if i > 0 => m[i - 1],
                    _ => 0,
                };
            }
            (m, w, h)
        })
    }

    #[test]
    fn regions_match_a_flood_fill_reference() {
        let mut l = Labeler::default();
        for (m, w, h) in masks() {
            let got = sorted(l.regions(&m, w, h).to_vec());
            assert_eq!(got, sorted(reference(&m, w, h)), "{w}x{h} {m:?}");
        }
    }

    #[test]
    fn class_stats_keep_the_largest_regions_and_fractions() {
        // Class 1: a 2x2 square, a 1x3 bar and a single pixel; class 0 the rest (connected).
        #[rustfmt::skip]
        let m = [
            1, 1, 0, 1, 0,
            1, 1, 0, 1, 0,
            0, 0, 0, 1, 0,
            1, 0, 0, 0, 0,
        ];
        let mut l = Labeler::default();
        let mut out = Vec::new();
        l.class_stats(&m, 5, 4, 3, 2, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].pixels, 8);
        assert!((out[1].fraction - 0.4).abs() < 1e-12);
        let boxes: Vec<_> = out[1].regions.iter().map(|r| (r.x, r.y, r.w, r.h, r.pixels)).collect();
        assert_eq!(boxes, [(0, 0, 2, 2, 4), (3, 0, 1, 3, 3)]);
        assert_eq!(out[0].regions.len(), 1);
        assert_eq!(out[2].pixels, 0);
        assert!(out[2].regions.is_empty());
        // Reused: a smaller class count truncates.
        l.class_stats(&m, 5, 4, 2, 5, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].regions.len(), 3);
    }

    #[test]
    fn rle_round_trips() {
        for (m, w, h) in masks().take(50) {
            let mut buf = Vec::new();
            rle_encode(&m, w as u32, h as u32, 4, 7, &mut buf);
            assert_eq!(&buf[..4], b"AILR");
            assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), 7);
            let mut back = Vec::new();
            let mut i = 24;
            while i < buf.len() {
                let c = buf[i];
                i += 1;
                let (mut n, mut shift) = (0u64, 0);
                loop {
                    let b = buf[i];
                    i += 1;
                    n |= ((b & 0x7f) as u64) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                back.extend(std::iter::repeat_n(c, n as usize));
            }
            assert_eq!(back, m);
        }
        let mut buf = Vec::new();
        rle_encode(&vec![3u8; 300], 300, 1, 4, 0, &mut buf);
        assert_eq!(&buf[24..], &[3, 0xac, 0x02]); // 300 = 0b10_0101100
    }
}
