//! The `[delta]` load path (src/model/delta.rs) on the tiny test model: a delta equal to the
//! stock values changes nothing, a changed LayerNorm weight or a LoRA pair changes the output
//! exactly as the same edit baked into the ONNX file does, and a delta whose names, shapes or
//! sha256 do not match is refused at start-up with one line naming the file and tensor.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ailurus::model::{delta::Delta, ModelError, SegmenterLane, SegmenterOptions};
use ailurus::reduce::ReduceConfig;
use safetensors::{serialize, Dtype};
use tract_onnx::prelude::Framework;

const LN: &str = "backbone.encoder.layer.2.norm1.weight";
const QW: &str = "backbone.encoder.layer.2.attention.attention.query.weight";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn stock(name: &str) -> (Vec<usize>, Vec<f32>) {
    let proto = tract_onnx::onnx().proto_model_for_path(data("tiny_vit.onnx")).unwrap();
    let t = proto.graph.unwrap().initializer.into_iter().find(|t| t.name == name).unwrap();
    let v = t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (t.dims.iter().map(|&d| d as usize).collect(), v)
}

/// A safetensors file of f32 tensors.
fn safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: BTreeMap<String, safetensors::tensor::TensorView> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.to_string(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    serialize(views, None).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// tiny_vit.toml in `dir`, pointing at the tiny ONNX, with a `[delta]` for `delta` (bytes
/// written to `dir/delta.safetensors`; `sha` overrides the checksum).
fn manifest(dir: &Path, delta: Option<(&[u8], Option<&str>)>) -> PathBuf {
    let mut text = std::fs::read_to_string(data("tiny_vit.toml"))
        .unwrap()
        .replace("file = \"tiny_vit.onnx\"", &format!("file = {:?}", data("tiny_vit.onnx")));
    if let Some((bytes, sha)) = delta {
        std::fs::write(dir.join("delta.safetensors"), bytes).unwrap();
        let sha = sha.map(str::to_string).unwrap_or_else(|| sha256(bytes));
        text += &format!("\n[delta]\nfile = \"delta.safetensors\"\nsha256 = \"{sha}\"\n");
    }
    let p = dir.join("m.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn input() -> Vec<f32> {
    (0..3 * 56 * 56).map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0).collect()
}

fn output(man: &Path) -> Result<Vec<f32>, ModelError> {
    let opts = SegmenterOptions {
        sizes: vec![56],
        reduce: ReduceConfig { strategy: "none".into(), cut: 2, ..ReduceConfig::default() },
        with_full: true,
        verify_sha256: true,
        fixed_middle: Vec::new(),
        fixed_unreduced: false,
        device: ailurus::choice::Device::Cpu,
    };
    let mut seg = SegmenterLane::load(man, &opts)?;
    let mut out = Vec::new();
    seg.infer_full(&input(), 56, &mut out).unwrap();
    Ok(out)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The tiny model with `edit` applied to its initializers directly (the expected result).
fn baked(dir: &Path, name: &str, edit: impl Fn(&mut [f32])) -> Vec<f32> {
    use tract_onnx::pb::ModelProto;
    let mut proto: ModelProto = tract_onnx::onnx().proto_model_for_path(data("tiny_vit.onnx")).unwrap();
    let t = proto.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name == name).unwrap();
    let mut v: Vec<f32> = t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    edit(&mut v);
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let p = dir.join("baked.onnx");
    let mut buf = Vec::new();
    prost::Message::encode(&proto, &mut buf).unwrap();
    std::fs::write(&p, buf).unwrap();
    let text = std::fs::read_to_string(dir.join("m.toml")).unwrap();
    let text = text.replace(&format!("file = {:?}", data("tiny_vit.onnx")), "file = \"baked.onnx\"");
    let text = text
        .split("\n[delta]")
        .next()
        .unwrap()
        .replace("sha256 = \"a4333f8c2c34513d11214eb259b08218c8810e3b9ed854d239c2efc9dd386a15\"", "sha256 = \"\"");
    std::fs::write(dir.join("baked.toml"), text).unwrap();
    output(&dir.join("baked.toml")).unwrap()
}

#[test]
fn stock_values_change_nothing_and_edits_match_the_baked_model() {
    let d = tempfile::tempdir().unwrap();
    let plain = output(&manifest(d.path(), None)).unwrap();
    let (shape, ln) = stock(LN);

    let same = safetensors(&[(LN, shape.clone(), ln.clone())]);
    assert_eq!(output(&manifest(d.path(), Some((&same, None)))).unwrap(), plain, "stock values must be a no-op");

    let scaled: Vec<f32> = ln.iter().map(|v| v * 1.5 + 0.1).collect();
    let edited = safetensors(&[(LN, shape.clone(), scaled.clone())]);
    let got = output(&manifest(d.path(), Some((&edited, None)))).unwrap();
    assert!(max_diff(&got, &plain) > 1e-4, "a changed LayerNorm weight must change the output");
    let want = baked(d.path(), LN, |v| v.copy_from_slice(&scaled));
    assert!(max_diff(&got, &want) < 1e-6, "delta vs baked: {}", max_diff(&got, &want));

    // LoRA: W [16, 16] += a [16, 2] @ b [2, 16].
    let (qs, _) = stock(QW);
    let a: Vec<f32> = (0..qs[0] * 2).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
    let b: Vec<f32> = (0..2 * qs[1]).map(|i| ((i % 3) as f32 - 1.0) * 0.2).collect();
    let (la, lb) = (format!("{QW}.lora_a"), format!("{QW}.lora_b"));
    let zero = safetensors(&[(&la, vec![qs[0], 2], a.clone()), (&lb, vec![2, qs[1]], vec![0.0; 2 * qs[1]])]);
    assert_eq!(output(&manifest(d.path(), Some((&zero, None)))).unwrap(), plain, "a zero LoRA is a no-op");
    let lora = safetensors(&[(&la, vec![qs[0], 2], a.clone()), (&lb, vec![2, qs[1]], b.clone())]);
    let got = output(&manifest(d.path(), Some((&lora, None)))).unwrap();
    let want = baked(d.path(), QW, |w| {
        for i in 0..qs[0] {
            for o in 0..qs[1] {
                w[i * qs[1] + o] += a[i * 2] * b[o] + a[i * 2 + 1] * b[qs[1] + o];
            }
        }
    });
    assert!(max_diff(&got, &plain) > 1e-4, "a LoRA pair must change the output");
    assert!(max_diff(&got, &want) < 1e-5, "LoRA delta vs baked: {}", max_diff(&got, &want));
}

fn refused(bytes: &[u8], sha: Option<&str>) -> String {
    let d = tempfile::tempdir().unwrap();
    match output(&manifest(d.path(), Some((bytes, sha)))) {
        Err(e @ ModelError::Delta { .. }) => e.to_string(),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a bad delta was accepted"),
    }
}

#[test]
fn mismatched_names_shapes_and_checksums_are_refused() {
    let (shape, ln) = stock(LN);
    let e = refused(&safetensors(&[("backbone.encoder.layer.2.norm9.weight", shape.clone(), ln.clone())]), None);
    assert!(e.contains("delta.safetensors") && e.contains("norm9.weight") && e.contains("no initializer"), "{e}");
    let e = refused(&safetensors(&[(LN, vec![2, 8], ln.clone())]), None);
    assert!(e.contains(LN) && e.contains("shape [2, 8]") && e.contains("[16]"), "{e}");
    let (qs, _) = stock(QW);
    let e = refused(&safetensors(&[(&format!("{QW}.lora_a"), vec![qs[0], 2], vec![0.0; qs[0] * 2])]), None);
    assert!(e.contains("lora_a") && e.contains("no matching"), "{e}");
    let e = refused(
        &safetensors(&[
            (&format!("{QW}.lora_a"), vec![qs[0], 2], vec![0.0; qs[0] * 2]),
            (&format!("{QW}.lora_b"), vec![3, qs[1]], vec![0.0; qs[1] * 3]),
        ]),
        None,
    );
    assert!(e.contains("do not fit"), "{e}");
    let e = refused(&safetensors(&[(LN, shape, ln)]), Some(&"0".repeat(64)));
    assert!(e.contains("sha256") && e.contains("delta.safetensors"), "{e}");
    let e = refused(b"not a safetensors file at all", None);
    assert!(e.contains("not a safetensors file"), "{e}");
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn a_bad_delta_is_a_one_line_startup_error_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let (_, ln) = stock(LN);
    let man = manifest(d.path(), Some((&safetensors(&[(LN, vec![4, 4], ln)]), None)));
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, format!("[model]\nmanifest = {man:?}\ninput_size = 56\n[reduce]\ncut = 2\n")).unwrap();
    let img = d.path().join("img.png");
    image::RgbImage::from_pixel(56, 56, image::Rgb([90, 120, 200])).save(&img).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ailurus"))
        .args(["segment", "--config", cfg.to_str().unwrap(), img.to_str().unwrap(), "--out"])
        .arg(d.path().join("out"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("delta.safetensors") && err.contains(LN), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn parse_reads_every_tensor() {
    let d = Delta::parse(&safetensors(&[("x", vec![2], vec![1.0, 2.0])]), "mem").unwrap();
    assert_eq!(d.tensors["x"].values, vec![1.0, 2.0]);
}

/// The committed fine-tuned manifest: its delta's checksum, names and shapes fit the real model.
#[test]
fn the_committed_finetuned_delta_fits_the_real_model() {
    let Some(_) = common::real_manifest() else {
        return;
    };
    let mut m = ailurus::model::Manifest::load(&common::root().join("models/vit_s_focus_ft.toml")).unwrap();
    m.file = common::cache().join("models/vit_s_focus.onnx");
    let delta = m.load_delta().unwrap().expect("the manifest names a delta");
    assert!(delta.tensors.keys().any(|k| k.ends_with(".lora_a")), "LoRA factors expected");
    let mut proto = tract_onnx::onnx().proto_model_for_path(m.onnx_path()).unwrap();
    let changed = delta.apply(&mut proto).unwrap();
    assert!(changed >= 100, "only {changed} initializers changed");
}
