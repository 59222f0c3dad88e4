"""The `ailurus` reducer (spatial-aware DPC-KNN, shared/ALGORITHM.md and src/reduce/ailurus.rs)
in PyTorch, plus the differentiable merge and unfold.

The clustering runs under no_grad. By default it computes in float64 on the f32 tokens (fast; the
Rust reducer's f32 arithmetic differs by rounding only, which flipped 1 of 20480 token
assignments on real tokens). `exact=True` follows the runtime's f32 arithmetic contract
(src/reduce/ailurus.rs: sequential no-FMA dot products, every operation rounded to f32, exp in
f64) and gives the Rust reducer's result bit for bit; tools/finetune/check_reducer.py checks both.
Same choices as the runtime's defaults: k = 5 nearest neighbours (self included) inside a
Chebyshev window of radius r = 2, global delta search, nearest centre inside the window with a
global nearest-centre fallback, ties broken by the lower index.
"""
import functools

import numpy as np
import torch


def jitter(n):
    """u(i) = ((i * 2654435761) mod 2^32 >> 8) / 2^24, as f32."""
    i = np.arange(n, dtype=np.uint64)
    return (((i * np.uint64(2654435761)) % np.uint64(1 << 32)) >> np.uint64(8)).astype(np.float32) / np.float32(
        16777216.0
    )


@functools.lru_cache(maxsize=8)
def window_mask(h, w, r):
    """[n, n] bool: Chebyshev distance on the h x w grid <= r."""
    y = torch.arange(h).repeat_interleave(w)
    x = torch.arange(w).repeat(h)
    return ((y[:, None] - y[None, :]).abs() <= r) & ((x[:, None] - x[None, :]).abs() <= r)


def distances_exact(tokens):
    """D as the runtime computes it, in f32: g = sequential no-FMA dot products,
    t = (sq_i + sq_j) - 2 g clamped at 0, D = sqrt(t) / sqrt(C)."""
    x = tokens.detach().cpu().numpy().astype(np.float32)
    n, c = x.shape
    g = np.zeros((n, n), np.float32)
    for q in range(c):  # acc += a_q * b_q, each product and sum rounded to f32
        g += np.multiply.outer(x[:, q], x[:, q])
    sq = np.diag(g).copy()
    t = (sq[:, None] + sq[None, :]) - np.float32(2.0) * g
    d = np.sqrt(np.maximum(t, np.float32(0.0))) / np.sqrt(np.float32(c))
    return torch.from_numpy(d)


@torch.no_grad()
def cluster(tokens, grid, m, k=5, r=2, exact=False):
    """tokens [n, c] (patch tokens, raster order) -> (assign [n] int64 in 0..m', centres [m']
    ascending token indices). m >= n gives the identity."""
    n, c = tokens.shape
    if m >= n:
        idx = torch.arange(n)
        return idx, idx
    m = max(1, m)
    if exact:
        d = distances_exact(tokens)
    else:
        x = tokens.detach().to(torch.float64)
        sq = (x * x).sum(1)
        t = (sq[:, None] + sq[None, :]) - 2.0 * (x @ x.T)
        d = t.clamp_min(0.0).sqrt() / np.sqrt(c)
    d.fill_diagonal_(0.0)
    win = window_mask(grid[0], grid[1], r)
    dw = d.masked_fill(~win, float("inf"))
    kk = min(k, int(win.sum(1).min()))
    near = dw.topk(kk, dim=1, largest=False).values.sort(1).values
    if exact:
        # f32 sum of the kk smallest D^2 in ascending order, / kk, exp in f64, rounded to f32.
        acc = torch.zeros(n, dtype=torch.float32)
        for q in range(kk):
            acc = acc + near[:, q] * near[:, q]
        rho = torch.exp(-(acc / kk).to(torch.float64)).to(torch.float32)
    else:
        rho = torch.exp(-(near * near).mean(1)).to(torch.float32)
    key = rho + torch.tensor(np.float32(1e-6) * jitter(n))
    # Density order: larger key first, ties -> lower index (stable sort on -key).
    order = torch.sort(-key.to(torch.float64), stable=True).indices
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    higher = rank[None, :] < rank[:, None]  # [i, j]: j has a higher density than i
    delta = d.masked_fill(~higher, float("inf")).min(1).values
    top = order[0]
    delta[top] = d[top].max()
    score = rho * delta if exact else rho.to(torch.float64) * delta
    # The m best scores, ties -> lower index; then ascending by token index.
    centres = torch.sort(-score, stable=True).indices[:m].sort().values
    dc = d[:, centres]
    inwin = win[:, centres]
    near_id = dc.masked_fill(~inwin, float("inf")).argmin(1)
    has = inwin.any(1)
    assign = torch.where(has, near_id, dc.argmin(1))
    assign[centres] = torch.arange(m)
    return assign, centres


def merge(tokens, assign, m):
    """Mean of each cluster's members: [n, c] -> ([m, c], sizes [m]). Differentiable in tokens."""
    sizes = torch.zeros(m, dtype=tokens.dtype).index_add_(0, assign, torch.ones_like(assign, dtype=tokens.dtype))
    sums = torch.zeros(m, tokens.shape[1], dtype=tokens.dtype).index_add(0, assign, tokens)
    return sums / sizes[:, None], sizes


def unfold(merged, assign):
    """full[i] = merged[assign[i]] (a gather; gradients sum back onto the merged tokens)."""
    return merged.index_select(0, assign)
