//! The fused attention's two products in bf16 or f16 ([`Half`]; `super::super::attention` calls
//! these per (head, row block)): every head's keys and values packed once per call, the query
//! rows and the softmax weights rounded per block.

use std::cell::RefCell;

use super::{Half, NR};

thread_local! {
    /// A row block's A operand of the attention in bf16 pairs.
    static ATT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Rows rounded to bf16 while packing.
    static HALF: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Every head's keys and values of one attention in bf16, packed as B operands: `k[head]` is
/// kᵀ (`t.div_ceil(NR)` panels of `d/2` pairs: two channels of one key), `v[head]` is v
/// (`d.div_ceil(NR)` panels of `t/2` pairs: one channel of two keys).
#[derive(Default)]
pub struct PackedHeads {
    k: Vec<u32>,
    v: Vec<u32>,
    per_k: usize,
    per_v: usize,
}

impl PackedHeads {
    /// Pack `k` and `v` (`[t, h, d]`); reuses the buffers.
    pub fn pack(&mut self, kernel: Half, k: &[f32], v: &[f32], (t, h, d): (usize, usize, usize)) {
        assert!(k.len() == t * h * d && v.len() == t * h * d);
        let (d2, t2) = (d.div_ceil(2), t.div_ceil(2));
        self.per_k = t.div_ceil(NR) * d2 * NR;
        self.per_v = d.div_ceil(NR) * t2 * NR;
        self.k.resize(h * self.per_k, 0);
        self.v.resize(h * self.per_v, 0);
        HALF.with(|buf| {
            let mut half = buf.borrow_mut();
            // Every key row (all heads) rounded once: [t, h * d + 1] u16 (a zero past the end
            // of each row pads an odd d).
            let row = h * d + 1;
            half.resize(2 * t * row, 0);
            let (hk, hv) = half.split_at_mut(t * row);
            for (n, (rk, rv)) in hk.chunks_exact_mut(row).zip(hv.chunks_exact_mut(row)).enumerate() {
                kernel.round_u16(&k[n * h * d..(n + 1) * h * d], &mut rk[..h * d]);
                kernel.round_u16(&v[n * h * d..(n + 1) * h * d], &mut rv[..h * d]);
            }
            for head in 0..h {
                // kᵀ: B[p][n] = channels (2p, 2p + 1) of key n.
                let kb = &mut self.k[head * self.per_k..(head + 1) * self.per_k];
                for (jp, panel) in kb.chunks_exact_mut(d2 * NR).enumerate() {
                    let keys = NR.min(t - jp * NR);
                    for (jj, n) in (jp * NR..jp * NR + keys).enumerate() {
                        let src = &hk[n * row + head * d..n * row + head * d + d + 1];
                        for p in 0..d2 {
                            let hi = if 2 * p + 1 < d { src[2 * p + 1] as u32 } else { 0 };
                            panel[p * NR + jj] = src[2 * p] as u32 | (hi << 16);
                        }
                    }
                    for p in 0..d2 {
                        panel[p * NR + keys..(p + 1) * NR].fill(0);
                    }
                }
                // v: B[p][j] = channel j of keys (2p, 2p + 1).
                let vb = &mut self.v[head * self.per_v..(head + 1) * self.per_v];
                for (jp, panel) in vb.chunks_exact_mut(t2 * NR).enumerate() {
                    let cols = NR.min(d - jp * NR);
                    for (p, pairs) in panel.chunks_exact_mut(NR).enumerate() {
                        let lo = &hv[2 * p * row + head * d + jp * NR..][..cols];
                        let n1 = 2 * p + 1;
                        for (jj, x) in pairs[..cols].iter_mut().enumerate() {
                            let hi = if n1 < t { hv[n1 * row + head * d + jp * NR + jj] as u32 } else { 0 };
                            *x = lo[jj] as u32 | (hi << 16);
                        }
                        pairs[cols..].fill(0);
                    }
                }
            }
        })
    }
}

/// One (head, row block) of the fused attention's first product in bf16:
/// `logits[r, n] = q[r0 + r, head, :] . k[n, head, :]` for `r < rows`, `n < t`, at row stride
/// `stride`; `q` is `[a, h, d]` (any number of query rows), the `t` keys packed in `packed`.
/// Overwrites the logits.
pub fn attention_logits(
    kernel: Half,
    q: &[f32],
    packed: &PackedHeads,
    (r0, rows, head): (usize, usize, usize),
    (t, h, d): (usize, usize, usize),
    logits: &mut [f32],
    stride: usize,
) {
    assert!(kernel.supported() && q.len().is_multiple_of(h * d) && r0 + rows <= q.len() / (h * d) && head < h);
    assert!(rows == 0 || logits.len() >= (rows - 1) * stride + t);
    let d2 = d.div_ceil(2);
    ATT.with(|buf| {
        let mut a = buf.borrow_mut();
        a.resize(rows * d2, 0);
        kernel.round_rows(&q[r0 * h * d + head * d..], h * d, d, &mut a);
        for row in logits.chunks_mut(stride).take(rows) {
            row[..t].fill(0.0);
        }
        let b = &packed.k[head * packed.per_k..(head + 1) * packed.per_k];
        // SAFETY: logits holds rows x t at stride `stride` (asserted); the kernel is supported.
        unsafe { kernel.product(&a, d2, rows, b, d2, t, logits.as_mut_ptr(), stride) };
    })
}

/// The second product in bf16: `out[r0 + r, head, :] = sum_n w[r, n] v[n, head, :]` for
/// `r < rows` (`w` rows of `t` weights at row stride `stride`; the values packed in `packed`).
/// Overwrites the `rows x d` output values, at row stride `h * d` from `dst`.
///
/// # Safety
/// `dst.add(r * h * d + j)` is writable for `r < rows`, `j < d`, and aliased by nothing else.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_values(
    kernel: Half,
    w: &[f32],
    stride: usize,
    rows: usize,
    packed: &PackedHeads,
    head: usize,
    (t, h, d): (usize, usize, usize),
    dst: *mut f32,
) {
    assert!(kernel.supported() && head < h);
    assert!(rows == 0 || w.len() >= (rows - 1) * stride + t);
    let t2 = t.div_ceil(2);
    ATT.with(|buf| {
        let mut a = buf.borrow_mut();
        a.resize(rows * t2, 0);
        kernel.round_rows(w, stride, t, &mut a);
        for r in 0..rows {
            // SAFETY: row r's d values are writable (caller).
            unsafe { std::slice::from_raw_parts_mut(dst.add(r * h * d), d).fill(0.0) };
        }
        let b = &packed.v[head * packed.per_v..(head + 1) * packed.per_v];
        // SAFETY: dst rows as the caller promises; the kernel is supported (asserted).
        unsafe { kernel.product(&a, t2, rows, b, t2, d, dst, h * d) };
    })
}
