//! The head's three deconvolutions at 448 px (real shapes, random values) on each GEMM level this
//! CPU has, interleaved, 1 and 2 threads: `cargo run --release --example deconv_check`.

use std::time::Instant;

use ailurus::model::deconv::{deconv_fused, f32_taps, kernel_name};
use ailurus::model::isa::Level;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

fn main() {
    let levels: Vec<Level> = [Level::Avx512, Level::Avx2, Level::Neon].into_iter().filter(|l| l.supported()).collect();
    for threads in [1, 2] {
        for &(ci, h, co) in &[(384usize, 32usize, 256usize), (256, 64, 128), (128, 128, 64)] {
            let x: Vec<f32> = (0..ci * h * h).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let k: Vec<f32> = (0..co * ci * 16).map(|i| ((i * 104729) % 1000) as f32 / 1e4 - 0.05).collect();
            let b = vec![0.1f32; co];
            let mut out = vec![0f32; co * 4 * h * h];
            // The swapped op holds the packed taps (used at avx512).
            let taps = f32_taps(&k, ci, co);
            let mut best = vec![f64::MAX; levels.len()];
            let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
            multithread_tract_scope(ex, || {
                for _ in 0..7 {
                    for (i, &l) in levels.iter().enumerate() {
                        let t0 = Instant::now();
                        deconv_fused(l, &x, &k, Some(&taps.0), &b, ci, h, h, co, None, &mut out).unwrap();
                        best[i] = best[i].min(t0.elapsed().as_secs_f64());
                    }
                }
            });
            let f = 2.0 * (ci * co * 4 * 4 * h * h) as f64;
            let mut line = format!("{threads} thr C_in {ci:3} {h:3}x{h:<3} C_out {co:3}:");
            for (l, t) in levels.iter().zip(&best) {
                line += &format!("  {} {:.1} ms ({:.0} GFLOP/s)", kernel_name(*l), t * 1e3, f / t / 1e9);
            }
            println!("{line}");
        }
    }
}
