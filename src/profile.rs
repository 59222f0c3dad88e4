//! `ailurus profile`: where tract spends the time in the stem, middle and head, per op kind.
//!
//! Builds its own plans with `model::cut` (the same graphs the runtime uses) and times every
//! node through tract's `run_plan_with_eval` hook. Diagnostic only: not on the runtime path.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use tract_core::plan::eval as tract_eval;
use tract_onnx::prelude::*;

use crate::model::{cut, Manifest};

/// Time per op kind for one part.
#[derive(Debug, Default, Clone)]
pub struct PartProfile {
    pub part: String,
    pub total: Duration,
    /// op name -> (time, node count)
    pub by_op: BTreeMap<String, (Duration, usize)>,
}

fn profile_plan(part: &str, model: TypedModel, inputs: TVec<TValue>, reps: usize) -> Result<PartProfile> {
    let plan = model.into_runnable()?;
    let mut state = plan.spawn()?;
    state.run(inputs.clone())?; // warm-up
    let mut p = PartProfile { part: part.to_string(), ..Default::default() };
    for _ in 0..reps {
        let t0 = Instant::now();
        let by_op = &mut p.by_op;
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
            let t = Instant::now();
            let r = tract_eval(ctx, st, node, input);
            let e = by_op.entry(node.op.name().to_string()).or_default();
            e.0 += t.elapsed();
            e.1 += 1;
            r
        })?;
        p.total += t0.elapsed();
    }
    for v in p.by_op.values_mut() {
        v.0 /= reps as u32;
        v.1 /= reps;
    }
    p.total /= reps as u32;
    Ok(p)
}

/// Profile stem, middle (at `m` merged tokens + prefix) and head at `size`.
pub fn run(manifest: &Manifest, size: u32, cut_at: usize, m: usize, reps: usize) -> Result<Vec<PartProfile>> {
    let base = cut::load_base_with(&manifest.onnx_path(), manifest.load_delta()?.as_ref())?;
    let s = size as usize;
    let c = manifest.tokens.width;
    let n = (s / manifest.tokens.patch as usize).pow(2);
    let t_full = manifest.tokens.prefix + n;
    let t_mid = manifest.tokens.prefix + m.min(n);
    let img = Tensor::from_shape(&[1, 3, s, s], &vec![0.1f32; 3 * s * s])?;
    let toks = |t: usize| {
        Tensor::from_shape(&[1, t, c], &(0..t * c).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect::<Vec<_>>())
    };
    let bias = Tensor::from_shape(&[1, 1, 1, t_mid], &vec![0.0f32; t_mid])?;
    Ok(vec![
        profile_plan("stem", cut::stem(&base, manifest, size, cut_at)?, tvec!(img.into()), reps)?,
        profile_plan(
            &format!("middle(T={t_mid})"),
            cut::middle(&base, manifest, cut_at, true)?,
            tvec!(toks(t_mid)?.into(), bias.into()),
            reps,
        )?,
        profile_plan("head", cut::head(&base, manifest, size)?, tvec!(toks(t_full)?.into()), reps)?,
    ])
}

/// Human-readable report: each part's total, then its op kinds by time.
pub fn format(parts: &[PartProfile]) -> String {
    let mut s = String::new();
    for p in parts {
        s += &format!("{}: {:.1} ms\n", p.part, p.total.as_secs_f64() * 1e3);
        let mut ops: Vec<_> = p.by_op.iter().collect();
        ops.sort_by_key(|(_, (t, _))| std::cmp::Reverse(*t));
        for (name, (t, k)) in ops.into_iter().take(12) {
            s += &format!(
                "    {:<28} {:>8.1} ms {:>5.1}%  ({k} nodes)\n",
                name,
                t.as_secs_f64() * 1e3,
                100.0 * t.as_secs_f64() / p.total.as_secs_f64().max(1e-12)
            );
        }
    }
    s
}
