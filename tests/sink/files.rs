//! The files sink: atomic PNGs, retention by count and by bytes (checked against a reference
//! computed from the sizes on disk), and adoption of an earlier run's files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ailurus::frame::{Frame, Mask};
use ailurus::sink::files::{FilesConfig, FilesSink};
use ailurus::sink::{Output, Sink};

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn output(seq: u64, w: u32, h: u32, classes: u32, rng: &mut u64) -> Output {
    let mut f = Frame::new(seq, w, h);
    f.rgb.iter_mut().for_each(|b| *b = next(rng) as u8);
    let ids = (0..w * h).map(|_| (next(rng) % classes as u64) as u8).collect();
    Output {
        frame: Arc::new(f),
        mask: Arc::new(Mask { width: w, height: h, classes: ids, scores: vec![], num_classes: classes }),
        m: 64,
        input_size: 224,
        latency: Duration::from_millis(5),
        partition: None,
        target_ms: 0.0,
    }
}

/// Our files on disk: seq -> total bytes (mask + overlay).
fn on_disk(dir: &Path) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".mask.png").or_else(|| name.strip_suffix(".overlay.png")) {
            if let Ok(seq) = stem.parse::<u64>() {
                *m.entry(seq).or_default() += e.metadata().unwrap().len();
            }
        }
    }
    m
}

fn cfg(dir: &Path, keep: usize, max_bytes: u64) -> FilesConfig {
    FilesConfig { enabled: true, dir: dir.to_path_buf(), overlay: true, keep, max_bytes }
}

#[test]
fn retention_by_count_keeps_the_newest_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = FilesSink::build(&cfg(tmp.path(), 3, 0), Path::new(".")).unwrap();
    let mut rng = 7;
    for seq in 0..7 {
        sink.publish(&output(seq, 24, 16, 2, &mut rng)).unwrap();
    }
    let disk = on_disk(tmp.path());
    assert_eq!(disk.keys().copied().collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(sink.retained(), (3, disk.values().sum()));
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 6, "only mask + overlay per kept frame, no temp files: {names:?}");
}

#[test]
fn retention_by_bytes_matches_a_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = 99;
    // Frame sizes vary (random sizes and contents), so the kept count varies too.
    let max_bytes = 9_000;
    let mut sink = FilesSink::build(&cfg(tmp.path(), 0, max_bytes), Path::new(".")).unwrap();
    let mut sizes = Vec::new();
    for seq in 0..40u64 {
        let (w, h) = (8 + (next(&mut rng) % 40) as u32, 8 + (next(&mut rng) % 30) as u32);
        sink.publish(&output(seq, w, h, 2 + (seq % 3) as u32, &mut rng)).unwrap();
        let disk = on_disk(tmp.path());
        sizes.push(disk[&seq]);
        // Reference: the longest run of newest frames within the limit, at least the newest.
        let mut expect = vec![seq];
        let mut total = sizes[seq as usize];
        for old in (0..seq).rev() {
            total += sizes[old as usize];
            if total > max_bytes {
                break;
            }
            expect.push(old);
        }
        expect.reverse();
        assert_eq!(disk.keys().copied().collect::<Vec<_>>(), expect, "after frame {seq}");
        assert_eq!(sink.retained(), (expect.len(), disk.values().sum()));
    }
    assert!(sink.retained().0 > 1, "the limit should hold several of these frames");
}

#[test]
fn a_restart_adopts_the_previous_runs_files_and_reused_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = 3;
    {
        let mut first = FilesSink::build(&cfg(dir, 0, 0), Path::new(".")).unwrap();
        for seq in 0..6 {
            first.publish(&output(seq, 10, 10, 2, &mut rng)).unwrap();
        }
    }
    std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
    std::fs::write(dir.join("x.mask.png"), "not ours").unwrap();
    std::fs::write(dir.join("00000009.mask.png.tmp"), "torn write").unwrap();

    let mut sink = FilesSink::build(&cfg(dir, 4, 0), Path::new(".")).unwrap();
    let keys = |d: &Path| on_disk(d).keys().copied().collect::<Vec<u64>>();
    assert_eq!(keys(dir), [2, 3, 4, 5], "the oldest of the earlier run expire at start-up");
    assert!(!dir.join("00000009.mask.png.tmp").exists(), "stray temp file removed");

    // Sequence numbers restart with the process: names get reused.
    sink.publish(&output(0, 10, 10, 2, &mut rng)).unwrap();
    assert_eq!(keys(dir), [0, 3, 4, 5]);
    let new4 = output(4, 12, 9, 2, &mut rng);
    sink.publish(&new4).unwrap();
    assert_eq!(keys(dir), [0, 3, 4, 5], "rewriting frame 4 replaces it, deletes nothing");
    sink.publish(&output(7, 10, 10, 2, &mut rng)).unwrap();
    assert_eq!(keys(dir), [0, 4, 5, 7]);
    sink.publish(&output(8, 10, 10, 2, &mut rng)).unwrap();
    assert_eq!(keys(dir), [0, 4, 7, 8], "the stale entry of the old frame 4 must not delete the new one");
    let png = image::open(dir.join("00000004.mask.png")).unwrap().to_luma8();
    assert_eq!(png.dimensions(), (12, 9));
    let want: Vec<u8> = new4.mask.classes.iter().map(|&c| c * 255).collect();
    assert_eq!(png.into_raw(), want);
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "keep me");
    assert!(dir.join("x.mask.png").exists());
}

#[test]
fn mask_png_holds_scaled_saliency_and_raw_class_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = FilesSink::build(&cfg(tmp.path(), 0, 0), Path::new(".")).unwrap();
    let mut rng = 11;
    for (seq, classes) in [(0u64, 2u32), (1, 21)] {
        let out = output(seq, 17, 5, classes, &mut rng);
        sink.publish(&out).unwrap();
        let png = image::open(tmp.path().join(format!("{seq:08}.mask.png"))).unwrap().to_luma8();
        let scale = if classes <= 2 { 255 } else { 1 };
        assert_eq!(png.into_raw(), out.mask.classes.iter().map(|&c| c * scale).collect::<Vec<u8>>());
        let overlay = image::open(tmp.path().join(format!("{seq:08}.overlay.png"))).unwrap().to_rgb8();
        assert_eq!(overlay.dimensions(), (17, 5));
    }
}
