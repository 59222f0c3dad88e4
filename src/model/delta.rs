//! Fine-tuned parameter deltas: a small safetensors file that the manifest's `[delta]` names and
//! that is applied to the stock ONNX initializers when the graph is parsed
//! (tools/finetune/ writes it).
//!
//! Owns the file format and its checks; it must not touch anything but initializer values.
//! Every tensor of the file is f32 and is one of:
//! - `<initializer>`: replaces that initializer (same shape);
//! - `<initializer>.lora_a` `[in, r]` with `<initializer>.lora_b` `[r, out]`: adds `a @ b` to a
//!   2-D initializer `[in, out]` (a MatMul weight, as PyTorch exports it).
//!
//! A name that matches no initializer, a shape or dtype that does not fit, an unpaired LoRA half
//! or a sha256 other than the manifest's is refused with one line naming the file and tensor.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tract_onnx::pb::{tensor_proto::DataType, ModelProto, TensorProto};

use super::manifest::sha256_file;
use super::ModelError;

const LORA_A: &str = ".lora_a";
const LORA_B: &str = ".lora_b";

/// One f32 tensor of the delta file.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A parsed, checksum-verified delta file.
#[derive(Debug, Clone)]
pub struct Delta {
    /// Shown in errors.
    pub path: String,
    pub tensors: BTreeMap<String, DeltaTensor>,
}

fn err(path: &str, msg: String) -> ModelError {
    ModelError::Delta { path: path.to_string(), msg }
}

impl Delta {
    /// Read `path`, check its sha256 against `want` (hex; required) and parse it.
    pub fn load(path: &Path, want: &str) -> Result<Delta, ModelError> {
        let shown = path.display().to_string();
        let io = |source| ModelError::Io { path: shown.clone(), source };
        let got = sha256_file(path).map_err(io)?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(err(&shown, format!("sha256 is {got}, the manifest says {want}")));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::parse(&bytes, &shown)
    }

    /// Parse safetensors bytes (no checksum).
    pub fn parse(bytes: &[u8], shown: &str) -> Result<Delta, ModelError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| err(shown, format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                return Err(err(shown, format!("tensor {name}: dtype {:?}, only F32 is supported", view.dtype())));
            }
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            tensors.insert(name.to_string(), DeltaTensor { shape: view.shape().to_vec(), values });
        }
        if tensors.is_empty() {
            return Err(err(shown, "no tensors".into()));
        }
        Ok(Delta { path: shown.to_string(), tensors })
    }

    /// Apply to the initializers of `proto`; returns how many initializers changed. Nothing is
    /// changed unless every tensor fits.
    pub fn apply(&self, proto: &mut ModelProto) -> Result<usize, ModelError> {
        let shown = &self.path;
        let graph = proto.graph.as_mut().ok_or_else(|| err(shown, "the ONNX model has no graph".into()))?;
        let index: BTreeMap<String, usize> =
            graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        // Plan every change first (all checks), then write.
        let mut new_values: Vec<(usize, Vec<f32>)> = Vec::new();
        for (name, t) in &self.tensors {
            if name.ends_with(LORA_B) {
                let base = &name[..name.len() - LORA_B.len()];
                if !self.tensors.contains_key(&format!("{base}{LORA_A}")) {
                    return Err(err(shown, format!("tensor {name}: no matching {base}{LORA_A}")));
                }
                continue; // handled with its .lora_a
            }
            let (target, lora) = match name.strip_suffix(LORA_A) {
                Some(base) => {
                    let b = self
                        .tensors
                        .get(&format!("{base}{LORA_B}"))
                        .ok_or_else(|| err(shown, format!("tensor {name}: no matching {base}{LORA_B}")))?;
                    (base, Some(b))
                }
                None => (name.as_str(), None),
            };
            let &i = index
                .get(target)
                .ok_or_else(|| err(shown, format!("tensor {name}: no initializer {target} in the model")))?;
            let init = &graph.initializer[i];
            let (shape, mut values) =
                read_f32(init).map_err(|m| err(shown, format!("tensor {name}: initializer {target} {m}")))?;
            match lora {
                None => {
                    if t.shape != shape {
                        return Err(err(
                            shown,
                            format!("tensor {name}: shape {:?}, the model has {:?}", t.shape, shape),
                        ));
                    }
                    values.copy_from_slice(&t.values);
                }
                Some(b) => add_low_rank(&mut values, &shape, t, b)
                    .map_err(|m| err(shown, format!("tensor {name}: {m} (initializer {target} is {shape:?})")))?,
            }
            new_values.push((i, values));
        }
        let changed = new_values.len();
        for (i, values) in new_values {
            let init = &mut graph.initializer[i];
            init.float_data.clear();
            init.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        }
        Ok(changed)
    }
}

/// `w [in, out] += a [in, r] @ b [r, out]`.
fn add_low_rank(w: &mut [f32], shape: &[usize], a: &DeltaTensor, b: &DeltaTensor) -> Result<(), String> {
    let ([n_in, n_out], [a_in, r], [b_r, b_out]) = (shape, a.shape.as_slice(), b.shape.as_slice()) else {
        return Err(format!("LoRA needs 2-D tensors, got {:?} and {:?}", a.shape, b.shape));
    };
    if a_in != n_in || b_out != n_out || r != b_r {
        return Err(format!("LoRA shapes {:?} @ {:?} do not fit", a.shape, b.shape));
    }
    for i in 0..*n_in {
        let row = &mut w[i * n_out..(i + 1) * n_out];
        for k in 0..*r {
            let ak = a.values[i * r + k];
            for (o, &bv) in row.iter_mut().zip(&b.values[k * n_out..(k + 1) * n_out]) {
                *o += ak * bv;
            }
        }
    }
    Ok(())
}

/// Shape and values of an f32 initializer stored inside the file.
fn read_f32(t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>), String> {
    if t.data_type != DataType::Float as i32 {
        return Err(format!("has ONNX data type {}, not float", t.data_type));
    }
    if !t.external_data.is_empty() {
        return Err("is stored outside the ONNX file".into());
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != n {
        return Err(format!("holds {} values for shape {shape:?}", values.len()));
    }
    Ok((shape, values))
}

/// Parse `path` as ONNX, applying `delta` (if any) to its initializers first.
pub fn load_onnx(path: &Path, delta: Option<&Delta>) -> Result<tract_hir::internal::InferenceModel, ModelError> {
    use tract_onnx::prelude::Framework;
    let shown = path.display().to_string();
    let onnx = tract_onnx::onnx();
    let bad = |source| ModelError::Onnx { path: shown.clone(), source };
    let Some(delta) = delta else {
        return onnx.model_for_path(path).map_err(bad);
    };
    let mut proto = onnx.proto_model_for_path(path).map_err(bad)?;
    let changed = delta.apply(&mut proto)?;
    log::info!("{}: {changed} initializer(s) replaced or adapted by {}", shown, delta.path);
    let dir = path.parent().and_then(|d| d.to_str());
    let parsed = onnx.parse(&proto, dir).map_err(bad)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(bad(anyhow::anyhow!("unresolved inputs: {:?}", parsed.unresolved_inputs)));
    }
    Ok(parsed.model)
}
