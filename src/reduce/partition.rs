//! `Partition`: a cheap copy of one frame's token partition at the cut (which cluster every
//! patch token joined, the centres, the sizes), carried with the frame result to the sinks so
//! that a cluster view can be drawn later, only when someone asks for it.
//!
//! Owns the copy, not the clustering: it is filled from a [`Reduction`] by the lane after the
//! reducer ran. `copy_from` reuses the buffers (no allocation once they have held the largest
//! grid). Must not draw anything (that is `sink::clusters`).

use super::Reduction;

/// The token partition of one reduced frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partition {
    /// Model input side the frame ran at (pixels).
    pub input_size: u32,
    /// Patch-token grid, `(h, w)`: `assign` is in raster order over it.
    pub grid: (usize, usize),
    /// Clusters (merged tokens) the middle blocks ran on.
    pub m: usize,
    /// Cluster id of every patch token, `[h * w]`, each in `0..m`.
    pub assign: Vec<u32>,
    /// Token index of each cluster's centre / representative, `[m]`.
    pub centers: Vec<u32>,
    /// Member count of each cluster, `[m]`.
    pub sizes: Vec<u32>,
}

impl Partition {
    /// Patch tokens N (`h * w`).
    pub fn n(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// Copy `r`'s partition of a `grid` of tokens at `input_size`, reusing this one's buffers.
    pub fn copy_from(&mut self, r: &Reduction, grid: (usize, usize), input_size: u32) {
        let (n, m) = (grid.0 * grid.1, r.m);
        self.input_size = input_size;
        self.grid = grid;
        self.m = m;
        self.assign.clear();
        self.assign.extend_from_slice(&r.assign[..n.min(r.assign.len())]);
        self.centers.clear();
        self.centers.extend_from_slice(&r.centers[..m.min(r.centers.len())]);
        self.sizes.clear();
        self.sizes.extend(r.sizes[..m.min(r.sizes.len())].iter().map(|&s| s as u32));
    }

    /// Whether the buffers agree with each other (a drawing relies on it): `n` assignments in
    /// `0..m`, `m` centres in `0..n`, `m` sizes. The problem, in words, when not.
    pub fn check(&self) -> Result<(), String> {
        let (n, m) = (self.n(), self.m);
        if self.assign.len() != n {
            return Err(format!("{} assignments for a {}x{} grid", self.assign.len(), self.grid.0, self.grid.1));
        }
        if self.centers.len() != m || self.sizes.len() != m {
            return Err(format!("{} centres and {} sizes for M={m}", self.centers.len(), self.sizes.len()));
        }
        if let Some(a) = self.assign.iter().find(|&&a| a as usize >= m) {
            return Err(format!("cluster id {a} out of 0..{m}"));
        }
        if let Some(c) = self.centers.iter().find(|&&c| c as usize >= n) {
            return Err(format!("centre token {c} out of 0..{n}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_from_takes_the_partition_and_reuses_its_buffers() {
        let r = Reduction {
            m: 2,
            c: 1,
            merged: vec![0.0; 2],
            sizes: vec![3.0, 1.0],
            assign: vec![0, 0, 1, 0],
            centers: vec![1, 2],
        };
        let mut p = Partition::default();
        p.copy_from(&r, (2, 2), 28);
        assert_eq!((p.m, p.n(), p.input_size), (2, 4, 28));
        assert_eq!((&p.assign[..], &p.centers[..], &p.sizes[..]), (&[0, 0, 1, 0][..], &[1, 2][..], &[3, 1][..]));
        assert_eq!(p.check(), Ok(()));
        let ptr = p.assign.as_ptr();
        p.copy_from(&r, (2, 2), 28);
        assert_eq!(p.assign.as_ptr(), ptr, "a second copy of the same size reuses the buffer");
        p.assign[3] = 2;
        assert_eq!(p.check(), Err("cluster id 2 out of 0..2".into()));
    }
}
