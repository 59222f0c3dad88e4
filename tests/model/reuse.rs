//! Temporal reuse (issue #19) on the tiny model and, where fetched, the real one: threshold 0 is
//! per-frame computation; an identical frame costs (almost) nothing; a one-patch change touches
//! only that token's rows in block 0; the refresh rules fire; a reset empties the caches. The
//! same for reuse + reduction with carried clusters (at the end).

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use ailurus::engine::{Engine, StageTimes};
use ailurus::model::{Segmenter, SegmenterLane, SegmenterOptions};
use ailurus::reduce::fixed::FixedReducer;
use ailurus::reduce::{Partition, ReduceConfig};
use ailurus::reuse::carry::Recluster;
use ailurus::reuse::{FrameReport, Refresh, ReuseConfig, ReuseLane, ReuseModel};

use common::{max_abs_diff, noise_image as image};

pub(crate) fn options(sizes: &[u32]) -> SegmenterOptions {
    SegmenterOptions {
        sizes: sizes.to_vec(),
        reduce: ReduceConfig { strategy: "none".into(), ..ReduceConfig::default() },
        with_full: true,
        verify_sha256: true,
        fixed_middle: Vec::new(),
        fixed_unreduced: false,
        device: ailurus::choice::Device::Cpu,
    }
}

fn lanes(manifest: &std::path::Path, sizes: &[u32], cfg: ReuseConfig) -> (SegmenterLane, ReuseLane) {
    let seg = Arc::new(Segmenter::load(manifest, &options(sizes)).unwrap());
    let model = Arc::new(ReuseModel::new(seg.clone()).unwrap());
    (seg.lane().unwrap(), model.lane(cfg).unwrap())
}

fn tiny() -> PathBuf {
    common::root().join("tests/data/tiny_vit.toml")
}

/// Rules that never refresh on their own: only the gates decide.
fn gates_only(threshold: f32) -> ReuseConfig {
    ReuseConfig {
        enabled: true,
        threshold,
        refresh_every: 0,
        refresh_iou: 0.0,
        refresh_above: 1.0,
        scene_cut: 1e9,
        max_active: 1.0,
        min_active: 0.0,
        max_streams: 4,
        ..ReuseConfig::default()
    }
}

fn run(lane: &mut ReuseLane, x: &[f32], s: u32) -> (Vec<f32>, FrameReport) {
    let mut out = Vec::new();
    let r = lane.infer(x, s, &mut StageTimes::default(), &mut out).unwrap().clone();
    (out, r)
}

/// `x` with the pixels of patch (row, col) (14 x 14, all channels) changed.
fn with_patch_changed(x: &[f32], s: u32, row: usize, col: usize) -> Vec<f32> {
    let (s, mut y) = (s as usize, x.to_vec());
    for ch in 0..3 {
        for yy in row * 14..(row + 1) * 14 {
            for xx in col * 14..(col + 1) * 14 {
                y[(ch * s + yy) * s + xx] += 0.5;
            }
        }
    }
    y
}

#[test]
fn threshold_zero_equals_per_frame_computation() {
    let sizes = [56, 112];
    let (mut full, mut reuse) = lanes(&tiny(), &sizes, gates_only(0.0));
    for (k, &s) in sizes.iter().chain(&sizes).enumerate() {
        // A sequence with small and large changes, and a size switch in between.
        let base = image(s, 3);
        for (f, x) in [base.clone(), with_patch_changed(&base, s, 1, 2), image(s, 40 + k as u64)].iter().enumerate() {
            let mut want = Vec::new();
            full.infer_full(x, s, &mut want).unwrap();
            let (got, r) = run(&mut reuse, x, s);
            let d = max_abs_diff(&want, &got);
            assert!(d <= 1e-5, "{s}px frame {f}: reuse at threshold 0 differs from the full model by {d}");
            assert!(r.encoder.active.iter().all(|&a| a == r.encoder.tokens), "threshold 0 recomputes every token");
        }
    }
}

#[test]
fn an_identical_frame_costs_under_a_tenth_of_a_full_frame() {
    let (_, mut reuse) = lanes(&tiny(), &[112], gates_only(0.01));
    let x = image(112, 5);
    let (first, r0) = run(&mut reuse, &x, 112);
    assert_eq!(r0.refresh, Some(Refresh::Reset));
    assert!(r0.head_ran && r0.encoder.macs == r0.encoder.full_macs);
    let (again, r1) = run(&mut reuse, &x, 112);
    assert_eq!(r1.refresh, None);
    assert_eq!(again, first, "an identical frame gives the identical output");
    // Cost in multiply-adds of encoder + head (the embedding runs on every frame, and is counted
    // in full on both sides): none of the blocks ran and the head was skipped.
    assert_eq!(r1.encoder.macs, 0.0);
    assert!(!r1.head_ran);
}

#[test]
fn a_one_patch_change_touches_only_that_tokens_rows_in_block_0() {
    let s = 112;
    let (_, mut reuse) = lanes(&tiny(), &[s], gates_only(0.01));
    let x = image(s, 6);
    run(&mut reuse, &x, s);
    let (row, col, grid) = (3, 5, 8);
    let (_, r) = run(&mut reuse, &with_patch_changed(&x, s, row, col), s);
    assert_eq!(r.refresh, None);
    // The cls token (prefix, global) and the changed patch's token; nothing else.
    assert_eq!(r.encoder.first_rows, vec![0, 1 + row * grid + col]);
    assert!(r.encoder.macs < 0.5 * r.encoder.full_macs, "{} of {}", r.encoder.macs, r.encoder.full_macs);
    assert!(r.head_ran);
}

#[test]
fn refresh_rules_fire() {
    let s = 56;
    let x = image(s, 7);
    // Periodic: every 3rd frame.
    let (_, mut reuse) = lanes(&tiny(), &[s], ReuseConfig { refresh_every: 3, ..gates_only(0.01) });
    let kinds: Vec<_> = (0..7).map(|_| run(&mut reuse, &x, s).1.refresh).collect();
    let p = Some(Refresh::Periodic);
    assert_eq!(kinds, vec![Some(Refresh::Reset), None, None, p, None, None, p]);
    // A scene cut: another image entirely.
    reuse.set_config(ReuseConfig { scene_cut: 0.3, ..gates_only(0.01) });
    assert_eq!(run(&mut reuse, &image(s, 99), s).1.refresh, Some(Refresh::SceneCut));
    // Too much changed at block 0: 2 of 16 patches changed, limit 10%.
    reuse.set_config(ReuseConfig { refresh_above: 0.1, ..gates_only(0.01) });
    let y = with_patch_changed(&with_patch_changed(&image(s, 99), s, 0, 0), s, 2, 3);
    assert_eq!(run(&mut reuse, &y, s).1.refresh, Some(Refresh::TooActive));
    // Below the limit it reuses.
    reuse.set_config(ReuseConfig { refresh_above: 0.2, ..gates_only(0.01) });
    assert_eq!(run(&mut reuse, &with_patch_changed(&y, s, 1, 1), s).1.refresh, None);
}

#[test]
fn a_reset_or_a_new_size_empties_the_caches() {
    let (mut full, mut reuse) = lanes(&tiny(), &[56, 112], gates_only(1e6));
    let x = image(56, 8);
    run(&mut reuse, &x, 56);
    // A big change under a threshold no change reaches is ignored...
    let y = image(56, 9);
    let (stale, r) = run(&mut reuse, &y, 56);
    assert_eq!(r.refresh, None);
    let mut want = Vec::new();
    full.infer_full(&y, 56, &mut want).unwrap();
    assert!(max_abs_diff(&stale, &want) > 1e-4, "the test needs a frame that reuse gets wrong");
    // ...until the source reconnects: the caches go, the frame is computed in full.
    reuse.reset();
    let (fresh, r) = run(&mut reuse, &y, 56);
    assert_eq!(r.refresh, Some(Refresh::Reset));
    assert!(max_abs_diff(&fresh, &want) <= 1e-5);
    assert_eq!(run(&mut reuse, &image(112, 9), 112).1.refresh, Some(Refresh::Reset), "a new input size resets");
}

/// The real model: threshold 0 equals the tract plans on a real photo at 224 and 448.
#[test]
fn real_model_threshold_zero_equals_the_full_model() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    let sizes = [224, 448];
    let (mut full, mut reuse) = lanes(&manifest, &sizes, gates_only(0.0));
    let frame = ailurus::source::folder::load_frame(&common::photo("chelsea.png"), 0).unwrap();
    let io = ailurus::model::Io::of(full.segmenter().manifest());
    let (mut rs, mut x, mut want) = (ailurus::pre::Resampler::default(), Vec::new(), Vec::new());
    for s in sizes {
        ailurus::engine::FrameIo::preprocess(&io, &frame, s, &mut rs, &mut x);
        full.infer_full(&x, s, &mut want).unwrap();
        let (got, _) = run(&mut reuse, &x, s);
        let d = max_abs_diff(&want, &got);
        eprintln!("real model at {s}: max |full - reuse(threshold 0)| = {d:.2e}");
        assert!(d <= 1e-5, "real model at {s}: {d}");
    }
}

/// `ailurus bench --video` end to end on 3 frames of the decoded carphone clip at 224 px: the
/// table and the CSV with the columns, `full` as its own reference.
#[test]
fn bench_video_smoke_on_a_decoded_clip() {
    if common::real_manifest().is_none() {
        return;
    }
    let clip = common::cache().join("video/frames/carphone_pristine");
    assert!(clip.is_dir(), "{} is missing: run tools/decode_clips.sh (tools/setup.sh does)", clip.display());
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("video.csv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ailurus"))
        .current_dir(common::root())
        .args(["bench", "--video"])
        .arg(&clip)
        .args(["--size", "224", "--max-frames", "3", "--thresholds", "0,0.3", "--reduced-m", "128", "--csv"])
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("clip,setting,ms_per_frame,speedup,active_fraction,iou_mean,iou_min,mae_mean,flicker"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let settings: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    let cut = ailurus::reduce::ReduceConfig::default().cut;
    let (combined_0, combined_3) = (format!("reuse t=0 + a={cut} M=128"), format!("reuse t=0.3 + a={cut} M=128"));
    let (carry_0, carry_3) = (format!("reuse t=0 carry a={cut} M=128"), format!("reuse t=0.3 carry a={cut} M=128"));
    let want = ["full", "reduced M=128", "reuse t=0", &combined_0, &carry_0, "reuse t=0.3", &combined_3, &carry_3];
    assert_eq!(settings, want, "{stdout}");
    for r in &rows {
        assert_eq!(r[0], "carphone_pristine");
        let iou: f64 = r[5].parse().unwrap();
        assert!((0.0..=1.0).contains(&iou), "{r:?}");
    }
    // Threshold 0 is per-frame computation: the same masks as `full`.
    assert_eq!((rows[2][5], rows[2][6]), ("1.00000", "1.00000"), "{stdout}");
    // ...and with reduction on top, the per-frame reduced masks.
    assert_eq!((rows[3][5], rows[3][6]), (rows[1][5], rows[1][6]), "{stdout}");
    // Carried clusters at threshold 0: every token changed, so every frame re-clusters and the
    // middle runs every row (our executor instead of tract's plan: equal to float rounding).
    let iou = |r: &[&str]| -> (f64, f64) { (r[5].parse().unwrap(), r[6].parse().unwrap()) };
    let (a, b) = (iou(&rows[4]), iou(&rows[1]));
    assert!((a.0 - b.0).abs() < 1e-3 && (a.1 - b.1).abs() < 1e-3, "{stdout}");
    assert_eq!(rows[0][3], "1.0000");
}

/// `bench --video` on the .mp4 itself (played through the GStreamer source): three consecutive
/// frames, threshold 0 equals per-frame computation.
#[test]
fn bench_video_plays_an_mp4_through_gstreamer() {
    if common::real_manifest().is_none() {
        return;
    }
    let mp4 = common::cache().join("video/carphone_pristine.mp4");
    if !mp4.is_file() || std::process::Command::new("gst-inspect-1.0").arg("avdec_h264").output().is_err() {
        assert!(
            std::env::var("AILURUS_REQUIRE_GST").map_or(true, |v| v != "1"),
            "{} or GStreamer missing",
            mp4.display()
        );
        println!("SKIP bench_video_plays_an_mp4_through_gstreamer: {} or GStreamer missing", mp4.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |clip: &std::path::Path, csv: &str| {
        let csv = dir.path().join(csv);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ailurus"))
            .current_dir(common::root())
            .args(["bench", "--video"])
            .arg(clip)
            .args(["--size", "224", "--max-frames", "3", "--thresholds", "0", "--reduced-m", "0", "--csv"])
            .arg(&csv)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<Vec<String>> = std::fs::read_to_string(&csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect();
        rows
    };
    let played = run(&mp4, "mp4.csv");
    let settings: Vec<&str> = played.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(settings, ["full", "reuse t=0"]);
    assert!(played.iter().all(|r| r[0] == "carphone_pristine"), "{played:?}");
    assert_eq!((played[1][5].as_str(), played[1][6].as_str()), ("1.00000", "1.00000"), "{played:?}");
    let frames_col = 9; // clip,setting,ms,speedup,active,iou_mean,iou_min,mae,flicker,frames
    assert_eq!(played[0][frames_col], "3", "{played:?}");
    // A real clip: the full masks change a little from frame to frame, not at all or wholesale
    // (the source squares the pixels, pixel-aspect-ratio 1/1, so these are not the folder's
    // pixels exactly).
    let flicker: f64 = played[0][8].parse().unwrap();
    assert!(flicker > 0.0 && flicker < 0.5, "{played:?}");
}

/// Reuse + reduction (`infer_setting` with M below the patch count) at threshold 0 equals the
/// per-frame reduced path (AiluRus at the cut, middle on M tokens) to 1e-5, over a sequence with
/// a size switch and a switch to the unreduced path and back; an identical frame then skips the
/// reducer, middle and head.
#[test]
fn reuse_with_reduction_at_threshold_zero_equals_the_per_frame_reduced_path() {
    let sizes = [56, 112];
    let opts = SegmenterOptions {
        reduce: ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() },
        with_full: false,
        fixed_middle: vec![20],
        ..options(&sizes)
    };
    let seg = Arc::new(Segmenter::load(&tiny(), &opts).unwrap());
    let mut per_frame = seg.lane().unwrap();
    let per_frame_clusters = ReuseConfig { carry_clusters: false, ..gates_only(0.0) };
    let mut reuse = Arc::new(ReuseModel::new(seg).unwrap()).lane(per_frame_clusters.clone()).unwrap();
    let mut times = StageTimes::default();
    for (k, &(s, m)) in [(112, 20), (112, 20), (112, 30), (56, 10), (112, usize::MAX), (112, 20)].iter().enumerate() {
        let x = if k == 1 { with_patch_changed(&image(s, 10), s, 2, 2) } else { image(s, 10 + k as u64) };
        let setting = ailurus::engine::Setting { input_size: s, m };
        let (mut want, mut got) = (Vec::new(), Vec::new());
        let m_want = per_frame.run_parts(&x, setting, &mut times, &mut want).unwrap();
        let r = reuse.infer_setting(&x, setting, &mut times, &mut got).unwrap().clone();
        let d = max_abs_diff(&want, &got);
        assert!(d <= 1e-5, "frame {k} ({s}px M={m}): reuse + reduction differs from the per-frame path by {d}");
        let n = ((s / 14) * (s / 14)) as usize;
        assert_eq!(r.m, (m < n).then_some(m_want), "frame {k}");
        if m < n {
            assert_eq!(r.encoder.active.len(), 2, "frame {k}: reuse runs the blocks before the cut only");
        }
    }
    // Threshold above any change: an identical frame runs no block, no reducer, no head.
    reuse.set_config(ReuseConfig { threshold: 0.01, ..per_frame_clusters });
    let (x, setting) = (image(112, 77), ailurus::engine::Setting { input_size: 112, m: 20 });
    let (mut a, mut b) = (Vec::new(), Vec::new());
    reuse.infer_setting(&x, setting, &mut times, &mut a).unwrap();
    let r = reuse.infer_setting(&x, setting, &mut times, &mut b).unwrap();
    assert!(!r.head_ran && r.m.is_none() && r.encoder.macs == 0.0 && r.active_fraction == 0.0);
    assert_eq!(a, b);
}

/// Two streams alternating on one lane (as the pipeline's round-robin feeds it), each a static
/// camera where one patch changes per frame: with per-stream caches both keep reusing (a low
/// active fraction, the output equal to what a lane of their own gives); a reconnect of one
/// (the pipeline: switch to it, then reset) recomputes that one only. With one cache
/// (`max_streams` 1) every switch starts afresh.
#[test]
fn two_streams_on_one_lane_keep_their_own_caches_and_a_reconnect_resets_only_its_stream() {
    let s = 112;
    let cfg = gates_only(0.01);
    let (mut full, mut shared) = lanes(&tiny(), &[s], cfg.clone());
    let seg = full.segmenter().clone();
    let model = Arc::new(ReuseModel::new(seg).unwrap());
    let mut own = [model.lane(cfg.clone()).unwrap(), model.lane(cfg.clone()).unwrap()];
    let scenes = [image(s, 21), image(s, 22)];
    let frame = |stream: usize, k: usize| with_patch_changed(&scenes[stream], s, k % 8, (3 * k + stream) % 8);
    for k in 0..6 {
        for (stream, alone_lane) in own.iter_mut().enumerate() {
            assert!(shared.switch_stream(stream), "max_streams 4 keeps a cache per stream");
            let x = frame(stream, k);
            let (got, r) = run(&mut shared, &x, s);
            let (alone, _) = run(alone_lane, &x, s);
            assert_eq!(got, alone, "stream {stream} frame {k}: as on a lane of its own");
            if k == 0 {
                assert_eq!(r.refresh, Some(Refresh::Reset), "stream {stream}: its first frame");
            } else {
                assert_eq!(r.refresh, None, "stream {stream} frame {k}");
                assert!(r.active_fraction < 0.2, "stream {stream} frame {k}: active {}", r.active_fraction);
            }
        }
    }
    assert_eq!((shared.current_stream(), shared.parked_streams()), (Some(1), vec![0]));
    // Stream 1 reconnects: only its cache goes.
    assert!(shared.switch_stream(1));
    shared.reset();
    let (got, r) = run(&mut shared, &frame(1, 6), s);
    assert_eq!(r.refresh, Some(Refresh::Reset), "the reconnected stream is computed in full");
    let mut want = Vec::new();
    full.infer_full(&frame(1, 6), s, &mut want).unwrap();
    assert!(max_abs_diff(&got, &want) <= 1e-5);
    assert!(shared.switch_stream(0));
    let (_, r) = run(&mut shared, &frame(0, 6), s);
    assert_eq!(r.refresh, None, "the other stream keeps reusing");
    assert!(r.active_fraction < 0.2);
    // The caches' size: 5 [T, C] buffers per block (T = 65, C = 16, 4 blocks) + the head output
    // + the own head's maps (the token grid [16, 8, 8], the logits [1, 16, 16]).
    let (cur, parked) = shared.cache_bytes();
    let want_bytes = 5 * 65 * 16 * 4 * 4 + s as usize * s as usize * 4 + (16 * 64 + 256) * 4;
    assert_eq!((cur, parked), (want_bytes, want_bytes));
    // A third stream beyond max_streams 2: the least recently used cache (stream 1's) goes.
    shared.set_config(ReuseConfig { max_streams: 2, ..cfg.clone() });
    assert!(shared.switch_stream(2));
    assert_eq!(shared.parked_streams(), vec![0]);
    run(&mut shared, &frame(0, 7), s);
    assert!(shared.switch_stream(1));
    assert_eq!(run(&mut shared, &frame(1, 7), s).1.refresh, Some(Refresh::Reset), "dropped: afresh");
    // One cache: the lane says so, and the pipeline resets it at every switch.
    shared.set_config(ReuseConfig { max_streams: 1, ..cfg });
    assert!(!shared.switch_stream(0));
}

/// The real model at 448 px: one stream's cache is 5 [T, C] f32 buffers per block (T = 1025,
/// C = 384, 12 blocks) plus the head output and the own head's maps (the token grid [384, 32,
/// 32], the up-layers' inputs [256, 64, 64] and [128, 128, 128], the logits [1, 256, 256]): 109.7
/// MB.
#[test]
fn real_model_cache_of_one_stream_at_448() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    let (_, mut reuse) = lanes(&manifest, &[448], gates_only(0.1));
    let (cur, parked) = reuse.cache_bytes();
    assert_eq!((cur, parked), (0, 0), "allocated lazily");
    run(&mut reuse, &image(448, 1), 448);
    let (cur, _) = reuse.cache_bytes();
    eprintln!("real model at 448: one stream's reuse cache holds {:.1} MB", cur as f64 / 1e6);
    let head = 384 * 32 * 32 + 256 * 64 * 64 + 128 * 128 * 128 + 256 * 256;
    assert_eq!(cur, 5 * 1025 * 384 * 4 * 12 + 448 * 448 * 4 + head * 4);
}

// --- Reuse + reduction with clusters carried across frames (`[reuse] carry_clusters`). ---

/// The tiny model cut at block 2 with M = 20 at 112 px (8 x 8 patches): the per-frame reduced
/// lane and a reuse lane with carried clusters.
fn carry_lanes(cfg: ReuseConfig) -> (SegmenterLane, ReuseLane) {
    let opts = SegmenterOptions {
        reduce: ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() },
        with_full: false,
        fixed_middle: vec![20],
        ..options(&[112])
    };
    let seg = Arc::new(Segmenter::load(&tiny(), &opts).unwrap());
    let reuse = Arc::new(ReuseModel::new(seg.clone()).unwrap()).lane(cfg).unwrap();
    (seg.lane().unwrap(), reuse)
}

/// Carried clusters that never re-cluster on their own (only refreshes and new shapes do).
fn carried(threshold: f32) -> ReuseConfig {
    ReuseConfig { carry_clusters: true, recluster_above: 1.0, ..gates_only(threshold) }
}

const M20: ailurus::engine::Setting = ailurus::engine::Setting { input_size: 112, m: 20 };

fn run_m(lane: &mut ReuseLane, x: &[f32], setting: ailurus::engine::Setting) -> (Vec<f32>, FrameReport) {
    let mut out = Vec::new();
    let r = lane.infer_setting(x, setting, &mut StageTimes::default(), &mut out).unwrap().clone();
    (out, r)
}

fn partition_of(lane: &ReuseLane) -> Partition {
    let mut p = Partition::default();
    assert!(lane.partition(&mut p), "a reduced frame has a partition");
    p.check().unwrap();
    p
}

/// Threshold 0 with carried clusters: every middle row is recomputed, so the output equals the
/// per-frame reduced path (tract's middle plan) with the same partition, to 1e-4, whether the
/// partition is the reducer's (first frame) or carried with every token re-assigned.
#[test]
fn carried_clusters_at_threshold_zero_equal_the_per_frame_reduced_path_with_the_same_partition() {
    let (mut per_frame, mut reuse) = carry_lanes(carried(0.0));
    let mut times = StageTimes::default();
    let base = image(112, 20);
    let frames = [base.clone(), with_patch_changed(&base, 112, 3, 3), image(112, 21), image(112, 22)];
    let mut partitions = Vec::new();
    for (k, x) in frames.iter().enumerate() {
        let (got, r) = run_m(&mut reuse, x, M20);
        let p = partition_of(&reuse);
        if k == 0 {
            // The reducer's own partition: the per-frame lane's unchanged reducer gives it.
            let mut want = Vec::new();
            per_frame.run_parts(x, M20, &mut times, &mut want).unwrap();
            let mut q = Partition::default();
            assert!(per_frame.partition(&mut q));
            assert_eq!(p, q, "the first frame clusters as the per-frame path");
            assert_eq!(r.carry.reclustered, Some(Recluster::Refresh));
        } else {
            assert_eq!(r.carry.reclustered, None, "frame {k}: carried");
            assert_eq!(r.carry.changed, 64, "frame {k}: threshold 0 re-assigns every token");
        }
        per_frame.set_reducer(Box::new(FixedReducer::new(p.clone())));
        let mut want = Vec::new();
        per_frame.run_parts(x, M20, &mut times, &mut want).unwrap();
        let d = max_abs_diff(&want, &got);
        assert!(d <= 1e-4, "frame {k}: carried clusters differ from the per-frame path on their partition by {d}");
        assert!(r.head_ran && r.carry.middle.active.iter().all(|&a| a == 21), "frame {k}: every middle row ran");
        assert_eq!(r.m, Some(20));
        partitions.push(p);
    }
    assert_eq!(partitions[2].centers, partitions[0].centers, "centres are carried");
    assert_ne!(partitions[2].assign, partitions[0].assign, "the test needs a re-assignment that moves tokens");
}

/// An identical frame: no stem block, no middle row, no head; the same output.
#[test]
fn carried_clusters_an_identical_frame_recomputes_no_middle_token() {
    let (_, mut reuse) = carry_lanes(carried(0.01));
    let x = image(112, 30);
    let (first, _) = run_m(&mut reuse, &x, M20);
    let (again, r) = run_m(&mut reuse, &x, M20);
    assert_eq!(again, first);
    assert_eq!((r.refresh, r.carry.reclustered, r.carry.changed, r.carry.touched), (None, None, 0, 0));
    assert_eq!(r.encoder.macs + r.carry.middle.macs, 0.0);
    assert!(r.carry.middle.active.iter().all(|&a| a == 0) && !r.head_ran && r.active_fraction == 0.0);
}

/// A one-patch change re-assigns that token only and recomputes, in the middle, the cls token
/// and the clusters the token left and joined (one, when it stays): no neighbour.
#[test]
fn carried_clusters_a_one_patch_change_recomputes_only_the_clusters_containing_it() {
    let (_, mut reuse) = carry_lanes(carried(0.01));
    let x = image(112, 31);
    run_m(&mut reuse, &x, M20);
    let mut before = partition_of(&reuse);
    let mut moved = 0;
    for (row, col) in [(3, 5), (0, 0), (7, 2), (4, 4)] {
        let y = with_patch_changed(&x, 112, row, col);
        let (_, r) = run_m(&mut reuse, &y, M20);
        let after = partition_of(&reuse);
        let j = row * 8 + col;
        assert_eq!((r.refresh, r.carry.reclustered, r.carry.changed), (None, None, 1), "patch {j}");
        let mut ids = vec![before.assign[j] as usize, after.assign[j] as usize];
        ids.sort_unstable();
        ids.dedup();
        moved += (ids.len() == 2) as usize;
        let want: Vec<usize> = std::iter::once(0).chain(ids.iter().map(|id| 1 + id)).collect();
        assert_eq!(r.carry.middle.first_rows, want, "patch {j}: the first middle block's rows");
        assert!(r.carry.middle.active.iter().all(|&a| a <= want.len()), "patch {j}: {:?}", r.carry.middle.active);
        assert_eq!(r.carry.moved, ids.len() - 1);
        for i in (0..64).filter(|&i| i != j) {
            assert_eq!(after.assign[i], before.assign[i], "patch {j}: token {i} kept its cluster");
        }
        assert!(r.head_ran && r.m == Some(20));
        // Back to the first frame before the next patch.
        let (_, r) = run_m(&mut reuse, &x, M20);
        assert_eq!(r.carry.changed, 1);
        before = partition_of(&reuse);
    }
    eprintln!("{moved} of 4 changed patches moved to another cluster");
}

/// A full re-cluster fires on the lane's refreshes, a new M, a reset, and too many changed tokens.
#[test]
fn carried_clusters_recluster_on_the_refresh_rules() {
    let x = image(112, 40);
    let (_, mut reuse) = carry_lanes(ReuseConfig { refresh_every: 3, ..carried(0.01) });
    let got: Vec<_> = (0..7).map(|_| run_m(&mut reuse, &x, M20).1.carry.reclustered).collect();
    let f = Some(Recluster::Refresh);
    assert_eq!(got, vec![f, None, None, f, None, None, f], "periodic refresh re-clusters");
    reuse.set_config(carried(0.01));
    let m10 = ailurus::engine::Setting { m: 10, ..M20 };
    assert_eq!(run_m(&mut reuse, &x, m10).1.carry.reclustered, Some(Recluster::NewShape), "a new M");
    assert_eq!(run_m(&mut reuse, &x, m10).1.carry.reclustered, None);
    reuse.set_config(ReuseConfig { scene_cut: 0.3, ..carried(0.01) });
    let r = run_m(&mut reuse, &image(112, 41), m10).1;
    assert_eq!((r.refresh, r.carry.reclustered), (Some(Refresh::SceneCut), f), "a scene cut");
    // 2 of 64 tokens changed, limit 2%: re-cluster; limit 5%: carried.
    reuse.set_config(ReuseConfig { recluster_above: 0.02, ..carried(0.01) });
    let y = with_patch_changed(&with_patch_changed(&image(112, 41), 112, 0, 0), 112, 5, 6);
    let r = run_m(&mut reuse, &y, m10).1;
    assert_eq!((r.refresh, r.carry.reclustered, r.carry.changed), (None, Some(Recluster::TooManyChanged), 64));
    reuse.set_config(ReuseConfig { recluster_above: 0.05, ..carried(0.01) });
    let r = run_m(&mut reuse, &with_patch_changed(&y, 112, 1, 1), m10).1;
    assert_eq!((r.carry.reclustered, r.carry.changed), (None, 1));
    reuse.reset();
    assert_eq!(run_m(&mut reuse, &y, m10).1.carry.reclustered, f, "a reset (reconnect)");
}

/// Two streams alternating on one lane with carried clusters: each stream's partition and
/// carried middle are parked with its caches, so after its first frame every frame of either
/// stream is carried (no re-cluster at a switch) and equals what a lane of its own gives, bit for
/// bit; a reducer change (a reload) drops the parked streams' state.
#[test]
fn two_streams_on_one_lane_keep_their_carried_clusters() {
    let cfg = carried(0.01);
    let (_, mut shared) = carry_lanes(cfg.clone());
    let mut own = [carry_lanes(cfg.clone()).1, carry_lanes(cfg).1];
    let scenes = [image(112, 51), image(112, 52)];
    let frame = |stream: usize, k: usize| with_patch_changed(&scenes[stream], 112, k % 8, (3 * k + stream) % 8);
    for k in 0..5 {
        for (stream, alone) in own.iter_mut().enumerate() {
            assert!(shared.switch_stream(stream));
            let x = frame(stream, k);
            let (got, r) = run_m(&mut shared, &x, M20);
            let (want, _) = run_m(alone, &x, M20);
            assert_eq!(got, want, "stream {stream} frame {k}: as on a lane of its own");
            assert_eq!(partition_of(&shared), partition_of(alone), "stream {stream} frame {k}");
            let expect = if k == 0 { Some(Recluster::Refresh) } else { None };
            assert_eq!(r.carry.reclustered, expect, "stream {stream} frame {k}");
        }
    }
    let (cur, parked) = shared.cache_bytes();
    assert!(parked > 0 && parked == cur, "one parked stream as large as the current one: {parked} vs {cur}");
    shared.reconfigure(&ReduceConfig { cut: 2, m: 20, ..ReduceConfig::default() }).unwrap();
    assert_eq!(shared.parked_streams(), Vec::<usize>::new(), "a new reducer drops the parked state");
    assert!(shared.switch_stream(0));
    assert_eq!(run_m(&mut shared, &frame(0, 5), M20).1.carry.reclustered, Some(Recluster::Refresh));
}

/// What the budget controller prices reuse with (`budget::reuse`): the lane reports the
/// scheduled-refresh period in force and the one a reset starts with, as its schedule runs.
#[test]
fn the_lane_reports_its_refresh_period() {
    let s = 56;
    let x = image(s, 7);
    let adaptive = ReuseConfig { refresh_every: 30, refresh_iou: 0.9, ..gates_only(0.01) };
    let (_, mut reuse) = lanes(&tiny(), &[s, 112], adaptive.clone());
    let mut seen = Vec::new();
    for _ in 0..14 {
        let r = run(&mut reuse, &x, s).1.refresh;
        let info = Engine::reuse_info(&reuse).unwrap();
        assert_eq!(info.start_period, 4);
        assert_eq!(info.scheduled_refresh, r.is_some(), "{r:?}");
        seen.push((r, info.period));
    }
    // A static scene agrees with itself: the period doubles at each scheduled refresh.
    let (p, n) = (Some(Refresh::Periodic), None);
    assert_eq!(&seen[..6], &[(Some(Refresh::Reset), 4), (n, 4), (n, 4), (n, 4), (p, 8), (n, 8)]);
    assert_eq!(seen[12], (p, 16), "{seen:?}");
    // A new input size starts the schedule again.
    run(&mut reuse, &image(112, 7), 112);
    assert_eq!(Engine::reuse_info(&reuse).unwrap().period, 4);
    // A fixed schedule reports refresh_every; none reports 0.
    for (every, iou, want) in [(30, 0.0, 30), (0, 0.0, 0), (0, 0.9, 0)] {
        let (_, mut lane) =
            lanes(&tiny(), &[s], ReuseConfig { refresh_every: every, refresh_iou: iou, ..adaptive.clone() });
        run(&mut lane, &x, s);
        run(&mut lane, &x, s);
        let info = Engine::reuse_info(&lane).unwrap();
        assert_eq!((info.period, info.start_period), (want, want), "refresh_every {every}, refresh_iou {iou}");
    }
}
