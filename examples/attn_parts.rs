//! Where the fused attention's time goes at 1 thread, per part: the q.k^T gemm, the softmax (tract's
//! kernels), the weights.v gemm; T = 1028 (or the first argument), 6 heads of 64, 256-row blocks.
//! `cargo run --release --example attn_parts [T]`
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let t: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1028);
    let (h, d, block) = (6usize, 64usize, 256usize);
    let n = t * h * d;
    let q: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let k = q.clone();
    let v = q.clone();
    let mut out = vec![0f32; n];
    let stride = t.next_multiple_of(16);
    let mut logits = vec![0f32; block * stride + 16];
    let mut sums = vec![0f32; block];
    use tract_linalg::routines::Func;
    let max = Func::ReduceMax.reduce_f32()?;
    let exp_sum = Func::Softmax2.map_reduce_f32()?;
    let (mut t1, mut t2, mut t3, mut tmax, mut tours) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let rounds = 20;
    let hd = (h * d) as isize;
    for round in 0..rounds + 2 {
        for head in 0..h {
            for r0 in (0..t).step_by(block) {
                let rows = block.min(t - r0);
                let a = Instant::now();
                unsafe {
                    gemm::gemm(
                        rows,
                        t,
                        d,
                        logits.as_mut_ptr(),
                        1,
                        stride as isize,
                        false,
                        q.as_ptr().add(r0 * h * d + head * d),
                        1,
                        hd,
                        k.as_ptr().add(head * d),
                        hd,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                let b = Instant::now();
                let mut maxes = [0f32; 256];
                for (r, row) in logits.chunks_exact_mut(stride).take(rows).enumerate() {
                    maxes[r] = max.run(&row[..t])?;
                }
                let bm = Instant::now();
                for (r, row) in logits.chunks_exact_mut(stride).take(rows).enumerate() {
                    let ours = ailurus::model::attention::row_max(&mut row[..t], None);
                    assert_eq!(ours, maxes[r]);
                }
                let bo = Instant::now();
                tours += (bo - bm).as_secs_f64() * (round >= 2) as u8 as f64;
                let bm = Instant::now();
                for (r, row) in logits.chunks_exact_mut(stride).take(rows).enumerate() {
                    sums[r] = exp_sum.run_with_params(&mut row[..t], maxes[r])?;
                }
                let c = Instant::now();
                unsafe {
                    gemm::gemm(
                        rows,
                        d,
                        t,
                        out.as_mut_ptr().add(r0 * h * d + head * d),
                        1,
                        hd,
                        false,
                        logits.as_ptr(),
                        1,
                        stride as isize,
                        v.as_ptr().add(head * d),
                        1,
                        hd,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                let e = Instant::now();
                if round >= 2 {
                    t1 += (b - a).as_secs_f64();
                    t2 += (c - b).as_secs_f64();
                    tmax += (bm - b).as_secs_f64();
                    t3 += (e - c).as_secs_f64();
                }
            }
        }
    }
    let f = 2.0 * (t * t * d * h) as f64;
    let r = rounds as f64;
    println!(
        "T={t}: qk {:.2} ms ({:.1} GFLOP/s), softmax {:.2} ms (tract's max pass {:.2}, ours {:.2}), pv {:.2} ms ({:.1} GFLOP/s), total {:.2} ms",
        t1 / r * 1e3,
        f / (t1 / r) / 1e9,
        t2 / r * 1e3,
        tmax / r * 1e3,
        tours / r * 1e3,
        t3 / r * 1e3,
        f / (t3 / r) / 1e9,
        (t1 + t2 + t3) / r * 1e3
    );
    Ok(())
}
