//! The online cost model of the budget controller: predicted milliseconds of preprocess +
//! inference for every (input size, M), learned from measured frames.
//!
//! Model, in the log domain, for size j and u = M / N_j:
//!
//! ```text
//! ln t = ln prior_j(u) + load + size_j + slope_j * (u - 1) + noise
//! ```
//!
//! `prior_j` is the quadratic a + b*u + c*u^2 fitted to the calibration table's costs for size j.
//! `load` is shared by every size (another process taking a core slows every setting alike),
//! `size_j` corrects one size's calibrated level and `slope_j` its dependence on M. The state is
//! tracked by a Kalman filter (recursive least squares with a per-parameter forgetting rate):
//! `load` is a random walk that forgets fast; the per-size terms drift slowly back to the
//! calibration (mean-reverting, so a size not run for a long time is trusted as calibrated, with
//! bounded uncertainty). A measurement at one size also moves the prediction of the sizes not
//! running now: a 2x slowdown seen at 448 px predicts 336 px slowed too.
//! An innovation beyond `CLIP` standard deviations is held back as suspect (a one-frame spike
//! changes nothing); a second one in the same direction confirms a real change, which is then
//! followed at once. `variance` gives the parameter uncertainty of any prediction, so the
//! controller can be more careful with settings it has not measured.
//! Owns no policy: what to run is decided in `budget.rs`.

use super::CalibrationTable;
use crate::engine::SizeInfo;

/// A quadratic cost curve in u = M / N, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quadratic {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl Quadratic {
    pub fn constant(a: f64) -> Quadratic {
        Quadratic { a, b: 0.0, c: 0.0 }
    }

    /// Value at u, floored at 1 us so that logs stay finite.
    pub fn eval(&self, u: f64) -> f64 {
        (self.a + self.b * u + self.c * u * u).max(1e-3)
    }

    pub fn scaled(&self, k: f64) -> Quadratic {
        Quadratic { a: self.a * k, b: self.b * k, c: self.c * k }
    }

    /// Least-squares fit of `(u, t)` points: quadratic with 3+ distinct u, linear with 2,
    /// constant with 1. None when there are no points.
    pub fn fit(points: &[(f64, f64)]) -> Option<Quadratic> {
        if points.is_empty() {
            return None;
        }
        let mut us: Vec<f64> = points.iter().map(|p| p.0).collect();
        us.sort_by(f64::total_cmp);
        us.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        let degree = us.len().min(3);
        // Normal equations for the first `degree` powers.
        let mut a = [[0.0f64; 4]; 3];
        for &(u, t) in points {
            let phi = [1.0, u, u * u];
            for r in 0..degree {
                for c in 0..degree {
                    a[r][c] += phi[r] * phi[c];
                }
                a[r][3] += phi[r] * t;
            }
        }
        let sol = solve(&mut a, degree)?;
        let q = Quadratic { a: sol[0], b: sol[1], c: sol[2] };
        // A fit that goes non-positive inside [0, 1] is useless as a prior: fall back to linear.
        let min_t = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        if degree == 3
            && (0..=20).any(|i| q.a + q.b * (i as f64 / 20.0) + q.c * (i as f64 / 20.0).powi(2) <= 0.1 * min_t)
        {
            return Quadratic::fit(&reduce_to_two(points));
        }
        Some(q)
    }
}

/// The points collapsed to the lowest and highest u (means), for a linear fallback.
fn reduce_to_two(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let lo = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let mean_at = |u: f64| {
        let v: Vec<f64> = points.iter().filter(|p| (p.0 - u).abs() < 1e-9).map(|p| p.1).collect();
        (u, v.iter().sum::<f64>() / v.len() as f64)
    };
    vec![mean_at(lo), mean_at(hi)]
}

/// Gaussian elimination with partial pivoting on an n x (n+1) augmented matrix.
fn solve(a: &mut [[f64; 4]; 3], n: usize) -> Option<[f64; 3]> {
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        let pivot_row = a[col];
        for (r, row) in a.iter_mut().enumerate().take(n) {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    let mut x = [0.0; 3];
    for (i, xi) in x.iter_mut().enumerate().take(n) {
        *xi = a[i][3] / a[i][i];
    }
    Some(x)
}

/// Variance added to `load` per frame (random walk).
const Q_LOAD: f64 = 0.005;
/// Prior (and long-run) variances: load unknown (+-50%), the calibration's level per size
/// good to about 10%, its slope in u to about 0.2 per unit u.
const P0_LOAD: f64 = 0.25;
const P0_SIZE: f64 = 0.01;
const P0_SLOPE: f64 = 0.04;
/// Per-frame mean reversion of the per-size terms (time constant about 2000 frames).
const REVERT: f64 = 0.9995;
/// Measurement noise variance of ln t (about 10% frame-to-frame jitter).
const R: f64 = 0.01;
/// Innovations beyond this many standard deviations are suspect: ignored unless the next one
/// is beyond it in the same direction too.
const CLIP: f64 = 2.5;

/// The Kalman filter over [load, size_0.., slope_0..].
#[derive(Debug, Clone)]
pub struct CostModel {
    priors: Vec<Quadratic>,
    x: Vec<f64>,
    p: Vec<f64>,
    last_outlier: f64,
    /// Scratch for P h^T (no allocation per frame).
    ph: Vec<f64>,
}

impl CostModel {
    /// One prior curve per size (index j everywhere below).
    pub fn new(priors: Vec<Quadratic>) -> CostModel {
        let s = priors.len();
        let d = 1 + 2 * s;
        let mut p = vec![0.0; d * d];
        for i in 0..d {
            p[i * d + i] = if i == 0 {
                P0_LOAD
            } else if i <= s {
                P0_SIZE
            } else {
                P0_SLOPE
            };
        }
        CostModel { priors, x: vec![0.0; d], p, last_outlier: 0.0, ph: Vec::with_capacity(d) }
    }

    pub fn num_sizes(&self) -> usize {
        self.priors.len()
    }

    fn dim(&self) -> usize {
        self.x.len()
    }

    /// The non-zero entries of the measurement row for (j, u).
    fn h(&self, j: usize, u: f64) -> [(usize, f64); 3] {
        let s = self.priors.len();
        [(0, 1.0), (1 + j, 1.0), (1 + s + j, u - 1.0)]
    }

    /// Predicted ln(ms) at size j and u = M/N.
    pub fn predict_ln(&self, j: usize, u: f64) -> f64 {
        self.priors[j].eval(u).ln() + self.h(j, u).iter().map(|&(i, v)| self.x[i] * v).sum::<f64>()
    }

    pub fn predict_ms(&self, j: usize, u: f64) -> f64 {
        self.predict_ln(j, u).exp()
    }

    /// Measured cost / calibrated cost, shared by all sizes.
    pub fn load(&self) -> f64 {
        self.x[0].exp()
    }

    /// Parameter variance of `predict_ln(j, u)` (no measurement noise).
    pub fn variance(&self, j: usize, u: f64) -> f64 {
        let d = self.dim();
        let h = self.h(j, u);
        h.iter().map(|&(r, vr)| h.iter().map(|&(c, vc)| vr * self.p[r * d + c] * vc).sum::<f64>()).sum::<f64>().max(0.0)
    }

    /// The bound beyond which an innovation at (j, u) is suspect, in ln(ms) (what `update`
    /// clips the returned error to).
    pub fn clip_bound(&self, j: usize, u: f64) -> f64 {
        CLIP * (self.variance(j, u) + R).sqrt()
    }

    /// Time update: load random walk, per-size terms revert towards the calibration.
    fn drift(&mut self) {
        let d = self.dim();
        let f = |i: usize| if i == 0 { 1.0 } else { REVERT };
        for i in 1..d {
            self.x[i] *= REVERT;
        }
        for r in 0..d {
            for c in 0..d {
                self.p[r * d + c] *= f(r) * f(c);
            }
        }
        let s = self.priors.len();
        self.p[0] += Q_LOAD;
        for i in 1..d {
            let p0 = if i <= s { P0_SIZE } else { P0_SLOPE };
            self.p[i * d + i] += (1.0 - REVERT * REVERT) * p0;
        }
    }

    /// Learn from one measured frame; returns the innovation ln(measured / predicted),
    /// clipped to the outlier bound (what the controller keeps as a prediction error: a
    /// regime change is the filter's business, not noise).
    pub fn update(&mut self, j: usize, u: f64, ms: f64) -> f64 {
        self.drift();
        let e = ms.max(1e-3).ln() - self.predict_ln(j, u);
        let h = self.h(j, u);
        let bound = CLIP * (self.variance(j, u) + R).sqrt();
        if e.abs() > bound {
            if self.last_outlier * e <= 0.0 {
                // Suspect: wait for a second opinion.
                self.last_outlier = e;
                return e.clamp(-bound, bound);
            }
            // Confirmed: a real change. Widen the load's uncertainty so this frame and the
            // next ones are followed at once.
            self.p[0] += e * e;
        }
        self.last_outlier = 0.0;
        self.apply(e, &h);
        e.clamp(-bound, bound)
    }

    /// The measurement update with innovation `e`.
    fn apply(&mut self, e: f64, h: &[(usize, f64); 3]) {
        let d = self.dim();
        let mut ph = std::mem::take(&mut self.ph);
        ph.clear();
        ph.extend((0..d).map(|r| h.iter().map(|&(c, v)| self.p[r * d + c] * v).sum::<f64>()));
        let var = h.iter().map(|&(c, v)| ph[c] * v).sum::<f64>() + R;
        for (xi, phi) in self.x.iter_mut().zip(&ph) {
            *xi += phi / var * e;
        }
        self.shrink(&ph, var);
        self.ph = ph;
    }

    /// P -= (P h^T)(h P) / var, kept symmetric with a positive diagonal.
    fn shrink(&mut self, ph: &[f64], var: f64) {
        let d = self.dim();
        for r in 0..d {
            for c in 0..d {
                self.p[r * d + c] -= ph[r] * ph[c] / var;
            }
        }
        for r in 0..d {
            for c in r + 1..d {
                let m = 0.5 * (self.p[r * d + c] + self.p[c * d + r]);
                self.p[r * d + c] = m;
                self.p[c * d + r] = m;
            }
            self.p[r * d + r] = self.p[r * d + r].max(1e-9);
        }
    }
}

/// The prior cost curve of an engine size: its calibration rows, or the nearest calibrated
/// size scaled by the token ratio (^1.2: attention grows faster than linearly).
pub(super) fn prior_for(table: &CalibrationTable, s: &SizeInfo) -> Quadratic {
    if let Some(q) = table.cost_curve(s.input_size) {
        return q;
    }
    let near = table
        .sizes()
        .into_iter()
        .filter_map(|z| Some((z, table.cost_curve(z)?, table.rows_for(z).first()?.n_tokens)))
        .min_by_key(|(z, _, _)| z.abs_diff(s.input_size));
    match near {
        Some((_, q, n)) => q.scaled((s.n_tokens as f64 / n as f64).powf(1.2)),
        None => Quadratic::constant(1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_quadratic_and_degrades_gracefully() {
        let q = Quadratic { a: 300.0, b: 200.0, c: 500.0 };
        let pts: Vec<(f64, f64)> = [0.125, 0.25, 0.5, 0.75, 1.0].iter().map(|&u| (u, q.eval(u))).collect();
        let f = Quadratic::fit(&pts).unwrap();
        for &(u, t) in &pts {
            assert!((f.eval(u) - t).abs() < 1e-6, "{f:?}");
        }
        let lin = Quadratic::fit(&[(0.5, 10.0), (1.0, 20.0)]).unwrap();
        assert!((lin.eval(0.75) - 15.0).abs() < 1e-9 && lin.c == 0.0);
        assert_eq!(Quadratic::fit(&[(1.0, 7.0), (1.0, 9.0)]).unwrap(), Quadratic::constant(8.0));
        assert!(Quadratic::fit(&[]).is_none());
    }

    #[test]
    fn variance_is_larger_where_nothing_was_measured() {
        let mut m = CostModel::new(vec![Quadratic::constant(1000.0), Quadratic::constant(500.0)]);
        for _ in 0..30 {
            m.update(0, 0.5, 1000.0);
        }
        let here = m.variance(0, 0.5);
        assert!(here < m.variance(0, 1.0) && m.variance(0, 1.0) < m.variance(1, 1.0), "{here}");
        for _ in 0..20_000 {
            m.drift();
        }
        let d = m.dim();
        assert!(m.p[2 * d + 2] <= P0_SIZE * 1.01, "bounded while unmeasured: {}", m.p[2 * d + 2]);
    }

    #[test]
    fn a_load_change_seen_at_one_size_moves_the_others() {
        let mut m = CostModel::new(vec![Quadratic::constant(1000.0), Quadratic::constant(500.0)]);
        for _ in 0..30 {
            m.update(1, 1.0, 1000.0);
        }
        assert!((m.predict_ms(1, 1.0) / 1000.0 - 1.0).abs() < 0.02);
        let big = m.predict_ms(0, 1.0);
        assert!(big > 1600.0, "the unobserved size follows the load: {big}");
    }

    #[test]
    fn one_spike_moves_little_a_step_is_followed() {
        let mut m = CostModel::new(vec![Quadratic::constant(100.0)]);
        for _ in 0..50 {
            m.update(0, 1.0, 100.0);
        }
        m.update(0, 1.0, 500.0);
        let after_spike = m.predict_ms(0, 1.0);
        assert!((after_spike - 100.0).abs() < 1.0, "a lone spike is ignored: {after_spike}");
        for _ in 0..3 {
            m.update(0, 1.0, 100.0);
        }
        assert!((m.predict_ms(0, 1.0) - 100.0).abs() < 1.0);
        m.update(0, 1.0, 200.0);
        m.update(0, 1.0, 200.0);
        let after_step = m.predict_ms(0, 1.0);
        assert!(after_step > 170.0, "{after_step}");
    }
}
