//! The head's parameters, read once from the ONNX for the own head executor (`mod.rs`).
//!
//! Must not: run anything.

use std::collections::HashMap;

use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use crate::model::bf16::precision;
use crate::model::deconv::{f32_taps, F32Taps, Taps};

/// One `ConvTranspose` 4x4/2 pad 1 with its BatchNorm folded in.
#[derive(Debug, Clone)]
pub(super) struct UpLayer {
    pub(super) ci: usize,
    pub(super) co: usize,
    /// `[co, ci, 4, 4]` (the sub-pixel deconvolution's layout), BatchNorm's scale folded in.
    pub(super) kernel: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) relu: bool,
    /// The kernel's taps in bf16 (`[model] precision = "bf16"` at load time).
    pub(super) taps: Option<Taps>,
    /// In f32 at levels `avx512` and `avx2`: the kernel's taps packed once for our kernel (as the plans'
    /// deconvolutions hold theirs), not per call.
    pub(super) f32_taps: Option<F32Taps>,
}

/// The packed f32 taps of `kernel` where the process runs f32 deconvolutions on our own tile
/// (no 16-bit taps).
fn packed_f32(taps: &Option<Taps>, kernel: &[f32], ci: usize, co: usize) -> Option<F32Taps> {
    (taps.is_none() && crate::model::sgemm::packs(crate::model::isa::level())).then(|| f32_taps(kernel, ci, co))
}

/// The head's parameters, read once from the ONNX (shared by every lane).
#[derive(Debug, Clone)]
pub struct HeadWeights {
    /// Token width (the first layer's input channels).
    pub width: usize,
    pub(super) layers: Vec<UpLayer>,
    /// The 1x1 conv: `[k, c]` and `[k]`.
    pub(super) final_w: Vec<f32>,
    pub(super) final_b: Vec<f32>,
    pub(super) sigmoid: bool,
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a tract_onnx::pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

impl HeadWeights {
    /// Find the head after the encoder: a chain of `ConvTranspose` (+ `BatchNormalization`) (+
    /// `Relu`), a 1x1 `Conv`, a linear half-pixel `Resize`, an optional `Sigmoid`. Anything else
    /// is an error naming the node (the lane then keeps the tract head plan).
    pub fn from_proto(proto: &ModelProto, width: usize) -> Result<HeadWeights, String> {
        let g = proto.graph.as_ref().ok_or("no graph")?;
        let mut tensors: HashMap<&str, &TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for n in g.node.iter().filter(|n| n.op_type == "Constant") {
            if let (Some(o), Some(t)) = (n.output.first(), n.attribute.iter().find_map(|a| a.t.as_ref())) {
                tensors.insert(o.as_str(), t);
            }
        }
        let mut users: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for n in &g.node {
            for i in &n.input {
                users.entry(i.as_str()).or_default().push(n);
            }
        }
        let next = |n: &NodeProto| -> Result<Option<&NodeProto>, String> {
            // Shape reads only the (fixed) shape: the export's Resize takes its sizes from it.
            let u: Vec<&NodeProto> = users.get(n.output[0].as_str()).into_iter().flatten().copied().collect();
            match u.iter().filter(|u| u.op_type != "Shape").collect::<Vec<_>>()[..] {
                [] => Ok(None),
                [u] => Ok(Some(u)),
                _ => Err(format!("node {}: output used more than once", n.name)),
            }
        };
        let param = |n: &NodeProto, i: usize| -> Result<(Vec<f32>, Vec<i64>), String> {
            let name = n.input.get(i).ok_or(format!("node {}: input {i} missing", n.name))?;
            let t = tensors.get(name.as_str()).ok_or(format!("node {}: input {name} is not a constant", n.name))?;
            Ok((crate::reuse::weights::values(t).map_err(|e| format!("node {}: {e}", n.name))?, t.dims.clone()))
        };
        let ints = |n: &NodeProto, a: &str| attr(n, a).map(|a| a.ints.clone());
        let mut node = g.node.iter().find(|n| n.op_type == "ConvTranspose").ok_or("no ConvTranspose (head)")?;
        let (mut layers, mut ci) = (Vec::new(), width);
        let half = precision().format();
        while node.op_type == "ConvTranspose" {
            let name = &node.name;
            let ok = ints(node, "kernel_shape").is_none_or(|k| k == [4, 4])
                && ints(node, "strides") == Some(vec![2, 2])
                && ints(node, "pads") == Some(vec![1, 1, 1, 1])
                && ints(node, "dilations").is_none_or(|d| d.iter().all(|&d| d == 1))
                && attr(node, "group").is_none_or(|a| a.i == 1)
                && ints(node, "output_padding").is_none_or(|p| p.iter().all(|&p| p == 0))
                && attr(node, "output_shape").is_none()
                && attr(node, "auto_pad").is_none_or(|a| a.s == b"NOTSET");
            if !ok {
                return Err(format!("node {name}: not a ConvTranspose 4x4, stride 2, pads 1"));
            }
            let (w, dims) = param(node, 1)?;
            if dims.len() != 4 || dims[0] as usize != ci || dims[2..] != [4, 4] {
                return Err(format!("node {name}: kernel {dims:?}, expected [{ci}, C_out, 4, 4]"));
            }
            let co = dims[1] as usize;
            let mut bias =
                if node.input.len() > 2 && !node.input[2].is_empty() { param(node, 2)?.0 } else { vec![0.0; co] };
            let (mut scale, mut n) = (vec![1.0f32; co], next(node)?.ok_or(format!("node {name}: nothing after it"))?);
            if n.op_type == "BatchNormalization" {
                let eps = attr(n, "epsilon").map_or(1e-5, |a| a.f);
                let p: Vec<Vec<f32>> = (1..5).map(|i| param(n, i).map(|p| p.0)).collect::<Result<_, _>>()?;
                if p.iter().any(|v| v.len() != co) || bias.len() != co {
                    return Err(format!("node {}: parameters are not [{co}]", n.name));
                }
                for o in 0..co {
                    // y = (x - mean) / sqrt(var + eps) * gamma + beta, x = deconv + bias.
                    let s = (p[0][o] as f64 / (p[3][o] as f64 + eps as f64).sqrt()) as f32;
                    scale[o] = s;
                    bias[o] = ((bias[o] as f64 - p[2][o] as f64) * s as f64 + p[1][o] as f64) as f32;
                }
                n = next(n)?.ok_or(format!("node {}: nothing after it", n.name))?;
            }
            let relu = n.op_type == "Relu";
            if relu {
                n = next(n)?.ok_or(format!("node {}: nothing after it", n.name))?;
            }
            // ONNX [ci, co, 4, 4] -> [co, ci, 4, 4], scaled per output channel.
            let mut kernel = vec![0.0f32; co * ci * 16];
            for c in 0..ci {
                for o in 0..co {
                    for t in 0..16 {
                        kernel[(o * ci + c) * 16 + t] = w[(c * co + o) * 16 + t] * scale[o];
                    }
                }
            }
            let taps = half.map(|f| Taps::pack_as(f, &kernel, ci, co));
            let f32_taps = packed_f32(&taps, &kernel, ci, co);
            layers.push(UpLayer { ci, co, kernel, bias, relu, taps, f32_taps });
            ci = co;
            node = n;
        }
        if layers.is_empty() || node.op_type != "Conv" {
            return Err(format!("node {}: expected a 1x1 Conv after the up-layers", node.name));
        }
        let (final_w, dims) = param(node, 1)?;
        let k = dims.first().copied().unwrap_or(0) as usize;
        if dims.len() != 4
            || dims[1] as usize != ci
            || dims[2..] != [1, 1]
            || attr(node, "group").is_some_and(|a| a.i != 1)
        {
            return Err(format!("node {}: kernel {dims:?}, expected [K, {ci}, 1, 1]", node.name));
        }
        let final_b = if node.input.len() > 2 && !node.input[2].is_empty() { param(node, 2)?.0 } else { vec![0.0; k] };
        let r = next(node)?.ok_or(format!("node {}: nothing after it", node.name))?;
        let s = |a: &str| attr(r, a).map(|a| String::from_utf8_lossy(&a.s).into_owned());
        let linear = r.op_type == "Resize"
            && s("mode").as_deref() == Some("linear")
            && s("coordinate_transformation_mode").as_deref().is_none_or(|m| m == "half_pixel")
            && attr(r, "exclude_outside").is_none_or(|a| a.i == 0)
            && attr(r, "antialias").is_none_or(|a| a.i == 0)
            && attr(r, "axes").is_none();
        if !linear {
            return Err(format!("node {}: expected a linear half-pixel Resize after the 1x1 Conv", r.name));
        }
        let sigmoid = match next(r)? {
            None => false,
            Some(n) if n.op_type == "Sigmoid" && next(n)?.is_none() => true,
            Some(n) => return Err(format!("node {}: unexpected after the Resize", n.name)),
        };
        Ok(HeadWeights { width, layers, final_w, final_b, sigmoid })
    }

    /// A head with random weights (for tests): `width` token channels, up-layers to
    /// `channels` (each with ReLU), `k` classes, a sigmoid or not; BatchNorm-free, f32 or bf16 as the
    /// process' precision.
    pub fn synthetic(width: usize, channels: &[usize], k: usize, sigmoid: bool, seed: u64) -> HeadWeights {
        let mut r = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    r ^= r << 13;
                    r ^= r >> 7;
                    r ^= r << 17;
                    ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
                })
                .collect()
        };
        let (mut layers, mut ci) = (Vec::new(), width);
        for &co in channels {
            let kernel = rnd(co * ci * 16, 1.0 / (4.0 * ci as f32).sqrt());
            let taps = precision().format().map(|f| Taps::pack_as(f, &kernel, ci, co));
            let f32_taps = packed_f32(&taps, &kernel, ci, co);
            layers.push(UpLayer { ci, co, kernel, bias: rnd(co, 0.1), relu: true, taps, f32_taps });
            ci = co;
        }
        let (final_w, final_b) = (rnd(k * ci, 1.0 / (ci as f32).sqrt()), rnd(k, 0.1));
        HeadWeights { width, layers, final_w, final_b, sigmoid }
    }

    /// The same head with its up-layers' products in bf16, whatever the process' precision (for
    /// tests; the lanes follow `[model] precision` at load time).
    pub fn with_bf16_taps(&self) -> HeadWeights {
        let mut h = self.clone();
        for ly in &mut h.layers {
            ly.taps = Some(Taps::pack(&ly.kernel, ly.ci, ly.co));
            ly.f32_taps = None;
        }
        h
    }

    /// Output channels.
    pub fn classes(&self) -> usize {
        self.final_b.len()
    }

    /// Multiply-adds of the up-layers for an `h x w` token grid.
    pub(super) fn layer_macs(&self, l: usize, h: usize, w: usize) -> f64 {
        let ly = &self.layers[l];
        ((h << l) * (w << l) * ly.ci * ly.co * 16) as f64
    }
}
