//! One copy of each constant across every CPU plan (issue #18, memory).
//!
//! Every plan (a stem and a head per input size, the symbolic middle, the fixed-T middles) is
//! typed, decluttered and optimised from the parsed ONNX graph on its own, and tract's passes
//! rebuild the weights they touch (reshapes, transposes, folded constants) as new tensors. So
//! before this module every plan held its own copy of the same weights: `ailurus run` with the
//! default config (4 sizes, 6 middles) peaked at ~500 MB for a 97 MB model.
//!
//! [`share_constants`] runs on each optimised model before it becomes a plan: every plain
//! constant (a `Const` node's tensor and its output fact's `konst`) is looked up by content in a
//! process-wide table of live tensors and replaced by the one `Arc` already there. The table
//! holds `Weak`s, so weights are freed with the last plan that uses them (tests load many models).
//! Exotic constants (tract's packed matmul weights) are left alone.
//!
//! Own code rather than a crate: it is a content-addressed `Weak` table over tract's `Const`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, Weak};

use tract_core::internal::*;
use tract_core::ops::konst::Const;

/// Constants smaller than this are not worth a look-up (shape scalars, biases of a few values).
const MIN_BYTES: usize = 4096;

/// (datum type, shape, a hash of sampled bytes) -> live tensors with that key.
type Table = HashMap<(DatumType, TVec<usize>, u64), Vec<Weak<Tensor>>>;

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// A cheap hash of `bytes`: the length and 64 evenly spaced 8-byte samples (equality is then
/// checked on the whole content).
fn sample_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.len().hash(&mut h);
    let step = (bytes.len() / 64).max(1);
    for i in (0..bytes.len()).step_by(step) {
        bytes[i..(i + 8).min(bytes.len())].hash(&mut h);
    }
    h.finish()
}

/// The shared copy of `t` (inserted when it is the first with this content).
fn intern(table: &mut Table, t: &Arc<Tensor>) -> Arc<Tensor> {
    let bytes = t.as_bytes();
    let key = (t.datum_type(), t.shape().into(), sample_hash(bytes));
    let list = table.entry(key).or_default();
    list.retain(|w| w.strong_count() > 0);
    for w in list.iter() {
        if let Some(s) = w.upgrade() {
            if Arc::ptr_eq(&s, t) || s.as_bytes() == bytes {
                return s;
            }
        }
    }
    list.push(Arc::downgrade(t));
    t.clone()
}

fn shareable(t: &Tensor) -> bool {
    t.datum_type().is_copy()
        && t.has_plain_ram_storage()
        && t.is_plain()
        && t.len() * t.datum_type().size_of() >= MIN_BYTES
}

/// Replace every plain constant of `model` by the process-wide shared copy of its content.
/// Returns (constants replaced by an existing copy, bytes that no longer exist twice).
pub fn share_constants(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    let mut guard = TABLE.lock().map_err(|_| format_err!("constant table poisoned"))?;
    let table = guard.get_or_insert_with(HashMap::new);
    let (mut shared, mut bytes) = (0, 0);
    for node in model.nodes_mut() {
        let Some(k) = node.op_as::<Const>() else { continue };
        if k.exotic_fact().is_some() || !shareable(k.val()) {
            continue;
        }
        let old = k.val().clone();
        let new = intern(table, &old);
        if Arc::ptr_eq(&new, &old) {
            continue;
        }
        shared += 1;
        bytes += old.len() * old.datum_type().size_of();
        node.op = Box::new(Const::new(new.clone())?);
        for out in node.outputs.iter_mut() {
            if out.fact.konst.as_ref().is_some_and(|c| Arc::ptr_eq(c, &old)) {
                out.fact.konst = Some(new.clone());
            }
        }
    }
    // Facts downstream of a constant may hold it too (tract propagates `konst`).
    for node in model.nodes_mut() {
        for out in node.outputs.iter_mut() {
            if let Some(c) = out.fact.konst.as_ref() {
                if shareable(c) {
                    let new = intern(table, c);
                    out.fact.konst = Some(new);
                }
            }
        }
    }
    Ok((shared, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contents_become_one_arc_and_different_ones_stay_apart() {
        let a = Arc::new(Tensor::from_shape(&[32, 64], &vec![1.5f32; 2048]).unwrap());
        let b = Arc::new(Tensor::from_shape(&[32, 64], &vec![1.5f32; 2048]).unwrap());
        let mut c = vec![1.5f32; 2048];
        c[2047] = 2.0;
        let c = Arc::new(Tensor::from_shape(&[32, 64], &c).unwrap());
        let mut table = Table::new();
        let ia = intern(&mut table, &a);
        assert!(Arc::ptr_eq(&ia, &a));
        assert!(Arc::ptr_eq(&intern(&mut table, &b), &a));
        assert!(Arc::ptr_eq(&intern(&mut table, &c), &c));
        drop((ia, a));
        // The first copy is gone: the next equal tensor becomes the shared one.
        assert!(Arc::ptr_eq(&intern(&mut table, &b), &b));
    }
}
