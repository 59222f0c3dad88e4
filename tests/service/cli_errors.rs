//! Bad input at start-up: one clear line naming the file/key, exit code 2.

use crate::common;

use std::path::Path;
use std::process::Command;

fn ailurus(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ailurus"))
        .args(args)
        .current_dir(common::root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ailurus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    let dirs = [common::root().join("configs"), common::root().join("configs/examples")];
    for f in dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap()) {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = ailurus(&["check-config", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
        }
    }
}

#[test]
fn unknown_key_names_the_key_and_file() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "typo.toml", "[reduce]\nstrategyy = \"ailurus\"\n");
    let (code, _, err) = ailurus(&["check-config", &f]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("typo.toml") && err.contains("strategyy"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "bad.toml",
        "[reduce]\nstrategy = \"magic\"\ncut = 0\n[reduce.ailurus]\nk = 0\n[budget]\npercentile = 120.0\n",
    );
    let (code, _, err) = ailurus(&["check-config", &f]);
    assert_eq!(code, 2);
    for key in ["[reduce] strategy", "[reduce] cut", "[reduce.ailurus] k", "[budget] percentile"] {
        assert!(err.contains(key), "missing {key} in: {err}");
    }
    assert!(err.contains("bad.toml"));
}

#[test]
fn missing_model_file_is_a_startup_error() {
    let d = tempfile::tempdir().unwrap();
    let man = std::fs::read_to_string(common::root().join("models/vit_s_focus.toml"))
        .unwrap()
        .replace("../.cache/models/vit_s_focus.onnx", "/nonexistent/model.onnx");
    let m = write(d.path(), "m.toml", &man);
    let cfg = write(d.path(), "c.toml", &format!("[model]\nmanifest = {m:?}\n"));
    let img = common::photo("camera.png");
    let (code, _, err) =
        ailurus(&["segment", "--config", &cfg, img.to_str().unwrap(), "--out", d.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/model.onnx") && err.contains("not found"), "{err}");
}

#[test]
fn corrupt_onnx_is_a_startup_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("bad.onnx"), b"this is not a protobuf \x00\x01\x02 at all").unwrap();
    let man = std::fs::read_to_string(common::root().join("models/vit_s_focus.toml"))
        .unwrap()
        .replace("../.cache/models/vit_s_focus.onnx", "bad.onnx")
        .replace("198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355", "");
    let m = write(d.path(), "m.toml", &man);
    let cfg = write(d.path(), "c.toml", &format!("[model]\nmanifest = {m:?}\n"));
    let img = common::photo("camera.png");
    let (code, _, err) =
        ailurus(&["segment", "--config", &cfg, img.to_str().unwrap(), "--out", d.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.onnx") && err.contains("not a loadable ONNX model"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn wrong_checksum_and_wrong_tensor_names_are_startup_errors() {
    let Some(real) = common::real_manifest() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let onnx = common::cache().join("models/vit_s_focus.onnx");
    let text =
        std::fs::read_to_string(&real).unwrap().replace("../.cache/models/vit_s_focus.onnx", onnx.to_str().unwrap());
    let img = common::photo("camera.png");
    let run = |man: String| {
        let m = write(d.path(), "m.toml", &man);
        let cfg = write(d.path(), "c.toml", &format!("[model]\nmanifest = {m:?}\ninput_size = 224\n"));
        ailurus(&["segment", "--config", &cfg, img.to_str().unwrap(), "--out", d.path().to_str().unwrap()])
    };
    let (code, _, err) = run(text.replace("198644e37de3", "000000000000"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sha256"), "{err}");
    let (code, _, err) = run(text.replace("layer.5/Add_1_output_0", "layer.5/Nope_output_0"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("layer.5/Nope_output_0") && err.contains("not in the graph"), "{err}");
}

#[test]
fn pipeline_lanes_out_of_range_names_the_key() {
    let d = tempfile::tempdir().unwrap();
    for (name, lanes) in [("zero.toml", "0"), ("many.toml", "17")] {
        let f = write(d.path(), name, &format!("[pipeline]\nlanes = {lanes}\n"));
        let (code, _, err) = ailurus(&["check-config", &f]);
        assert_eq!(code, 2, "lanes = {lanes}: {err}");
        assert!(err.contains(name) && err.contains("[pipeline] lanes"), "lanes = {lanes}: {err}");
    }
    let f = write(d.path(), "two.toml", "[pipeline]\nlanes = 2\n[model]\nthreads = 1\n");
    let (code, out, err) = ailurus(&["check-config", &f]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn model_cpu_ops_must_be_ailurus_or_tract() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "ops.toml", "[model]\ncpu_ops = \"onnx\"\n");
    let (code, _, err) = ailurus(&["check-config", &f]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ops.toml") && err.contains("[model] cpu_ops") && err.contains("\"ailurus\" or \"tract\""),
        "{err}"
    );
    let f = write(d.path(), "tract.toml", "[model]\ncpu_ops = \"tract\"\n");
    let (code, out, err) = ailurus(&["check-config", &f]);
    assert_eq!(code, 0, "{out}{err}");
}
