//! Token reduction: cluster the N patch tokens of one image into M merged tokens, and unfold the
//! merged tokens back to the full grid.
//!
//! Owns the `Reducer` trait, its CPU implementations and their configuration. Must not touch the
//! model graph: the caller hands in patch tokens (prefix tokens already split off) and gets back
//! merged tokens, cluster sizes and the assignment. No allocation per frame: every buffer lives in
//! `Reduction` or inside the reducer and is reused.

pub mod ailurus;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dot;
pub mod fixed;
pub mod grid;
pub mod none;
pub mod partition;
pub mod tome;

pub use partition::Partition;

/// Reused output buffers of one reduction.
#[derive(Debug, Default, Clone)]
pub struct Reduction {
    /// Number of clusters actually produced (may be < the requested M, e.g. M >= N gives N).
    pub m: usize,
    /// Token width C.
    pub c: usize,
    /// Merged tokens, `[m, c]` row-major (the first `m * c` values are valid).
    pub merged: Vec<f32>,
    /// Cluster sizes (member counts), `[m]`.
    pub sizes: Vec<f32>,
    /// Cluster id of every patch token, `[n]`, each in `0..m`.
    pub assign: Vec<u32>,
    /// Token index of each cluster's centre / representative, `[m]`, ascending.
    pub centers: Vec<u32>,
}

/// Errors of a reduction: always a caller bug (shapes), never a data problem.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    #[error("reducer {reducer}: {n} tokens of width {c} do not fill a {h}x{w} grid")]
    Shape { reducer: &'static str, n: usize, c: usize, h: usize, w: usize },
    /// The GPU failed mid-frame (launch, copy, out of memory).
    #[error("reducer {reducer} on {device}: {source}")]
    Device {
        reducer: &'static str,
        device: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A token-reduction strategy: (tokens, grid, M) -> (merged tokens, sizes, assignment).
pub trait Reducer: Send {
    /// Strategy name as used in configs and bench tables.
    fn name(&self) -> &'static str;
    /// Reduce `tokens` (`[n, c]`, n = h*w, raster order) to at most `m` clusters into `out`.
    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        grid: (usize, usize),
        m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError>;
}

/// Unfold: `full[i] = merged[assign[i]]` for every patch token i (`full` is `[n, c]`).
pub fn unfold(merged: &[f32], c: usize, assign: &[u32], full: &mut [f32]) {
    for (i, &a) in assign.iter().enumerate() {
        let a = a as usize;
        full[i * c..(i + 1) * c].copy_from_slice(&merged[a * c..(a + 1) * c]);
    }
}

use serde::Deserialize;

pub use crate::choice::Named;
use crate::choice::{Choice, Device};
use crate::problems::Problems;

crate::choice_enum! {
    /// `[reduce] strategy`: how the patch tokens are merged after the cut.
    pub enum Strategy { Ailurus = "ailurus", Tome = "tome", Grid = "grid", None = "none" }
}

crate::choice_enum! {
    /// `[reduce.ailurus] delta`: where the distance to a denser token is searched.
    pub enum Delta { Global = "global", Window = "window" }
}

crate::choice_enum! {
    /// `[reduce.ailurus] fallback`: a token with no centre in its window joins the nearest
    /// centre anywhere ("global") or in a widening window ("spatial").
    pub enum Fallback { Global = "global", Spatial = "spatial" }
}

/// `[reduce]`: which strategy, where to cut, and how many clusters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReduceConfig {
    /// "ailurus", "tome", "grid" or "none".
    pub strategy: Choice<Strategy>,
    /// First block that runs on merged tokens (a >= 1).
    pub cut: usize,
    /// Clusters kept when the budget controller is off.
    pub m: usize,
    /// log(size) key bias in every middle attention.
    pub proportional_attention: bool,
    /// "cpu", "cuda" or "cuda-or-cpu".
    pub device: Choice<Device>,
    pub ailurus: AilurusConfig,
}

impl Default for ReduceConfig {
    fn default() -> Self {
        ReduceConfig {
            strategy: Strategy::Ailurus.into(),
            cut: 3,
            m: 512,
            proportional_attention: true,
            device: Device::Cpu.into(),
            ailurus: AilurusConfig::default(),
        }
    }
}

/// `[reduce.ailurus]`: the knobs of spatial-aware DPC-KNN (ALGORITHM.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AilurusConfig {
    pub k: usize,
    pub radius: usize,
    /// "global" or "window".
    pub delta: Choice<Delta>,
    pub delta_radius: usize,
    /// "global" or "spatial".
    pub fallback: Choice<Fallback>,
    /// Spatial coverage: every `spread x spread` block of the grid keeps its best-scoring token
    /// as a centre (blocks grow when M is smaller than their count); the rest of the M centres
    /// are the best scores as in the paper. 0 = off (the paper's plain top-M).
    pub spread: usize,
}

/// The side of the coverage blocks of `[reduce.ailurus] spread` on an `h x w` grid with `m`
/// centres: `spread`, grown until there are at most `m` blocks; 0 = off.
pub fn spread_block(spread: usize, (h, w): (usize, usize), m: usize) -> usize {
    if spread == 0 || h * w == 0 {
        return 0;
    }
    let mut b = spread;
    while h.div_ceil(b) * w.div_ceil(b) > m.max(1) {
        b += 1;
    }
    b
}

impl Default for AilurusConfig {
    fn default() -> Self {
        AilurusConfig {
            k: 5,
            radius: 3,
            delta: Delta::Global.into(),
            delta_radius: 8,
            fallback: Fallback::Global.into(),
            spread: 2,
        }
    }
}

impl ReduceConfig {
    pub fn validate(&self, p: &mut Problems) {
        let s = "reduce";
        self.strategy.check(p, s, "strategy");
        p.check(self.cut >= 1, s, "cut", || "must be >= 1 (block 0 always runs on all tokens)".into());
        p.check(self.m >= 1, s, "m", || "must be >= 1".into());
        self.device.check(p, s, "device");
        let a = &self.ailurus;
        let s = "reduce.ailurus";
        p.check(a.k >= 1, s, "k", || "must be >= 1".into());
        p.check(a.radius >= 1, s, "radius", || "must be >= 1".into());
        a.delta.check(p, s, "delta");
        p.check(a.delta_radius >= 1, s, "delta_radius", || "must be >= 1".into());
        a.fallback.check(p, s, "fallback");
        p.check(a.spread != 1 && a.spread <= 64, s, "spread", || {
            format!("{} is not 0 (off) or a block side from 2 to 64", a.spread)
        });
    }
}

/// Why the configured reducer cannot be built (one line, naming `[reduce] device`).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[cfg(feature = "cuda")]
    #[error("[reduce] device: {0}")]
    Cuda(#[from] cuda::CudaError),
    #[error("[reduce] device: \"cuda\" needs a build with `--features cuda`")]
    NotBuilt,
}

/// The reducer for `cfg`, on `cfg.device`: the CUDA kernels with the `cuda` feature ("cuda"
/// is an error without a GPU or for a strategy the kernels do not implement, "cuda-or-cpu"
/// falls back with one log line), else the CPU reducer.
pub fn build_on_device(cfg: &ReduceConfig) -> Result<Box<dyn Reducer>, BuildError> {
    #[cfg(feature = "cuda")]
    {
        Ok(cuda::build_for_device(cfg)?)
    }
    #[cfg(not(feature = "cuda"))]
    match cfg.device.get() {
        Device::Cuda => Err(BuildError::NotBuilt),
        Device::CudaOrCpu => {
            log::warn!(
                "[reduce] device = \"cuda-or-cpu\": this build has no CUDA support; the reducer runs on the CPU"
            );
            Ok(build(cfg))
        }
        Device::Cpu => Ok(build(cfg)),
    }
}

/// The CPU reducer for `cfg.strategy`.
pub fn build(cfg: &ReduceConfig) -> Box<dyn Reducer> {
    match cfg.strategy.get() {
        Strategy::Ailurus => Box::new(ailurus::AilurusReducer::new(&cfg.ailurus)),
        Strategy::Tome => Box::new(tome::TomeReducer::default()),
        Strategy::Grid => Box::new(grid::GridReducer),
        Strategy::None => Box::new(none::NoneReducer),
    }
}

/// Grow `v`'s capacity to at least `cap` elements (no-op when it already holds that much), so a
/// warm reducer never allocates whatever its data.
pub(crate) fn ensure<T>(v: &mut Vec<T>, cap: usize) {
    if v.capacity() < cap {
        v.reserve(cap - v.len());
    }
}

/// Check that `tokens` fills an `h x w` grid of width `c >= 1`; returns n = h*w.
pub(crate) fn check_shape(
    reducer: &'static str,
    tokens: &[f32],
    c: usize,
    (h, w): (usize, usize),
) -> Result<usize, ReduceError> {
    let n = h * w;
    if c == 0 || tokens.len() != n * c {
        return Err(ReduceError::Shape { reducer, n: tokens.len() / c.max(1), c, h, w });
    }
    Ok(n)
}

/// From `out.assign` (`[n]`, ids in `0..m`, every id used): set `out.m`, `out.c`, the member
/// counts `out.sizes` and the member means `out.merged` (members summed in ascending token
/// order in f32, then divided by the count).
pub(crate) fn merge_means(tokens: &[f32], c: usize, m: usize, out: &mut Reduction) {
    out.m = m;
    out.c = c;
    out.sizes.clear();
    out.sizes.resize(m, 0.0);
    out.merged.clear();
    out.merged.resize(m * c, 0.0);
    for (i, &a) in out.assign.iter().enumerate() {
        let a = a as usize;
        out.sizes[a] += 1.0;
        let dst = &mut out.merged[a * c..(a + 1) * c];
        for (d, &x) in dst.iter_mut().zip(&tokens[i * c..(i + 1) * c]) {
            *d += x;
        }
    }
    for (row, &s) in out.merged.chunks_exact_mut(c).zip(&out.sizes) {
        for d in row {
            *d /= s;
        }
    }
}
