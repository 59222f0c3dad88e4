//! The `gemm` crate's GFLOP/s on the ViT's linear-layer shapes, 1 thread, best of 15: what
//! `src/model/linear.rs` is built on. "qkv" is q, k and v as one 1152-column product (the model
//! runs them as three 384-column ones, the shape of "proj"), then the projection, fc1, fc2.
//! `cargo run --release --example gemm_shapes [T]`
use std::time::Instant;
fn main() {
    let t: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1025);
    for &(k, n, name) in &[(384usize, 1152usize, "qkv"), (384, 384, "proj"), (384, 1536, "fc1"), (1536, 384, "fc2")] {
        let a: Vec<f32> = (0..t * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        let mut c = vec![0f32; t * n];
        let mut best = f64::MAX;
        for _ in 0..15 {
            let t0 = Instant::now();
            for row in c.chunks_exact_mut(n) {
                row.copy_from_slice(&bias);
            }
            unsafe {
                // c[t, n] (+)= a[t, k] . w[k, n], all row-major
                gemm::gemm(
                    t,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    true,
                    a.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let f = 2.0 * (t * k * n) as f64;
        println!("{name:<5} [{t}x{k}]x[{k}x{n}]: best {:.2} ms, {:.1} GFLOP/s", best * 1e3, f / best / 1e9);
    }
}
