// kernels/ailurus.cu: the `ailurus` reducer (spatial-aware DPC-KNN, ALGORITHM.md) on the GPU.
//
// Owns: every kernel of one reduction, launched in this order by src/reduce/cuda.rs:
//   ail_sqnorm -> ail_pairwise -> ail_density -> ail_delta -> ail_spread -> ail_rank -> ail_compact
//   -> ail_assign -> ail_count -> ail_offsets -> ail_scatter -> ail_merge   (+ ail_unfold)
// Must not: allocate, synchronise with the host, or use any arithmetic whose rounding differs
// from the CPU reference. Compiled by NVRTC at start-up (src/reduce/cuda.rs) and checked with
// ptxas in CI (tools/check_kernels.sh). Self-contained: no #include, no host-side headers.
// The options line below is read by both (the single source of truth for compile options):
// nvrtc-options: --fmad=false --prec-div=true --prec-sqrt=true --ftz=false
//
// ARITHMETIC CONTRACT (what makes the CPU and GPU results bit-identical; the CPU reference in
// tests/cuda_reference.rs follows it line by line). Every f32 operation is rounded on its own
// (round-to-nearest-even): products and sums go through __fmul_rn / __fadd_rn, which the compiler
// never contracts into an FMA; NVRTC also runs with --fmad=false.
//   sq[i]   = sum_{c=0..C-1} x[i][c]*x[i][c], left to right from 0.0f (no FMA).
//   dot     = sum_{c=0..C-1} x[i][c]*x[j][c], same order.
//   t       = (sq[i] + sq[j]) - 2*dot;  D[i][j] = sqrt(max(t, 0)) / sqrt(C)  (sqrt(C) rounded to
//             f32 on the host; sqrt and / correctly rounded);  D[i][i] = 0.
//   q       = D*D.  density: the kk = min(k, window size) smallest q in the Chebyshev window of
//             radius r (self included), summed in ascending order from 0.0f;
//             mean = sum / (float)kk;  rho = (float)exp(-(double)mean).
//   key     = rho + 1e-6f * u(i),  u(i) = ((i * 2654435761u) >> 8) / 16777216.0f.
//   Orders: every f32 comparison uses the total order of Rust's f32::total_cmp (ord_f32 below).
//   j "higher" than i  <=>  key_j > key_i, or key_j == key_i and j < i.
//   delta   = min D[i][j] over higher j (window variant: within delta_radius, falling back to the
//             global search when none); the top token gets max_j D[i][j].  score = rho * delta.
//   centres = the M highest scores (ties: lower index), ascending by index; cluster id = rank.
//             With spread (block side b > 0, chosen on the host: at most M blocks), the highest
//             score of every b x b block of the grid (ties: lower index) ranks above all others.
//   assign  = nearest centre by (D, id) in the radius-r window; none there: nearest by (D, id)
//             over all centres ("global") or by (dy^2 + dx^2, id) ("spatial"); centres own.
//   merged  = (sum of members in ascending token order, from 0.0f) / (float)size.

typedef unsigned int u32;
typedef unsigned long long u64;

#define AIL_TILE 64     // pairwise: output tile side
#define AIL_KC 16       // pairwise: channels per shared-memory stage
#define AIL_RED 256     // threads of the block-per-row and scan-tile kernels
#define AIL_SCAN 1024   // threads of the single-block scan kernels

// f32 -> u32 with the same order as f32::total_cmp (-NaN < -inf < ... < -0 < +0 < ... < +NaN).
__device__ __forceinline__ u32 ord_f32(float f) {
    u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float ail_inf() { return __int_as_float(0x7f800000); }

// j is "higher" (denser) than i: key_j > key_i, ties broken towards the lower index.
__device__ __forceinline__ bool higher(u32 kj, int j, u32 ki, int i) {
    return kj > ki || (kj == ki && j < i);
}

// D from squared norms and the dot product, with the contract's rounding steps.
__device__ __forceinline__ float dist_from(float sqi, float sqj, float dot, float sqrt_c) {
    float t = __fsub_rn(__fadd_rn(sqi, sqj), __fmul_rn(2.0f, dot));
    return __fdiv_rn(__fsqrt_rn(fmaxf(t, 0.0f)), sqrt_c);
}

// Exclusive scan of one int per thread over a block of AIL_SCAN threads (Hillis-Steele).
__device__ int block_exclusive_scan(int v, int* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int off = 1; off < AIL_SCAN; off <<= 1) {
        int add = (t >= off) ? sh[t - off] : 0;
        __syncthreads();
        sh[t] += add;
        __syncthreads();
    }
    int incl = sh[t];
    __syncthreads();
    return incl - v;
}

// sq[i] = |x_i|^2, one thread per token, channels in order.
extern "C" __global__ void ail_sqnorm(const float* __restrict__ x, int n, int c, float* __restrict__ sq) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* row = x + (u64)i * c;
    float acc = 0.0f;
    for (int k = 0; k < c; ++k) acc = __fadd_rn(acc, __fmul_rn(row[k], row[k]));
    sq[i] = acc;
}

// d[i*n + j] = D[i][j]. 16x16 threads per 64x64 tile, 4x4 outputs per thread (rows ty + 16a,
// columns tx + 16b), channels staged 16 at a time and accumulated strictly in order.
extern "C" __global__ void __launch_bounds__(256)
ail_pairwise(const float* __restrict__ x, const float* __restrict__ sq, int n, int c, float sqrt_c,
             float* __restrict__ d) {
    __shared__ float as[AIL_KC][AIL_TILE + 1];
    __shared__ float bs[AIL_KC][AIL_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int i0 = blockIdx.y * AIL_TILE, j0 = blockIdx.x * AIL_TILE;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    for (int k0 = 0; k0 < c; k0 += AIL_KC) {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            int e = tid + 256 * l, r = e / AIL_KC, kk = e % AIL_KC, gk = k0 + kk;
            int gi = i0 + r, gj = j0 + r;
            // Zero padding past n or c adds +0.0f products: the sums do not change.
            as[kk][r] = (gi < n && gk < c) ? x[(u64)gi * c + gk] : 0.0f;
            bs[kk][r] = (gj < n && gk < c) ? x[(u64)gj * c + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < AIL_KC; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                av[q] = as[kk][ty + 16 * q];
                bv[q] = bs[kk][tx + 16 * q];
            }
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b] = __fadd_rn(acc[a][b], __fmul_rn(av[a], bv[b]));
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        int i = i0 + ty + 16 * a;
        if (i >= n) continue;
        float sqi = sq[i];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            int j = j0 + tx + 16 * b;
            if (j >= n) continue;
            d[(u64)i * n + j] = (i == j) ? 0.0f : dist_from(sqi, sq[j], acc[a][b], sqrt_c);
        }
    }
}

// rho and the jittered density key (as its total-order u32), one thread per token. The k
// smallest q are taken in ascending (q, j) order by repeated selection: no local array, any k.
extern "C" __global__ void ail_density(const float* __restrict__ d, int h, int w, int k, int r,
                                       float* __restrict__ rho, u32* __restrict__ keyo) {
    int n = h * w;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int y = i / w, x = i % w;
    int y0 = max(0, y - r), y1 = min(h - 1, y + r), x0 = max(0, x - r), x1 = min(w - 1, x + r);
    int kk = min(k, (y1 - y0 + 1) * (x1 - x0 + 1));
    const float* row = d + (u64)i * n;
    u64 prev = 0;
    float sum = 0.0f;
    for (int t = 0; t < kk; ++t) {
        u64 best = ~0ull;
        float bq = 0.0f;
        for (int yy = y0; yy <= y1; ++yy) {
            for (int xx = x0; xx <= x1; ++xx) {
                int j = yy * w + xx;
                float q = __fmul_rn(row[j], row[j]);
                u64 key = ((u64)ord_f32(q) << 32) | (u64)(u32)j;
                if ((t == 0 || key > prev) && key < best) {
                    best = key;
                    bq = q;
                }
            }
        }
        sum = __fadd_rn(sum, bq);
        prev = best;
    }
    float mean = __fdiv_rn(sum, (float)kk);
    float rh = (float)exp(-(double)mean);
    float u = __fdiv_rn((float)(((u32)i * 2654435761u) >> 8), 16777216.0f);
    rho[i] = rh;
    keyo[i] = ord_f32(__fadd_rn(rh, __fmul_rn(1e-6f, u)));
}

// Block-wide (min, max, any) over AIL_RED threads; the result is valid in every thread.
__device__ void reduce_min_max_any(float& mn, float& mx, int& any, float* smin, float* smax, int* sany) {
    int t = threadIdx.x;
    smin[t] = mn;
    smax[t] = mx;
    sany[t] = any;
    __syncthreads();
    for (int s = AIL_RED / 2; s > 0; s >>= 1) {
        if (t < s) {
            smin[t] = fminf(smin[t], smin[t + s]);
            smax[t] = fmaxf(smax[t], smax[t + s]);
            sany[t] = sany[t] | sany[t + s];
        }
        __syncthreads();
    }
    mn = smin[0];
    mx = smax[0];
    any = sany[0];
    __syncthreads();
}

// delta and the score (as its total-order u32), one block of AIL_RED threads per token.
// windowed != 0: search higher tokens within Chebyshev radius dr first, global when none.
extern "C" __global__ void __launch_bounds__(AIL_RED)
ail_delta(const float* __restrict__ d, const float* __restrict__ rho, const u32* __restrict__ keyo,
          int h, int w, int windowed, int dr, u32* __restrict__ scoreo, float* __restrict__ delta) {
    __shared__ float smin[AIL_RED];
    __shared__ float smax[AIL_RED];
    __shared__ int sany[AIL_RED];
    int n = h * w, i = blockIdx.x;
    const float* row = d + (u64)i * n;
    u32 ki = keyo[i];
    float mn = ail_inf(), mx = 0.0f;
    int any = 0;
    if (windowed) {
        int y = i / w, x = i % w;
        int y0 = max(0, y - dr), y1 = min(h - 1, y + dr), x0 = max(0, x - dr), x1 = min(w - 1, x + dr);
        int ww = x1 - x0 + 1, cnt = (y1 - y0 + 1) * ww;
        for (int t = threadIdx.x; t < cnt; t += AIL_RED) {
            int j = (y0 + t / ww) * w + x0 + t % ww;
            if (higher(keyo[j], j, ki, i)) {
                any = 1;
                mn = fminf(mn, row[j]);
            }
        }
        reduce_min_max_any(mn, mx, any, smin, smax, sany);
    }
    if (!any) {  // block-uniform: every thread holds the reduced flag
        mn = ail_inf();
        for (int j = threadIdx.x; j < n; j += AIL_RED) {
            float v = row[j];
            mx = fmaxf(mx, v);
            if (higher(keyo[j], j, ki, i)) {
                any = 1;
                mn = fminf(mn, v);
            }
        }
        reduce_min_max_any(mn, mx, any, smin, smax, sany);
    }
    if (threadIdx.x == 0) {
        float dl = any ? mn : mx;
        delta[i] = dl;
        scoreo[i] = ord_f32(__fmul_rn(rho[i], dl));
    }
}

// rankkey[i] = scoreo[i], or 0xFFFFFFFF (above every finite score's key) when token i has the
// highest score of its b x b coverage block (ties: lower index); b = 0: a copy.
extern "C" __global__ void
ail_spread(const u32* __restrict__ scoreo, int h, int w, int b, u32* __restrict__ rankkey) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= h * w) return;
    u32 si = scoreo[i];
    bool best = false;
    if (b > 0) {
        int y0 = (i / w) / b * b, x0 = (i % w) / b * b;
        int bi = y0 * w + x0;
        for (int y = y0; y < min(y0 + b, h); ++y)
            for (int x = x0; x < min(x0 + b, w); ++x)
                if (scoreo[y * w + x] > scoreo[bi]) bi = y * w + x;  // raster order: lower index on ties
        best = bi == i;
    }
    rankkey[i] = best ? 0xFFFFFFFFu : si;
}

// is_centre[i] = 1 iff fewer than m tokens rank above i (score desc, index asc).
extern "C" __global__ void __launch_bounds__(AIL_RED)
ail_rank(const u32* __restrict__ scoreo, int n, int m, int* __restrict__ is_centre) {
    __shared__ u32 s[AIL_RED];
    int i = blockIdx.x * AIL_RED + threadIdx.x;
    u32 si = (i < n) ? scoreo[i] : 0u;
    int rank = 0;
    for (int base = 0; base < n; base += AIL_RED) {
        int j = base + threadIdx.x;
        s[threadIdx.x] = (j < n) ? scoreo[j] : 0u;
        __syncthreads();
        int lim = min(AIL_RED, n - base);
        for (int t = 0; t < lim; ++t) {
            u32 sj = s[t];
            rank += (sj > si || (sj == si && base + t < i)) ? 1 : 0;
        }
        __syncthreads();
    }
    if (i < n) is_centre[i] = rank < m ? 1 : 0;
}

// One block of AIL_SCAN threads: cluster id of every centre (its rank by index), -1 elsewhere;
// centers[id] = token index.
extern "C" __global__ void __launch_bounds__(AIL_SCAN)
ail_compact(const int* __restrict__ is_centre, int n, int* __restrict__ cid, u32* __restrict__ centers) {
    __shared__ int sh[AIL_SCAN];
    int seg = (n + AIL_SCAN - 1) / AIL_SCAN;
    int b = min(n, (int)threadIdx.x * seg), e = min(n, b + seg);
    int cnt = 0;
    for (int i = b; i < e; ++i) cnt += is_centre[i] ? 1 : 0;
    int id = block_exclusive_scan(cnt, sh);
    for (int i = b; i < e; ++i) {
        if (is_centre[i]) {
            cid[i] = id;
            centers[id] = (u32)i;
            ++id;
        } else {
            cid[i] = -1;
        }
    }
}

// Cluster of every token: nearest window centre by (D, id), else the fallback. One thread each.
extern "C" __global__ void ail_assign(const float* __restrict__ d, const int* __restrict__ cid,
                                      const u32* __restrict__ centers, int h, int w, int r, int m,
                                      int spatial, u32* __restrict__ assign) {
    int n = h * w;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int own = cid[i];
    if (own >= 0) {
        assign[i] = (u32)own;
        return;
    }
    const float* row = d + (u64)i * n;
    int y = i / w, x = i % w;
    int y0 = max(0, y - r), y1 = min(h - 1, y + r), x0 = max(0, x - r), x1 = min(w - 1, x + r);
    int best = -1;
    float bd = 0.0f;
    for (int yy = y0; yy <= y1; ++yy) {
        for (int xx = x0; xx <= x1; ++xx) {
            int j = yy * w + xx, cj = cid[j];
            if (cj < 0) continue;
            float v = row[j];
            if (best < 0 || v < bd || (v == bd && cj < best)) {
                best = cj;
                bd = v;
            }
        }
    }
    if (best < 0 && !spatial) {
        for (int cl = 0; cl < m; ++cl) {  // ascending id: strict < keeps the lower id on ties
            float v = row[centers[cl]];
            if (best < 0 || v < bd) {
                best = cl;
                bd = v;
            }
        }
    } else if (best < 0) {
        long long bd2 = 0;
        for (int cl = 0; cl < m; ++cl) {
            int j = (int)centers[cl];
            long long dy = j / w - y, dx = j % w - x, d2 = dy * dy + dx * dx;
            if (best < 0 || d2 < bd2) {
                best = cl;
                bd2 = d2;
            }
        }
    }
    assign[i] = (u32)best;
}

// counts[assign[i]] += 1 (counts zeroed by the host). Integer atomics: order-independent.
extern "C" __global__ void ail_count(const u32* __restrict__ assign, int n, u32* __restrict__ counts) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&counts[assign[i]], 1u);
}

// One block of AIL_SCAN threads: offsets = exclusive prefix sum of counts[0..m].
extern "C" __global__ void __launch_bounds__(AIL_SCAN)
ail_offsets(const u32* __restrict__ counts, int m, u32* __restrict__ offsets) {
    __shared__ int sh[AIL_SCAN];
    int seg = (m + AIL_SCAN - 1) / AIL_SCAN;
    int b = min(m, (int)threadIdx.x * seg), e = min(m, b + seg);
    int local = 0;
    for (int i = b; i < e; ++i) local += (int)counts[i];
    int off = block_exclusive_scan(local, sh);
    for (int i = b; i < e; ++i) {
        offsets[i] = (u32)off;
        off += (int)counts[i];
    }
}

// members[offsets[a] + (number of earlier tokens in cluster a)] = i: member lists in ascending
// token order (deterministic, unlike an atomic scatter).
extern "C" __global__ void __launch_bounds__(AIL_RED)
ail_scatter(const u32* __restrict__ assign, const u32* __restrict__ offsets, int n, u32* __restrict__ members) {
    __shared__ u32 s[AIL_RED];
    int i = blockIdx.x * AIL_RED + threadIdx.x;
    u32 a = (i < n) ? assign[i] : 0xffffffffu;
    int pos = 0;
    int end = min(n, (int)(blockIdx.x + 1) * AIL_RED);
    for (int base = 0; base < end; base += AIL_RED) {
        int j = base + threadIdx.x;
        s[threadIdx.x] = (j < n) ? assign[j] : 0xfffffffeu;
        __syncthreads();
        int lim = min(AIL_RED, end - base);
        for (int t = 0; t < lim; ++t) pos += (base + t < i && s[t] == a) ? 1 : 0;
        __syncthreads();
    }
    if (i < n) members[offsets[a] + pos] = (u32)i;
}

// merged[cl] = mean of its members (ascending token order), sizes[cl] = member count.
// One block per cluster, threads over channels.
extern "C" __global__ void ail_merge(const float* __restrict__ x, const u32* __restrict__ members,
                                     const u32* __restrict__ offsets, const u32* __restrict__ counts,
                                     int c, float* __restrict__ merged, float* __restrict__ sizes) {
    int cl = blockIdx.x;
    u32 off = offsets[cl], cnt = counts[cl];
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
        float acc = 0.0f;
        for (u32 t = 0; t < cnt; ++t) acc = __fadd_rn(acc, x[(u64)members[off + t] * c + ch]);
        merged[(u64)cl * c + ch] = __fdiv_rn(acc, (float)cnt);
    }
    if (threadIdx.x == 0) sizes[cl] = (float)cnt;
}

// full[i] = merged[assign[i]], one thread per value.
extern "C" __global__ void ail_unfold(const float* __restrict__ merged, const u32* __restrict__ assign,
                                      int n, int c, float* __restrict__ full) {
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (u64)n * c) return;
    u64 i = e / c, ch = e % c;
    full[e] = merged[(u64)assign[i] * c + ch];
}
