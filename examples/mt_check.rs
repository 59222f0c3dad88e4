//! A/B timing of tract plans for the middle blocks, interleaved in one process so that machine
//! noise hits every variant alike: symbolic T at 1025 (unpadded), symbolic at 1028 (padded to a
//! multiple of 4: tract's fast softmax rows), fixed T = 1028; and stem and head; on 1 thread
//! and 2. Prints medians. `cargo run --release --example mt_check [rounds] [m]`
use std::time::Instant;

use ailurus::model::{cut, Manifest};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let m: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let man = Manifest::load(std::path::Path::new("models/vit_s_focus.toml"))?;
    let base = cut::load_base(&man.onnx_path())?;
    let c = man.tokens.width;
    let toks = |t: usize| -> TractResult<TValue> {
        Ok(Tensor::from_shape(&[1, t, c], &(0..t * c).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect::<Vec<_>>())?
            .into())
    };
    let bias = |t: usize, real: usize| -> TractResult<TValue> {
        let v: Vec<f32> = (0..t).map(|i| if i < real { 0.0 } else { -1e9 }).collect();
        Ok(Tensor::from_shape(&[1, 1, 1, t], &v)?.into())
    };
    let t_real = 1 + m;
    let t_pad = t_real.div_ceil(4) * 4;
    let decl = cut::middle_decluttered(&base, &man, 3, true)?;
    let sym = cut::optimize(decl.clone())?.into_runnable()?;
    let fixed = cut::concretize(&decl, t_pad)?.into_runnable()?;
    let img: TValue = Tensor::from_shape(&[1, 3, 448, 448], &vec![0.1f32; 3 * 448 * 448])?.into();
    let parts: Vec<(String, Arc<TypedRunnableModel>, TVec<TValue>)> = vec![
        ("stem".into(), cut::stem(&base, &man, 448, 3)?.into_runnable()?, tvec!(img)),
        (format!("middle sym T={t_real}"), sym.clone(), tvec!(toks(t_real)?, bias(t_real, t_real)?)),
        (format!("middle sym T={t_pad}"), sym, tvec!(toks(t_pad)?, bias(t_pad, t_real)?)),
        (format!("middle fixed T={t_pad}"), fixed, tvec!(toks(t_pad)?, bias(t_pad, t_real)?)),
        ("head".into(), cut::head(&base, &man, 448)?.into_runnable()?, tvec!(toks(1025)?)),
    ];
    let two = Executor::multithread(2);
    let mut states: Vec<_> = parts.iter().map(|(_, p, _)| p.spawn()).collect::<TractResult<_>>()?;
    let mut times = vec![[Vec::new(), Vec::new()]; parts.len()];
    for round in 0..=rounds {
        for (i, ((_, _, inputs), st)) in parts.iter().zip(&mut states).enumerate() {
            for (j, ex) in [Executor::SingleThread, two.clone()].into_iter().enumerate() {
                let t0 = Instant::now();
                multithread_tract_scope(ex, || st.run(inputs.clone()))?;
                if round > 0 {
                    times[i][j].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    println!("{:<24} {:>10} {:>10}   (median ms over {rounds} interleaved rounds)", "part", "1 thread", "2 threads");
    for ((name, _, _), t) in parts.iter().zip(&mut times) {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("{name:<24} {:>10.1} {:>10.1}", med(&mut t[0]), med(&mut t[1]));
    }
    Ok(())
}
