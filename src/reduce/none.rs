//! `none`: every token is its own cluster (the unreduced reference).

use super::{ReduceError, Reducer, Reduction};

#[derive(Debug, Default)]
pub struct NoneReducer;

impl Reducer for NoneReducer {
    fn name(&self) -> &'static str {
        "none"
    }

    fn reduce(
        &mut self,
        tokens: &[f32],
        c: usize,
        (h, w): (usize, usize),
        _m: usize,
        out: &mut Reduction,
    ) -> Result<(), ReduceError> {
        let n = h * w;
        if tokens.len() != n * c {
            return Err(ReduceError::Shape { reducer: "none", n: tokens.len() / c.max(1), c, h, w });
        }
        identity(tokens, c, n, out);
        Ok(())
    }
}

/// Fill `out` with the identity reduction of `n` tokens (M = N).
pub fn identity(tokens: &[f32], c: usize, n: usize, out: &mut Reduction) {
    out.m = n;
    out.c = c;
    out.merged.clear();
    out.merged.extend_from_slice(&tokens[..n * c]);
    out.sizes.clear();
    out.sizes.resize(n, 1.0);
    out.assign.clear();
    out.assign.extend(0..n as u32);
    out.centers.clear();
    out.centers.extend(0..n as u32);
}
