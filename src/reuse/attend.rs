//! Attention of a subset of query rows against all keys: the reuse path's entry point next to
//! [`crate::model::attention::attend`], which takes as many queries as keys.
//!
//! Same method as `attend` (one block of query rows of one head at a time, the two products on
//! the `gemm` crate, tract's vectorised exp-and-sum for the softmax, the 1/sum applied to the
//! output rows), kept here as a thin separate wrapper so the kernel file stays untouched while its
//! ISA dispatch is reworked (issue #18). When every row is active the executor calls `attend`
//! itself.

use std::cell::RefCell;

use tract_core::internal::*;

use crate::model::attention::{par_for, row_max};

/// Query rows per block (as `attention::ROWS`).
const ROWS: usize = 256;

struct Scratch {
    logits: Vec<f32>,
    exp_sum: Option<Box<dyn tract_linalg::reduce::MapReduce<f32, f32>>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { logits: Vec::new(), exp_sum: None }) };
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: every (head, row block) task writes a disjoint set of output elements.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

/// `out[r, h, :] = sum_n softmax_n(q[r, h, :] . k[n, h, :]) v[n, h, :]` for `a` query rows
/// (`q`, `out`: `[a, h, d]`) against `t` keys and values (`k`, `v`: `[t, h, d]`).
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    a: usize,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    attend_rows_bias(q, k, v, None, a, t, h, d, out)
}

/// [`attend_rows`] with `bias` (`t` values) added to every logit row: the reduced middle's key
/// bias (proportional attention: log cluster sizes), as `attention::attend` takes it.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_bias(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    a: usize,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    ensure!(
        q.len() == a * h * d && out.len() == a * h * d && k.len() == t * h * d && v.len() == t * h * d,
        "attend_rows: q {}, out {} for [{a}, {h}, {d}], k {}, v {} for [{t}, {h}, {d}]",
        q.len(),
        out.len(),
        k.len(),
        v.len()
    );
    if let Some(b) = bias {
        ensure!(b.len() == t, "attend_rows: key bias has {} values for {t} keys", b.len());
    }
    if a == 0 || t == 0 {
        return Ok(());
    }
    let blocks = a.div_ceil(ROWS);
    let dst = Ptr(out.as_mut_ptr());
    par_for(h * blocks, move |i| {
        let dst = dst;
        let (head, b) = (i % h, i / h);
        let r0 = b * ROWS;
        let rows = ROWS.min(a - r0);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            if s.exp_sum.is_none() {
                use tract_linalg::routines::Func;
                s.exp_sum = Some(Func::Softmax2.map_reduce_f32()?);
            }
            s.logits.resize(rows * t, 0.0);
            let hd = (h * d) as isize;
            // SAFETY: q is [a, h, d], k and v [t, h, d], logits rows x t (lengths checked and
            // sized above); the output rows (r0 + r) of head `head` belong to this task only.
            unsafe {
                gemm::gemm(
                    rows,
                    t,
                    d,
                    s.logits.as_mut_ptr(),
                    1,
                    t as isize,
                    false,
                    q.as_ptr().add(r0 * h * d + head * d),
                    1,
                    hd,
                    k.as_ptr().add(head * d),
                    hd,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let kern = s.exp_sum.as_ref().expect("made above");
            let mut sums = [0f32; ROWS];
            for (r, row) in s.logits.chunks_exact_mut(t).enumerate() {
                let max = row_max(row, bias);
                sums[r] = kern.run_with_params(row, max)?;
            }
            // SAFETY: as above.
            unsafe {
                let o = dst.0.add(r0 * h * d + head * d);
                gemm::gemm(
                    rows,
                    d,
                    t,
                    o,
                    1,
                    hd,
                    false,
                    s.logits.as_ptr(),
                    1,
                    t as isize,
                    v.as_ptr().add(head * d),
                    1,
                    hd,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (r, sum) in sums[..rows].iter().enumerate() {
                    let inv = 1.0 / sum;
                    std::slice::from_raw_parts_mut(o.add(r * h * d), d).iter_mut().for_each(|x| *x *= inv);
                }
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subset of queries equals the same rows of full attention (the textbook reference),
    /// without and with a key bias.
    #[test]
    fn rows_match_the_reference() {
        let (t, h, d) = (37, 3, 8);
        let gen =
            |s: usize| (0..t * h * d).map(|i| (((i * 2654435761 + s) % 1000) as f32 / 500.0) - 1.0).collect::<Vec<_>>();
        let (q, k, v) = (gen(1), gen(2), gen(3));
        let bias: Vec<f32> = (0..t).map(|i| ((i % 5) as f32 + 1.0).ln()).collect();
        for bias in [None, Some(&bias[..])] {
            let full = crate::model::attention::reference(&q, &k, &v, bias, t, h, d);
            let rows = [0usize, 5, 6, 30, 36];
            let qa: Vec<f32> = rows.iter().flat_map(|&r| q[r * h * d..(r + 1) * h * d].to_vec()).collect();
            let mut out = vec![0.0; rows.len() * h * d];
            attend_rows_bias(&qa, &k, &v, bias, rows.len(), t, h, d, &mut out).unwrap();
            for (i, &r) in rows.iter().enumerate() {
                for j in 0..h * d {
                    let (a, b) = (out[i * h * d + j], full[r * h * d + j]);
                    assert!((a - b).abs() < 1e-5, "bias {}: row {r} elem {j}: {a} vs {b}", bias.is_some());
                }
            }
        }
    }
}
