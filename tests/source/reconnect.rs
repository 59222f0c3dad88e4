//! The reconnect logic against a scripted fake camera that fails on a schedule, on a fake clock
//! (no real sleeping): waiting for a missing camera, losing it mid-stream, a camera that stops
//! sending, corrupt frames, a refused format, stop while down, and the real V4L2 opener on a
//! device that does not exist.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use ailurus::source::reconnect::{ReconnectOptions, ReconnectingSource};
use ailurus::source::{FrameSource, SourceConfig, SourceError};

/// Backoffs at most 50 ms are slept in one call, so the fake clock sees each delay whole.
fn opts() -> ReconnectOptions {
    ReconnectOptions {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(40),
        ..Default::default()
    }
}

fn photo_frame() -> (Vec<u8>, u32, u32) {
    let (_, img) = photos().swap_remove(3);
    let small = image::imageops::thumbnail(&img, 64, 48);
    (encode_jpeg(&small, 85), small.width(), small.height())
}

fn lines_about(dev: &str) -> Vec<String> {
    logs().0.lock().unwrap().iter().filter(|l| l.contains(dev)).cloned().collect()
}

#[test]
fn missing_camera_is_waited_for_then_lost_and_found_again() {
    logs();
    let dev = "/dev/fake-missing0";
    let (jpeg, w, h) = photo_frame();
    let f = || Ev::Frame(jpeg.clone());
    use Ev::*;
    let script = vec![Missing, Missing, Busy, Open, f(), f(), Unplug, Missing, Missing, Open, f(), f()];
    let opener = FakeOpener::new(dev, w, h, script);
    let state = opener.state.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let clock = FakeClock::new(stop.clone(), None);
    let mut src = ReconnectingSource::start(Box::new(opener), opts(), clock.clone(), stop.clone()).unwrap();

    let health = src.health().unwrap();
    let snap = health.snapshot();
    assert!(!snap.up);
    assert_eq!(snap.status, "camera down");
    assert!(snap.last_error.as_deref().unwrap().contains("no such device"), "{snap}");
    assert!(lines_about(dev).iter().any(|l| l.contains(&format!("waiting for {dev}"))), "{:?}", lines_about(dev));

    for i in 0..4 {
        let frame = src.next_frame().unwrap().unwrap_or_else(|| panic!("frame {i}"));
        assert_eq!((frame.width, frame.height, frame.seq), (w, h, i));
        // Two frames, the unplug, two frames: the reopened camera's frames are a new epoch.
        assert_eq!(frame.epoch, if i < 2 { 0 } else { 1 }, "frame {i}");
        assert!(health.is_up());
    }
    // start() tried once without waiting; then Missing, Busy: 5, 10 ms; open; frames; unplug:
    // 5 ms (backoff reset by the frames); Missing, Missing: 10, 20 ms; open; frames.
    assert_eq!(clock.sleeps_ms(), [5, 10, 5, 10, 20]);
    let snap = health.snapshot();
    assert_eq!((snap.frames, snap.bad_frames, snap.reconnects, snap.open_failures), (4, 0, 1, 5));
    assert_eq!(state.max_live.load(Ordering::SeqCst), 1, "never two handles at once");
    assert_eq!(state.opens.load(Ordering::SeqCst), 2);
    let log = lines_about(dev).join("\n");
    assert!(log.contains(&format!("camera {dev} lost")), "{log}");
    assert!(log.contains("frames resume"), "{log}");
    drop(src);
    assert_eq!(state.live.load(Ordering::SeqCst), 0, "the handle is released on drop");
}

#[test]
fn backoff_grows_to_the_cap_and_stop_ends_the_wait() {
    let (_, w, h) = photo_frame();
    let opener = FakeOpener::new("/dev/fake-never", w, h, vec![]);
    let stop = Arc::new(AtomicBool::new(false));
    let clock = FakeClock::new(stop.clone(), Some(7));
    let mut src = ReconnectingSource::start(Box::new(opener), opts(), clock.clone(), stop.clone()).unwrap();
    assert!(src.next_frame().unwrap().is_none(), "stop while waiting ends the stream");
    assert_eq!(clock.sleeps_ms(), [5, 10, 20, 40, 40, 40, 40]);
    assert_eq!(src.health().unwrap().open_failures(), 8);
}

#[test]
fn camera_that_stops_sending_is_reopened() {
    let dev = "/dev/fake-stall";
    let (jpeg, w, h) = photo_frame();
    use Ev::*;
    let script = vec![Open, Frame(jpeg.clone()), Stall, Open, Frame(jpeg.clone())];
    let opener = FakeOpener::new(dev, w, h, script);
    let state = opener.state.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut src =
        ReconnectingSource::start(Box::new(opener), opts(), FakeClock::new(stop.clone(), None), stop).unwrap();
    assert!(src.next_frame().unwrap().is_some());
    assert!(src.next_frame().unwrap().is_some());
    let snap = src.health().unwrap().snapshot();
    assert_eq!(snap.reconnects, 1);
    assert!(snap.last_error.unwrap().contains("stopped sending"));
    assert_eq!(state.max_live.load(Ordering::SeqCst), 1);
}

#[test]
fn corrupt_frames_are_skipped_and_counted_without_reconnecting() {
    let (jpeg, w, h) = photo_frame();
    let bare = strip_dht(&jpeg);
    use Ev::*;
    let script = vec![
        Open,
        Frame(bare.clone()),
        Frame(jpeg[..jpeg.len() / 2].to_vec()),
        Frame(b"\xFF\xD8 not a jpeg at all".to_vec()),
        DriverError,
        Frame(vec![]),
        Frame(encode_jpeg(&image::RgbImage::new(32, 32), 80)),
        Frame(jpeg.clone()),
    ];
    let opener = FakeOpener::new("/dev/fake-corrupt", w, h, script);
    let stop = Arc::new(AtomicBool::new(false));
    let mut src =
        ReconnectingSource::start(Box::new(opener), opts(), FakeClock::new(stop.clone(), None), stop).unwrap();
    assert!(src.next_frame().unwrap().is_some(), "a frame without Huffman tables decodes");
    for i in 0..5 {
        let err = src.next_frame().unwrap_err();
        assert!(err.is_frame_fault(), "{i}: {err}");
    }
    let last = src.next_frame().unwrap().unwrap();
    assert_eq!(last.seq, 6, "sequence numbers count the skipped frames");
    let snap = src.health().unwrap().snapshot();
    assert_eq!((snap.frames, snap.bad_frames, snap.reconnects), (2, 5, 0));
    assert!(snap.up);
}

#[test]
fn refused_format_fails_start_up_listing_the_offers() {
    let mut opener = FakeOpener::new("/dev/fake-refuse", 64, 48, vec![Ev::Open]);
    opener.want.width = 1920;
    opener.want.height = 1080;
    let stop = Arc::new(AtomicBool::new(false));
    let err =
        ReconnectingSource::start(Box::new(opener), opts(), FakeClock::new(stop.clone(), None), stop).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::Device(_)));
    assert!(
        msg.contains(
            "/dev/fake-refuse: the camera refuses MJPG or YUYV at 1920x1080; it offers: MJPG 64x48 (30, 15 fps)"
        ),
        "{msg}"
    );
}

#[test]
fn frames_carry_the_driver_timestamp_and_reuse_pooled_buffers() {
    let (jpeg, w, h) = photo_frame();
    let stamp = Instant::now() - Duration::from_millis(25);
    let mut opener =
        FakeOpener::new("/dev/fake-pool", w, h, vec![Ev::Open, Ev::Frame(jpeg.clone()), Ev::Frame(jpeg.clone())]);
    opener.captured = Some(stamp);
    let stop = Arc::new(AtomicBool::new(false));
    let mut src =
        ReconnectingSource::start(Box::new(opener), opts(), FakeClock::new(stop.clone(), None), stop).unwrap();
    let a = src.next_frame().unwrap().unwrap();
    assert_eq!(a.captured, stamp);
    let ptr = a.rgb.as_ptr();
    src.recycle(a);
    let b = src.next_frame().unwrap().unwrap();
    assert_eq!(b.rgb.as_ptr(), ptr, "the recycled buffer is reused");
}

/// The real V4L2 path with a device node that does not exist: `build` succeeds with the source
/// down, logs "waiting for <device>", and `next_frame` keeps retrying until stopped.
#[cfg(feature = "camera")]
#[test]
fn real_v4l_source_waits_for_a_missing_device() {
    logs();
    let dev = "/dev/video-ailurus-test-missing";
    let mut cfg = SourceConfig { kind: "v4l".into(), ..Default::default() };
    cfg.v4l.device = dev.into();
    cfg.v4l.backoff_min_ms = 1;
    cfg.v4l.backoff_max_ms = 2;
    let stop = Arc::new(AtomicBool::new(false));
    let mut src = ailurus::source::build_with_stop(&cfg, std::path::Path::new("."), stop.clone()).unwrap();
    let health = src.health().unwrap();
    assert_eq!(health.snapshot().status, "camera down");
    assert!(
        lines_about(dev).iter().any(|l| l.starts_with("WARN") && l.contains(&format!("waiting for {dev}"))),
        "{:?}",
        lines_about(dev)
    );
    let stopper = {
        let (stop, health) = (stop.clone(), health.clone());
        std::thread::spawn(move || {
            while health.open_failures() < 5 {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    assert!(src.next_frame().unwrap().is_none());
    stopper.join().unwrap();
    assert!(health.open_failures() >= 5);
}
