//! The reuse path's own head (`src/reuse/head/`) on the real model at one size, 1 thread: the
//! tract head plan and the own head's full run, then partial runs after changing a square block
//! of b x b tokens or k scattered tokens, per tile size, with the whole-layer fallback off
//! (`full_above = 1`): where tiles stop paying. Median of 5 runs each.
//! `cargo run --release --example head_tiles [size] [f32|bf16]` (needs `.cache/models`).
use std::sync::Arc;
use std::time::Instant;

use ailurus::model::{bf16, Segmenter, SegmenterOptions};
use ailurus::reduce::ReduceConfig;
use ailurus::reuse::head::{HeadCache, HeadExec};
use ailurus::reuse::ReuseModel;

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let size: u32 = std::env::args().nth(1).map_or(448, |s| s.parse().unwrap());
    if std::env::args().nth(2).as_deref() == Some("bf16") {
        println!("precision {:?}", bf16::set_precision(bf16::Precision::Bf16));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let opts = SegmenterOptions {
        sizes: vec![size],
        reduce: ReduceConfig { strategy: "none".into(), ..ReduceConfig::default() },
        with_full: false,
        verify_sha256: false,
        fixed_middle: Vec::new(),
        fixed_unreduced: false,
        device: ailurus::choice::Device::Cpu,
    };
    let seg = Arc::new(Segmenter::load(&root.join("models/vit_s_focus.toml"), &opts).unwrap());
    let model = ReuseModel::new(seg).unwrap();
    let w = model.head_weights().expect("head parses").clone();
    let (h, wd) = model.grid(size).unwrap();
    let c = w.width;
    let base = uniform((1 + h * wd) * c, 1);
    let time =
        |f: &mut dyn FnMut()| median((0..5).map(|_| (Instant::now(), f()).0.elapsed().as_secs_f64() * 1e3).collect());
    let tract = time(&mut || drop(model.tract_head(size, &base).unwrap()));
    let (mut exec, mut cache, mut out) = (HeadExec::new(w.clone()), HeadCache::default(), Vec::new());
    let full = time(&mut || {
        exec.run(&mut cache, &base, 1, (h, wd), size, true, &mut out).unwrap();
    });
    println!("{size} px, grid {h}x{wd}: tract head plan {tract:.1} ms, own full run {full:.1} ms");
    let mut cases: Vec<(String, Vec<usize>)> = Vec::new();
    for b in [1, 2, 4, 8, 12, 16, 24] {
        let b = b.min(h).min(wd);
        let (y0, x0) = ((h - b) / 2, (wd - b) / 2);
        cases.push((
            format!("block {b}x{b}"),
            (0..b).flat_map(|y| (0..b).map(move |x| (y0 + y) * wd + x0 + x)).collect(),
        ));
    }
    for k in [4, 16, 64, 128] {
        let r = uniform(k, 99 + k as u64);
        cases.push((
            format!("{k} scattered"),
            r.iter().map(|v| ((v + 1.0) / 2.0 * (h * wd) as f32) as usize % (h * wd)).collect(),
        ));
    }
    print!("{:<14} {:>7}", "change", "tokens");
    let tiles = [4usize, 8, 16];
    for t in tiles {
        print!(" {:>16}", format!("tile {t}: ms (macs)"));
    }
    println!();
    for (name, set) in cases {
        let mut changed = base.clone();
        for &p in &set {
            changed[(1 + p) * c] += 1.0;
        }
        let n = set.iter().collect::<std::collections::BTreeSet<_>>().len();
        print!("{name:<14} {n:>7}");
        for t in tiles {
            exec.tile = t;
            exec.full_above = 1.0;
            let (mut frac, mut ms) = (0.0, Vec::new());
            for _ in 0..5 {
                exec.run(&mut cache, &base, 1, (h, wd), size, true, &mut out).unwrap();
                let t0 = Instant::now();
                frac = exec.run(&mut cache, &changed, 1, (h, wd), size, false, &mut out).unwrap().macs_fraction;
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let ms = median(ms);
            print!(" {:>9.1} ({:.2})", ms, frac);
        }
        println!();
    }
}
