//! Reuse + reduction with clusters carried across frames (issue #19, "with token reduction on").
//!
//! The per-frame reduced path clusters all patch tokens afresh at the cut and runs the middle
//! blocks in full on M merged tokens. Between two frames of a fixed camera most tokens did not
//! change, so neither need their clusters nor the merged tokens' middle rows. Per frame, on the
//! stem's output (blocks 0..cut-1, run with reuse by the lane):
//! - [`ClusterCarry::step`]: a patch token has *changed* when its stem output moved by at least the
//!   reuse threshold (relative L2) since it was last assigned. Changed tokens are re-assigned to
//!   the nearest carried centre (by D, the reducer's distance, to the centre token's current
//!   stem output) inside their radius-r window, else to the nearest centre anywhere: AiluRus's
//!   assignment step with the centres kept. Centres stay centres, so no cluster empties and
//!   cluster ids (the middle's rows) stay stable. The clusters a changed token left or joined
//!   are *touched* (their size, hence their key bias, changed too). Every merged token is then
//!   the mean of its members again (cheap: N x C adds), so a changed member, and sub-threshold
//!   drift, reach the middle's gates like any change of a block input.
//! - A full re-cluster (the configured reducer, as the per-frame path) on a lane refresh, the first
//!   frame, a new grid or M, or when more than `recluster_above` of the patch tokens changed.
//! - [`CarryMiddle::run`]: blocks cut..L-1 + the final norm on prefix + M merged tokens through
//!   the Eventful executor ([`ReuseEncoder::run_range`]) with the middle's proportional
//!   attention (log cluster sizes as key bias): a merged token is recomputed when its input moved
//!   by the threshold (a cluster whose members changed in place is left to that gate), and
//!   touched clusters are forced active in the first middle block. Then the
//!   unfold (`full[i] = mid[assign[i]]`); the lane runs the head only when a middle row ran.
//!
//! With threshold 0 every row runs, and the output equals the per-frame reduced path with the
//! same partition (tests/model/reuse.rs, against [`crate::reduce::fixed::FixedReducer`]).
//!
//! Must not: decide lane refreshes (the lane's rules), run the stem or the head.

use std::time::{Duration, Instant};

use tract_core::internal::*;

use super::encoder::{EncoderStats, Gate, ReuseEncoder};
use crate::reduce::{self, merge_means, unfold, Partition, ReduceConfig, Reducer, Reduction};

/// Why a frame's partition was computed afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recluster {
    /// A lane refresh (reset, schedule, scene cut, too active) or the first frame.
    Refresh,
    /// Another grid or another M than the carried partition.
    NewShape,
    /// More than `recluster_above` of the patch tokens changed.
    TooManyChanged,
}

/// What one frame's carried clusters did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CarryStats {
    /// The partition was computed afresh, and why (else it was carried).
    pub reclustered: Option<Recluster>,
    /// Patch tokens that changed (re-assigned), and those that moved to another cluster.
    pub changed: usize,
    pub moved: usize,
    /// Clusters forced active in the first middle block (they gained or lost a member).
    pub touched: usize,
    /// The middle (blocks cut..L-1 on prefix + M rows): active rows per block, multiply-adds.
    pub middle: EncoderStats,
    /// Time of the cluster step + merge + unfold, and of the middle.
    pub cluster_time: Duration,
    pub middle_time: Duration,
}

/// "not a centre".
const NONE: u32 = u32::MAX;

/// The carried partition and its references ([`ClusterCarry`]'s state across frames; what a
/// stream parks while another stream's frames run).
#[derive(Default)]
struct Carried {
    red: Reduction,
    /// Each patch token's stem output when it was last assigned, `[n, c]`.
    reference: Vec<f32>,
    grid: (usize, usize),
    /// The M asked for (the reducer may give fewer).
    m_asked: usize,
    /// False: the stream's next frame re-clusters (also the state of a stream never seen).
    valid: bool,
    center_of: Vec<u32>,
}

impl Carried {
    /// Bytes its buffers hold (their capacity).
    fn bytes(&self) -> usize {
        let r = &self.red;
        let n = self.reference.capacity()
            + self.center_of.capacity()
            + r.merged.capacity()
            + r.sizes.capacity()
            + r.assign.capacity()
            + r.centers.capacity();
        n * 4
    }
}

/// Bytes of the carried middle's last outputs (their capacity).
fn outputs_bytes(mid: &Vec<f32>, full: &Vec<f32>) -> usize {
    (mid.capacity() + full.capacity()) * std::mem::size_of::<f32>()
}

/// One stream's carried clusters and carried middle while another stream's frames run
/// ([`CarryMiddle::swap_state`]).
#[derive(Default)]
pub struct ParkedCarry {
    clusters: Carried,
    enc: super::encoder::ParkedCaches,
    mid: Vec<f32>,
    full: Vec<f32>,
}

impl ParkedCarry {
    /// Bytes its buffers hold (their capacity).
    pub fn bytes(&self) -> usize {
        self.enc.bytes() + self.clusters.bytes() + outputs_bytes(&self.mid, &self.full)
    }
}

/// The carried partition of one lane and its references.
pub struct ClusterCarry {
    reducer: Box<dyn Reducer>,
    radius: usize,
    s: Carried,
    scores: Vec<f32>,
    touched: Vec<bool>,
    /// Touched cluster ids, ascending.
    force: Vec<usize>,
}

impl ClusterCarry {
    pub fn new(cfg: &ReduceConfig) -> Result<ClusterCarry, reduce::BuildError> {
        Ok(ClusterCarry {
            reducer: reduce::build_on_device(cfg)?,
            radius: cfg.ailurus.radius,
            s: Carried::default(),
            scores: Vec::new(),
            touched: Vec::new(),
            force: Vec::new(),
        })
    }

    /// A new reducer from the next frame on (which then re-clusters).
    pub fn reconfigure(&mut self, cfg: &ReduceConfig) -> Result<(), reduce::BuildError> {
        self.reducer = reduce::build_on_device(cfg)?;
        self.radius = cfg.ailurus.radius;
        self.s.valid = false;
        Ok(())
    }

    /// The next frame re-clusters.
    pub fn reset(&mut self) {
        self.s.valid = false;
    }

    /// Exchange the carried partition and its references with `parked` (another stream's; see
    /// `streams.rs`). The reducer and the per-frame scratch stay.
    fn swap_state(&mut self, parked: &mut Carried) {
        std::mem::swap(&mut self.s, parked);
    }

    /// The current partition and merged tokens.
    pub fn reduction(&self) -> &Reduction {
        &self.s.red
    }

    /// The touched cluster ids of the last step (ascending).
    pub fn touched(&self) -> &[usize] {
        &self.force
    }

    /// One frame: carry or re-cluster the partition of `patches` (`[n, c]`, the stem's patch
    /// rows), then merge. `recluster` forces a re-cluster (a lane refresh). Returns the M used.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        patches: &[f32],
        c: usize,
        grid: (usize, usize),
        m: usize,
        threshold: f32,
        recluster_above: f32,
        recluster: bool,
        stats: &mut CarryStats,
    ) -> Result<usize, reduce::ReduceError> {
        let n = reduce::check_shape("carry", patches, c, grid)?;
        stats.changed = 0;
        stats.moved = 0;
        let why = if recluster || !self.s.valid {
            Some(Recluster::Refresh)
        } else if grid != self.s.grid || m != self.s.m_asked {
            Some(Recluster::NewShape)
        } else {
            super::encoder::scores(patches, &self.s.reference, c, &mut self.scores);
            stats.changed = self.scores.iter().filter(|&&s| s >= threshold).count();
            (stats.changed as f32 > recluster_above * n as f32).then_some(Recluster::TooManyChanged)
        };
        stats.reclustered = why;
        if why.is_some() {
            self.recluster(patches, c, grid, m)?;
            stats.changed = n;
        } else {
            stats.moved = self.reassign(patches, c, threshold);
            merge_means(patches, c, self.s.red.m, &mut self.s.red);
        }
        stats.touched = self.force.len();
        Ok(self.s.red.m)
    }

    fn recluster(
        &mut self,
        patches: &[f32],
        c: usize,
        grid: (usize, usize),
        m: usize,
    ) -> Result<(), reduce::ReduceError> {
        self.reducer.reduce(patches, c, grid, m, &mut self.s.red)?;
        self.s.reference.clear();
        self.s.reference.extend_from_slice(patches);
        self.s.center_of.clear();
        self.s.center_of.resize(grid.0 * grid.1, NONE);
        for (id, &t) in self.s.red.centers.iter().enumerate() {
            self.s.center_of[t as usize] = id as u32;
        }
        (self.s.grid, self.s.m_asked, self.s.valid) = (grid, m, true);
        self.force.clear();
        self.force.extend(0..self.s.red.m);
        Ok(())
    }

    /// Re-assign the tokens whose score reached `threshold` (scores from `step`); returns how
    /// many moved. Fills `force` with the touched clusters (those a token left or joined).
    fn reassign(&mut self, patches: &[f32], c: usize, threshold: f32) -> usize {
        let m = self.s.red.m;
        self.touched.clear();
        self.touched.resize(m, false);
        let mut moved = 0;
        for i in 0..self.scores.len() {
            if self.scores[i] < threshold {
                continue;
            }
            let old = self.s.red.assign[i];
            let new = if self.s.center_of[i] != NONE {
                self.s.center_of[i]
            } else {
                nearest_centre(patches, c, i, self.s.grid, self.radius, &self.s.red.centers, &self.s.center_of)
            };
            self.s.red.assign[i] = new;
            if old != new {
                self.touched[old as usize] = true;
                self.touched[new as usize] = true;
                moved += 1;
            }
            self.s.reference[i * c..(i + 1) * c].copy_from_slice(&patches[i * c..(i + 1) * c]);
        }
        self.force.clear();
        self.force.extend((0..m).filter(|&id| self.touched[id]));
        moved
    }
}

/// The cluster of the nearest centre to token `i` by squared distance: among the centres in its
/// Chebyshev window of `radius` (raster order = ascending id; ties: the lower id), else among all.
pub fn nearest_centre(
    x: &[f32],
    c: usize,
    i: usize,
    (h, w): (usize, usize),
    radius: usize,
    centers: &[u32],
    center_of: &[u32],
) -> u32 {
    let d2 = |j: usize| -> f32 {
        x[i * c..(i + 1) * c].iter().zip(&x[j * c..(j + 1) * c]).map(|(a, b)| (a - b) * (a - b)).sum()
    };
    let (y, xi) = (i / w, i % w);
    let (mut best, mut best_d) = (NONE, f32::INFINITY);
    for yy in y.saturating_sub(radius)..=(y + radius).min(h - 1) {
        for xx in xi.saturating_sub(radius)..=(xi + radius).min(w - 1) {
            let j = yy * w + xx;
            let id = center_of[j];
            if id != NONE {
                let d = d2(j);
                if best == NONE || d < best_d {
                    (best, best_d) = (id, d);
                }
            }
        }
    }
    if best == NONE {
        for (id, &t) in centers.iter().enumerate() {
            let d = d2(t as usize);
            if best == NONE || d < best_d {
                (best, best_d) = (id as u32, d);
            }
        }
    }
    best
}

/// The carried clusters, the middle's executor and its buffers (one per lane).
pub struct CarryMiddle {
    pub clusters: ClusterCarry,
    enc: ReuseEncoder,
    middle_in: Vec<f32>,
    bias: Vec<f32>,
    rows: Vec<usize>,
    mid: Vec<f32>,
    full: Vec<f32>,
}

/// How one frame of [`CarryMiddle::run`] runs.
#[derive(Debug, Clone, Copy)]
pub struct CarryFrame {
    /// The patch grid and the M asked for.
    pub grid: (usize, usize),
    pub m: usize,
    /// The middle's gate (`cap`/`floor` in prefix + M rows); `refresh` also re-clusters.
    pub gate: Gate,
    pub recluster_above: f32,
    /// Proportional attention: log cluster sizes as key bias.
    pub key_bias: bool,
}

impl CarryMiddle {
    pub fn new(enc: ReuseEncoder, reduce: &ReduceConfig) -> Result<CarryMiddle, reduce::BuildError> {
        Ok(CarryMiddle {
            clusters: ClusterCarry::new(reduce)?,
            enc,
            middle_in: Vec::new(),
            bias: Vec::new(),
            rows: Vec::new(),
            mid: Vec::new(),
            full: Vec::new(),
        })
    }

    /// Drop every cache: the next frame re-clusters and recomputes the middle.
    pub fn reset(&mut self) {
        self.clusters.reset();
        self.enc.reset();
    }

    /// Exchange the carried state (partition, references, the middle's caches and last output)
    /// with another stream's: a swap of buffers, no copy.
    pub fn swap_state(&mut self, parked: &mut ParkedCarry) {
        self.clusters.swap_state(&mut parked.clusters);
        self.enc.swap_caches(&mut parked.enc);
        std::mem::swap(&mut self.mid, &mut parked.mid);
        std::mem::swap(&mut self.full, &mut parked.full);
    }

    /// Bytes the carried state holds (as [`ParkedCarry::bytes`]).
    pub fn bytes(&self) -> usize {
        self.enc.cache_bytes() + self.clusters.s.bytes() + outputs_bytes(&self.mid, &self.full)
    }

    /// The unfolded tokens of the last frame that ran the middle (`[prefix + n, c]`, the head's
    /// input).
    pub fn tokens(&self) -> &[f32] {
        &self.full
    }

    /// The last frame's partition.
    pub fn partition(&self, input_size: u32, out: &mut Partition) {
        out.copy_from(&self.clusters.s.red, self.clusters.s.grid, input_size);
    }

    /// One frame on the stem's output `stem` (`[prefix + n, c]`, blocks 0..cut-1 run) with the
    /// middle = blocks `middle`: cluster step, middle with reuse, unfold into [`Self::tokens`].
    /// Returns whether any middle row ran (else the unfolded tokens are the last frame's: the
    /// head can be skipped).
    pub fn run(
        &mut self,
        stem: &[f32],
        prefix: usize,
        c: usize,
        middle: std::ops::Range<usize>,
        f: CarryFrame,
        stats: &mut CarryStats,
    ) -> TractResult<bool> {
        let t0 = Instant::now();
        let g = f.gate;
        let m = self.clusters.step(
            &stem[prefix * c..],
            c,
            f.grid,
            f.m,
            g.threshold,
            f.recluster_above,
            g.refresh,
            stats,
        )?;
        let red = &self.clusters.s.red;
        self.middle_in.clear();
        self.middle_in.extend_from_slice(&stem[..prefix * c]);
        self.middle_in.extend_from_slice(&red.merged[..m * c]);
        self.bias.clear();
        self.bias.resize(prefix, 0.0);
        self.bias.extend(red.sizes[..m].iter().map(|s| if f.key_bias { s.ln() } else { 0.0 }));
        self.rows.clear();
        self.rows.extend(self.clusters.force.iter().map(|&id| prefix + id));
        let gate = Gate { refresh: g.refresh || stats.reclustered.is_some(), ..g };
        let t1 = Instant::now();
        let bias = f.key_bias.then_some(&self.bias[..]);
        self.enc.run_range(&self.middle_in, gate, middle, bias, &self.rows, &mut self.mid, &mut stats.middle)?;
        let t2 = Instant::now();
        let ran = stats.middle.active.iter().any(|&a| a > 0);
        if ran {
            let n = f.grid.0 * f.grid.1;
            self.full.clear();
            self.full.extend_from_slice(&self.mid[..prefix * c]);
            self.full.resize((prefix + n) * c, 0.0);
            unfold(&self.mid[prefix * c..], c, &self.clusters.s.red.assign[..n], &mut self.full[prefix * c..]);
        }
        stats.cluster_time = (t1 - t0) + t2.elapsed();
        stats.middle_time = t2 - t1;
        Ok(ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::ailurus::AilurusReducer;
    use crate::reduce::AilurusConfig;

    fn tokens(n: usize, c: usize, seed: u64) -> Vec<f32> {
        (0..n * c).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect()
    }

    fn carry() -> ClusterCarry {
        ClusterCarry::new(&ReduceConfig { cut: 1, m: 12, ..ReduceConfig::default() }).unwrap()
    }

    /// The slow, obvious nearest centre: every centre with its Chebyshev distance and D^2 in
    /// f64; the window's if any, lowest (D^2, id).
    fn nearest_slow(x: &[f32], c: usize, i: usize, w: usize, r: usize, centers: &[u32]) -> u32 {
        let d2 = |j: usize| (0..c).map(|k| ((x[i * c + k] - x[j * c + k]) as f64).powi(2)).sum::<f64>();
        let cheb = |j: usize| (i / w).abs_diff(j / w).max((i % w).abs_diff(j % w));
        let pick = |inside: bool| {
            centers
                .iter()
                .enumerate()
                .filter(|(_, t)| !inside || cheb(**t as usize) <= r)
                .map(|(id, &t)| (d2(t as usize), id as u32))
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        };
        pick(true).or(pick(false)).unwrap().1
    }

    /// A carried frame's assignment equals the slow reference: changed tokens to the nearest
    /// centre (window, else anywhere), the others and the centres where they were.
    #[test]
    fn changed_tokens_join_the_nearest_carried_centre() {
        let (grid, c) = ((6, 7), 5);
        let n = grid.0 * grid.1;
        let mut cc = carry();
        let x0 = tokens(n, c, 1);
        let mut st = CarryStats::default();
        cc.step(&x0, c, grid, 12, 0.1, 1.0, false, &mut st).unwrap();
        assert_eq!(st.reclustered, Some(Recluster::Refresh));
        let (centers, before) = (cc.s.red.centers.clone(), cc.s.red.assign.clone());
        // Change every third token a lot, the rest not at all.
        let mut x1 = x0.clone();
        let changed: Vec<usize> = (0..n).step_by(3).collect();
        let other = tokens(n, c, 9);
        for &i in &changed {
            x1[i * c..(i + 1) * c].copy_from_slice(&other[i * c..(i + 1) * c]);
        }
        cc.step(&x1, c, grid, 12, 0.1, 1.0, false, &mut st).unwrap();
        assert_eq!((st.reclustered, st.changed), (None, changed.len()));
        assert_eq!(cc.s.red.centers, centers, "centres are carried");
        let mut touched = vec![false; centers.len()];
        for i in 0..n {
            let want = if let Some(id) = centers.iter().position(|&t| t as usize == i) {
                id as u32
            } else if changed.contains(&i) {
                nearest_slow(&x1, c, i, grid.1, cc.radius, &centers)
            } else {
                before[i]
            };
            assert_eq!(cc.s.red.assign[i], want, "token {i}");
            if before[i] != want {
                touched[before[i] as usize] = true;
                touched[want as usize] = true;
            }
        }
        let want: Vec<usize> = (0..centers.len()).filter(|&id| touched[id]).collect();
        assert_eq!(cc.touched(), &want[..]);
        // The merged tokens are the member means of the new partition.
        let mut r = Reduction { assign: cc.s.red.assign.clone(), ..Reduction::default() };
        merge_means(&x1, c, centers.len(), &mut r);
        assert_eq!((&r.merged, &r.sizes), (&cc.s.red.merged, &cc.s.red.sizes));
    }

    #[test]
    fn recluster_rules_fire() {
        let (grid, c) = ((6, 7), 5);
        let n = grid.0 * grid.1;
        let mut cc = carry();
        let x = tokens(n, c, 2);
        let mut st = CarryStats::default();
        let mut step = |cc: &mut ClusterCarry, x: &[f32], m: usize, grid, above: f32, refresh: bool| {
            cc.step(x, c, grid, m, 0.1, above, refresh, &mut st).unwrap();
            (st.reclustered, st.touched)
        };
        assert_eq!(step(&mut cc, &x, 12, grid, 0.5, false).0, Some(Recluster::Refresh), "first frame");
        // The partition is the reducer's, as on the per-frame path.
        let mut r = Reduction::default();
        AilurusReducer::new(&AilurusConfig::default()).reduce(&x, c, grid, 12, &mut r).unwrap();
        assert_eq!((&cc.s.red.assign, &cc.s.red.centers), (&r.assign, &r.centers));
        assert_eq!(step(&mut cc, &x, 12, grid, 0.5, false), (None, 0), "identical: nothing touched");
        assert_eq!(step(&mut cc, &x, 12, grid, 0.5, true).0, Some(Recluster::Refresh));
        assert_eq!(step(&mut cc, &x, 10, grid, 0.5, false).0, Some(Recluster::NewShape), "new M");
        let y = tokens(n, c, 3);
        assert_eq!(step(&mut cc, &y, 10, grid, 0.5, false).0, Some(Recluster::TooManyChanged));
        assert_eq!(step(&mut cc, &tokens(n, c, 4), 10, grid, 1.0, false).0, None, "limit 1: carried");
        let y = tokens(42, c, 3);
        assert_eq!(step(&mut cc, &y, 10, (7, 6), 1.0, false).0, Some(Recluster::NewShape), "new grid");
        cc.reset();
        assert_eq!(step(&mut cc, &y, 10, (7, 6), 1.0, false).0, Some(Recluster::Refresh));
    }
}
