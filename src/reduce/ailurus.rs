//! `ailurus`: spatial-aware DPC-KNN token clustering (ALGORITHM.md), the product's reducer.
//!
//! Owns the CPU implementation of the clustering spec: density from the k nearest neighbours
//! inside a Chebyshev window, jittered density order, distance to a higher-density token,
//! score = rho * delta, the M best-scoring tokens as centres, windowed nearest-centre assignment
//! with a fallback, mean merge. It follows the arithmetic contract in the header of
//! `kernels/ailurus.cu` step by step, so it is bit-identical to the CUDA reducer (rho, delta,
//! centres, assignment, sizes and merged tokens). Must not allocate once warm at a given size
//! (all scratch lives in the struct) and must not spawn threads.
//!
//! The contract, in f32 with every operation rounded on its own: `sq_i = dot(x_i, x_i)` and
//! `dot` as in `super::dot` (sequential, no FMA); `t = (sq_i + sq_j) - 2 dot(x_i, x_j)`;
//! `D = sqrt(max(t, 0)) / sqrt(C)`, `D_ii = 0`; density sums the kk smallest `D * D` in
//! ascending order, `mean = sum / kk`, `rho = (f32) exp(-(f64) mean)`; `key = rho + 1e-6 u(i)`;
//! orders are `f32::total_cmp` with index tie-breaks; merged = member sum (ascending token order)
//! divided by the size.

use super::dot::{panel_dots, panel_min_t, runs, sqnorms_t, transpose, transposed_ld, Panel, PANEL, RUN, TILE_ROWS};
pub use super::Fallback;
use super::{check_shape, ensure, merge_means, AilurusConfig, Delta, ReduceError, Reducer, Reduction};

/// "no cluster" marker in `center_of` and a not-yet-assigned token.
const NONE: u32 = u32::MAX;

/// Where `delta` (distance to a higher-density token) is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaSearch {
    /// All tokens (exact DPC).
    Global,
    /// Tokens within this Chebyshev radius; the global search when none there is higher.
    Window(usize),
}

/// The density tie-break jitter `u(i)` in [0, 1): `((i * 2654435761) mod 2^32 >> 8) / 2^24`.
pub fn jitter(i: usize) -> f32 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0
}

/// `max(t, 0)` with `t = (sqi + sqj) - 2 g`: D^2 times C, clamped. D is a non-decreasing function
/// of it, so a min or max over D can be taken over this value instead (same bits after `dist`).
#[inline(always)]
fn tval(sqi: f32, sqj: f32, g: f32) -> f32 {
    let t = (sqi + sqj) - 2.0 * g;
    if t > 0.0 {
        t
    } else {
        0.0
    }
}

/// D from a clamped `tval`.
#[inline(always)]
fn dist(t: f32, sqrt_c: f32) -> f32 {
    t.sqrt() / sqrt_c
}

/// The window of radius `r` around token `i` as grid bounds `(y0, y1, x0, x1)`, inclusive.
fn bounds(i: usize, r: usize, (h, w): (usize, usize)) -> (usize, usize, usize, usize) {
    let (y, x) = (i / w, i % w);
    (y.saturating_sub(r), (y + r).min(h - 1), x.saturating_sub(r), (x + r).min(w - 1))
}

/// Token indices in the Chebyshev window of radius `r` around token `i` on an `h x w` grid, in
/// ascending (raster) order.
fn window(i: usize, r: usize, grid: (usize, usize)) -> impl Iterator<Item = usize> {
    let (y0, y1, x0, x1) = bounds(i, r, grid);
    let w = grid.1;
    (y0..=y1).flat_map(move |yy| (x0..=x1).map(move |xx| yy * w + xx))
}

/// The 8-token runs covering the window rows `y0..=y1`, columns `x0..=x1` (row-major runs,
/// `x1 - x0 + 1` columns need `ceil(width / RUN)` runs per row); returns runs per row.
fn window_runs(b: (usize, usize, usize, usize), w: usize, j0s: &mut Vec<usize>) -> usize {
    let (y0, y1, x0, x1) = b;
    let per_row = (x1 - x0 + 1).div_ceil(RUN);
    j0s.clear();
    for yy in y0..=y1 {
        j0s.extend((0..per_row).map(|q| yy * w + x0 + q * RUN));
    }
    per_row
}

/// Spatial-aware DPC-KNN with reused scratch. `rho()`, `delta()`, `score()` and `order()` expose
/// the last analysis (for tests and the CUDA cross-check).
#[derive(Debug)]
pub struct AilurusReducer {
    k: usize,
    radius: usize,
    delta_search: DeltaSearch,
    fallback: Fallback,
    /// `[reduce.ailurus] spread` (0 = off).
    spread: usize,
    n: usize,
    /// Transposed tokens `[c, ld]` and the squared norms.
    xt: Vec<f32>,
    ld: usize,
    sq: Vec<f32>,
    rho: Vec<f32>,
    key: Vec<f32>,
    delta: Vec<f32>,
    score: Vec<f32>,
    /// Tokens from highest to lowest density key; `rank` is its inverse.
    order: Vec<u32>,
    rank: Vec<u32>,
    /// Per token, D to every slot of its radius-r window (`+inf` outside the grid),
    /// `[n, (2r+1)^2]`, slots in raster order.
    win: Vec<f32>,
    sel: Vec<f32>,
    j0s: Vec<usize>,
    dots: Vec<[f32; RUN]>,
    /// Per sorted position, the smallest clamped t to a higher token so far.
    tmin: Vec<f32>,
    /// Tokens in density order, `[n, c]`.
    xs: Vec<f32>,
    panel: Panel,
    pick: Vec<u32>,
    /// Per token: the best score of its coverage block (`spread`), a centre whatever M.
    forced: Vec<bool>,
    center_of: Vec<u32>,
    fb: Vec<u32>,
    best: Vec<(f32, u32)>,
}

impl AilurusReducer {
    pub fn new(cfg: &AilurusConfig) -> Self {
        let delta_search = match cfg.delta.get() {
            Delta::Window => DeltaSearch::Window(cfg.delta_radius),
            Delta::Global => DeltaSearch::Global,
        };
        let fallback = cfg.fallback.get();
        AilurusReducer {
            k: cfg.k.max(1),
            radius: cfg.radius,
            delta_search,
            fallback,
            spread: cfg.spread,
            n: 0,
            xt: Vec::new(),
            ld: 0,
            sq: Vec::new(),
            rho: Vec::new(),
            key: Vec::new(),
            delta: Vec::new(),
            score: Vec::new(),
            order: Vec::new(),
            rank: Vec::new(),
            win: Vec::new(),
            sel: Vec::new(),
            j0s: Vec::new(),
            dots: Vec::new(),
            tmin: Vec::new(),
            xs: Vec::new(),
            panel: Panel::default(),
            pick: Vec::new(),
            forced: Vec::new(),
            center_of: Vec::new(),
            fb: Vec::new(),
            best: Vec::new(),
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
        self.reserve(n, c, 1);
        self.peaks(tokens, c, grid, n);
        Ok(())
    }

    /// Capacity for every data-dependent buffer of an (n, c, m) reduction, up front.
    fn reserve(&mut self, n: usize, c: usize, m: usize) {
        let r = match self.delta_search {
            DeltaSearch::Window(dr) => dr.max(self.radius),
            DeltaSearch::Global => self.radius,
        };
        let side = 2 * r + 1;
        let runs = (side * side.div_ceil(RUN)).max(n.div_ceil(RUN));
        ensure(&mut self.j0s, runs);
        if self.dots.len() < runs {
            self.dots.resize(runs, [0.0; RUN]);
        }
        ensure(&mut self.fb, n);
        ensure(&mut self.best, n);
        ensure(&mut self.pick, n.max(m));
        ensure(&mut self.forced, n);
        ensure(&mut self.xt, c * transposed_ld(n));
        ensure(&mut self.xs, n * c);
        ensure(&mut self.sq, n.next_multiple_of(RUN));
        ensure(&mut self.sel, (2 * self.radius + 1).pow(2));
    }

    fn peaks(&mut self, x: &[f32], c: usize, grid: (usize, usize), n: usize) {
        self.n = n;
        if n == 0 {
            return;
        }
        self.ld = transpose(x, n, c, &mut self.xt);
        sqnorms_t(&self.xt, self.ld, n, c, &mut self.sq);
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

    /// D from token `i` to every token of its radius-r window into `win`, then
    /// rho_i = exp(-mean of the kk smallest D^2).
    fn density(&mut self, x: &[f32], c: usize, (h, w): (usize, usize)) {
        let n = h * w;
        let r = self.radius;
        let side = 2 * r + 1;
        let slots = side * side;
        let sqrt_c = (c as f32).sqrt();
        self.win.clear();
        self.win.resize(n * slots, f32::INFINITY);
        self.rho.clear();
        for i in 0..n {
            let b @ (y0, y1, x0, x1) = bounds(i, r, (h, w));
            let per_row = window_runs(b, w, &mut self.j0s);
            runs(&x[i * c..(i + 1) * c], &self.xt, self.ld, &self.j0s, &mut self.dots);
            let (y, xi) = (i / w, i % w);
            let win = &mut self.win[i * slots..(i + 1) * slots];
            self.sel.clear();
            for (ry, yy) in (y0..=y1).enumerate() {
                for xx in x0..=x1 {
                    let (j, off) = (yy * w + xx, xx - x0);
                    let g = self.dots[ry * per_row + off / RUN][off % RUN];
                    let d = if j == i { 0.0 } else { dist(tval(self.sq[i], self.sq[j], g), sqrt_c) };
                    win[(yy + r - y) * side + (xx + r - xi)] = d;
                    self.sel.push(d);
                }
            }
            // D >= 0, so the kk smallest D give the kk smallest D^2, in ascending order.
            let kk = self.k.min(self.sel.len());
            if kk < self.sel.len() {
                self.sel.select_nth_unstable_by(kk - 1, f32::total_cmp);
            }
            let s = &mut self.sel[..kk];
            s.sort_unstable_by(f32::total_cmp);
            let sum = s.iter().fold(0.0f32, |a, &d| a + d * d);
            let mean = sum / kk as f32;
            self.rho.push((-(mean as f64)).exp() as f32);
        }
    }

    /// Exact delta: every token against every higher token, tiles of sorted rows against
    /// panels of 16 higher tokens.
    fn delta_global(&mut self, x: &[f32], c: usize) {
        let n = self.n;
        let sqrt_c = (c as f32).sqrt();
        // Rows in density order, so the sweeps below read them sequentially.
        self.xs.clear();
        for &o in &self.order {
            self.xs.extend_from_slice(&x[o as usize * c..(o as usize + 1) * c]);
        }
        let xs = &self.xs;
        let row = |t: usize| &xs[t * c..(t + 1) * c];
        self.tmin.clear();
        self.tmin.resize(n, f32::INFINITY);
        // One panel of 16 higher tokens stays in L1 while every lower row sweeps past it in
        // tiles of 4 (a group of panels in L2 measured slower).
        for s0 in (0..n).step_by(PANEL) {
            let s1 = (s0 + PANEL).min(n);
            self.panel.pack((s0..s1).map(row), c);
            let mut sqs = [0.0f32; PANEL];
            for s in s0..s1 {
                sqs[s - s0] = self.sq[self.order[s] as usize];
            }
            let mut t = s0 + 1;
            while t < n {
                let tr = TILE_ROWS.min(n - t);
                let mut a: [&[f32]; TILE_ROWS] = [&[]; TILE_ROWS];
                let (mut sqa, mut lim) = ([0.0f32; TILE_ROWS], [0usize; TILE_ROWS]);
                for q in 0..tr {
                    (a[q], sqa[q], lim[q]) = (row(t + q), self.sq[self.order[t + q] as usize], s1.min(t + q) - s0);
                }
                panel_min_t(&a[..tr], &self.panel, &sqa, &sqs, &lim, &mut self.tmin[t..t + tr]);
                t += tr;
            }
        }
        for t in 1..n {
            self.delta[self.order[t] as usize] = dist(self.tmin[t], sqrt_c);
        }
    }

    /// Windowed delta: higher tokens within radius `dr`, else every higher token.
    fn delta_window(&mut self, x: &[f32], c: usize, grid: (usize, usize), dr: usize) {
        let sqrt_c = (c as f32).sqrt();
        let w = grid.1;
        for i in 0..self.n {
            let ri = self.rank[i];
            if ri == 0 {
                continue; // the top token: `farthest`
            }
            let xi = &x[i * c..(i + 1) * c];
            let b @ (y0, y1, x0, x1) = bounds(i, dr, grid);
            let per_row = window_runs(b, w, &mut self.j0s);
            runs(xi, &self.xt, self.ld, &self.j0s, &mut self.dots);
            let mut m = f32::INFINITY;
            let mut found = false;
            for (ry, yy) in (y0..=y1).enumerate() {
                for xx in x0..=x1 {
                    let (j, off) = (yy * w + xx, xx - x0);
                    if self.rank[j] < ri {
                        m = m.min(tval(self.sq[i], self.sq[j], self.dots[ry * per_row + off / RUN][off % RUN]));
                        found = true;
                    }
                }
            }
            if !found {
                m = self.scan_all(xi, i, |s, j| s.rank[j] < ri, f32::INFINITY, f32::min);
            }
            self.delta[i] = dist(m, sqrt_c);
        }
    }

    /// Fold `f` over the clamped t of token `i` against every token `j` with `keep(j)`.
    fn scan_all(
        &mut self,
        xi: &[f32],
        i: usize,
        keep: impl Fn(&Self, usize) -> bool,
        init: f32,
        f: impl Fn(f32, f32) -> f32,
    ) -> f32 {
        let n = self.n;
        self.j0s.clear();
        self.j0s.extend((0..n).step_by(RUN));
        runs(xi, &self.xt, self.ld, &self.j0s, &mut self.dots);
        let mut acc = init;
        for j in 0..n {
            if keep(self, j) {
                acc = f(acc, tval(self.sq[i], self.sq[j], self.dots[j / RUN][j % RUN]));
            }
        }
        acc
    }

    /// max_j D[i][j] (0 for a single token): delta of the token with no higher token.
    fn farthest(&mut self, x: &[f32], c: usize, i: usize) -> f32 {
        let t = self.scan_all(&x[i * c..(i + 1) * c], i, |_, j| j != i, 0.0, f32::max);
        dist(t, (c as f32).sqrt())
    }

    /// Centres, ascending by token index: with `spread`, the best score of every coverage block
    /// (`spread_block`: at most `m` blocks), then the best other scores up to `m`; without it the
    /// `m` best scores. Ties: lower index.
    fn pick_centres(&mut self, m: usize, grid: (usize, usize), out: &mut Reduction) {
        let n = self.n;
        let score = &self.score;
        self.forced.clear();
        self.forced.resize(n, false);
        let b = super::spread_block(self.spread, grid, m);
        if b > 0 {
            let (h, w) = grid;
            for by in (0..h).step_by(b) {
                for bx in (0..w).step_by(b) {
                    let mut best = by * w + bx;
                    for y in by..(by + b).min(h) {
                        for x in bx..(bx + b).min(w) {
                            // Raster order: a strict `>` keeps the lower index on ties.
                            if score[y * w + x].total_cmp(&score[best]).is_gt() {
                                best = y * w + x;
                            }
                        }
                    }
                    self.forced[best] = true;
                }
            }
        }
        let forced = &self.forced;
        self.pick.clear();
        self.pick.extend(0..n as u32);
        if m < n {
            self.pick.select_nth_unstable_by(m - 1, |&a, &b| {
                let (a, b) = (a as usize, b as usize);
                forced[b].cmp(&forced[a]).then(score[b].total_cmp(&score[a])).then(a.cmp(&b))
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

    /// Nearest centre by D inside the window (ties: lower id), else the fallback. The window
    /// distances are the ones `density` stored.
    fn assign(&mut self, x: &[f32], c: usize, grid: (usize, usize), out: &mut Reduction) {
        let (r, w) = (self.radius, grid.1);
        let side = 2 * r + 1;
        let slots = side * side;
        out.assign.clear();
        out.assign.resize(self.n, NONE);
        self.fb.clear();
        for i in 0..self.n {
            if self.center_of[i] != NONE {
                out.assign[i] = self.center_of[i];
                continue;
            }
            let (y, xi) = (i / w, i % w);
            let win = &self.win[i * slots..(i + 1) * slots];
            // Raster order == ascending cluster id, so a strict `<` keeps the lower id on ties.
            let (mut best, mut best_d) = (NONE, f32::INFINITY);
            for j in window(i, r, grid) {
                let id = self.center_of[j];
                if id != NONE {
                    let d = win[(j / w + r - y) * side + (j % w + r - xi)];
                    if best == NONE || d < best_d {
                        (best, best_d) = (id, d);
                    }
                }
            }
            if best == NONE {
                self.fb.push(i as u32);
            } else {
                out.assign[i] = best;
            }
        }
        if !self.fb.is_empty() {
            match self.fallback {
                Fallback::Global => self.fallback_global(x, c, out),
                Fallback::Spatial => self.fallback_spatial(w, out),
            }
        }
    }

    /// Nearest centre by (D, id) over all centres: panels of 16 centres against tiles of 4
    /// fallback tokens.
    fn fallback_global(&mut self, x: &[f32], c: usize, out: &mut Reduction) {
        let sqrt_c = (c as f32).sqrt();
        let row = |i: u32| &x[i as usize * c..(i as usize + 1) * c];
        self.best.clear();
        self.best.resize(self.fb.len(), (f32::INFINITY, NONE));
        let mut dots = [[0.0f32; PANEL]; TILE_ROWS];
        for p0 in (0..self.pick.len()).step_by(PANEL) {
            let p1 = (p0 + PANEL).min(self.pick.len());
            self.panel.pack(self.pick[p0..p1].iter().map(|&t| row(t)), c);
            for (f0, chunk) in self.fb.chunks(TILE_ROWS).enumerate() {
                let mut a: [&[f32]; TILE_ROWS] = [&[]; TILE_ROWS];
                for (q, &i) in chunk.iter().enumerate() {
                    a[q] = row(i);
                }
                panel_dots(&a[..chunk.len()], &self.panel, &mut dots);
                for (q, &i) in chunk.iter().enumerate() {
                    let best = &mut self.best[f0 * TILE_ROWS + q];
                    for (l, &g) in dots[q][..p1 - p0].iter().enumerate() {
                        let t = self.pick[p0 + l] as usize;
                        let d = dist(tval(self.sq[i as usize], self.sq[t], g), sqrt_c);
                        if best.1 == NONE || d < best.0 {
                            *best = (d, (p0 + l) as u32);
                        }
                    }
                }
            }
        }
        for (&i, &(_, id)) in self.fb.iter().zip(&self.best) {
            out.assign[i as usize] = id;
        }
    }

    /// Spatially nearest centre by (dy^2 + dx^2, id).
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

    /// M >= N (and N = 0) is the identity (every token its own centre, what the spec gives for
    /// M = N; merged through the same sum-and-divide, so -0.0 becomes +0.0 as on the GPU);
    /// M = 0 is treated as 1.
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
            out.assign.clear();
            out.assign.extend(0..n as u32);
            out.centers.clear();
            out.centers.extend(0..n as u32);
            merge_means(tokens, c, n, out);
            return Ok(());
        }
        self.reserve(n, c, m);
        self.peaks(tokens, c, grid, n);
        self.pick_centres(m, grid, out);
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
