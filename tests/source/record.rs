//! `record`: frames from a (fake) camera saved as delivered and replayed by the stream source,
//! decoded frames from other sources saved as RGB3, and the CLI's `devices`/`record` commands.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::common::*;
use ailurus::source::device::Opener;
use ailurus::source::record::{record, record_capture, record_source};
use ailurus::source::stream::{StreamOptions, StreamSource};
use ailurus::source::synthetic::SyntheticSource;
use ailurus::source::{FrameSource, PixelFormat, SourceConfig};

#[test]
fn camera_frames_are_recorded_as_delivered_and_replay_identically() {
    let (_, img) = photos().swap_remove(4);
    let small = image::imageops::thumbnail(&img, 80, 60);
    let (w, h) = small.dimensions();
    let jpeg = strip_dht(&encode_jpeg(&small, 85));
    let truncated = jpeg[..jpeg.len() / 3].to_vec();
    let script =
        vec![Ev::Open, Ev::Frame(jpeg.clone()), Ev::Frame(truncated), Ev::Frame(jpeg.clone()), Ev::Frame(jpeg.clone())];
    let mut opener = FakeOpener::new("/dev/fake-rec", w, h, script);
    let mut cap = opener.open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.stream");
    let stop = AtomicBool::new(false);
    let sum = record_capture(cap.as_mut(), 3, &out, &stop).unwrap();
    assert_eq!(sum.frames, 3);
    assert_eq!(
        (sum.header.format, sum.header.width, sum.header.height, sum.header.fps),
        (PixelFormat::Mjpeg, w, h, 30.0)
    );
    assert!(sum.to_string().contains("replay with [source] kind = \"stream\""));

    let mut src = StreamSource::open(&out, StreamOptions::default()).unwrap();
    assert!(src.next_frame().unwrap().is_some());
    assert!(src.next_frame().unwrap_err().is_frame_fault(), "the truncated frame is reproduced");
    assert!(src.next_frame().unwrap().is_some());
    assert!(src.next_frame().unwrap().is_none());
}

#[test]
fn decoded_frames_are_recorded_as_rgb3_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("syn.stream");
    let mut src = SyntheticSource::new(40, 30, 0, 0.0);
    let sum = record_source(&mut src, 5, &out, 12.0, &AtomicBool::new(false)).unwrap();
    assert_eq!((sum.frames, sum.bad, sum.header.format, sum.header.fps), (5, 0, PixelFormat::Rgb24, 12.0));
    let mut fresh = SyntheticSource::new(40, 30, 0, 0.0);
    let mut replay = StreamSource::open(&out, StreamOptions::default()).unwrap();
    for i in 0..5 {
        let a = replay.next_frame().unwrap().unwrap();
        let b = fresh.next_frame().unwrap().unwrap();
        assert_eq!(a.rgb, b.rgb, "frame {i}");
    }
    assert!(replay.next_frame().unwrap().is_none());
}

#[test]
fn recording_the_photo_folder_skips_other_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("photos.stream");
    let cfg = SourceConfig { kind: "folder".into(), path: photos_dir(), looping: false, ..Default::default() };
    let sum = record(&cfg, std::path::Path::new("."), 100, &out, Arc::new(AtomicBool::new(false))).unwrap();
    // astronaut, brick, camera and grass are 512x512; the others differ from the first.
    assert_eq!((sum.header.width, sum.header.height), (512, 512));
    assert_eq!((sum.frames, sum.bad), (4, 6));
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ailurus")).args(args).output().expect("runs ailurus")
}

#[test]
fn cli_devices_and_record() {
    let out = cli(&["devices"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    if !std::path::Path::new("/dev/video0").exists() {
        assert!(text.contains("no V4L2 devices found"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syn.toml");
    std::fs::write(&cfg, "[source]\nkind = \"synthetic\"\n[source.synthetic]\nwidth = 16\nheight = 8\n").unwrap();
    let file = dir.path().join("out.stream");
    let out = cli(&["record", "-c", cfg.to_str().unwrap(), "--frames", "3", "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 frames of RGB3 16x8"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        "ailurus-stream 1 RGB3 16x8 30\n".len() as u64 + 3 * 16 * 8 * 3
    );
}
