//! `tome`: ToMe bipartite soft matching at one layer, down to M tokens (the "other method").
//!
//! Owns the matching rounds and the tracking of every original token through them. One round,
//! on the current tokens kept in ascending order of their smallest member index: A = even
//! positions, B = odd positions; cosine similarity of the current (size-weighted mean) tokens,
//! `cos(a, b) = dot(a / max(|a|, 1e-12), b / max(|b|, 1e-12))`; each A token's best B match
//! (ties: lower B position); the r = min(n - M, |A|) A tokens with the highest best similarity
//! (ties: lower A position) merge into their match (size-weighted mean). Rounds repeat until M
//! tokens are left. Cluster ids ascend with each cluster's smallest member index, which is its
//! centre. The merged output is the mean of each cluster's original members. Must not allocate
//! once warm at a given size.

use super::dot::{dot, panel_dots, Panel, PANEL, TILE_ROWS};
use super::{check_shape, ensure, merge_means, none, ReduceError, Reducer, Reduction};

/// Reused scratch of the matching rounds.
#[derive(Debug, Default)]
pub struct TomeReducer {
    cur: Vec<f32>,
    size: Vec<f32>,
    rep: Vec<u32>,
    next: Vec<f32>,
    next_size: Vec<f32>,
    next_rep: Vec<u32>,
    /// Original token -> current position.
    map: Vec<u32>,
    an: Vec<f32>,
    bn: Vec<f32>,
    panel: Panel,
    best: Vec<u32>,
    best_s: Vec<f32>,
    pick: Vec<u32>,
    chosen: Vec<bool>,
    acc: Vec<f32>,
    acc_size: Vec<f32>,
    acc_rep: Vec<u32>,
    surv: Vec<u32>,
    dest: Vec<u32>,
}

/// Append `rows` (positions `first, first + 2, ...` of `cur`, `count` of them) scaled to unit
/// length into `dst`.
fn push_unit_rows(cur: &[f32], c: usize, first: usize, count: usize, dst: &mut Vec<f32>) {
    dst.clear();
    for p in 0..count {
        let row = &cur[(first + 2 * p) * c..(first + 2 * p + 1) * c];
        let inv = 1.0 / dot(row, row).sqrt().max(1e-12);
        dst.extend(row.iter().map(|&v| v * inv));
    }
}

impl TomeReducer {
    /// Capacity for every buffer of an (n, c) reduction, up front: `cur` and `next` swap
    /// roles every round, so both need the full size.
    fn reserve(&mut self, n: usize, c: usize) {
        let (na, nb) = (n.div_ceil(2), n / 2);
        for v in [&mut self.cur, &mut self.next] {
            ensure(v, n * c);
        }
        for v in [&mut self.size, &mut self.next_size] {
            ensure(v, n);
        }
        for v in [&mut self.rep, &mut self.next_rep, &mut self.map, &mut self.surv, &mut self.dest] {
            ensure(v, n);
        }
        ensure(&mut self.an, na * c);
        ensure(&mut self.bn, nb * c);
        ensure(&mut self.best, na);
        ensure(&mut self.best_s, na);
        ensure(&mut self.pick, na);
        ensure(&mut self.chosen, na);
        ensure(&mut self.acc, nb * c);
        ensure(&mut self.acc_size, nb);
        ensure(&mut self.acc_rep, nb);
    }

    /// One matching round on the `n` current tokens, leaving `n - min(n - m, ceil(n/2))`.
    fn round(&mut self, c: usize, n: usize, m: usize) -> usize {
        let (na, nb) = (n.div_ceil(2), n / 2);
        push_unit_rows(&self.cur, c, 0, na, &mut self.an);
        push_unit_rows(&self.cur, c, 1, nb, &mut self.bn);
        self.best.clear();
        self.best.resize(na, 0);
        self.best_s.clear();
        self.best_s.resize(na, f32::NEG_INFINITY);
        let mut dots = [[0.0f32; PANEL]; TILE_ROWS];
        for q0 in (0..nb).step_by(PANEL) {
            let q1 = (q0 + PANEL).min(nb);
            self.panel.pack((q0..q1).map(|q| &self.bn[q * c..(q + 1) * c]), c);
            for p0 in (0..na).step_by(TILE_ROWS) {
                let p1 = (p0 + TILE_ROWS).min(na);
                let mut a: [&[f32]; TILE_ROWS] = [&[]; TILE_ROWS];
                for p in p0..p1 {
                    a[p - p0] = &self.an[p * c..(p + 1) * c];
                }
                panel_dots(&a[..p1 - p0], &self.panel, &mut dots);
                for p in p0..p1 {
                    // Panels and lanes ascend in q, so a strict `>` keeps the lower B on ties.
                    for (l, &s) in dots[p - p0][..q1 - q0].iter().enumerate() {
                        if s > self.best_s[p] {
                            (self.best[p], self.best_s[p]) = ((q0 + l) as u32, s);
                        }
                    }
                }
            }
        }
        let r = (n - m).min(na);
        let best_s = &self.best_s;
        self.pick.clear();
        self.pick.extend(0..na as u32);
        if r < na {
            self.pick.select_nth_unstable_by(r - 1, |&a, &b| {
                best_s[b as usize].total_cmp(&best_s[a as usize]).then(a.cmp(&b))
            });
        }
        self.chosen.clear();
        self.chosen.resize(na, false);
        for &p in &self.pick[..r] {
            self.chosen[p as usize] = true;
        }
        self.merge_into_b(c, n);
        self.compact(c, n);
        n - r
    }

    /// Size-weighted sums of every B token and the A tokens merged into it.
    fn merge_into_b(&mut self, c: usize, n: usize) {
        let nb = n / 2;
        self.acc.clear();
        self.acc_size.clear();
        self.acc_rep.clear();
        for q in 0..nb {
            let o = 2 * q + 1;
            let s = self.size[o];
            self.acc.extend(self.cur[o * c..(o + 1) * c].iter().map(|&v| v * s));
            self.acc_size.push(s);
            self.acc_rep.push(self.rep[o]);
        }
        for (p, &ch) in self.chosen.iter().enumerate() {
            if !ch {
                continue;
            }
            let (o, q) = (2 * p, self.best[p] as usize);
            let s = self.size[o];
            let src = &self.cur[o * c..(o + 1) * c];
            for (d, &v) in self.acc[q * c..(q + 1) * c].iter_mut().zip(src) {
                *d += v * s;
            }
            self.acc_size[q] += s;
            self.acc_rep[q] = self.acc_rep[q].min(self.rep[o]);
        }
    }

    /// Survivors in ascending smallest-member order become the next current tokens.
    fn compact(&mut self, c: usize, n: usize) {
        let (chosen, rep, acc_rep) = (&self.chosen, &self.rep, &self.acc_rep);
        let new_rep = |o: usize| if o % 2 == 1 { acc_rep[o / 2] } else { rep[o] };
        self.surv.clear();
        self.surv.extend((0..n as u32).filter(|&o| o % 2 == 1 || !chosen[o as usize / 2]));
        self.surv.sort_unstable_by_key(|&o| new_rep(o as usize));
        self.next.clear();
        self.next_size.clear();
        self.next_rep.clear();
        self.dest.clear();
        self.dest.resize(n, 0);
        for (np, &o) in self.surv.iter().enumerate() {
            let o = o as usize;
            self.dest[o] = np as u32;
            if o % 2 == 1 {
                let (q, s) = (o / 2, self.acc_size[o / 2]);
                self.next.extend(self.acc[q * c..(q + 1) * c].iter().map(|&v| v / s));
                self.next_size.push(s);
                self.next_rep.push(self.acc_rep[q]);
            } else {
                self.next.extend_from_slice(&self.cur[o * c..(o + 1) * c]);
                self.next_size.push(self.size[o]);
                self.next_rep.push(self.rep[o]);
            }
        }
        for (p, &ch) in self.chosen.iter().enumerate() {
            if ch {
                self.dest[2 * p] = self.dest[2 * self.best[p] as usize + 1];
            }
        }
        for a in &mut self.map {
            *a = self.dest[*a as usize];
        }
        std::mem::swap(&mut self.cur, &mut self.next);
        std::mem::swap(&mut self.size, &mut self.next_size);
        std::mem::swap(&mut self.rep, &mut self.next_rep);
    }
}

impl Reducer for TomeReducer {
    fn name(&self) -> &'static str {
        "tome"
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
        let n0 = check_shape("tome", tokens, c, grid)?;
        let m = m.max(1);
        if m >= n0 {
            none::identity(tokens, c, n0, out);
            return Ok(());
        }
        self.reserve(n0, c);
        self.cur.clear();
        self.cur.extend_from_slice(tokens);
        self.size.clear();
        self.size.resize(n0, 1.0);
        self.rep.clear();
        self.rep.extend(0..n0 as u32);
        self.map.clear();
        self.map.extend(0..n0 as u32);
        let mut n = n0;
        while n > m {
            n = self.round(c, n, m);
        }
        out.assign.clear();
        out.assign.extend_from_slice(&self.map);
        out.centers.clear();
        out.centers.extend_from_slice(&self.rep[..n]);
        merge_means(tokens, c, n, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_the_most_similar_pairs_first() {
        // 1x4, C = 2: A = {0, 2}, B = {1, 3}. Token 2 points like token 3, token 0 like neither
        // exactly: with M = 3 only the pair (2, 3) merges.
        let t = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 1.1, 1.0];
        let mut r = TomeReducer::default();
        let mut out = Reduction::default();
        r.reduce(&t, 2, (1, 4), 3, &mut out).unwrap();
        assert_eq!(out.assign, vec![0, 1, 2, 2]);
        assert_eq!(out.centers, vec![0, 1, 2]);
        assert_eq!(out.sizes, vec![1.0, 1.0, 2.0]);
        assert!((out.merged[4] - 1.05).abs() < 1e-6 && (out.merged[5] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn several_rounds_reach_one_token() {
        let t: Vec<f32> = (0..7 * 3).map(|v| (v as f32 * 0.7).sin()).collect();
        let mut out = Reduction::default();
        TomeReducer::default().reduce(&t, 3, (1, 7), 1, &mut out).unwrap();
        assert_eq!((out.m, out.assign.clone(), out.centers.clone()), (1, vec![0; 7], vec![0]));
    }
}
