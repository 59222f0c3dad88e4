//! `ailurus`: spatial-aware DPC-KNN token clustering (ALGORITHM.md), the product's reducer.
//!
//! Owns the CPU implementation of the clustering spec that the CUDA kernels must match
//! decision for decision: density from the k nearest neighbours inside a Chebyshev window,
//! jittered density order, distance to a higher-density token, score = rho * delta, the M
//! best-scoring tokens as centres, windowed nearest-centre assignment with a fallback, mean
//! merge. Must not allocate once warm at a given size (all scratch lives in the struct) and
//! must not spawn threads.
//!
//! Numbers, in f32 (see `dot` for the bit-exact dot product): `n_i = dot(x_i, x_i)`,
//! `e_ij = max(0, (n_i + n_j) - 2 * dot(x_i, x_j))`, `e_ii = 0`, `D_ij = sqrt(e_ij) / sqrt(C)`,
//! `D_ij^2 = e_ij / C` (the density uses this form, not `D * D`).

use super::dot::{dot_block, dots_gather};
use super::{check_shape, ensure, merge_means, none, AilurusConfig, ReduceError, Reducer, Reduction};

/// "no cluster" marker in `center_of` and a not-yet-assigned token.
const NONE: u32 = u32::MAX;
/// Rows of the sorted token matrix per `dot_block` call in the global delta search.
const ROW_BLOCK: usize = 64;

/// Where `delta` (distance to a higher-density token) is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaSearch {
    /// All tokens (exact DPC).
    Global,
    /// Tokens within this Chebyshev radius; the global search when none there is higher.
    Window(usize),
}

/// Where a token with no centre inside its window goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The nearest centre by D anywhere (ties: lower cluster id).
    Global,
    /// The spatially nearest centre, Euclidean on grid coordinates (ties: lower cluster id).
    Spatial,
}

/// The density tie-break jitter `u(i)` in [0, 1): `((i * 2654435761) mod 2^32 >> 8) / 2^24`.
pub fn jitter(i: usize) -> f32 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0
}

/// `max(0, (ni + nj) - 2 g)`: the squared distance times C.
#[inline(always)]
fn sq(ni: f32, nj: f32, g: f32) -> f32 {
    let v = (ni + nj) - 2.0 * g;
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

/// Token indices in the Chebyshev window of radius `r` around token `i` on an `h x w` grid, in
/// ascending (raster) order.
fn window(i: usize, r: usize, (h, w): (usize, usize)) -> impl Iterator<Item = usize> {
    let (y, x) = (i / w, i % w);
    let (y0, y1) = (y.saturating_sub(r), (y + r).min(h - 1));
    let (x0, x1) = (x.saturating_sub(r), (x + r).min(w - 1));
    (y0..=y1).flat_map(move |yy| (x0..=x1).map(move |xx| yy * w + xx))
}

/// Spatial-aware DPC-KNN with reused scratch. `rho()`, `delta()` and `score()` expose the last
/// analysis (for tests and the CUDA cross-check).
#[derive(Debug)]
pub struct AilurusReducer {
    k: usize,
    radius: usize,
    delta_search: DeltaSearch,
    fallback: Fallback,
    n: usize,
    norms: Vec<f32>,
    rho: Vec<f32>,
    key: Vec<f32>,
    delta: Vec<f32>,
    score: Vec<f32>,
    /// Tokens from highest to lowest density key; `rank` is its inverse.
    order: Vec<u32>,
    rank: Vec<u32>,
    sorted: Vec<f32>,
    sorted_norms: Vec<f32>,
    block: Vec<f32>,
    /// Per token, `D^2` to every window slot (`+inf` outside the grid), `[n, (2r+1)^2]`.
    win: Vec<f32>,
    js: Vec<u32>,
    dots: Vec<f32>,
    pick: Vec<u32>,
    center_of: Vec<u32>,
    fb: Vec<u32>,
    rows_a: Vec<f32>,
    rows_c: Vec<f32>,
    norms_c: Vec<f32>,
}

impl AilurusReducer {
    /// Knob values `validate` rejects fall back to the defaults ("global"), with a warning.
    pub fn new(cfg: &AilurusConfig) -> Self {
        let delta_search = match cfg.delta.as_str() {
            "window" => DeltaSearch::Window(cfg.delta_radius),
            "global" => DeltaSearch::Global,
            other => {
                log::warn!("[reduce.ailurus] delta {other:?} is unknown; using \"global\"");
                DeltaSearch::Global
            }
        };
        let fallback = match cfg.fallback.as_str() {
            "spatial" => Fallback::Spatial,
            "global" => Fallback::Global,
            other => {
                log::warn!("[reduce.ailurus] fallback {other:?} is unknown; using \"global\"");
                Fallback::Global
            }
        };
        AilurusReducer {
            k: cfg.k.max(1),
            radius: cfg.radius,
            delta_search,
            fallback,
            n: 0,
            norms: Vec::new(),
            rho: Vec::new(),
            key: Vec::new(),
            delta: Vec::new(),
            score: Vec::new(),
            order: Vec::new(),
            rank: Vec::new(),
            sorted: Vec::new(),
            sorted_norms: Vec::new(),
            block: Vec::new(),
            win: Vec::new(),
            js: Vec::new(),
            dots: Vec::new(),
            pick: Vec::new(),
            center_of: Vec::new(),
            fb: Vec::new(),
            rows_a: Vec::new(),
            rows_c: Vec::new(),
            norms_c: Vec::new(),
        }
    }

    /// Local densities rho of the last `density_peaks` / `reduce` with M < N.
    pub fn rho(&self) -> &[f32] {
        &self.rho[..self.n]
    }

    /// Distances to a higher-density token (same run as `rho`).
    pub fn delta(&self) -> &[f32] {
        &self.delta[..self.n]
    }

    /// Scores rho * delta (same run as `rho`).
    pub fn score(&self) -> &[f32] {
        &self.score[..self.n]
    }

    /// Tokens from the highest to the lowest density key (same run as `rho`).
    pub fn order(&self) -> &[u32] {
        &self.order[..self.n]
    }

    /// Compute rho, the density order, delta and the scores of `tokens` (`[h*w, c]`).
    pub fn density_peaks(&mut self, tokens: &[f32], c: usize, grid: (usize, usize)) -> Result<(), ReduceError> {
        let n = check_shape("ailurus", tokens, c, grid)?;
        self.peaks(tokens, c, grid, n);
        Ok(())
    }

    /// Capacity for every data-dependent buffer of an (n, c, m) reduction, up front.
    fn reserve(&mut self, n: usize, c: usize, m: usize) {
        let block = ROW_BLOCK * n.max(m);
        ensure(&mut self.block, block);
        ensure(&mut self.js, n);
        ensure(&mut self.fb, n);
        ensure(&mut self.rows_a, ROW_BLOCK * c);
        ensure(&mut self.rows_c, m * c);
        ensure(&mut self.norms_c, m);
    }

    fn peaks(&mut self, x: &[f32], c: usize, grid: (usize, usize), n: usize) {
        self.n = n;
        if n == 0 {
            return;
        }
        ensure(&mut self.js, n);
        self.dots.resize(n.max(self.dots.len()), 0.0);
        self.norms.clear();
        self.norms.extend(x.chunks_exact(c).map(|r| super::dot::dot(r, r)));
        self.density(x, c, grid);
        self.key.clear();
        self.key.extend(self.rho.iter().enumerate().map(|(i, &r)| r + 1e-6 * jitter(i)));
        let key = &self.key;
        self.order.clear();
        self.order.extend(0..n as u32);
        // Higher first: larger key, then lower index.
        self.order.sort_unstable_by(|&a, &b| key[b as usize].total_cmp(&key[a as usize]).then(a.cmp(&b)));
        self.rank.resize(n, 0);
        for (t, &i) in self.order.iter().enumerate() {
            self.rank[i as usize] = t as u32;
        }
        self.delta.clear();
        self.delta.resize(n, 0.0);
        match self.delta_search {
            DeltaSearch::Global => self.delta_global(x, c),
            DeltaSearch::Window(dr) => self.delta_window(x, c, grid, dr),
        }
        let top = self.order[0] as usize;
        self.delta[top] = self.farthest(x, c, top);
        self.score.clear();
        self.score.extend(self.rho.iter().zip(&self.delta).map(|(&r, &d)| r * d));
    }

    /// rho_i = exp(-mean of the k smallest D^2 in the window of i, self included).
    fn density(&mut self, x: &[f32], c: usize, (h, w): (usize, usize)) {
        let n = h * w;
        let r = self.radius;
        let side = 2 * r + 1;
        let slots = side * side;
        let slot = |dy: isize, dx: isize| ((dy + r as isize) as usize) * side + (dx + r as isize) as usize;
        let cf = c as f32;
        let (win, js, dots, norms) = (&mut self.win, &mut self.js, &mut self.dots, &self.norms);
        win.clear();
        win.resize(n * slots, f32::INFINITY);
        for i in 0..n {
            let (y, xi) = (i / w, i % w);
            win[i * slots + slot(0, 0)] = 0.0;
            // The forward half of the window (later in raster order): each pair is computed once.
            js.clear();
            js.extend(window(i, r, (h, w)).filter(|&j| j > i).map(|j| j as u32));
            dots_gather(x, c, &x[i * c..(i + 1) * c], js, dots);
            for (&j, &g) in js.iter().zip(dots.iter()) {
                let j = j as usize;
                let d2 = sq(norms[i], norms[j], g) / cf;
                let (dy, dx) = ((j / w) as isize - y as isize, (j % w) as isize - xi as isize);
                win[i * slots + slot(dy, dx)] = d2;
                win[j * slots + slot(-dy, -dx)] = d2;
            }
        }
        self.rho.clear();
        for i in 0..n {
            let (y, xi) = (i / w, i % w);
            let rows = (y + r).min(h - 1) - y.saturating_sub(r) + 1;
            let cols = (xi + r).min(w - 1) - xi.saturating_sub(r) + 1;
            let kk = self.k.min(rows * cols);
            let s = &mut win[i * slots..(i + 1) * slots];
            if kk < slots {
                s.select_nth_unstable_by(kk - 1, f32::total_cmp);
            }
            let s = &mut s[..kk];
            s.sort_unstable_by(f32::total_cmp);
            let sum = s.iter().fold(0.0f32, |a, &v| a + v);
            self.rho.push((-(sum / kk as f32)).exp());
        }
    }

    /// Exact delta: each token against every higher token, as blocks of the sorted matrix.
    fn delta_global(&mut self, x: &[f32], c: usize) {
        let n = self.n;
        let sqrt_c = (c as f32).sqrt();
        self.sorted.clear();
        self.sorted_norms.clear();
        for &i in &self.order {
            let i = i as usize;
            self.sorted.extend_from_slice(&x[i * c..(i + 1) * c]);
            self.sorted_norms.push(self.norms[i]);
        }
        self.block.resize((ROW_BLOCK * n).max(self.block.len()), 0.0);
        let ns = &self.sorted_norms;
        for t0 in (0..n).step_by(ROW_BLOCK) {
            let t1 = (t0 + ROW_BLOCK).min(n);
            let rows = &self.sorted[t0 * c..t1 * c];
            dot_block(rows, t1 - t0, &self.sorted[..t1 * c], t1, c, &mut self.block, t1);
            for t in t0.max(1)..t1 {
                let g = &self.block[(t - t0) * t1..(t - t0) * t1 + t];
                let e = g.iter().zip(&ns[..t]).fold(f32::INFINITY, |m, (&g, &nj)| m.min(sq(ns[t], nj, g)));
                self.delta[self.order[t] as usize] = e.sqrt() / sqrt_c;
            }
        }
    }

    /// Windowed delta: higher tokens within radius `dr`, else every higher token.
    fn delta_window(&mut self, x: &[f32], c: usize, grid: (usize, usize), dr: usize) {
        let sqrt_c = (c as f32).sqrt();
        for i in 0..self.n {
            let ri = self.rank[i];
            if ri == 0 {
                continue; // the top token: `farthest`
            }
            let rank = &self.rank;
            self.js.clear();
            self.js.extend(window(i, dr, grid).filter(|&j| rank[j] < ri).map(|j| j as u32));
            if self.js.is_empty() {
                self.js.extend_from_slice(&self.order[..ri as usize]);
            }
            dots_gather(x, c, &x[i * c..(i + 1) * c], &self.js, &mut self.dots);
            let ni = self.norms[i];
            let e = self
                .js
                .iter()
                .zip(&self.dots)
                .fold(f32::INFINITY, |m, (&j, &g)| m.min(sq(ni, self.norms[j as usize], g)));
            self.delta[i] = e.sqrt() / sqrt_c;
        }
    }

    /// max_j D[i][j] (0 for a single token): delta of the token with no higher token.
    fn farthest(&mut self, x: &[f32], c: usize, i: usize) -> f32 {
        self.js.clear();
        self.js.extend((0..self.n as u32).filter(|&j| j as usize != i));
        dots_gather(x, c, &x[i * c..(i + 1) * c], &self.js, &mut self.dots);
        let ni = self.norms[i];
        let e = self.js.iter().zip(&self.dots).fold(0.0f32, |m, (&j, &g)| m.max(sq(ni, self.norms[j as usize], g)));
        e.sqrt() / (c as f32).sqrt()
    }

    /// Centres: the `m` best scores (ties: lower index), ascending by token index.
    fn pick_centres(&mut self, m: usize, out: &mut Reduction) {
        let n = self.n;
        let score = &self.score;
        self.pick.clear();
        self.pick.extend(0..n as u32);
        if m < n {
            self.pick.select_nth_unstable_by(m - 1, |&a, &b| {
                score[b as usize].total_cmp(&score[a as usize]).then(a.cmp(&b))
            });
        }
        self.pick.truncate(m);
        self.pick.sort_unstable();
        out.centers.clear();
        out.centers.extend_from_slice(&self.pick);
        self.center_of.clear();
        self.center_of.resize(n, NONE);
        for (id, &t) in self.pick.iter().enumerate() {
            self.center_of[t as usize] = id as u32;
        }
    }

    /// Nearest centre by D inside the window (ties: lower id), else the fallback.
    fn assign(&mut self, x: &[f32], c: usize, grid: (usize, usize), out: &mut Reduction) {
        let sqrt_c = (c as f32).sqrt();
        out.assign.clear();
        out.assign.resize(self.n, NONE);
        self.fb.clear();
        for i in 0..self.n {
            if self.center_of[i] != NONE {
                out.assign[i] = self.center_of[i];
                continue;
            }
            let center_of = &self.center_of;
            self.js.clear();
            self.js.extend(window(i, self.radius, grid).filter(|&j| center_of[j] != NONE).map(|j| j as u32));
            if self.js.is_empty() {
                self.fb.push(i as u32);
                continue;
            }
            dots_gather(x, c, &x[i * c..(i + 1) * c], &self.js, &mut self.dots);
            // Raster order == ascending cluster id, so a strict `<` keeps the lower id on ties.
            let (mut best, mut best_d) = (NONE, f32::INFINITY);
            for (&j, &g) in self.js.iter().zip(&self.dots) {
                let d = sq(self.norms[i], self.norms[j as usize], g).sqrt() / sqrt_c;
                if best == NONE || d < best_d {
                    (best, best_d) = (center_of[j as usize], d);
                }
            }
            out.assign[i] = best;
        }
        if !self.fb.is_empty() {
            match self.fallback {
                Fallback::Global => self.fallback_global(x, c, out),
                Fallback::Spatial => self.fallback_spatial(grid.1, out),
            }
        }
    }

    fn fallback_global(&mut self, x: &[f32], c: usize, out: &mut Reduction) {
        let m = self.pick.len();
        let sqrt_c = (c as f32).sqrt();
        self.rows_c.clear();
        self.norms_c.clear();
        for &t in &self.pick {
            self.rows_c.extend_from_slice(&x[t as usize * c..(t as usize + 1) * c]);
            self.norms_c.push(self.norms[t as usize]);
        }
        self.block.resize((ROW_BLOCK * m).max(self.block.len()), 0.0);
        for chunk in self.fb.chunks(ROW_BLOCK) {
            self.rows_a.clear();
            for &i in chunk {
                self.rows_a.extend_from_slice(&x[i as usize * c..(i as usize + 1) * c]);
            }
            dot_block(&self.rows_a, chunk.len(), &self.rows_c, m, c, &mut self.block, m);
            for (r, &i) in chunk.iter().enumerate() {
                let ni = self.norms[i as usize];
                let (mut best, mut best_d) = (0u32, f32::INFINITY);
                for (id, (&g, &nc)) in self.block[r * m..(r + 1) * m].iter().zip(&self.norms_c).enumerate() {
                    let d = sq(ni, nc, g).sqrt() / sqrt_c;
                    if id == 0 || d < best_d {
                        (best, best_d) = (id as u32, d);
                    }
                }
                out.assign[i as usize] = best;
            }
        }
    }

    fn fallback_spatial(&mut self, w: usize, out: &mut Reduction) {
        for &i in &self.fb {
            let (y, x) = ((i as usize / w) as isize, (i as usize % w) as isize);
            let (mut best, mut best_d) = (0u32, usize::MAX);
            for (id, &t) in self.pick.iter().enumerate() {
                let (dy, dx) = ((t as usize / w) as isize - y, (t as usize % w) as isize - x);
                let d = (dy * dy + dx * dx) as usize;
                if d < best_d {
                    (best, best_d) = (id as u32, d);
                }
            }
            out.assign[i as usize] = best;
        }
    }
}

impl Reducer for AilurusReducer {
    fn name(&self) -> &'static str {
        "ailurus"
    }

    /// M >= N (and N = 0) is the identity; M = 0 is treated as 1.
    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        grid: (usize, usize),
        m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError> {
        let n = check_shape("ailurus", tokens, c, grid)?;
        let m = m.max(1);
        if m >= n {
            none::identity(tokens, c, n, out);
            return Ok(());
        }
        self.reserve(n, c, m);
        self.peaks(tokens, c, grid, n);
        self.pick_centres(m, out);
        self.assign(tokens, c, grid, out);
        merge_means(tokens, c, m, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_matches_the_spec_formula() {
        assert_eq!(jitter(0), 0.0);
        assert_eq!(jitter(1), (2_654_435_761u32 >> 8) as f32 / 16_777_216.0);
        let big = 3_000_000usize;
        assert_eq!(jitter(big), (((big as u64 * 2_654_435_761) % (1 << 32)) >> 8) as f32 / 16_777_216.0);
        assert!((0..5000).all(|i| (0.0..1.0).contains(&jitter(i))));
    }

    #[test]
    fn window_is_clipped_chebyshev_in_raster_order() {
        let got: Vec<usize> = window(0, 1, (3, 4)).collect();
        assert_eq!(got, vec![0, 1, 4, 5]);
        let got: Vec<usize> = window(6, 1, (3, 4)).collect();
        assert_eq!(got, vec![1, 2, 3, 5, 6, 7, 9, 10, 11]);
        assert_eq!(window(5, 2, (1, 7)).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    }

    #[test]
    fn two_far_groups_become_two_clusters() {
        // 1x6: three tokens near 0, three near 10; M = 2 must split them by group.
        let t = [0.0f32, 0.1, 0.05, 10.0, 10.1, 10.05];
        let mut r = AilurusReducer::new(&AilurusConfig::default());
        let mut out = Reduction::default();
        r.reduce(&t, 1, (1, 6), 2, &mut out).unwrap();
        assert_eq!(out.m, 2);
        assert_eq!(out.assign, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(out.sizes, vec![3.0, 3.0]);
        assert!((out.merged[0] - 0.05).abs() < 1e-6 && (out.merged[1] - 10.05).abs() < 1e-5);
    }
}
