//! `inspect` proposes manifests from bare ONNX files: on the tiny test models it must reproduce
//! the hand-written tests/data manifests, warn about a baked token count, and give a one-line
//! error for a corrupt file; on the real model (fetched into .cache by tools/fetch_assets.sh,
//! which the CI runs) it must reproduce models/vit_s_focus.toml.

use std::path::{Path, PathBuf};

use ailurus::model::inspect::inspect;
use ailurus::model::{Manifest, ModelError};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data(name: &str) -> PathBuf {
    root().join("tests/data").join(name)
}

/// Everything the graph determines must match the hand-written manifest.
fn assert_same_structure(got: &Manifest, want: &Manifest) {
    assert_eq!(got.tokens, want.tokens, "tokens");
    assert_eq!(got.input.name, want.input.name);
    assert_eq!(got.input.size, want.input.size);
    assert_eq!(got.output.name, want.output.name);
    assert_eq!(got.output.kind, want.output.kind);
    assert!(got.sha256.eq_ignore_ascii_case(&want.sha256), "sha256 {} vs {}", got.sha256, want.sha256);
}

fn baked_warning(w: &[String]) -> Option<&String> {
    w.iter().find(|w| w.contains("bake in the token count"))
}

#[test]
fn tiny_model_reproduces_its_manifest_without_a_baked_warning() {
    let found = inspect(&data("tiny_vit.onnx")).unwrap();
    let want = Manifest::load(&data("tiny_vit.toml")).unwrap();
    assert_same_structure(&found.manifest, &want);
    assert_eq!(found.manifest.file, PathBuf::from("tiny_vit.onnx"));
    assert!(baked_warning(&found.warnings).is_none(), "{:?}", found.warnings);
    assert!(found.warnings.iter().any(|w| w.contains("ImageNet")), "{:?}", found.warnings);
    // The proposal is a valid manifest as printed, warnings included as comments.
    let text = found.to_toml(&data("tiny_vit.onnx"));
    assert!(text.contains("# warning: input.mean"), "{text}");
    let mut back = Manifest::parse(&text, &data(""), "proposal").unwrap();
    back.dir = found.manifest.dir.clone();
    assert_eq!(back, found.manifest);
    assert_eq!(back.input.mean, want.input.mean);
}

#[test]
fn baked_token_count_is_warned_about() {
    let found = inspect(&data("tiny_vit_baked.onnx")).unwrap();
    let want = Manifest::load(&data("tiny_vit_baked.toml")).unwrap();
    assert_same_structure(&found.manifest, &want);
    let w = baked_warning(&found.warnings).unwrap_or_else(|| panic!("no baked warning in {:?}", found.warnings));
    // 4 blocks x 4 attention Reshapes, token count 17 = 1 + 4x4.
    assert!(w.starts_with("16 Reshape(s) bake in the token count 17"), "{w}");
}

#[test]
fn corrupt_and_missing_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt.onnx");
    let mut bytes = std::fs::read(data("tiny_vit.onnx")).unwrap();
    bytes.truncate(bytes.len() / 3);
    bytes.extend_from_slice(&[0xff; 16]);
    std::fs::write(&bad, &bytes).unwrap();
    let e = inspect(&bad).unwrap_err();
    assert!(matches!(e, ModelError::Onnx { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("corrupt.onnx") && !msg.contains('\n'), "{msg}");

    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "not a model at all\n").unwrap();
    let msg = inspect(&text).unwrap_err().to_string();
    assert!(msg.contains("notes.onnx") && !msg.contains('\n'), "{msg}");

    let e = inspect(&dir.path().join("absent.onnx")).unwrap_err();
    assert!(matches!(e, ModelError::Missing { .. }), "{e:?}");
}

/// The real model (tools/fetch_assets.sh): like every real-model test, fails when it is missing
/// unless AILURUS_SKIP_REAL=1.
#[test]
fn real_model_reproduces_models_vit_s_focus_toml() {
    let Some(manifest) = crate::common::real_manifest() else {
        return;
    };
    let onnx = crate::common::cache().join("models/vit_s_focus.onnx");
    let found = inspect(&onnx).unwrap();
    let want = Manifest::load(&manifest).unwrap();
    assert_same_structure(&found.manifest, &want);
    assert!(baked_warning(&found.warnings).is_none(), "{:?}", found.warnings);
}
