//! `fixed`: a given partition, whatever the tokens: the per-frame reduced path with the partition
//! another path chose (the reference that reuse + reduction with carried clusters is tested
//! against, `tests/model/reuse.rs`). Not a config strategy.
//!
//! Owns nothing but the copy of the partition; merges with the same member means as every reducer.

use super::{check_shape, merge_means, Partition, ReduceError, Reducer, Reduction};

/// Returns the partition it was made with (`m` is ignored).
#[derive(Debug, Clone, Default)]
pub struct FixedReducer {
    pub partition: Partition,
}

impl FixedReducer {
    pub fn new(partition: Partition) -> FixedReducer {
        FixedReducer { partition }
    }
}

impl Reducer for FixedReducer {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        grid: (usize, usize),
        _m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError> {
        let n = check_shape("fixed", tokens, c, grid)?;
        let p = &self.partition;
        if p.grid != grid || p.check().is_err() {
            let (h, w) = grid;
            return Err(ReduceError::Shape { reducer: "fixed", n, c, h, w });
        }
        out.assign.clear();
        out.assign.extend_from_slice(&p.assign);
        out.centers.clear();
        out.centers.extend_from_slice(&p.centers);
        merge_means(tokens, c, p.m, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_its_partition_and_the_member_means() {
        let p = Partition {
            input_size: 28,
            grid: (2, 2),
            m: 2,
            assign: vec![0, 1, 1, 0],
            centers: vec![0, 1],
            sizes: vec![2, 2],
        };
        let mut r = FixedReducer::new(p);
        let mut out = Reduction::default();
        r.reduce(&[1.0, 2.0, 4.0, 3.0], 1, (2, 2), 99, &mut out).unwrap();
        assert_eq!((out.m, &out.assign[..], &out.sizes[..]), (2, &[0, 1, 1, 0][..], &[2.0, 2.0][..]));
        assert_eq!(out.merged, vec![2.0, 3.0]);
        assert!(r.reduce(&[0.0; 6], 1, (2, 3), 2, &mut out).is_err(), "another grid is an error");
    }
}
