//! Run the crate's `ailurus` reducer on raw tokens from a file and dump what it found, so that
//! another implementation (tools/finetune/reducer.py) can be checked against it.
//!
//! `cargo run --release --example reduce_dump -- TOKENS.f32 H W C M OUT.bin [K RADIUS]`
//!
//! TOKENS.f32: `H*W*C` little-endian f32, raster order. OUT.bin, all little-endian:
//! `m: u32`, `assign: [u32; n]`, `centers: [u32; m]`, `sizes: [f32; m]`, `merged: [f32; m*C]`,
//! `rho: [f32; n]`, `delta: [f32; n]`, `score: [f32; n]`.

use ailurus::reduce::{ailurus::AilurusReducer, AilurusConfig, Reducer, Reduction};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: reduce_dump TOKENS.f32 H W C M OUT.bin [K RADIUS] (bad or missing {what})");
        std::process::exit(2)
    })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (h, w, c, m): (usize, usize, usize, usize) =
        (arg(&args, 2, "H"), arg(&args, 3, "W"), arg(&args, 4, "C"), arg(&args, 5, "M"));
    let out_path: String = arg(&args, 6, "OUT.bin");
    let mut cfg = AilurusConfig::default();
    if args.len() > 8 {
        cfg.k = arg(&args, 7, "K");
        cfg.radius = arg(&args, 8, "RADIUS");
    }
    let raw = std::fs::read(&args[1])?;
    let tokens: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut r = AilurusReducer::new(&cfg);
    let mut out = Reduction::default();
    r.reduce(&tokens, c, (h, w), m, &mut out).unwrap_or_else(|e| {
        eprintln!("reduce_dump: {e}");
        std::process::exit(2)
    });
    r.density_peaks(&tokens, c, (h, w)).expect("shape checked above");
    let mut b: Vec<u8> = Vec::new();
    b.extend((out.m as u32).to_le_bytes());
    b.extend(out.assign.iter().flat_map(|v| v.to_le_bytes()));
    b.extend(out.centers.iter().flat_map(|v| v.to_le_bytes()));
    b.extend(out.sizes[..out.m].iter().flat_map(|v| v.to_le_bytes()));
    b.extend(out.merged[..out.m * c].iter().flat_map(|v| v.to_le_bytes()));
    for v in [r.rho(), r.delta(), r.score()] {
        b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    std::fs::write(out_path, b)
}
