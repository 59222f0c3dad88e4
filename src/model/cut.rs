//! Cutting an ONNX ViT into stem / middle / head with tract, once at load time.
//!
//! - stem:   image `[1,3,S,S]` -> tokens after block `cut-1`, `[1, P+N, C]`
//! - middle: tokens after block `cut-1` `[1, T, C]` (T symbolic) -> tokens after the final norm;
//!   optionally with a key-bias input `[1,1,1,T]` added to the logits before every Softmax
//!   (proportional attention)
//! - head:   final-norm tokens `[1, P+N, C]` -> model output
//!
//! The graph is cut at the inference (pre-typing) level: the attention Reshapes are built from
//! `Shape` ops, so typing the middle with a symbolic T keeps them dynamic. One plan is built per
//! input size for stem and head, and a single middle plan serves every T.
//!
//! `stem`, `middle`, `head` and `full` give CPU-optimised models (tract's own plans). The
//! `*_decluttered` twins stop before optimisation, for `Runtime::prepare` (tract-cuda), which
//! translates core ops and optimises for its device itself.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tract_hir::internal::*;
use tract_hir::ops::binary::BinIntoHir;

use super::manifest::Manifest;
use super::ModelError;

/// The parsed ONNX graph, before any input fact is fixed. Cheap to clone per part.
pub type Base = InferenceModel;

/// Parse the ONNX file.
pub fn load_base(path: &Path) -> Result<Base, ModelError> {
    load_base_with(path, None)
}

/// Parse the ONNX file, with a fine-tuned delta applied to its initializers.
pub fn load_base_with(path: &Path, delta: Option<&super::delta::Delta>) -> Result<Base, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Missing { path: path.display().to_string() });
    }
    super::delta::load_onnx(path, delta)
}

/// Every tensor the manifest names must exist in the graph.
pub fn check_names(base: &Base, m: &Manifest, shown: &str) -> Result<(), ModelError> {
    let mut missing = Vec::new();
    for name in m.tokens.blocks.iter().chain([&m.tokens.final_norm]) {
        if base.find_outlet_label(name).is_none() && base.node_by_name(name).is_err() {
            missing.push(name.clone());
        }
    }
    let input_ok =
        base.input_outlets().map(|ins| ins.iter().any(|o| base.node(o.node).name == m.input.name)).unwrap_or(false);
    if !input_ok {
        missing.push(format!("input {}", m.input.name));
    }
    let out_ok = base.find_outlet_label(&m.output.name).is_some() || base.node_by_name(&m.output.name).is_ok();
    if !out_ok {
        missing.push(format!("output {}", m.output.name));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Manifest {
            path: shown.to_string(),
            msg: format!("tensor(s) not in the graph: {}", missing.join(", ")),
        })
    }
}

fn outlet(model: &Base, label: &str) -> TractResult<OutletId> {
    model
        .find_outlet_label(label)
        .or_else(|| model.node_by_name(label).ok().map(|n| OutletId::new(n.id, 0)))
        .with_context(|| format!("tensor {label} not found"))
}

fn image_fact(size: u32) -> InferenceFact {
    f32::fact([1, 3, size as usize, size as usize]).into()
}

/// How far a part is taken: tract's CPU plan, or decluttered for a tract runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Optimized,
    Decluttered,
}

impl Level {
    fn finish(self, g: TypedModel) -> TractResult<TypedModel> {
        match self {
            Level::Optimized => optimize(g),
            Level::Decluttered => Ok(g),
        }
    }
}

/// Fix the image input, select `outputs`, and optimise (or only declutter).
fn from_image(base: &Base, size: u32, outputs: &[&str], level: Level) -> TractResult<TypedModel> {
    let g = base.clone().with_input_fact(0, image_fact(size))?.with_outputs_by_name(outputs)?;
    level.finish(g.into_typed()?.into_decluttered()?)
}

/// The whole model at `size` (the reference the cut must reproduce).
pub fn full(base: &Base, m: &Manifest, size: u32) -> TractResult<TypedModel> {
    full_at(base, m, size, Level::Optimized)
}

/// `full`, decluttered (for a tract runtime).
pub fn full_decluttered(base: &Base, m: &Manifest, size: u32) -> TractResult<TypedModel> {
    full_at(base, m, size, Level::Decluttered)
}

fn full_at(base: &Base, m: &Manifest, size: u32, level: Level) -> TractResult<TypedModel> {
    from_image(base, size, &[&m.output.name], level).context("building the full model")
}

/// Image -> output of block `cut - 1`.
pub fn stem(base: &Base, m: &Manifest, size: u32, cut: usize) -> TractResult<TypedModel> {
    stem_at(base, m, size, cut, Level::Optimized)
}

/// `stem`, decluttered (for a tract runtime).
pub fn stem_decluttered(base: &Base, m: &Manifest, size: u32, cut: usize) -> TractResult<TypedModel> {
    stem_at(base, m, size, cut, Level::Decluttered)
}

fn stem_at(base: &Base, m: &Manifest, size: u32, cut: usize, level: Level) -> TractResult<TypedModel> {
    from_image(base, size, &[&m.tokens.blocks[cut - 1]], level)
        .with_context(|| format!("building the stem (blocks 0..{cut}) at {size}px"))
}

/// Final-norm tokens -> output, at `size`. The head reads `Shape(image)` for its grid reshape
/// and its final resize, so the image input is kept with a fixed fact until typing folds it
/// into constants, then dropped.
pub fn head(base: &Base, m: &Manifest, size: u32) -> TractResult<TypedModel> {
    head_at(base, m, size, Level::Optimized)
}

/// `head`, decluttered (for a tract runtime).
pub fn head_decluttered(base: &Base, m: &Manifest, size: u32) -> TractResult<TypedModel> {
    head_at(base, m, size, Level::Decluttered)
}

fn head_at(base: &Base, m: &Manifest, size: u32, level: Level) -> TractResult<TypedModel> {
    let ctx = || format!("building the head at {size}px");
    let mut g = base.clone().with_input_fact(0, image_fact(size)).with_context(ctx)?;
    let image = g.input_outlets()?[0];
    let tokens = outlet(&g, &m.tokens.final_norm)?;
    g.set_input_outlets(&[tokens, image])?;
    g.select_outputs_by_name([&m.output.name])?;
    let mut g = g.into_compact().with_context(ctx)?;
    let n = (size / m.tokens.patch) as usize;
    let t = m.tokens.prefix + n * n;
    g.set_input_fact(0, f32::fact([1, t, m.tokens.width]).into())?;
    let typed = g.into_typed().with_context(ctx)?.into_decluttered().with_context(ctx)?;
    level.finish(drop_unused_inputs(typed).with_context(ctx)?).with_context(ctx)
}

/// Remove model inputs that nothing reads any more (after constant folding).
fn drop_unused_inputs(mut g: TypedModel) -> TractResult<TypedModel> {
    let used: Vec<OutletId> =
        g.input_outlets()?.iter().copied().filter(|o| !g.outlet_successors(*o).is_empty()).collect();
    g.set_input_outlets(&used)?;
    g.into_compact()
}

/// Blocks `cut..L` + final norm with a symbolic token count `T`. With `key_bias`, a second
/// input `[1,1,1,T]` is added to the attention logits before every Softmax.
pub fn middle(base: &Base, m: &Manifest, cut: usize, key_bias: bool) -> TractResult<TypedModel> {
    middle_at(base, m, cut, key_bias, Level::Optimized)
}

/// `middle`, decluttered (for a tract runtime). The token count stays the symbol `T`.
pub fn middle_decluttered(base: &Base, m: &Manifest, cut: usize, key_bias: bool) -> TractResult<TypedModel> {
    middle_at(base, m, cut, key_bias, Level::Decluttered)
}

fn middle_at(base: &Base, m: &Manifest, cut: usize, key_bias: bool, level: Level) -> TractResult<TypedModel> {
    let ctx = || format!("building the middle (blocks {cut}..{})", m.num_blocks());
    let mut g = base.clone();
    let tokens = outlet(&g, &m.tokens.blocks[cut - 1])?;
    g.set_input_outlets(&[tokens])?;
    g.select_outputs_by_name([&m.tokens.final_norm])?;
    let mut g = g.into_compact().with_context(ctx)?;
    let t = g.sym("T");
    g.set_input_fact(0, f32::fact(&[1.to_dim(), t.to_dim(), m.tokens.width.to_dim()]).into())?;
    if key_bias {
        let softmaxes: Vec<usize> = g.nodes().iter().filter(|n| n.op.name() == "Softmax").map(|n| n.id).collect();
        ensure!(!softmaxes.is_empty(), "no Softmax in the middle blocks: cannot add the key bias");
        let bias = g.add_source("key_bias", f32::fact(&[1.to_dim(), 1.to_dim(), 1.to_dim(), t.to_dim()]).into())?;
        for sm in softmaxes {
            let logits = g.node(sm).inputs[0];
            let name = format!("{}.key_bias", g.node(sm).name);
            let add = g.add_node(name, tract_core::ops::math::Add.into_hir(), tvec!(InferenceFact::default()))?;
            g.add_edge(logits, InletId::new(add, 0))?;
            g.add_edge(bias, InletId::new(add, 1))?;
            g.add_edge(OutletId::new(add, 0), InletId::new(sm, 0))?;
        }
    }
    g.into_typed().and_then(|t| t.into_decluttered()).and_then(|t| level.finish(t)).with_context(ctx)
}

/// The middle with `T` fixed to `t`, from [`middle_decluttered`], optimised for the CPU.
pub fn concretize(decluttered: &TypedModel, t: usize) -> TractResult<TypedModel> {
    let sym = decluttered.symbols.sym("T");
    let subs = std::collections::HashMap::from([(sym, (t as i64).to_dim())]);
    optimize(decluttered.set_symbols(&subs)?)
}

static OWN_OPS: AtomicBool = AtomicBool::new(true);

/// Whether CPU plans built from now on get our own ops where they apply (`[model] cpu_ops`):
/// [`super::attention::FusedAttention`], [`super::linear::Linear`], [`super::layernorm::LayerNorm`]
/// [`super::deconv::SubpixelDeconv`] and [`super::pointwise::PlaneSum`].
pub fn set_own_ops(on: bool) {
    OWN_OPS.store(on, Ordering::Relaxed);
}

/// A decluttered part optimised for the CPU: our own ops swapped in (unless
/// `[model] cpu_ops = "tract"`), then tract's optimiser.
pub fn optimize(mut decluttered: TypedModel) -> TractResult<TypedModel> {
    if OWN_OPS.load(Ordering::Relaxed) {
        let fused = super::attention::fuse(&mut decluttered)?;
        let linears = super::linear::swap(&mut decluttered)?;
        let mlps = super::mlp::fuse(&mut decluttered)?;
        let norms = super::layernorm::swap(&mut decluttered)?;
        let deconvs = super::deconv::swap(&mut decluttered)?;
        let pointwise = super::pointwise::swap(&mut decluttered)?;
        let (epilogues, projections) = super::deconv::fuse(&mut decluttered)?;
        let chained = super::deconv::chain(&mut decluttered)?;
        log::debug!(
            "CPU plan: {fused} attention(s) fused, {linears} linear layer(s) on gemm ({mlps} MLP(s) as one op), {norms} layer norm(s) in one op, \
             {deconvs} transposed convolution(s) as sub-pixel ({epilogues} with BatchNorm/ReLU as they write, \
             {projections} with the 1x1 convolution, {chained} pair(s) passing [H, W, C]), {pointwise} 1x1 convolution(s) as plane sums"
        );
    }
    let mut optimized = decluttered.into_optimized()?;
    let (shared, bytes) = super::share::share_constants(&mut optimized)?;
    log::debug!("CPU plan: {shared} constant(s) shared with earlier plans ({:.1} MB)", bytes as f64 / 1e6);
    Ok(optimized)
}

/// Count the Softmax ops of the middle blocks (for checks and the inspect report).
pub fn count_softmax(g: &TypedModel) -> usize {
    g.nodes().iter().filter(|n| n.op.name().contains("Softmax")).count()
}
