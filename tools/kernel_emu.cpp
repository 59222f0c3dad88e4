// tools/kernel_emu.cpp: runs kernels/ailurus.cu on the CPU, for checking the kernels' logic on
// machines without a GPU (tests/cuda_equivalence.rs builds it with g++ and compares its output
// with the Rust CPU reference, bit for bit).
//
// Owns: a minimal CUDA execution model (one OS thread; each CUDA thread is a ucontext fiber;
// __syncthreads switches fibers; __shared__ is a static shared by the one block running at a
// time) and a copy of the host launch sequence of src/reduce/cuda.rs. Must not: be used for
// timing, or diverge from the launch sequence in src/reduce/cuda.rs (same kernels, same order,
// same grids). f32 operations are IEEE single on x86-64 SSE; build with
// g++ -std=c++17 -O2 -ffp-contract=off -U_FORTIFY_SOURCE.
//
// Usage: kernel_emu IN OUT
//   IN:  10 x i32 (n c h w m k r windowed delta_radius spatial), then n*c f32 tokens
//   OUT: m x u32 centers, n x u32 assign, m x f32 sizes, m*c f32 merged, n x f32 rho, n x f32 delta
//        (preceded by one i32: m)

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include <csetjmp>
#include <ucontext.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(x)
#define __shared__ static

static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
using std::exp;
using std::fmaxf;
using std::fminf;

// ---- fibers ---------------------------------------------------------------------------------
// A fiber starts with setcontext (one syscall) and then switches with _setjmp/_longjmp (none):
// build with -U_FORTIFY_SOURCE (a fortified longjmp refuses to change stacks).
struct Fiber {
    ucontext_t ctx;
    jmp_buf jb;
    std::vector<char> stack;
    bool started = false, done = false;
    dim3 tid;
};
static jmp_buf g_sched;
static std::vector<Fiber> g_fibers;
static size_t g_cur = 0;
static std::function<void()> g_body;
static bool g_fibered = false;

void __syncthreads() {
    if (!g_fibered) {
        std::fprintf(stderr, "kernel_emu: __syncthreads in a kernel launched without barriers\n");
        std::abort();
    }
    if (_setjmp(g_fibers[g_cur].jb) == 0) _longjmp(g_sched, 1);
}

static void fiber_entry() {
    g_body();
    g_fibers[g_cur].done = true;
    _longjmp(g_sched, 1);
}

// Run `body` for every thread of every block, blocks one after another. `barriers`: the kernel
// calls __syncthreads (its threads run as fibers); otherwise threads run one after another.
static void launch(dim3 grid, dim3 block, bool barriers, std::function<void()> body) {
    gridDim = grid;
    blockDim = block;
    g_body = std::move(body);
    g_fibered = barriers;
    size_t nt = (size_t)block.x * block.y * block.z;
    if (barriers && g_fibers.size() < nt) g_fibers.resize(nt);
    for (auto& f : g_fibers) f.stack.resize(64 * 1024);
    auto tid = [&](size_t t) {
        return dim3{(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y), (unsigned)(t / (block.x * block.y))};
    };
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = {bx, by, bz};
                if (!barriers) {
                    for (size_t t = 0; t < nt; ++t) {
                        threadIdx = tid(t);
                        g_body();
                    }
                    continue;
                }
                for (size_t t = 0; t < nt; ++t) {
                    Fiber& f = g_fibers[t];
                    f.started = f.done = false;
                    f.tid = tid(t);
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_entry, 0);
                }
                // Rounds: every live fiber runs up to its next barrier (or its end).
                for (;;) {
                    bool any = false;
                    for (size_t t = 0; t < nt; ++t) {
                        Fiber& f = g_fibers[t];
                        if (f.done) continue;
                        any = true;
                        g_cur = t;
                        threadIdx = f.tid;
                        if (_setjmp(g_sched) == 0) {
                            if (!f.started) {
                                f.started = true;
                                setcontext(&f.ctx);
                            }
                            _longjmp(f.jb, 1);
                        }
                    }
                    if (!any) break;
                }
            }
}

#include "../kernels/ailurus.cu"

// ---- host: the launch sequence of src/reduce/cuda.rs ------------------------------------------
static unsigned cdiv(size_t a, unsigned b) { return (unsigned)((a + b - 1) / b); }

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: kernel_emu IN OUT\n");
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    if (!in) return 2;
    int hdr[11];
    if (std::fread(hdr, 4, 11, in) != 11) return 2;
    int n = hdr[0], c = hdr[1], h = hdr[2], w = hdr[3], m = hdr[4], k = hdr[5], r = hdr[6];
    int windowed = hdr[7], dr = hdr[8], spatial = hdr[9], spread = hdr[10];
    // reduce::spread_block: the coverage block side, grown until at most m blocks (0 = off).
    int side = spread;
    if (side > 0)
        while (((h + side - 1) / side) * ((w + side - 1) / side) > (m > 1 ? m : 1)) ++side;
    std::vector<float> x((size_t)n * c);
    if (std::fread(x.data(), 4, x.size(), in) != x.size()) return 2;
    std::fclose(in);

    std::vector<float> sq(n), d((size_t)n * n), rho(n), delta(n), merged((size_t)m * c), sizes(m);
    std::vector<u32> keyo(n), scoreo(n), rankkey(n), centers(n), assign(n), counts(n, 0), offsets(n), members(n);
    std::vector<int> is_centre(n), cid(n);
    float sqrt_c = std::sqrt((float)c);

    launch({cdiv(n, 256)}, {256}, false, [&] { ail_sqnorm(x.data(), n, c, sq.data()); });
    unsigned tiles = cdiv(n, 64);
    launch({tiles, tiles}, {16, 16}, true, [&] { ail_pairwise(x.data(), sq.data(), n, c, sqrt_c, d.data()); });
    launch({cdiv(n, 128)}, {128}, false, [&] { ail_density(d.data(), h, w, k, r, rho.data(), keyo.data()); });
    launch({(unsigned)n}, {256}, true, [&] {
        ail_delta(d.data(), rho.data(), keyo.data(), h, w, windowed, dr, scoreo.data(), delta.data());
    });
    launch({cdiv(n, 256)}, {256}, false, [&] { ail_spread(scoreo.data(), h, w, side, rankkey.data()); });
    launch({cdiv(n, 256)}, {256}, true, [&] { ail_rank(rankkey.data(), n, m, is_centre.data()); });
    launch({1}, {1024}, true, [&] { ail_compact(is_centre.data(), n, cid.data(), centers.data()); });
    launch({cdiv(n, 128)}, {128}, false, [&] {
        ail_assign(d.data(), cid.data(), centers.data(), h, w, r, m, spatial, assign.data());
    });
    launch({cdiv(n, 256)}, {256}, false, [&] { ail_count(assign.data(), n, counts.data()); });
    launch({1}, {1024}, true, [&] { ail_offsets(counts.data(), m, offsets.data()); });
    launch({cdiv(n, 256)}, {256}, true, [&] { ail_scatter(assign.data(), offsets.data(), n, members.data()); });
    launch({(unsigned)m}, {128}, false, [&] {
        ail_merge(x.data(), members.data(), offsets.data(), counts.data(), c, merged.data(), sizes.data());
    });
    // Unfold round trip: full[i] must equal merged[assign[i]] (checked here, not written out).
    std::vector<float> full((size_t)n * c);
    launch({cdiv((size_t)n * c, 256)}, {256}, false, [&] { ail_unfold(merged.data(), assign.data(), n, c, full.data()); });
    for (int i = 0; i < n; ++i)
        if (std::memcmp(&full[(size_t)i * c], &merged[(size_t)assign[i] * c], 4 * (size_t)c) != 0) {
            std::fprintf(stderr, "kernel_emu: unfold mismatch at token %d\n", i);
            return 1;
        }

    FILE* out = std::fopen(argv[2], "wb");
    if (!out) return 2;
    std::fwrite(&m, 4, 1, out);
    std::fwrite(centers.data(), 4, m, out);
    std::fwrite(assign.data(), 4, n, out);
    std::fwrite(sizes.data(), 4, m, out);
    std::fwrite(merged.data(), 4, (size_t)m * c, out);
    std::fwrite(rho.data(), 4, n, out);
    std::fwrite(delta.data(), 4, n, out);
    std::fclose(out);
    return 0;
}
