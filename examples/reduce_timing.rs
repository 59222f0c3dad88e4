//! Milliseconds per reduce of every CPU strategy, single-threaded, C = 384, M = N/2, on
//! synthetic tokens shaped like ViT features (piecewise-constant regions plus noise).
//!
//! `cargo run --release --example reduce_timing [-- REPS_SECONDS]`

use std::time::Instant;

use ailurus::reduce::{ailurus::AilurusReducer, build, AilurusConfig, ReduceConfig, Reducer, Reduction};

/// splitmix64 -> uniform in [-1, 1).
fn uniform(s: &mut u64) -> f32 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Voronoi regions of 16 random seeds, each with a base vector, plus noise.
fn tokens(h: usize, w: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let seeds: Vec<(f32, f32, Vec<f32>)> = (0..16)
        .map(|_| {
            let (y, x) = ((uniform(&mut s) + 1.0) * h as f32 / 2.0, (uniform(&mut s) + 1.0) * w as f32 / 2.0);
            (y, x, (0..c).map(|_| uniform(&mut s) * 2.0).collect())
        })
        .collect();
    let mut t = Vec::with_capacity(h * w * c);
    for i in 0..h * w {
        let (y, x) = ((i / w) as f32, (i % w) as f32);
        let near = seeds
            .iter()
            .min_by(|a, b| ((a.0 - y).powi(2) + (a.1 - x).powi(2)).total_cmp(&((b.0 - y).powi(2) + (b.1 - x).powi(2))))
            .unwrap();
        t.extend(near.2.iter().map(|&v| v + 0.5 * uniform(&mut s)));
    }
    t
}

fn time_ms(r: &mut dyn Reducer, t: &[f32], c: usize, g: (usize, usize), m: usize, budget_s: f64) -> f64 {
    let mut out = Reduction::default();
    r.reduce(t, c, g, m, &mut out).expect("reduce");
    let start = Instant::now();
    let mut reps = 0;
    while reps < 3 || start.elapsed().as_secs_f64() < budget_s {
        r.reduce(t, c, g, m, &mut out).expect("reduce");
        reps += 1;
    }
    start.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    let budget_s: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0.5);
    let c = 384;
    let variants: Vec<(&str, Box<dyn Fn() -> Box<dyn Reducer>>)> = vec![
        ("ailurus", Box::new(|| build(&ReduceConfig::default()))),
        (
            "ailurus delta=window",
            Box::new(|| {
                let cfg = AilurusConfig { delta: "window".into(), ..AilurusConfig::default() };
                Box::new(AilurusReducer::new(&cfg))
            }),
        ),
        (
            "ailurus fallback=spatial",
            Box::new(|| {
                let cfg = AilurusConfig { fallback: "spatial".into(), ..AilurusConfig::default() };
                Box::new(AilurusReducer::new(&cfg))
            }),
        ),
        ("tome", Box::new(|| build(&ReduceConfig { strategy: "tome".into(), ..ReduceConfig::default() }))),
        ("grid", Box::new(|| build(&ReduceConfig { strategy: "grid".into(), ..ReduceConfig::default() }))),
        ("none", Box::new(|| build(&ReduceConfig { strategy: "none".into(), ..ReduceConfig::default() }))),
    ];
    let sides = [16usize, 32, 48, 64];
    print!("| strategy (C={c}, M=N/2) |");
    for s in sides {
        print!(" N={} ms |", s * s);
    }
    println!();
    println!("|---|{}", "---|".repeat(sides.len()));
    let data: Vec<Vec<f32>> = sides.iter().map(|&s| tokens(s, s, c, 42 + s as u64)).collect();
    for (name, make) in &variants {
        print!("| {name} |");
        for (&s, t) in sides.iter().zip(&data) {
            let mut r = make();
            print!(" {:.2} |", time_ms(r.as_mut(), t, c, (s, s), s * s / 2, budget_s));
        }
        println!();
    }
}
