//! GFLOP/s of every GEMM kernel this CPU supports (`src/model/sgemm/`, one per ISA level) on
//! the ViT's linear-layer shapes, 1 thread, best of 15: "qkv" is q, k and v as one 1152-column
//! product (the model runs them as three 384-column ones, the shape of "proj"), then the
//! projection, fc1, fc2, and the attention's two products per 256-row block ("qk": 256 x 64 by
//! 64 x T, k read transposed; "pv": 256 x T by T x 64).
//! The linear shapes also in bf16 where the CPU has AVX512-BF16 (`src/model/bf16.rs`) and in
//! f16 where it has f16 arithmetic (`src/model/f16/`).
//! `cargo run --release --example gemm_shapes [T]`
use std::time::Instant;

use ailurus::model::isa::{self, Level};
use ailurus::model::sgemm::{self, Gemm};
use ailurus::model::{bf16, f16};

fn main() {
    let t: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1025);
    println!("CPU: {} ({}); detected level {}", isa::cpu_model(), isa::cpu_features(), Level::detect());
    let shapes = [
        (t, 384usize, 1152usize, "qkv", false),
        (t, 384, 384, "proj", false),
        (t, 384, 1536, "fc1", false),
        (t, 1536, 384, "fc2", false),
        (256, 64, t, "qk", true),
        (256, t, 64, "pv", false),
    ];
    for &(m, k, n, name, transposed) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut c = vec![0f32; m * n];
        let (rsb, csb) = if transposed { (1, k) } else { (n, 1) };
        let mut line = format!("{name:<5} [{m}x{k}]x[{k}x{n}]:");
        for level in Level::all_supported() {
            let g = Gemm {
                m,
                n,
                k,
                a: a.as_ptr(),
                rsa: k,
                b: w.as_ptr(),
                rsb,
                csb,
                c: c.as_mut_ptr(),
                rsc: n,
                accumulate: true,
            };
            let mut best = f64::MAX;
            for _ in 0..15 {
                let t0 = Instant::now();
                // SAFETY: the buffers hold the shapes above; the level is supported.
                unsafe { g.run(level) };
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let f = 2.0 * (m * k * n) as f64;
            // Unpacked B: at avx2 the `gemm` crate (packed weights run on our tile, below).
            let name = if level == Level::Avx2 { "gemm-crate-avx2" } else { level.gemm_kernel() };
            line += &format!("  {name} {:.1} GFLOP/s", f / best / 1e9);
        }
        // Our tiles on the weight packed once (as the linear layers, the attention's keys and
        // values and the head's taps hold it at `avx512` and `avx2`).
        #[cfg(target_arch = "x86_64")]
        for level in Level::all_supported().into_iter().filter(|l| sgemm::packs(*l)) {
            let mut packed = sgemm::PackedF32::empty();
            // SAFETY: w holds the k x n matrix at these strides.
            unsafe { packed.repack(w.as_ptr(), rsb, csb, k, n) };
            let g = Gemm {
                m,
                n,
                k,
                a: a.as_ptr(),
                rsa: k,
                b: std::ptr::null(),
                rsb,
                csb,
                c: c.as_mut_ptr(),
                rsc: n,
                accumulate: false,
            };
            let mut best = f64::MAX;
            for _ in 0..15 {
                let t0 = Instant::now();
                // SAFETY: the buffers hold the shapes above; the level is supported.
                unsafe { g.run_packed(&packed, level) };
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let f = 2.0 * (m * k * n) as f64;
            line += &format!("  {level}-packed {:.1} GFLOP/s", f / best / 1e9);
        }
        // The linear layers in bf16 (`[model] precision = "bf16"`), where the CPU has it: the
        // same product with the weight packed once and the rows rounded per call (counted).
        for kernel in [bf16::Kernel::Amx, bf16::Kernel::Avx512Bf16] {
            if transposed || !kernel.supported() || m != t {
                continue;
            }
            let packed = bf16::Packed16::pack(&w, k, n);
            let mut best = f64::MAX;
            for _ in 0..15 {
                let t0 = Instant::now();
                bf16::linear_16_at(kernel, &a, &packed, None, None, m, &mut c).unwrap();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let f = 2.0 * (m * k * n) as f64;
            line += &format!("  {} {:.1} GFLOP/s", kernel.name(), f / best / 1e9);
        }
        let kernel = f16::kernel_level();
        if !transposed && kernel != f16::Kernel::Portable && m == t {
            let packed = bf16::Packed16::pack_as(bf16::Format::F16, &w, k, n);
            let mut best = f64::MAX;
            for _ in 0..15 {
                let t0 = Instant::now();
                bf16::linear_16_at(kernel, &a, &packed, None, None, m, &mut c).unwrap();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let f = 2.0 * (m * k * n) as f64;
            line += &format!("  {} {:.1} GFLOP/s", kernel.name(), f / best / 1e9);
        }
        println!("{line}");
    }
}
