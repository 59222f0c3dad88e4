//! Fuzz-style robustness, bounded and seeded: thousands of randomly mutated and truncated MJPEG
//! frames (made from the real photos) through the decoder and through the stream splitter. The
//! only requirements: no panic, no hang, and any `Ok` result has a consistent size.

use std::io::Write;

use crate::common::*;
use ailurus::source::decode::{DecodeError, Decoder, PixelFormat};
use ailurus::source::stream::{scan_jpeg, StreamOptions, StreamSource};
use ailurus::source::FrameSource;

/// Small frames from the photos, with and without Huffman tables.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![];
    for (_, img) in photos().into_iter().take(5) {
        let small = image::imageops::thumbnail(&img, 48, 40);
        let jpeg = encode_jpeg(&small, 75);
        out.push(strip_dht(&jpeg));
        out.push(jpeg);
    }
    out
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut d = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        if d.is_empty() {
            break;
        }
        let i = rng.below(d.len());
        match rng.below(7) {
            0 => d[i] ^= 1 << rng.below(8),
            1 => d[i] = rng.next() as u8,
            2 => d[i] = 0xFF,
            3 => d.truncate(i),
            4 => {
                let n = rng.below(16).min(d.len() - i);
                d.drain(i..i + n);
            }
            5 => {
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                d.splice(i..i, junk);
            }
            _ => {
                // Overwrite a length or size field near a marker.
                if let Some(m) = d.iter().skip(i).position(|&b| b == 0xFF).map(|p| p + i) {
                    for k in m + 2..(m + 9).min(d.len()) {
                        d[k] = rng.next() as u8;
                    }
                }
            }
        }
    }
    d
}

#[test]
fn mutated_jpegs_never_panic_and_sizes_stay_consistent() {
    let seeds = seeds();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let (mut ok, mut err, mut caught) = (0, 0, 0);
    for _ in 0..4000 {
        let base = &seeds[rng.below(seeds.len())];
        let frame = mutate(&mut rng, base);
        let want = if rng.below(2) == 0 { 48 } else { 0 };
        match dec.decode(PixelFormat::Mjpeg, &frame, want, want * 40 / 48, 0, &mut out) {
            Ok((w, h)) => {
                ok += 1;
                assert_eq!(out.len(), (w * h * 3) as usize);
                assert!(w <= dec.max_dim && h <= dec.max_dim);
            }
            Err(DecodeError::Panicked) => caught += 1,
            Err(_) => err += 1,
        }
        let _ = scan_jpeg(&frame);
    }
    println!("fuzz: {ok} decoded, {err} rejected, {caught} decoder panics caught");
    assert!(err > 1000, "most mutations must be rejected ({err})");
    assert!(ok > 0, "some mild mutations still decode ({ok})");
}

#[test]
fn every_truncation_of_a_frame_is_rejected() {
    let seeds = seeds();
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for s in &seeds[..2] {
        for cut in 0..s.len() - 1 {
            assert!(
                dec.decode(PixelFormat::Mjpeg, &s[..cut], 0, 0, 0, &mut out).is_err(),
                "cut at {cut} of {}",
                s.len()
            );
        }
    }
}

#[test]
fn a_stream_of_mutated_frames_plays_to_the_end() {
    let seeds = seeds();
    let mut rng = Rng(0xC0FF_EE00_0000_0002);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let path = dir.path().join(format!("fuzz{round}.mjpeg"));
        let mut f = std::fs::File::create(&path).unwrap();
        let n = 30;
        // The first frame is intact, so the file is recognised as MJPEG.
        f.write_all(&seeds[0]).unwrap();
        for _ in 1..n {
            let s = &seeds[rng.below(seeds.len())];
            let frame = if rng.below(3) == 0 { mutate(&mut rng, s) } else { s.clone() };
            f.write_all(&frame).unwrap();
        }
        drop(f);
        let mut src = StreamSource::open(&path, StreamOptions::default()).unwrap();
        let (mut good, mut bad) = (0u64, 0u64);
        for _ in 0..10 * n {
            match src.next_frame() {
                Ok(Some(_)) => good += 1,
                Ok(None) => break,
                Err(e) => {
                    assert!(e.is_frame_fault(), "{e}");
                    bad += 1;
                }
            }
        }
        assert!(src.next_frame().unwrap().is_none(), "round {round}: the stream ends");
        let h = src.health().unwrap();
        assert_eq!((h.frames(), h.bad_frames()), (good, bad));
        assert!(good >= 1, "round {round}: the intact first frame decodes");
    }
}
