//! The encoder's weights, read from the ONNX initializers for the reuse executor.
//!
//! The reuse path runs the transformer blocks itself (row subsets do not fit a tract plan), so it
//! needs each block's parameters as plain slices. They are found by the tensor names the
//! manifest's export uses (`/backbone/encoder/layer.{i}/...`, DINOv2 as exported by PyTorch;
//! `tools/make_tiny_vit.py` mirrors them): LayerNorm gamma/beta/eps, q/k/v/output projections,
//! layer scales, fc1/fc2. A fine-tuned delta in the manifest is applied to the initializers first,
//! as for the tract plans. Anything missing is a start-up error naming the file and the node.
//!
//! Under `[model] precision = "bf16"` or "f16" the six matrices of each block are rounded and
//! packed once for that format's kernel (`model/bf16`, `model/f16`), as the plans' linear layers
//! are, and the f32 copies dropped; the executor's attention follows the weights' format
//! (`encoder.rs`); LayerNorm and GELU stay f32.
//!
//! Must not: run anything (that is `encoder.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::pb::{tensor_proto::DataType, ModelProto, NodeProto, TensorProto};

use crate::model::bf16::{self, Packed16};
use crate::model::sgemm::{self, PackedF32};
use crate::model::{Manifest, ModelError};

/// One pre-norm ViT block: `y = x + ls1 * proj(attn(ln1(x)))`, `z = y + ls2 * fc2(gelu(fc1(ln2(y))))`.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub ln1: (Vec<f32>, Vec<f32>, f32),
    /// `[C, C]` row-major (`x W`); the attention scale of q and k folded into `wq`/`bq`.
    pub wq: Vec<f32>,
    pub bq: Vec<f32>,
    pub wk: Vec<f32>,
    pub bk: Vec<f32>,
    pub wv: Vec<f32>,
    pub bv: Vec<f32>,
    pub wo: Vec<f32>,
    pub bo: Vec<f32>,
    pub ls1: Vec<f32>,
    pub ln2: (Vec<f32>, Vec<f32>, f32),
    /// `[C, F]`, `[F]`, `[F, C]`, `[C]`.
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
    pub ls2: Vec<f32>,
    /// The six weights rounded to bf16 and packed (`[model] precision = "bf16"`, see
    /// [`EncoderWeights::pack_bf16`]), in the order q, k, v, output projection, fc1, fc2; their
    /// f32 matrices are then dropped.
    pub packed: Option<Box<[Arc<Packed16>; 6]>>,
    /// The six f32 weights packed once for our own tile (levels `avx512` and `avx2`, f32: see
    /// [`EncoderWeights::pack_f32`]), in the same order; their f32 matrices are then dropped.
    pub packed_f32: Option<Box<[Arc<PackedF32>; 6]>>,
}

impl BlockWeights {
    /// The six matrices (q, k, v, output projection, fc1, fc2: `k x n` each, width `c`, MLP
    /// width `f`) moved out and packed by `pack`.
    fn take_six<T>(&mut self, c: usize, f: usize, pack: impl Fn(Vec<f32>, usize, usize) -> T) -> Box<[T; 6]> {
        let p = |w: &mut Vec<f32>, k: usize, n: usize| pack(std::mem::take(w), k, n);
        Box::new([
            p(&mut self.wq, c, c),
            p(&mut self.wk, c, c),
            p(&mut self.wv, c, c),
            p(&mut self.wo, c, c),
            p(&mut self.w1, c, f),
            p(&mut self.w2, f, c),
        ])
    }
}

/// Every block plus the final norm, and the name of the embedding tensor (block 0's input).
#[derive(Debug, Clone)]
pub struct EncoderWeights {
    pub width: usize,
    pub heads: usize,
    pub mlp: usize,
    pub blocks: Vec<BlockWeights>,
    pub final_norm: (Vec<f32>, Vec<f32>, f32),
    pub embedding: String,
}

struct Graph<'a> {
    nodes: HashMap<&'a str, &'a NodeProto>,
    consts: HashMap<&'a str, &'a TensorProto>,
    inits: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    fn new(proto: &'a ModelProto) -> Option<Graph<'a>> {
        let g = proto.graph.as_ref()?;
        let mut consts = HashMap::new();
        for n in g.node.iter().filter(|n| n.op_type == "Constant") {
            if let (Some(out), Some(t)) = (n.output.first(), n.attribute.iter().find_map(|a| a.t.as_ref())) {
                consts.insert(out.as_str(), t);
            }
        }
        Some(Graph {
            nodes: g.node.iter().map(|n| (n.name.as_str(), n)).collect(),
            consts,
            inits: g.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        })
    }

    fn node(&self, name: &str) -> Result<&'a NodeProto, String> {
        self.nodes.get(name).copied().ok_or_else(|| format!("node {name} not found"))
    }

    /// The constant inputs (initializers or Constant nodes) of node `name`, in input order.
    fn params(&self, name: &str) -> Result<Vec<&'a TensorProto>, String> {
        let n = self.node(name)?;
        Ok(n.input.iter().filter_map(|i| self.inits.get(i.as_str()).or(self.consts.get(i.as_str())).copied()).collect())
    }

    /// The single constant input of `name`, as f32 values (`len` of them, when given).
    fn param(&self, name: &str, len: Option<usize>) -> Result<Vec<f32>, String> {
        let ps = self.params(name)?;
        let [t] = ps.as_slice() else {
            return Err(format!("node {name}: expected one constant input, found {}", ps.len()));
        };
        let v = values(t).map_err(|e| format!("node {name}: {e}"))?;
        match len {
            Some(l) if v.len() != l => Err(format!("node {name}: {} values, expected {l}", v.len())),
            _ => Ok(v),
        }
    }
}

/// f32 or int64 tensor values as f32.
pub(super) fn values(t: &TensorProto) -> Result<Vec<f32>, String> {
    if !t.external_data.is_empty() {
        return Err("tensor stored outside the ONNX file".into());
    }
    let raw = &t.raw_data;
    match t.data_type {
        d if d == DataType::Float as i32 => Ok(if raw.is_empty() {
            t.float_data.clone()
        } else {
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }),
        d if d == DataType::Int64 as i32 => Ok(if raw.is_empty() {
            t.int64_data.iter().map(|&x| x as f32).collect()
        } else {
            raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        }),
        d => Err(format!("ONNX data type {d}, expected float or int64")),
    }
}

/// The protobuf of the model the manifest names, its delta applied.
pub fn load_proto(manifest: &Manifest) -> Result<ModelProto, ModelError> {
    use tract_onnx::prelude::Framework;
    let path = manifest.onnx_path();
    let shown = path.display().to_string();
    let mut proto =
        tract_onnx::onnx().proto_model_for_path(&path).map_err(|source| ModelError::Onnx { path: shown, source })?;
    if let Some(delta) = manifest.load_delta()? {
        delta.apply(&mut proto)?;
    }
    Ok(proto)
}

impl EncoderWeights {
    /// Read the weights of the model the manifest names (its delta applied), packed in bf16
    /// under `[model] precision = "bf16"`.
    pub fn load(manifest: &Manifest) -> Result<EncoderWeights, ModelError> {
        let proto = load_proto(manifest)?;
        Self::from_manifest_proto(manifest, &proto)
    }

    /// [`EncoderWeights::load`] from the model's protobuf read by [`load_proto`] (packed in bf16
    /// under `[model] precision = "bf16"`).
    pub fn from_manifest_proto(manifest: &Manifest, proto: &ModelProto) -> Result<EncoderWeights, ModelError> {
        let mut w = Self::from_proto_f32(manifest, proto)?;
        if let Some(format) = bf16::precision().format() {
            w.pack_16(format);
        } else if crate::model::sgemm::packs(crate::model::isa::level()) {
            w.pack_f32();
        }
        Ok(w)
    }

    /// [`EncoderWeights::load`] in f32 whatever the process's precision.
    pub fn from_manifest_f32(manifest: &Manifest) -> Result<EncoderWeights, ModelError> {
        Self::from_proto_f32(manifest, &load_proto(manifest)?)
    }

    fn from_proto_f32(manifest: &Manifest, proto: &ModelProto) -> Result<EncoderWeights, ModelError> {
        let shown = manifest.onnx_path().display().to_string();
        Self::from_proto(proto, manifest.tokens.width, manifest.num_blocks())
            .map_err(|msg| ModelError::Manifest { path: shown, msg: format!("reuse executor: {msg}") })
    }

    /// Round every block's six weights to bf16 and pack them for the bf16 kernel (the linear
    /// layers then run as in the bf16 plans); the f32 matrices are dropped.
    pub fn pack_bf16(&mut self) {
        self.pack_16(bf16::Format::Bf16)
    }

    /// [`EncoderWeights::pack_bf16`] in `format` (bf16 or f16).
    pub fn pack_16(&mut self, format: bf16::Format) {
        let (c, f) = (self.width, self.mlp);
        for b in &mut self.blocks {
            b.packed = Some(b.take_six(c, f, |w, k, n| bf16::intern(Packed16::pack_as(format, &w, k, n))));
        }
    }

    /// Pack every block's six weights for our own f32 tile (levels `avx512` and `avx2`), as the plans' linear layers
    /// hold theirs (the products are the same, bit for bit, without packing B on every call:
    /// a tenth of a linear layer on a few hundred rows); the f32 matrices are dropped. The
    /// weights are interned, so the ones a plan packed identically are shared.
    pub fn pack_f32(&mut self) {
        let (c, f) = (self.width, self.mlp);
        for b in &mut self.blocks {
            b.packed_f32 = Some(b.take_six(c, f, |w, k, n| sgemm::intern(PackedF32::pack(&w, k, n))));
        }
    }

    fn from_proto(proto: &ModelProto, c: usize, blocks: usize) -> Result<EncoderWeights, String> {
        let g = Graph::new(proto).ok_or("no graph")?;
        let l0 = "/backbone/encoder/layer.0/norm1/ReduceMean";
        let embedding = g.node(l0)?.input.first().ok_or(format!("node {l0} has no input"))?.clone();
        let concat = g.params("/backbone/encoder/layer.0/attention/attention/Concat")?;
        let hd: Vec<f32> = concat.iter().map(|t| values(t)).collect::<Result<Vec<_>, _>>()?.concat();
        let [heads, d] = hd[..] else {
            return Err(format!("attention Concat: expected heads and head width, found {hd:?}"));
        };
        let (heads, d) = (heads as usize, d as usize);
        if heads * d != c {
            return Err(format!("{heads} heads x {d} != width {c}"));
        }
        let mut out = Vec::with_capacity(blocks);
        let mut mlp = 0;
        for i in 0..blocks {
            let p = format!("/backbone/encoder/layer.{i}/");
            let get = |n: &str, len: Option<usize>| g.param(&format!("{p}{n}"), len);
            let norm = |n: &str| -> Result<(Vec<f32>, Vec<f32>, f32), String> {
                Ok((
                    get(&format!("{n}/Mul"), Some(c))?,
                    get(&format!("{n}/Add_1"), Some(c))?,
                    get(&format!("{n}/Add"), Some(1))?[0],
                ))
            };
            let lin = |n: &str, k: usize| -> Result<(Vec<f32>, Vec<f32>), String> {
                let b = get(&format!("{n}/Add"), None)?;
                let w = get(&format!("{n}/MatMul"), Some(k * b.len()))?;
                Ok((w, b))
            };
            let scale = get("attention/attention/Mul", Some(1))?[0] * get("attention/attention/Mul_1", Some(1))?[0];
            let (mut wq, mut bq) = lin("attention/attention/query", c)?;
            wq.iter_mut().chain(bq.iter_mut()).for_each(|x| *x *= scale);
            let (wk, bk) = lin("attention/attention/key", c)?;
            let (wv, bv) = lin("attention/attention/value", c)?;
            let (wo, bo) = lin("attention/output/dense", c)?;
            let (w1, b1) = lin("mlp/fc1", c)?;
            mlp = b1.len();
            let (w2, b2) = lin("mlp/fc2", mlp)?;
            if [&bq, &bk, &bv, &bo, &b2].iter().any(|b| b.len() != c) {
                return Err(format!("block {i}: a projection's width is not {c}"));
            }
            out.push(BlockWeights {
                ln1: norm("norm1")?,
                wq,
                bq,
                wk,
                bk,
                wv,
                bv,
                wo,
                bo,
                ls1: get("layer_scale1/Mul", Some(c))?,
                ln2: norm("norm2")?,
                w1,
                b1,
                w2,
                b2,
                ls2: get("layer_scale2/Mul", Some(c))?,
                packed: None,
                packed_f32: None,
            });
        }
        let f = "/backbone/layernorm/";
        let final_norm = (
            g.param(&format!("{f}Mul"), Some(c))?,
            g.param(&format!("{f}Add_1"), Some(c))?,
            g.param(&format!("{f}Add"), Some(1))?[0],
        );
        Ok(EncoderWeights { width: c, heads, mlp, blocks: out, final_norm, embedding })
    }
}
