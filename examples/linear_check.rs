//! The linear layers on the `gemm` crate (src/model/linear.rs) against tract's matmuls, timed
//! interleaved in one process so that machine noise hits both alike: the 448 px stem (blocks
//! 0..4) and middle (blocks 4..12 at 1 + M tokens padded to a multiple of 4, fixed and symbolic
//! T), both with the fused attention, with and without `Linear`; on 1 thread and 2; medians and
//! minimums in ms, and the largest output difference.
//! `cargo run --release --example linear_check [rounds] [m]`
use std::time::Instant;

use ailurus::model::{attention, cut, linear, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let m: usize = std::env::args().nth(2).map(|a| a.parse()).transpose()?.unwrap_or(1024);
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
    let img: TValue = Tensor::from_shape(
        &[1, 3, 448, 448],
        &(0..3 * 448 * 448).map(|i| ((i % 101) as f32 - 50.0) / 50.0).collect::<Vec<_>>(),
    )?
    .into();
    let variants = |g: TypedModel| -> TractResult<(TypedModel, TypedModel)> {
        let mut a = g;
        attention::fuse(&mut a)?;
        let mut b = a.clone();
        println!("linear layers swapped: {}", linear::swap(&mut b)?);
        Ok((a, b))
    };
    let (ma, mb) = variants(cut::middle_decluttered(&base, &man, 4, true)?)?;
    let (sa, sb) = variants(cut::stem_decluttered(&base, &man, 448, 4)?)?;
    let conc = |g: &TypedModel| -> TractResult<Arc<TypedRunnableModel>> {
        let sym = g.symbols.sym("T");
        let subs = std::collections::HashMap::from([(sym, (t_pad as i64).to_dim())]);
        g.set_symbols(&subs)?.into_optimized()?.into_runnable()
    };
    let opt = |g: &TypedModel| g.clone().into_optimized()?.into_runnable();
    let mid = tvec!(toks.clone(), bias.clone());
    let parts: Vec<(&str, Arc<TypedRunnableModel>, TVec<TValue>)> = vec![
        ("stem tract", opt(&sa)?, tvec!(img.clone())),
        ("stem linear", opt(&sb)?, tvec!(img.clone())),
        ("middle fixed tract", conc(&ma)?, mid.clone()),
        ("middle fixed linear", conc(&mb)?, mid.clone()),
        ("middle sym tract", opt(&ma)?, mid.clone()),
        ("middle sym linear", opt(&mb)?, mid.clone()),
    ];
    let outs: Vec<Tensor> =
        parts.iter().map(|(_, p, i)| Ok(p.run(i.clone())?[0].clone().into_tensor())).collect::<TractResult<_>>()?;
    let diff = |a: &Tensor, b: &Tensor| -> (f32, f32) {
        let (a, b) = (a.try_as_plain_ram().unwrap(), b.try_as_plain_ram().unwrap());
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        (d, a.iter().map(|x| x.abs()).fold(0f32, f32::max))
    };
    println!("stem: max diff {:?} (diff, max |x|)", diff(&outs[0], &outs[1]));
    println!("middle fixed: {:?}", diff(&outs[2].slice(1, 0, t_real)?, &outs[3].slice(1, 0, t_real)?));
    println!("middle sym: {:?}", diff(&outs[4].slice(1, 0, t_real)?, &outs[5].slice(1, 0, t_real)?));
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
            println!("{threads}t {name:<20} median {:7.1} ms (min {:7.1})", times[i][times[i].len() / 2], times[i][0]);
        }
    }
    Ok(())
}
