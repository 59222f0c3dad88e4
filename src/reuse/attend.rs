//! Attention of a subset of query rows against all keys: the reuse path's entry point, on the
//! plans' own attention ([`crate::model::attention::attend_rows_with`]): the same kernels (our
//! ISA-dispatched GEMM in f32, the bf16 or f16 kernels under `[model] precision`), the same
//! row blocks and softmax, so an active row gets what the full attention gives it.

use tract_core::internal::*;

use crate::model::attention::{attend_rows_with, Products};

/// Query rows per block (as `attention::ROWS`).
const ROWS: usize = 256;

/// `out[r, h, :] = sum_n softmax_n(q[r, h, :] . k[n, h, :] + bias[n]) v[n, h, :]` for `a`
/// query rows (`q`, `out`: `[a, h, d]`) against `t` keys and values (`k`, `v`: `[t, h, d]`),
/// both products on `products`; `bias` (`t` values, optional) is the reduced middle's key bias
/// (proportional attention: log cluster sizes), as `attention::attend` takes it.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    products: Products,
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
    attend_rows_with(products, ROWS, q, k, v, bias, a, t, h, d, out).map_err(|e| anyhow::anyhow!("attend_rows: {e}"))
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
            let products = crate::model::attention::products();
            attend_rows(products, &qa, &k, &v, bias, rows.len(), t, h, d, &mut out).unwrap();
            for (i, &r) in rows.iter().enumerate() {
                for j in 0..h * d {
                    let (a, b) = (out[i * h * d + j], full[r * h * d + j]);
                    assert!((a - b).abs() < 1e-5, "bias {}: row {r} elem {j}: {a} vs {b}", bias.is_some());
                }
            }
        }
    }
}
