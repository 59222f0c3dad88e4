//! Pre-processing: RGB8 frame -> normalised NCHW f32 tensor at the model's input size, and the
//! separable resampler that post-processing shares.
//!
//! The resampler is a triangle (bilinear) filter whose support widens when downscaling, so a
//! 1920-wide camera frame is area-averaged rather than aliased. Coefficient tables are cached
//! per (source, destination) size, so a steady stream allocates nothing per frame.

/// Per-output-index source taps for one axis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taps {
    src: usize,
    dst: usize,
    /// For each output index: (first source index, number of taps).
    spans: Vec<(u32, u32)>,
    /// Tap weights, `spans[i].1` of them for output i, concatenated.
    weights: Vec<f32>,
    /// Offset of output i's weights in `weights`.
    offsets: Vec<u32>,
}

impl Taps {
    /// Triangle-filter taps mapping `src` samples onto `dst` samples (pixel centres aligned,
    /// like PyTorch's `align_corners=False` with antialias on downscale).
    pub fn new(src: usize, dst: usize) -> Taps {
        let scale = src as f64 / dst as f64;
        let support = scale.max(1.0);
        let mut t = Taps { src, dst, ..Default::default() };
        for i in 0..dst {
            let center = (i as f64 + 0.5) * scale - 0.5;
            let lo = ((center - support).floor() as i64 + 1).max(0);
            let hi = ((center + support).ceil() as i64 - 1).min(src as i64 - 1);
            let start = t.weights.len();
            let mut sum = 0.0;
            let mut first = None;
            for j in lo..=hi {
                let w = (1.0 - ((j as f64 - center) / support).abs()).max(0.0);
                if w > 0.0 {
                    first.get_or_insert(j);
                    t.weights.push(w as f32);
                    sum += w;
                }
            }
            let (first, n) = match first {
                Some(f) => (f as u32, (t.weights.len() - start) as u32),
                None => {
                    // Degenerate (can only happen at the very edge): nearest sample.
                    t.weights.push(1.0);
                    sum = 1.0;
                    (center.round().clamp(0.0, src as f64 - 1.0) as u32, 1)
                }
            };
            for w in &mut t.weights[start..] {
                *w /= sum as f32;
            }
            t.offsets.push(start as u32);
            t.spans.push((first, n));
        }
        t
    }

    pub fn matches(&self, src: usize, dst: usize) -> bool {
        self.src == src && self.dst == dst && !self.spans.is_empty()
    }

    /// Apply to one strided line.
    #[inline]
    fn sample(&self, i: usize, get: impl Fn(usize) -> f32) -> f32 {
        let (first, n) = self.spans[i];
        let off = self.offsets[i] as usize;
        let mut acc = 0.0;
        for k in 0..n as usize {
            acc += self.weights[off + k] * get(first as usize + k);
        }
        acc
    }
}

/// A reusable separable resampler for planar f32 images.
#[derive(Debug, Default, Clone)]
pub struct Resampler {
    xs: Taps,
    ys: Taps,
    tmp: Vec<f32>,
}

impl Resampler {
    fn prepare(&mut self, sw: usize, sh: usize, dw: usize, dh: usize) {
        if !self.xs.matches(sw, dw) {
            self.xs = Taps::new(sw, dw);
        }
        if !self.ys.matches(sh, dh) {
            self.ys = Taps::new(sh, dh);
        }
    }

    /// Resize an interleaved u8 image with `ch` channels into planar f32 (`[ch, dh, dw]`),
    /// applying `f(channel, value)` to each sample first (normalisation).
    pub fn resize_u8_to_planar(
        &mut self,
        src: &[u8],
        (sw, sh): (usize, usize),
        ch: usize,
        (dw, dh): (usize, usize),
        f: impl Fn(usize, f32) -> f32,
        out: &mut [f32],
    ) {
        self.prepare(sw, sh, dw, dh);
        // Horizontal pass: [ch, sh, dw].
        self.tmp.resize(ch * sh * dw, 0.0);
        for y in 0..sh {
            let row = &src[y * sw * ch..(y + 1) * sw * ch];
            for x in 0..dw {
                for c in 0..ch {
                    self.tmp[(c * sh + y) * dw + x] = self.xs.sample(x, |j| f(c, row[j * ch + c] as f32));
                }
            }
        }
        // Vertical pass.
        for c in 0..ch {
            let plane = &self.tmp[c * sh * dw..(c + 1) * sh * dw];
            for y in 0..dh {
                let o = &mut out[(c * dh + y) * dw..(c * dh + y + 1) * dw];
                for (x, v) in o.iter_mut().enumerate() {
                    *v = self.ys.sample(y, |j| plane[j * dw + x]);
                }
            }
        }
    }

    /// Resize one f32 plane `[sh, sw]` to `[dh, dw]`.
    pub fn resize_plane(&mut self, src: &[f32], (sw, sh): (usize, usize), (dw, dh): (usize, usize), out: &mut [f32]) {
        self.prepare(sw, sh, dw, dh);
        self.tmp.resize(sh * dw, 0.0);
        for y in 0..sh {
            let row = &src[y * sw..(y + 1) * sw];
            for x in 0..dw {
                self.tmp[y * dw + x] = self.xs.sample(x, |j| row[j]);
            }
        }
        for y in 0..dh {
            for x in 0..dw {
                out[y * dw + x] = self.ys.sample(y, |j| self.tmp[j * dw + x]);
            }
        }
    }
}

/// Channel normalisation of the model input: `(v/255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// RGB8 frame -> `[1, 3, size, size]` normalised tensor data, into `out` (resized as needed,
/// so a steady stream reuses it).
pub fn preprocess(
    rs: &mut Resampler,
    rgb: &[u8],
    (w, h): (usize, usize),
    size: usize,
    norm: &Normalize,
    out: &mut Vec<f32>,
) {
    out.resize(3 * size * size, 0.0);
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
    let bias: [f32; 3] = std::array::from_fn(|c| -norm.mean[c] / norm.std[c]);
    rs.resize_u8_to_planar(rgb, (w, h), 3, (size, size), |c, v| v * scale[c] + bias[c], out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_and_identity_is_exact() {
        for (s, d) in [(10, 10), (10, 3), (3, 10), (1920, 448), (7, 1)] {
            let t = Taps::new(s, d);
            for i in 0..d {
                let (_, n) = t.spans[i];
                let o = t.offsets[i] as usize;
                let sum: f32 = t.weights[o..o + n as usize].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{s}->{d} at {i}: {sum}");
            }
        }
        let mut rs = Resampler::default();
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut out = vec![0.0; 12];
        rs.resize_plane(&src, (4, 3), (4, 3), &mut out);
        assert_eq!(src, out);
    }

    #[test]
    fn downscale_by_two_averages_neighbours() {
        // A 4x1 row [0, 2, 4, 6] halved: a triangle of half-width 2 centred at 0.5 weighs
        // samples 0,1,2 by 0.75, 0.75, 0.25 (as PIL's antialiased bilinear does).
        let mut rs = Resampler::default();
        let mut out = vec![0.0; 2];
        rs.resize_plane(&[0.0, 2.0, 4.0, 6.0], (4, 1), (2, 1), &mut out);
        let want = [(0.75 * 2.0 + 0.25 * 4.0) / 1.75, (0.25 * 2.0 + 0.75 * 4.0 + 0.75 * 6.0) / 1.75];
        assert!((out[0] - want[0]).abs() < 1e-5 && (out[1] - want[1]).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn preprocess_normalises_constant_image() {
        let rgb = [255u8, 0, 128].repeat(5 * 7);
        let norm = Normalize { mean: [0.5, 0.5, 0.5], std: [0.5, 0.25, 1.0] };
        let mut out = Vec::new();
        preprocess(&mut Resampler::default(), &rgb, (5, 7), 4, &norm, &mut out);
        assert_eq!(out.len(), 3 * 16);
        assert!(out[..16].iter().all(|v| (v - 1.0).abs() < 1e-5));
        assert!(out[16..32].iter().all(|v| (v + 2.0).abs() < 1e-5));
        let b = (128.0 / 255.0 - 0.5) / 1.0;
        assert!(out[32..].iter().all(|v| (v - b).abs() < 1e-5));
    }
}
