//! `[model] precision = "bf16"` end to end on the real model: `ailurus segment` (a process of its
//! own, since the precision is process-wide) on three photos at 448 px, unreduced and reduced,
//! against the f32 masks of the same command. Where the CPU has AVX512-BF16 the masks must
//! differ from f32 a little (the linear layers did round) and agree with them to a foreground
//! IoU of at least 0.95 each (measured 0.987-0.999 on these photos, AMD EPYC Zen 4); elsewhere
//! the command must say in one log line that it stays f32, and the masks must equal the f32 ones.

use std::path::Path;
use std::process::Command;

use crate::common;

const PHOTOS: [&str; 3] = ["chelsea.png", "coffee.png", "motorcycle_left.png"];

/// `ailurus segment` of PHOTOS with the default config at `precision` and `m`: (the masks in
/// PHOTOS' order, stderr).
fn segment(dir: &Path, precision: &str, m: usize) -> (Vec<Vec<u8>>, String) {
    let cfg = dir.join(format!("{precision}_{m}.toml"));
    std::fs::write(&cfg, format!("[model]\nthreads = 1\nprecision = \"{precision}\"\n[reduce]\nm = {m}\n")).unwrap();
    let out = dir.join(format!("out_{precision}_{m}"));
    let mut args: Vec<String> = vec!["segment".into(), "--config".into(), cfg.display().to_string()];
    args.extend(PHOTOS.iter().map(|p| common::photo(p).display().to_string()));
    args.extend(["--out".into(), out.display().to_string()]);
    let run = Command::new(env!("CARGO_BIN_EXE_ailurus")).args(&args).current_dir(common::root()).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "ailurus segment ({precision}, M = {m}): {stderr}");
    let masks = PHOTOS
        .iter()
        .map(|p| {
            let stem = Path::new(p).file_stem().unwrap().to_str().unwrap();
            image::open(out.join(format!("{stem}.mask.png"))).unwrap().to_luma8().into_raw()
        })
        .collect();
    (masks, stderr)
}

#[test]
fn bf16_masks_agree_with_f32_or_fall_back_with_one_line() {
    if common::real_manifest().is_none() {
        return;
    }
    let native = ailurus::model::bf16::Precision::Bf16.supported();
    let dir = tempfile::tempdir().unwrap();
    for m in [1024, 512] {
        let (want, _) = segment(dir.path(), "f32", m);
        let (got, log) = segment(dir.path(), "bf16", m);
        if !native {
            assert!(log.contains("lacks AVX512-BF16"), "no fallback line: {log}");
            assert_eq!(got, want, "M = {m}: the fallback must run f32");
            continue;
        }
        let mut changed = 0;
        for ((g, w), photo) in got.iter().zip(&want).zip(PHOTOS) {
            let iou = ailurus::eval::iou(g, w);
            eprintln!("{photo} M = {m}: bf16 vs f32 mask IoU {iou:.4}");
            assert!(iou >= 0.95, "{photo} M = {m}: bf16 vs f32 mask IoU {iou:.4}");
            changed += (g != w) as usize;
        }
        assert!(changed > 0, "M = {m}: bf16 masks equal to f32 on every photo: did the linear layers round?");
    }
}
