//! Re-creating device handles must not leak: open and close many times, counting this process's
//! file descriptors in /proc/self/fd. The only test in its binary, so no other test opens files
//! meanwhile.

#[path = "source/common.rs"]
mod source_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ailurus::source::reconnect::{ReconnectOptions, ReconnectingSource};
use ailurus::source::stream::{StreamOptions, StreamSource};
use ailurus::source::FrameSource;
use source_common::*;

#[test]
fn reopening_devices_and_files_many_times_leaks_no_fds() {
    let (_, img) = photos().swap_remove(0);
    let small = image::imageops::thumbnail(&img, 32, 32);
    let jpeg = encode_jpeg(&small, 80);
    let opts = ReconnectOptions {
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        ..Default::default()
    };

    // Warm up once so lazily opened process-wide fds (if any) exist before the baseline.
    let _ = open_fds();
    let before = open_fds();

    // 1. The reconnecting source over a fake device whose every handle holds a real fd:
    //    300 cycles of open, frame, unplug.
    let cycles = 300;
    let mut script = vec![];
    for _ in 0..cycles {
        script.extend([Ev::Open, Ev::Frame(jpeg.clone()), Ev::Unplug]);
    }
    let opener = FakeOpener::new("/dev/fake-fd", small.width(), small.height(), script);
    let state = opener.state.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let clock = FakeClock::new(stop.clone(), None);
    let mut src = ReconnectingSource::start(Box::new(opener), opts, clock, stop.clone()).unwrap();
    for i in 0..cycles {
        let f = src.next_frame().unwrap().unwrap_or_else(|| panic!("frame {i}"));
        src.recycle(f);
        assert!(open_fds() <= before + 1, "cycle {i}: {} fds open, {before} before", open_fds());
    }
    assert_eq!(state.opens.load(Ordering::SeqCst), cycles);
    assert_eq!(state.max_live.load(Ordering::SeqCst), 1);
    drop(src);
    assert_eq!(open_fds(), before, "fake device handles");

    // 2. Whole sources built and dropped (stream files).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mjpeg");
    std::fs::write(&path, &jpeg).unwrap();
    for _ in 0..200 {
        let mut s = StreamSource::open(&path, StreamOptions::default()).unwrap();
        assert!(s.next_frame().unwrap().is_some());
    }
    assert_eq!(open_fds(), before, "stream files");

    // 3. The real V4L2 opener: a missing node, and a node that is not a camera (/dev/null: it
    //    opens, then VIDIOC_QUERYCAP fails) must close what they opened.
    #[cfg(feature = "camera")]
    {
        use ailurus::source::device::Opener;
        use ailurus::source::v4l::V4lOpener;
        for device in ["/dev/video-ailurus-test-missing", "/dev/null"] {
            let cfg = ailurus::source::V4lConfig { device: device.into(), ..Default::default() };
            let mut opener = V4lOpener::new(&cfg);
            for _ in 0..200 {
                let err = opener.open().err().expect("not a camera");
                assert!(err.is_transient() || err.to_string().contains(device), "{err}");
            }
            assert_eq!(open_fds(), before, "real opener on {device}");
        }
    }
}
