//! `grid`: average pooling of s x s windows, the cheapest baseline.
//!
//! Owns the choice of the window side s (the smallest s >= 2 with ceil(h/s) * ceil(w/s) <= M)
//! and the pooling; partial windows at the right and bottom edges average what they hold. Must
//! not allocate once warm (everything lives in `Reduction`).

use super::{check_shape, merge_means, none, ReduceError, Reducer, Reduction};

/// The window side for an `h x w` grid and a budget of `m < h*w` clusters.
pub fn window_side(h: usize, w: usize, m: usize) -> usize {
    let mut s = 2;
    while h.div_ceil(s) * w.div_ceil(s) > m {
        s += 1;
    }
    s
}

#[derive(Debug, Default)]
pub struct GridReducer;

impl Reducer for GridReducer {
    fn name(&self) -> &'static str {
        "grid"
    }

    /// M >= N (and N = 0) is the identity; M = 0 is treated as 1. Cluster ids are the windows
    /// in raster order; a cluster's centre is its window's top-left token.
    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        (h, w): (usize, usize),
        m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError> {
        let n = check_shape("grid", tokens, c, (h, w))?;
        let m = m.max(1);
        if m >= n {
            none::identity(tokens, c, n, out);
            return Ok(());
        }
        let s = window_side(h, w, m);
        let gw = w.div_ceil(s);
        out.assign.clear();
        out.assign.extend((0..n).map(|i| ((i / w / s) * gw + (i % w) / s) as u32));
        out.centers.clear();
        for by in 0..h.div_ceil(s) {
            out.centers.extend((0..gw).map(|bx| (by * s * w + bx * s) as u32));
        }
        merge_means(tokens, c, out.centers.len(), out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_is_the_smallest_that_fits() {
        assert_eq!(window_side(32, 32, 256), 2);
        assert_eq!(window_side(32, 32, 255), 3);
        assert_eq!(window_side(32, 32, 1), 32);
        assert_eq!(window_side(1, 10, 4), 3);
        assert_eq!(window_side(1, 10, 5), 2);
    }

    #[test]
    fn edge_windows_average_what_they_have() {
        // 3x3 grid, M = 4 -> s = 2: windows {0,1,3,4}, {2,5}, {6,7}, {8}.
        let t: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let mut out = Reduction::default();
        GridReducer.reduce(&t, 1, (3, 3), 4, &mut out).unwrap();
        assert_eq!(out.assign, vec![0, 0, 1, 0, 0, 1, 2, 2, 3]);
        assert_eq!(out.centers, vec![0, 2, 6, 8]);
        assert_eq!(out.sizes, vec![4.0, 2.0, 2.0, 1.0]);
        assert_eq!(out.merged, vec![2.0, 3.5, 6.5, 8.0]);
    }
}
