//! Decoding and conversion on frames made from the real photos: MJPEG (with and without Huffman
//! tables), YUYV, GREY and RGB24, each compared with the original within a stated tolerance.

use crate::common::*;
use ailurus::source::decode::{raw_to_rgb, DecodeError, Decoder, PixelFormat};

/// JPEG (the `image` crate's own encoder) at quality 95 vs the original photo: PSNR at least
/// 38 dB and mean error at most 2.5 levels per channel (lossy compression, 4:2:0 chroma; measured
/// 40.3..52.6 dB and 0.25..1.78 on these photos). Not compared with the `image` crate's decoder:
/// it is zune-jpeg too.
#[test]
fn mjpeg_from_photos_matches_the_original() {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for (name, img) in photos() {
        let jpeg = encode_jpeg(&img, 95);
        let (w, h) = dec
            .decode(PixelFormat::Mjpeg, &jpeg, img.width(), img.height(), 0, &mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((w, h), img.dimensions());
        assert_eq!(out.len(), (w * h * 3) as usize);
        let p = psnr(&out, img.as_raw());
        let (mean, _) = diff_stats(&out, img.as_raw());
        println!("MJPEG {name}: PSNR {p:.1} dB, mean error {mean:.2}");
        assert!(p >= 38.0 && mean <= 2.5, "{name}: PSNR {p:.1} dB, mean error {mean:.2}");
    }
}

/// A frame without DHT (as UVC cameras send) decodes to exactly the same pixels as the frame
/// with its tables, because the standard tables are inserted; without that insertion the JPEG
/// decoder alone rejects it.
#[test]
fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
    let mut dec = Decoder::new();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for (name, img) in photos().into_iter().take(4) {
        let jpeg = encode_jpeg(&img, 80);
        let bare = strip_dht(&jpeg);
        assert!(bare.len() < jpeg.len() && !bare.windows(2).any(|w| w == [0xFF, 0xC4]), "{name}: tables stripped");
        dec.decode_mjpeg(&jpeg, None, &mut with).unwrap();
        dec.decode_mjpeg(&bare, None, &mut without).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(with == without, "{name}: identical pixels with inserted tables");
        let plain = zune_jpeg::JpegDecoder::new(bare.as_slice()).decode();
        assert!(plain.is_err(), "{name}: the JPEG decoder alone cannot decode a frame without tables");
    }
}

/// YUYV made by the test (BT.601 limited range in floating point, chroma averaged per pair). On
/// images whose pixel pairs share one colour the round trip is exact up to quantisation: at most
/// 2 levels per channel (measured 1..2). On the photos themselves chroma subsampling blurs colour
/// edges: mean error at most 2 levels and PSNR at least 35 dB (measured 0.14..1.43, 37.2..56.7).
#[test]
fn yuyv_from_photos_round_trips() {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for (name, img) in photos() {
        let img = even_width(&img);
        let (w, h) = img.dimensions();
        let yuyv = encode_yuyv(&img);
        dec.decode(PixelFormat::Yuyv, &yuyv, w, h, 0, &mut out).unwrap();
        let (mean, _) = diff_stats(&out, img.as_raw());
        let p = psnr(&out, img.as_raw());
        assert!(mean <= 2.0 && p >= 35.0, "{name}: mean {mean:.2}, PSNR {p:.1} dB");
        print!("YUYV {name}: mean error {mean:.2}, PSNR {p:.1} dB");

        // Pairs of equal pixels: no subsampling loss.
        let mut pairs = img.clone();
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let p = *pairs.get_pixel(x, y);
                pairs.put_pixel(x + 1, y, p);
            }
        }
        dec.decode(PixelFormat::Yuyv, &encode_yuyv(&pairs), w, h, 0, &mut out).unwrap();
        let (_, max) = diff_stats(&out, pairs.as_raw());
        println!(", pair-constant max error {max}");
        assert!(max <= 2, "{name}: max error {max} on pair-constant image");
    }
}

/// YUYV with a driver stride (padding after each line) decodes like the packed frame.
#[test]
fn yuyv_with_stride_equals_packed() {
    let (name, img) = photos().swap_remove(0);
    let img = even_width(&img);
    let (w, h) = img.dimensions();
    let packed = encode_yuyv(&img);
    let stride = w as usize * 2 + 64;
    let mut padded = vec![0xAB; stride * h as usize];
    for y in 0..h as usize {
        padded[y * stride..y * stride + w as usize * 2]
            .copy_from_slice(&packed[y * w as usize * 2..(y + 1) * w as usize * 2]);
    }
    let (mut a, mut b) = (vec![0; (w * h * 3) as usize], vec![0; (w * h * 3) as usize]);
    raw_to_rgb(PixelFormat::Yuyv, &packed, w, h, 0, &mut a).unwrap();
    raw_to_rgb(PixelFormat::Yuyv, &padded, w, h, stride, &mut b).unwrap();
    assert!(a == b, "{name}");
}

/// GREY replicates luminance exactly; RGB24 is copied exactly.
#[test]
fn grey_and_rgb24_are_exact() {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for (name, img) in photos() {
        let (w, h) = img.dimensions();
        let grey = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
        dec.decode(PixelFormat::Grey, grey.as_raw(), w, h, 0, &mut out).unwrap();
        assert!(out.chunks_exact(3).zip(grey.as_raw()).all(|(p, &g)| p == [g, g, g]), "{name}: GREY");
        dec.decode(PixelFormat::Rgb24, img.as_raw(), w, h, 0, &mut out).unwrap();
        assert!(out == *img.as_raw(), "{name}: RGB24");
    }
}

/// A JPEG of another size than negotiated, a truncated one, and a short raw buffer are errors.
#[test]
fn wrong_size_truncated_and_short_frames_are_errors() {
    let (_, img) = photos().swap_remove(3);
    let jpeg = encode_jpeg(&img, 90);
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let err = dec.decode(PixelFormat::Mjpeg, &jpeg, 640, 480, 0, &mut out).unwrap_err();
    assert!(matches!(err, DecodeError::SizeMismatch { want_width: 640, .. }), "{err}");
    for cut in [jpeg.len() - 2, jpeg.len() / 2, 700, 100, 3] {
        let err = dec.decode_mjpeg(&jpeg[..cut], None, &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { .. } | DecodeError::Corrupt { .. }), "cut {cut}: {err}");
    }
    // Trailing padding after EOI (cameras pad their buffers) is fine.
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0u8; 1000]);
    assert!(dec.decode_mjpeg(&padded, None, &mut out).is_ok());
    let err = dec.decode(PixelFormat::Yuyv, &[0; 100], 16, 16, 0, &mut out).unwrap_err();
    assert!(matches!(err, DecodeError::Short { want: 512, got: 100, .. }), "{err}");
    assert!(matches!(dec.decode(PixelFormat::Mjpeg, &[], 0, 0, 0, &mut out), Err(DecodeError::Empty)));
}

/// A corrupt SOF claiming a huge image is rejected before any allocation.
#[test]
fn huge_frame_header_is_rejected_up_front() {
    let (_, img) = photos().swap_remove(3);
    let mut jpeg = encode_jpeg(&img, 90);
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let mut out = Vec::new();
    let err = Decoder::new().decode_mjpeg(&jpeg, None, &mut out).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { width: 65535, height: 65535, .. }), "{err}");
    assert!(out.capacity() < 1 << 20, "no giant buffer was allocated");
}
