//! Fused attention (src/model/attention.rs) against tract's matmul / softmax / matmul, timed
//! interleaved in one process so that machine noise hits both alike:
//! - the kernel alone at T = 1028, 6 heads of 64, for several row-block sizes (how `ROWS` was
//!   picked); `ONLY_ATTEND=1` stops there;
//! - the 448 px stem (blocks 0..4) and middle (blocks 4..12 at 1 + M tokens, padded to a multiple
//!   of 4, fixed and symbolic T), fused and not, with their largest output difference;
//! - the 448 px head with its transposed convolutions as tract's `Deconv` and as sub-pixel
//!   convolutions (src/model/deconv.rs);
//!
//! On 1 thread and 2; medians and minimums in ms.
//! `cargo run --release --example attn_check [rounds] [m]`
use std::time::Instant;

use ailurus::model::{attention, cut, deconv, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let m: usize = std::env::args().nth(2).map(|a| a.parse()).transpose()?.unwrap_or(1024);
    // unit check
    let (t, h, d) = (37, 3, 8);
    let r = |i: usize| (i * 7919 % 1000) as f32 / 500.0 - 1.0;
    let q: Vec<f32> = (0..t * h * d).map(r).collect();
    let k: Vec<f32> = (0..t * h * d).map(|i| r(i + 17)).collect();
    let v: Vec<f32> = (0..t * h * d).map(|i| r(i + 91)).collect();
    let b: Vec<f32> = (0..t).map(|i| if i % 5 == 0 { -1e9 } else { r(i) }).collect();
    let mut out = vec![0f32; t * h * d];
    attention::attend(&q, &k, &v, Some(&b), t, h, d, &mut out)?;
    let want = attention::reference(&q, &k, &v, Some(&b), t, h, d);
    let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("unit max err {err:e}");
    {
        let (t, h, d) = (1028, 6, 64);
        let q: Vec<f32> = (0..t * h * d).map(|i| r(i) * 0.3).collect();
        let k: Vec<f32> = (0..t * h * d).map(|i| r(i + 5) * 0.3).collect();
        let v: Vec<f32> = (0..t * h * d).map(|i| r(i + 9)).collect();
        let b: Vec<f32> = vec![0.0; t];
        let mut out = vec![0f32; t * h * d];
        for threads in [1usize, 2] {
            let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
            let sizes = [32usize, 64, 128, 256, 512, 1028];
            multithread_tract_scope(ex, || {
                let mut ts = vec![vec![]; sizes.len()];
                for _ in 0..15 {
                    for (i, rows) in sizes.iter().enumerate() {
                        let t0 = Instant::now();
                        attention::attend_in_blocks(*rows, &q, &k, &v, Some(&b), t, h, d, &mut out).unwrap();
                        ts[i].push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
                for (i, rows) in sizes.iter().enumerate() {
                    ts[i].sort_by(|a, b| a.partial_cmp(b).unwrap());
                    println!("attend T=1028 rows {rows} {threads}t median {:.2} ms min {:.2}", ts[i][7], ts[i][0]);
                }
            });
        }
    }

    if std::env::var("ONLY_ATTEND").is_ok() {
        return Ok(());
    }
    let man = Manifest::load(std::path::Path::new("models/vit_s_focus.toml"))?;
    let base = cut::load_base(&man.onnx_path())?;
    let c = man.tokens.width;
    let t_real = 1 + m;
    let t_pad = t_real.div_ceil(4) * 4;
    let toks: TValue = Tensor::from_shape(
        &[1, t_pad, c],
        &(0..t_pad * c).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect::<Vec<_>>(),
    )?
    .into();
    let bias: TValue = Tensor::from_shape(
        &[1, 1, 1, t_pad],
        &(0..t_pad).map(|i| if i < t_real { (i % 3) as f32 * 0.5 } else { -1e9 }).collect::<Vec<_>>(),
    )?
    .into();
    let decl = cut::middle_decluttered(&base, &man, 4, true)?;
    let sdecl = cut::stem_decluttered(&base, &man, 448, 4)?;
    let mut fdecl = decl.clone();
    println!("fused middle: {}", attention::fuse(&mut fdecl)?);
    let mut fsdecl = sdecl.clone();
    println!("fused stem: {}", attention::fuse(&mut fsdecl)?);
    let conc = |g: &TypedModel| -> TractResult<Arc<TypedRunnableModel>> {
        let sym = g.symbols.sym("T");
        let subs = std::collections::HashMap::from([(sym, (t_pad as i64).to_dim())]);
        g.set_symbols(&subs)?.into_optimized()?.into_runnable()
    };
    let hdecl = cut::head_decluttered(&base, &man, 448)?;
    let mut fhdecl = hdecl.clone();
    println!("sub-pixel head: {}", deconv::swap(&mut fhdecl)?);
    let head_toks: TValue =
        Tensor::from_shape(&[1, 1025, c], &(0..1025 * c).map(|i| ((i % 89) as f32 - 44.0) / 40.0).collect::<Vec<_>>())?
            .into();
    let img: TValue = Tensor::from_shape(
        &[1, 3, 448, 448],
        &(0..3 * 448 * 448).map(|i| ((i % 101) as f32 - 50.0) / 50.0).collect::<Vec<_>>(),
    )?
    .into();
    let parts: Vec<(&str, Arc<TypedRunnableModel>, TVec<TValue>)> = vec![
        ("middle tract", conc(&decl)?, tvec!(toks.clone(), bias.clone())),
        ("middle fused", conc(&fdecl)?, tvec!(toks.clone(), bias.clone())),
        ("middle fused sym", fdecl.clone().into_optimized()?.into_runnable()?, tvec!(toks.clone(), bias.clone())),
        ("stem tract", sdecl.clone().into_optimized()?.into_runnable()?, tvec!(img.clone())),
        ("stem fused", fsdecl.clone().into_optimized()?.into_runnable()?, tvec!(img.clone())),
        ("head tract", hdecl.clone().into_optimized()?.into_runnable()?, tvec!(head_toks.clone())),
        ("head sub-pixel", fhdecl.clone().into_optimized()?.into_runnable()?, tvec!(head_toks.clone())),
    ];
    let outs: Vec<Tensor> =
        parts.iter().map(|(_, p, i)| Ok(p.run(i.clone())?[0].clone().into_tensor())).collect::<TractResult<_>>()?;
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        let (a, b) = (a.try_as_plain_ram().unwrap(), b.try_as_plain_ram().unwrap());
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    };
    let n_real = t_real * c;
    println!(
        "middle fused vs tract max diff (real rows) {:e}",
        diff(&outs[0].slice(1, 0, t_real)?, &outs[1].slice(1, 0, t_real)?)
    );
    println!("middle fused sym vs tract {:e}", diff(&outs[0].slice(1, 0, t_real)?, &outs[2].slice(1, 0, t_real)?));
    println!("stem fused vs tract {:e} (n {n_real})", diff(&outs[3], &outs[4]));
    println!("head sub-pixel vs tract {:e}", diff(&outs[5], &outs[6]));
    for threads in [1usize, 2] {
        let ex = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        let mut times = vec![vec![]; parts.len()];
        multithread_tract_scope(ex, || -> TractResult<()> {
            for _ in 0..rounds {
                for (i, (_, p, inp)) in parts.iter().enumerate() {
                    let t0 = Instant::now();
                    p.run(inp.clone())?;
                    times[i].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok(())
        })?;
        for (i, (name, _, _)) in parts.iter().enumerate() {
            times[i].sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!("{threads}t {name:<18} median {:7.1} ms (min {:7.1})", times[i][times[i].len() / 2], times[i][0]);
        }
    }
    Ok(())
}
