//! Reducer timing, GPU against CPU, at N = 1024, 2304, 4096 (C = 384, M = N/4): prints `TABLE|`
//! rows for tools/gpu-check.sh and checks that both give the same clusters. The CPU side is the
//! product's CPU `ailurus` reducer when `reduce::build` provides one, else the test reference
//! (tests/reduce/cuda_reference.rs, labelled as such). No timing assertions. SKIP without a driver.
#![cfg(feature = "cuda")]

use crate::reference;

use std::time::{Duration, Instant};

use ailurus::reduce::cuda::{driver_present, CudaAilurus};
use ailurus::reduce::{self, ReduceConfig, Reducer, Reduction};
use reference::{reference, tokens, Params};

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

#[test]
fn reducer_gpu_vs_cpu_timing() {
    if !driver_present() {
        crate::common::gpu_skip("reducer_gpu_vs_cpu_timing", "no CUDA driver (libcuda.so); GPU timings not measured");
        return;
    }
    let cfg = ReduceConfig::default();
    let mut gpu = CudaAilurus::new(0, &cfg.ailurus).unwrap_or_else(|e| panic!("{e}"));
    let mut cpu = reduce::build(&cfg);
    let product = cpu.name() == "ailurus";
    let cpu_label = if product { "cpu ailurus" } else { "cpu test reference" };
    println!("reducer on {gpu:?}; CPU side: {cpu_label}");
    let c = 384;
    let (mut g_out, mut c_out) = (Reduction::default(), Reduction::default());
    for side in [32usize, 48, 64] {
        let (grid, n) = ((side, side), side * side);
        let m = n / 4;
        let x = tokens(7 + side as u64, grid, c, 0.7, 0);
        let mut gt = Vec::new();
        for it in 0..12 {
            let t = Instant::now();
            gpu.reduce(&x, c, grid, m, &mut g_out).unwrap_or_else(|e| panic!("{e}"));
            if it >= 2 {
                gt.push(t.elapsed());
            }
        }
        let mut ct = Vec::new();
        let runs = if n >= 4096 { 1 } else { 3 };
        let mut same = true;
        for _ in 0..runs {
            let t = Instant::now();
            if product {
                cpu.reduce(&x, c, grid, m, &mut c_out).unwrap();
                ct.push(t.elapsed());
                same = c_out.assign == g_out.assign && c_out.centers == g_out.centers;
            } else {
                let r = reference(&x, c, grid, m, Params::default());
                ct.push(t.elapsed());
                same = r.assign == g_out.assign && r.centers == g_out.centers;
            }
        }
        let (g, cms) = (median_ms(gt), median_ms(ct));
        println!(
            "TABLE|reduce|{n}|{m}|{g:.3}|{cms:.1}|{:.0}x|{}|{cpu_label}",
            cms / g,
            if same { "same" } else { "DIFFER" }
        );
        assert!(same, "N={n}: GPU and {cpu_label} clusters differ (see tests/cuda/equivalence.rs)");
    }
}
