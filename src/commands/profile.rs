//! `ailurus profile`: where tract spends the time in the stem, middle and head, per op kind.
//!
//! Builds its own plans with `model::cut` (the same graphs the runtime uses) and times every
//! node through tract's `run_plan_with_eval` hook. Diagnostic only: not on the runtime path.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use tract_core::internal::Cost;
use tract_core::plan::eval as tract_eval;
use tract_onnx::prelude::*;

use ailurus::model::{cut, Manifest};

/// Time per op kind for one part.
#[derive(Debug, Default, Clone)]
pub struct PartProfile {
    pub part: String,
    pub total: Duration,
    /// op name -> (time, node count)
    pub by_op: BTreeMap<String, (Duration, usize)>,
    /// The slowest nodes, slowest first.
    pub nodes: Vec<NodeProfile>,
}

/// One node's time, its multiply-adds (tract's own cost model) and tract's description of it
/// (for a matmul: m, k, n and the kernel that runs).
#[derive(Debug, Default, Clone)]
pub struct NodeProfile {
    pub name: String,
    pub op: String,
    pub time: Duration,
    pub fma: f64,
    pub info: String,
}

fn profile_plan(part: &str, model: TypedModel, inputs: TVec<TValue>, reps: usize) -> Result<PartProfile> {
    let plan = model.into_runnable()?;
    let mut state = plan.spawn()?;
    state.run(inputs.clone())?; // warm-up
    let mut p = PartProfile { part: part.to_string(), ..Default::default() };
    let mut per_node: BTreeMap<usize, Duration> = BTreeMap::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        let by_op = &mut p.by_op;
        let per_node = &mut per_node;
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
            let t = Instant::now();
            let r = tract_eval(ctx, st, node, input);
            let e = by_op.entry(node.op.name().to_string()).or_default();
            e.0 += t.elapsed();
            e.1 += 1;
            *per_node.entry(node.id).or_default() += t.elapsed();
            r
        })?;
        p.total += t0.elapsed();
    }
    let model = plan.model();
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    for (id, t) in nodes.into_iter().take(NODES) {
        let node = model.node(id);
        let facts = model.node_input_facts(id)?;
        let fma = node
            .op
            .as_typed()
            .and_then(|op| op.cost(&facts).ok())
            .map(|c| {
                c.iter().filter(|(k, _)| matches!(k, Cost::FMA(_))).filter_map(|(_, n)| n.to_i64().ok()).sum::<i64>()
                    as f64
            })
            .unwrap_or(0.0);
        let info = node.op.info().unwrap_or_default().into_iter().take(2).collect::<Vec<_>>().join("; ");
        p.nodes.push(NodeProfile {
            name: node.name.clone(),
            op: node.op.name().to_string(),
            time: t / reps as u32,
            fma,
            info,
        });
    }
    for v in p.by_op.values_mut() {
        v.0 /= reps as u32;
        v.1 /= reps;
    }
    p.total /= reps as u32;
    Ok(p)
}

/// How many of the slowest nodes each part reports.
const NODES: usize = 12;

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
            tvec!(toks(t_mid)?.into(), bias.clone().into()),
            reps,
        )?,
        profile_plan(
            &format!("middle(T={t_mid}, concrete)"),
            cut::concretize(&cut::middle_decluttered(&base, manifest, cut_at, true)?, t_mid)?,
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

/// The slowest nodes of each part, with GFLOP/s (2 x multiply-adds / time) and tract's
/// description (for matmuls: m, k, n and the kernel).
pub fn format_nodes(parts: &[PartProfile]) -> String {
    let mut s = String::new();
    for p in parts {
        s += &format!("{}: slowest nodes\n", p.part);
        for n in &p.nodes {
            let ms = n.time.as_secs_f64() * 1e3;
            let gflops = if n.fma > 0.0 {
                format!("{:6.1} GFLOP/s", 2.0 * n.fma / n.time.as_secs_f64() / 1e9)
            } else {
                " ".repeat(14)
            };
            s += &format!("  {ms:7.1} ms {gflops}  {:<12} {}\n      {}\n", n.op, n.name, n.info);
        }
    }
    s
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    #[command(flatten)]
    ov: super::Overrides,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also list the slowest nodes with their GFLOP/s and tract's kernel choice.
    #[arg(long)]
    nodes: bool,
}

/// `ailurus profile`: tract's time per op kind in the stem, middle and head.
pub fn command(a: Args) -> Result<()> {
    let cfg = super::config_with(&a.config, &a.ov)?;
    ailurus::model::configure_cpu(&cfg.model);
    let man = Manifest::load(&cfg.resolve(&cfg.model.manifest))?;
    let parts = run(&man, cfg.model.input_size, cfg.reduce.cut, cfg.reduce.m, a.reps)?;
    print!("{}", format(&parts));
    if a.nodes {
        print!("{}", format_nodes(&parts));
    }
    Ok(())
}
