//! Recorded streams: plain concatenated JPEGs, headed MJPEG and raw YUYV files, corrupt and
//! truncated frames in the middle and at the end, looping, and realtime pacing on a fake clock.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::common::*;
use ailurus::source::decode::PixelFormat;
use ailurus::source::stream::{StreamHeader, StreamOptions, StreamSource, StreamWriter};
use ailurus::source::{FrameSource, SourceError};

fn play(src: &mut StreamSource, max: usize) -> Vec<Result<(u64, u32, u32), String>> {
    let mut out = vec![];
    for _ in 0..max {
        match src.next_frame() {
            Ok(Some(f)) => out.push(Ok((f.seq, f.width, f.height))),
            Ok(None) => break,
            Err(e) => out.push(Err(e.to_string())),
        }
    }
    out
}

#[test]
fn plain_concatenated_jpegs_with_a_corrupt_and_a_truncated_frame() {
    let photos = photos();
    let frames: Vec<Vec<u8>> = photos.iter().take(4).map(|(_, img)| strip_dht(&encode_jpeg(img, 80))).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cam.mjpeg");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&frames[0]).unwrap();
    f.write_all(&frames[1][..frames[1].len() / 2]).unwrap(); // cut short, next frame follows
    f.write_all(b"garbage between frames").unwrap();
    f.write_all(&frames[2]).unwrap();
    f.write_all(&frames[3][..frames[3].len() - 100]).unwrap(); // truncated at the end of the file
    drop(f);
    let mut src = StreamSource::open(&path, StreamOptions::default()).unwrap();
    assert!(src.header().is_none());
    let got = play(&mut src, 10);
    assert_eq!(got.len(), 4, "{got:?}");
    let dims = |i: usize| photos[i].1.dimensions();
    assert_eq!(got[0], Ok((0, dims(0).0, dims(0).1)));
    assert!(got[1].as_ref().is_err_and(|e| e.contains("bad frame 1")), "{:?}", got[1]);
    assert_eq!(got[2], Ok((2, dims(2).0, dims(2).1)));
    assert!(got[3].as_ref().is_err_and(|e| e.contains("truncated")), "{:?}", got[3]);
    let h = src.health().unwrap().snapshot();
    assert_eq!((h.frames, h.bad_frames), (2, 2));
    assert!(h.last_error.unwrap().contains("truncated"));
}

#[test]
fn headed_mjpeg_stream_loops_and_checks_frame_size() {
    let photos = photos();
    let (w, h) = photos[0].1.dimensions();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cam.stream");
    let header = StreamHeader { format: PixelFormat::Mjpeg, width: w, height: h, fps: 15.0 };
    let mut wr = StreamWriter::create(&path, header).unwrap();
    wr.write_frame(&encode_jpeg(&photos[0].1, 85), 0).unwrap();
    wr.write_frame(&encode_jpeg(&photos[3].1, 85), 0).unwrap(); // another size: a bad frame
    assert_eq!(wr.finish().unwrap(), 2);
    let mut src = StreamSource::open(&path, StreamOptions { looping: true, ..Default::default() }).unwrap();
    assert_eq!(src.header(), Some(header));
    let got = play(&mut src, 5);
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], Ok((0, w, h)));
    assert!(got[1].as_ref().is_err_and(|e| e.contains(&format!("expected {w}x{h}"))), "{:?}", got[1]);
    assert_eq!(got[2], Ok((2, w, h)), "looped back to the first frame");
}

#[test]
fn raw_yuyv_stream_decodes_each_frame_and_flags_a_short_tail() {
    let photos = photos();
    let img = even_width(&photos[0].1);
    let (w, h) = img.dimensions();
    let yuyv = encode_yuyv(&img);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cam.yuyv");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(f, "{}", StreamHeader { format: PixelFormat::Yuyv, width: w, height: h, fps: 30.0 }).unwrap();
    f.write_all(&yuyv).unwrap();
    f.write_all(&yuyv).unwrap();
    f.write_all(&yuyv[..1000]).unwrap();
    drop(f);
    let mut src = StreamSource::open(&path, StreamOptions::default()).unwrap();
    let a = src.next_frame().unwrap().unwrap();
    let (mean, _) = diff_stats(&a.rgb, img.as_raw());
    assert!(mean <= 2.0, "mean error {mean}");
    let b = src.next_frame().unwrap().unwrap();
    assert_eq!(a.rgb, b.rgb);
    let err = src.next_frame().unwrap_err();
    assert!(matches!(err, SourceError::Decode { seq: 2, .. }), "{err}");
    assert!(src.next_frame().unwrap().is_none());
}

#[test]
fn realtime_paces_at_the_recorded_rate_and_fps_overrides_it() {
    let photos = photos();
    let img = even_width(&image::imageops::thumbnail(&photos[0].1, 32, 32));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cam.rgb");
    let header = StreamHeader { format: PixelFormat::Rgb24, width: img.width(), height: img.height(), fps: 20.0 };
    let mut wr = StreamWriter::create(&path, header).unwrap();
    for _ in 0..4 {
        wr.write_frame(img.as_raw(), 0).unwrap();
    }
    wr.finish().unwrap();
    for (opts, period) in [
        (StreamOptions { realtime: true, ..Default::default() }, Some(50)),
        (StreamOptions { realtime: true, fps: 100.0, ..Default::default() }, Some(10)),
        (StreamOptions::default(), None),
    ] {
        let clock = FakeClock::new(Arc::new(AtomicBool::new(false)), None);
        let mut src = StreamSource::open_with_clock(&path, opts, clock.clone()).unwrap();
        let mut n = 0;
        while let Some(f) = src.next_frame().unwrap() {
            assert_eq!(f.rgb, *img.as_raw());
            n += 1;
        }
        assert_eq!(n, 4);
        let want: Vec<u64> = period.map_or(vec![], |p| vec![p; 3]);
        assert_eq!(clock.sleeps_ms(), want, "{opts:?}");
    }
}

#[test]
fn not_a_stream_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello").unwrap();
    let err = StreamSource::open(&path, StreamOptions::default()).err().unwrap();
    assert!(err.to_string().contains("not a recorded stream"), "{err}");
    std::fs::write(&path, "ailurus-stream 1 YUYV 640x480\n").unwrap();
    let err = StreamSource::open(&path, StreamOptions::default()).err().unwrap();
    assert!(err.to_string().contains("header"), "{err}");
}

#[test]
fn empty_looping_stream_ends_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.stream");
    std::fs::write(&path, "ailurus-stream 1 GREY 4x4 30\n").unwrap();
    let mut src = StreamSource::open(&path, StreamOptions { looping: true, ..Default::default() }).unwrap();
    assert!(src.next_frame().unwrap().is_none());
}
