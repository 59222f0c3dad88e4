//! CPU-vs-GPU equivalence of the `ailurus` CUDA reducer: identical centres, assignments and sizes,
//! merged tokens within 1e-4 (in practice bit-identical), on random inputs N = 256..4096,
//! C = 384/768. Without a CUDA driver the GPU test prints SKIP and passes; the kernels' logic is
//! still checked here by running kernels/ailurus.cu in the CPU emulator (tools/kernel_emu.cpp,
//! built with g++) against the same reference.
#![cfg(feature = "cuda")]

use crate::reference;

use std::path::{Path, PathBuf};
use std::process::Command;

use ailurus::reduce::cuda::{driver_present, CudaAilurus};
use ailurus::reduce::{AilurusConfig, Reducer, Reduction};
use reference::{blocky_tokens, compare, reference, Params, RefOut};

/// One case: grid, channels, clusters, knobs, smoothness and quantisation of the input.
struct Case {
    grid: (usize, usize),
    c: usize,
    m: usize,
    p: Params,
    smooth: f32,
    levels: u32,
    /// Flat `b x b` blocks of duplicate tokens (1 = none).
    blocks: usize,
}

fn cfg(p: Params) -> AilurusConfig {
    AilurusConfig {
        k: p.k,
        radius: p.r,
        delta: if p.windowed { "window" } else { "global" }.into(),
        delta_radius: p.delta_radius,
        fallback: if p.spatial { "spatial" } else { "global" }.into(),
        spread: p.spread,
    }
}

fn first_bit_diff(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits()).map(|i| (i, a[i], b[i]))
}

/// Compare and explain: intermediates first (where a divergence starts), then the outputs.
fn check(name: &str, got: &RefOut, want: &RefOut) -> f32 {
    if let Some((i, g, w)) = first_bit_diff(&got.rho, &want.rho) {
        panic!("{name}: rho differs first at token {i}: {g:e} vs {w:e}");
    }
    if let Some((i, g, w)) = first_bit_diff(&got.delta, &want.delta) {
        panic!("{name}: delta differs first at token {i}: {g:e} vs {w:e}");
    }
    compare(got, want, 1e-4).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const P: Params = Params { k: 5, r: 2, windowed: false, delta_radius: 8, spatial: false, spread: 0 };

fn gpu_cases() -> Vec<Case> {
    let win = Params { windowed: true, ..P };
    let spatial = Params { spatial: true, ..P };
    vec![
        Case { grid: (16, 16), c: 384, m: 64, p: P, smooth: 0.0, levels: 0, blocks: 1 },
        Case { grid: (32, 32), c: 768, m: 256, p: P, smooth: 0.6, levels: 0, blocks: 1 },
        Case { grid: (32, 32), c: 384, m: 512, p: win, smooth: 0.8, levels: 0, blocks: 1 },
        Case { grid: (48, 48), c: 384, m: 576, p: P, smooth: 0.7, levels: 0, blocks: 1 },
        Case { grid: (48, 48), c: 768, m: 40, p: spatial, smooth: 0.5, levels: 0, blocks: 1 },
        Case { grid: (20, 30), c: 384, m: 150, p: P, smooth: 0.9, levels: 6, blocks: 1 },
        Case { grid: (64, 64), c: 384, m: 1024, p: P, smooth: 0.7, levels: 0, blocks: 1 },
        Case { grid: (64, 64), c: 768, m: 64, p: Params { k: 9, r: 3, ..win }, smooth: 0.3, levels: 0, blocks: 1 },
        Case { grid: (32, 32), c: 384, m: 100, p: P, smooth: 0.5, levels: 0, blocks: 4 },
        Case { grid: (48, 48), c: 768, m: 300, p: spatial, smooth: 0.5, levels: 4, blocks: 3 },
        Case { grid: (32, 32), c: 384, m: 768, p: Params { spread: 2, r: 3, ..P }, smooth: 0.7, levels: 0, blocks: 1 },
        Case { grid: (32, 32), c: 384, m: 200, p: Params { spread: 2, r: 3, ..P }, smooth: 0.6, levels: 2, blocks: 3 },
    ]
}

#[test]
fn gpu_matches_the_cpu_reference() {
    if !driver_present() {
        crate::common::gpu_skip(
            "gpu_matches_the_cpu_reference",
            "no CUDA driver (libcuda.so not loadable); the GPU path is unverified here",
        );
        return;
    }
    let mut out = Reduction::default();
    let (mut rho, mut delta) = (Vec::new(), Vec::new());
    for (t, case) in gpu_cases().iter().enumerate() {
        let mut gpu = CudaAilurus::new(0, &cfg(case.p)).unwrap_or_else(|e| panic!("{e}"));
        let x = blocky_tokens(100 + t as u64, case.grid, case.c, case.smooth, case.levels, case.blocks);
        let n = case.grid.0 * case.grid.1;
        gpu.reduce(&x, case.c, case.grid, case.m, &mut out).unwrap_or_else(|e| panic!("{e}"));
        gpu.last_density_delta(&mut rho, &mut delta).unwrap();
        let got = RefOut {
            centers: out.centers.clone(),
            assign: out.assign.clone(),
            sizes: out.sizes.clone(),
            merged: out.merged.clone(),
            rho: rho.clone(),
            delta: delta.clone(),
        };
        let want = reference(&x, case.c, case.grid, case.m, case.p);
        let name = format!("case {t}: N={n} C={} M={} {:?}", case.c, case.m, case.p);
        let worst = check(&name, &got, &want);
        // The GPU unfold is the same gather as the CPU one.
        let mut full = vec![0.0f32; n * case.c];
        gpu.unfold(&out.merged, &mut full).unwrap();
        let mut cpu_full = vec![0.0f32; n * case.c];
        ailurus::reduce::unfold(&out.merged, case.c, &out.assign, &mut cpu_full);
        assert!(full == cpu_full, "{name}: unfold differs");
        println!("{name}: identical (merged max |diff| {worst:e}) on {gpu:?}");
    }
}

fn write_input(path: &Path, x: &[f32], case: &Case) {
    let n = case.grid.0 * case.grid.1;
    let p = case.p;
    let hdr = [
        n,
        case.c,
        case.grid.0,
        case.grid.1,
        case.m.clamp(1, n),
        p.k,
        p.r,
        p.windowed as usize,
        p.delta_radius,
        p.spatial as usize,
        p.spread,
    ];
    let mut bytes: Vec<u8> = hdr.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect();
    bytes.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

fn read_output(path: &Path, n: usize, c: usize) -> RefOut {
    let b = std::fs::read(path).unwrap();
    let mut words = b.chunks_exact(4).map(|w| [w[0], w[1], w[2], w[3]]);
    let mut u32s = |k: usize| (0..k).map(|_| u32::from_le_bytes(words.next().unwrap())).collect::<Vec<u32>>();
    let m = u32s(1)[0] as usize;
    let centers = u32s(m);
    let assign = u32s(n);
    let f = |v: Vec<u32>| v.into_iter().map(f32::from_bits).collect::<Vec<f32>>();
    let sizes = f(u32s(m));
    let merged = f(u32s(m * c));
    let rho = f(u32s(n));
    let delta = f(u32s(n));
    RefOut { centers, assign, sizes, merged, rho, delta }
}

/// Build the emulator; None (with a SKIP line) without g++.
fn build_emulator(dir: &Path) -> Option<PathBuf> {
    // AILURUS_ROOT: the checkout, when the binary runs away from where it was built.
    let root =
        std::env::var_os("AILURUS_ROOT").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let bin = dir.join("kernel_emu");
    let status = Command::new("g++")
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-o"])
        .arg(&bin)
        .arg(root.join("tools/kernel_emu.cpp"))
        .status();
    match status {
        Ok(s) if s.success() => Some(bin),
        Ok(s) => panic!("g++ failed to build tools/kernel_emu.cpp ({s})"),
        Err(e) => {
            println!("SKIP emulated_kernels_match_the_cpu_reference: no g++ ({e})");
            None
        }
    }
}

#[test]
fn emulated_kernels_match_the_cpu_reference() {
    let dir = tempfile::tempdir().unwrap();
    let Some(emu) = build_emulator(dir.path()) else { return };
    let win = Params { windowed: true, delta_radius: 3, ..P };
    let cases = [
        Case { grid: (16, 16), c: 384, m: 64, p: P, smooth: 0.0, levels: 0, blocks: 1 },
        Case { grid: (12, 20), c: 48, m: 30, p: win, smooth: 0.8, levels: 0, blocks: 1 },
        Case { grid: (16, 16), c: 24, m: 6, p: Params { spatial: true, ..P }, smooth: 0.5, levels: 0, blocks: 1 },
        Case { grid: (16, 16), c: 24, m: 5, p: P, smooth: 0.5, levels: 0, blocks: 1 },
        Case { grid: (10, 10), c: 16, m: 20, p: P, smooth: 0.9, levels: 3, blocks: 1 },
        Case { grid: (9, 13), c: 20, m: 117, p: Params { k: 30, r: 1, ..P }, smooth: 0.2, levels: 0, blocks: 1 },
        Case { grid: (1, 1), c: 8, m: 3, p: P, smooth: 0.0, levels: 0, blocks: 1 },
        Case { grid: (33, 33), c: 64, m: 300, p: P, smooth: 0.7, levels: 0, blocks: 1 },
        Case { grid: (16, 16), c: 32, m: 40, p: P, smooth: 0.5, levels: 0, blocks: 4 },
        Case {
            grid: (15, 18),
            c: 16,
            m: 25,
            p: Params { windowed: true, delta_radius: 2, ..P },
            smooth: 0.3,
            levels: 2,
            blocks: 3,
        },
        Case { grid: (16, 16), c: 8, m: 30, p: Params { spatial: true, ..P }, smooth: 1.0, levels: 0, blocks: 8 },
        // [reduce.ailurus] spread (the default 2): blocks of 2, of 3 (M below the 2 x 2 count),
        // uneven edges, duplicate tokens (ties inside a block).
        Case { grid: (16, 16), c: 32, m: 100, p: Params { spread: 2, r: 3, ..P }, smooth: 0.7, levels: 0, blocks: 1 },
        Case { grid: (15, 17), c: 16, m: 40, p: Params { spread: 2, ..P }, smooth: 0.5, levels: 3, blocks: 1 },
        Case {
            grid: (16, 16),
            c: 8,
            m: 70,
            p: Params { spread: 3, spatial: true, ..P },
            smooth: 1.0,
            levels: 0,
            blocks: 4,
        },
    ];
    for (t, case) in cases.iter().enumerate() {
        let n = case.grid.0 * case.grid.1;
        let x = blocky_tokens(200 + t as u64, case.grid, case.c, case.smooth, case.levels, case.blocks);
        let (inp, outp) = (dir.path().join(format!("in{t}")), dir.path().join(format!("out{t}")));
        write_input(&inp, &x, case);
        let st = Command::new(&emu).arg(&inp).arg(&outp).status().unwrap();
        assert!(st.success(), "case {t}: kernel_emu failed ({st})");
        let got = read_output(&outp, n, case.c);
        let want = reference(&x, case.c, case.grid, case.m, case.p);
        let name = format!("emulated case {t}: N={n} C={} M={} {:?}", case.c, case.m, case.p);
        let worst = check(&name, &got, &want);
        assert_eq!(worst, 0.0, "{name}: merged tokens are not bit-identical");
    }
}
