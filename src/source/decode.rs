//! Raw camera payloads to packed RGB8: MJPEG (zune-jpeg, with the standard Huffman tables
//! inserted when a frame carries none, as most UVC cameras send them), YUYV (BT.601 limited
//! range), GREY and RGB24.
//!
//! Owns pixel-format names, conversion and the JPEG structure checks that keep a corrupt frame
//! from crashing or ballooning memory. Must not do I/O or know about devices. Every input, however
//! malformed, ends in `Ok` or a `DecodeError`: never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// The pixel formats a source can deliver (V4L2 fourccs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Motion JPEG: one baseline JPEG per frame, often without Huffman tables.
    Mjpeg,
    /// Packed 4:2:2 `Y0 U Y1 V`, BT.601 limited range.
    Yuyv,
    /// 8-bit luminance.
    Grey,
    /// Packed `R G B`.
    Rgb24,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 4] = [PixelFormat::Mjpeg, PixelFormat::Yuyv, PixelFormat::Grey, PixelFormat::Rgb24];

    /// The V4L2 fourcc.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Rgb24 => *b"RGB3",
        }
    }

    /// The fourcc as text (`MJPG`).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "MJPG",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Grey => "GREY",
            PixelFormat::Rgb24 => "RGB3",
        }
    }

    /// The format of a V4L2 fourcc; `JPEG` counts as MJPEG.
    pub fn from_fourcc(f: &[u8; 4]) -> Option<PixelFormat> {
        match f {
            b"JPEG" => Some(PixelFormat::Mjpeg),
            _ => Self::ALL.into_iter().find(|p| &p.fourcc() == f),
        }
    }

    /// Parse a fourcc name from a config (`"MJPG"`, `"YUYV"`, `"GREY"`, `"RGB3"`).
    pub fn parse(s: &str) -> Option<PixelFormat> {
        let b = s.as_bytes();
        (b.len() == 4).then(|| Self::from_fourcc(&[b[0], b[1], b[2], b[3]])).flatten()
    }

    /// Bytes per pixel of the packed raw formats; `None` for MJPEG.
    pub fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            PixelFormat::Mjpeg => None,
            PixelFormat::Yuyv => Some(2),
            PixelFormat::Grey => Some(1),
            PixelFormat::Rgb24 => Some(3),
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame could not be turned into RGB. The caller adds the origin and sequence number.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{format} {width}x{height}: {got} bytes, expected at least {want}")]
    Short { format: PixelFormat, width: u32, height: u32, got: usize, want: usize },
    #[error("YUYV width {width} is odd")]
    OddWidth { width: u32 },
    #[error("empty frame (0 bytes)")]
    Empty,
    #[error("not a JPEG: no start-of-image marker")]
    NotJpeg,
    #[error("JPEG truncated: no end-of-image marker in {len} bytes")]
    Truncated { len: usize },
    #[error("JPEG corrupt at byte {offset}: {what}")]
    Corrupt { offset: usize, what: &'static str },
    #[error("JPEG is {width}x{height}, expected {want_width}x{want_height}")]
    SizeMismatch { width: u32, height: u32, want_width: u32, want_height: u32 },
    #[error("JPEG is {width}x{height}, over the {max}x{max} limit")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error("JPEG: {0}")]
    Jpeg(#[source] zune_jpeg::errors::DecodeErrors),
    #[error("JPEG decoder panicked (treated as a corrupt frame)")]
    Panicked,
}

/// The standard Huffman tables of JPEG Annex K.3 as one DHT segment (what MJPEG omits).
pub const STANDARD_DHT: [u8; 420] = standard_dht();

const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14,
    0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09,
    0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65,
    0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9,
    0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
    0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA,
    0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22, 0x32,
    0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16,
    0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39,
    0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86,
    0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8,
    0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9,
    0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];

const fn standard_dht() -> [u8; 420] {
    let mut out = [0u8; 420];
    out[0] = 0xFF;
    out[1] = 0xC4;
    out[2] = (418 >> 8) as u8;
    out[3] = (418 & 0xFF) as u8;
    let mut at = 4;
    at = put_table(&mut out, at, 0x00, &DC_LUMA_BITS, &DC_VALUES);
    at = put_table(&mut out, at, 0x01, &DC_CHROMA_BITS, &DC_VALUES);
    at = put_table(&mut out, at, 0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES);
    at = put_table(&mut out, at, 0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES);
    assert!(at == 420);
    out
}

const fn put_table(out: &mut [u8; 420], mut at: usize, class_id: u8, bits: &[u8; 16], values: &[u8]) -> usize {
    out[at] = class_id;
    at += 1;
    let mut i = 0;
    while i < 16 {
        out[at + i] = bits[i];
        i += 1;
    }
    at += 16;
    let mut j = 0;
    while j < values.len() {
        out[at + j] = values[j];
        j += 1;
    }
    at + values.len()
}

/// What the segment walk of a JPEG found before its first scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeaders {
    /// Offset of the first SOS marker.
    pub sos: usize,
    /// Whether a DHT segment came before it.
    pub has_dht: bool,
    /// Frame size from the SOF segment.
    pub width: u32,
    pub height: u32,
}

fn be16(d: &[u8], at: usize) -> Option<usize> {
    Some(((*d.get(at)? as usize) << 8) | *d.get(at + 1)? as usize)
}

/// Walk the marker segments from SOI to the first SOS (no entropy data is read).
pub fn jpeg_headers(d: &[u8]) -> Result<JpegHeaders, DecodeError> {
    if d.len() < 2 || d[0] != 0xFF || d[1] != 0xD8 {
        return Err(DecodeError::NotJpeg);
    }
    let (mut at, mut has_dht, mut size) = (2usize, false, None);
    loop {
        let corrupt = |what| DecodeError::Corrupt { offset: at, what };
        let Some(&ff) = d.get(at) else {
            return Err(DecodeError::Truncated { len: d.len() });
        };
        if ff != 0xFF {
            return Err(corrupt("expected a marker"));
        }
        let Some(&m) = d.get(at + 1) else {
            return Err(DecodeError::Truncated { len: d.len() });
        };
        match m {
            0xFF => at += 1, // fill byte
            0xD8 => return Err(corrupt("second start-of-image before any scan")),
            0xD9 => return Err(corrupt("end-of-image before any scan")),
            0x01 | 0xD0..=0xD7 => at += 2,
            0xDA => {
                let (width, height) = size.ok_or(corrupt("scan before the frame header (SOF)"))?;
                return Ok(JpegHeaders { sos: at, has_dht, width, height });
            }
            _ => {
                let len = be16(d, at + 2).ok_or(DecodeError::Truncated { len: d.len() })?;
                if len < 2 {
                    return Err(corrupt("segment length under 2"));
                }
                if m == 0xC4 {
                    has_dht = true;
                }
                if matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC) {
                    let h = be16(d, at + 5).ok_or(DecodeError::Truncated { len: d.len() })?;
                    let w = be16(d, at + 7).ok_or(DecodeError::Truncated { len: d.len() })?;
                    size = Some((w as u32, h as u32));
                }
                at += 2 + len;
            }
        }
    }
}

/// The frame without trailing padding: cut after the last end-of-image marker found in the last
/// 4 KiB (cameras pad their buffers). `None` when there is none: the frame is truncated.
fn trim_to_eoi(d: &[u8]) -> Option<&[u8]> {
    let from = d.len().saturating_sub(4096);
    let tail = &d[from..];
    let i = tail.windows(2).rposition(|w| w == [0xFF, 0xD9])?;
    Some(&d[..from + i + 2])
}

/// Converts raw payloads to RGB, keeping its scratch (the DHT-patched copy) between frames.
#[derive(Debug)]
pub struct Decoder {
    scratch: Vec<u8>,
    /// Largest width or height accepted from a JPEG header (a corrupt SOF must not make the
    /// decoder allocate gigabytes).
    pub max_dim: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { scratch: Vec::new(), max_dim: 8192 }
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decode one frame into `out` (resized to `width * height * 3`); returns the frame size.
    /// `width`/`height` are the negotiated size: required for raw formats, and for MJPEG the
    /// size the JPEG must have (0 = accept any size up to `max_dim`). `stride` is the raw bytes
    /// per line (0 = packed).
    pub fn decode(
        &mut self,
        format: PixelFormat,
        data: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        out: &mut Vec<u8>,
    ) -> Result<(u32, u32), DecodeError> {
        if data.is_empty() {
            return Err(DecodeError::Empty);
        }
        match format {
            PixelFormat::Mjpeg => {
                let want = (width > 0 && height > 0).then_some((width, height));
                self.decode_mjpeg(data, want, out)
            }
            raw => {
                out.resize(width as usize * height as usize * 3, 0);
                raw_to_rgb(raw, data, width, height, stride, out)?;
                Ok((width, height))
            }
        }
    }

    /// Decode one (M)JPEG frame into `out`, inserting the standard Huffman tables when the frame
    /// has none. `want`: the size the frame must have.
    pub fn decode_mjpeg(
        &mut self,
        data: &[u8],
        want: Option<(u32, u32)>,
        out: &mut Vec<u8>,
    ) -> Result<(u32, u32), DecodeError> {
        let data = trim_to_eoi(data).ok_or(DecodeError::Truncated { len: data.len() })?;
        let h = jpeg_headers(data)?;
        if h.width == 0 || h.height == 0 || h.width > self.max_dim || h.height > self.max_dim {
            return Err(DecodeError::TooLarge { width: h.width, height: h.height, max: self.max_dim });
        }
        if let Some((ww, wh)) = want {
            if (h.width, h.height) != (ww, wh) {
                return Err(DecodeError::SizeMismatch {
                    width: h.width,
                    height: h.height,
                    want_width: ww,
                    want_height: wh,
                });
            }
        }
        let input: &[u8] = if h.has_dht {
            data
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(&data[..h.sos]);
            self.scratch.extend_from_slice(&STANDARD_DHT);
            self.scratch.extend_from_slice(&data[h.sos..]);
            &self.scratch
        };
        out.resize(h.width as usize * h.height as usize * 3, 0);
        let max = self.max_dim as usize;
        let res = catch_unwind(AssertUnwindSafe(|| {
            let opts = DecoderOptions::default()
                .set_strict_mode(true)
                .set_max_width(max)
                .set_max_height(max)
                .jpeg_set_out_colorspace(ColorSpace::RGB);
            let mut dec = JpegDecoder::new_with_options(input, opts);
            dec.decode_headers()?;
            let (w, hh) = dec.dimensions().ok_or(zune_jpeg::errors::DecodeErrors::FormatStatic("no dimensions"))?;
            if (w as u32, hh as u32) != (h.width, h.height) || dec.output_buffer_size() != Some(out.len()) {
                return Err(zune_jpeg::errors::DecodeErrors::FormatStatic("output size differs from the frame header"));
            }
            dec.decode_into(out)
        }));
        match res {
            Ok(Ok(())) => Ok((h.width, h.height)),
            Ok(Err(e)) => Err(DecodeError::Jpeg(e)),
            Err(_) => Err(DecodeError::Panicked),
        }
    }
}

/// Convert a packed raw frame (`YUYV`, `GREY`, `RGB3`) of `width x height` with `stride` bytes per
/// line (0 = packed) into `out` (`width * height * 3` bytes).
pub fn raw_to_rgb(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    let bpp = match format.bytes_per_pixel() {
        Some(b) => b,
        None => return Err(DecodeError::NotJpeg),
    };
    let (w, h) = (width as usize, height as usize);
    if format == PixelFormat::Yuyv && w % 2 == 1 {
        return Err(DecodeError::OddWidth { width });
    }
    let line = w * bpp;
    let stride = if stride == 0 { line } else { stride.max(line) };
    let want = if h == 0 { 0 } else { stride * (h - 1) + line };
    if data.len() < want || out.len() < w * h * 3 {
        return Err(DecodeError::Short { format, width, height, got: data.len(), want });
    }
    for y in 0..h {
        let src = &data[y * stride..y * stride + line];
        let dst = &mut out[y * w * 3..(y + 1) * w * 3];
        match format {
            PixelFormat::Yuyv => yuyv_row(src, dst),
            PixelFormat::Grey => {
                for (d, &g) in dst.chunks_exact_mut(3).zip(src) {
                    d.fill(g);
                }
            }
            PixelFormat::Rgb24 => dst.copy_from_slice(src),
            PixelFormat::Mjpeg => unreachable!("MJPEG has no bytes-per-pixel"),
        }
    }
    Ok(())
}

#[inline]
fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// One YUYV pixel to RGB: BT.601 limited range, 8.8 fixed point.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16) + 128;
    let (d, e) = (u as i32 - 128, v as i32 - 128);
    [clamp8((c + 409 * e) >> 8), clamp8((c - 100 * d - 208 * e) >> 8), clamp8((c + 516 * d) >> 8)]
}

fn yuyv_row(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
        let (y0, u, y1, v) = (s[0], s[1], s[2], s[3]);
        d[..3].copy_from_slice(&yuv_to_rgb(y0, u, v));
        d[3..].copy_from_slice(&yuv_to_rgb(y1, u, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BT.601 limited-range inverse with the exact coefficients, in floating point.
    fn yuv_to_rgb_reference(y: u8, u: u8, v: u8) -> [f64; 3] {
        let (y, u, v) = (y as f64 - 16.0, u as f64 - 128.0, v as f64 - 128.0);
        let k = 255.0 / 219.0;
        let r = k * y + 1.402 * (255.0 / 224.0) * v;
        let g = k * y - 0.344136 * (255.0 / 224.0) * u - 0.714136 * (255.0 / 224.0) * v;
        let b = k * y + 1.772 * (255.0 / 224.0) * u;
        [r, g, b].map(|c| c.clamp(0.0, 255.0))
    }

    #[test]
    fn fixed_point_yuv_matches_float_reference_on_every_input_within_one() {
        // Exhaustive over Y and a 4-step grid of U, V (about 1M triples).
        let mut worst = 0.0f64;
        for y in 0..=255u8 {
            for u in (0..=255u8).step_by(4) {
                for v in (0..=255u8).step_by(4) {
                    let got = yuv_to_rgb(y, u, v);
                    let want = yuv_to_rgb_reference(y, u, v);
                    for c in 0..3 {
                        worst = worst.max((got[c] as f64 - want[c]).abs());
                    }
                }
            }
        }
        assert!(worst <= 1.0, "worst difference {worst}");
    }

    #[test]
    fn dht_segment_has_the_annex_k_layout() {
        assert_eq!(&STANDARD_DHT[..4], &[0xFF, 0xC4, 0x01, 0xA2]);
        // Each table's code counts add up to its value count.
        let mut at = 4;
        for (class_id, n) in [(0x00, 12), (0x01, 12), (0x10, 162), (0x11, 162)] {
            assert_eq!(STANDARD_DHT[at], class_id);
            let total: usize = STANDARD_DHT[at + 1..at + 17].iter().map(|&b| b as usize).sum();
            assert_eq!(total, n);
            at += 17 + n;
        }
        assert_eq!(at, 420);
    }

    #[test]
    fn raw_formats_honour_stride_and_reject_short_buffers() {
        // 2x2 GREY with a 4-byte stride (2 bytes of padding per line).
        let data = [10, 20, 99, 99, 30, 40];
        let mut out = vec![0; 12];
        raw_to_rgb(PixelFormat::Grey, &data, 2, 2, 4, &mut out).unwrap();
        assert_eq!(out, [10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40]);
        let err = raw_to_rgb(PixelFormat::Grey, &data[..5], 2, 2, 4, &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Short { want: 6, got: 5, .. }), "{err}");
        assert!(matches!(
            raw_to_rgb(PixelFormat::Yuyv, &[0; 12], 3, 1, 0, &mut out),
            Err(DecodeError::OddWidth { width: 3 })
        ));
        let rgb = [1, 2, 3, 4, 5, 6];
        raw_to_rgb(PixelFormat::Rgb24, &rgb, 2, 1, 0, &mut out).unwrap();
        assert_eq!(&out[..6], &rgb);
    }

    #[test]
    fn fourcc_names_round_trip() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::parse(f.name()), Some(f));
            assert_eq!(PixelFormat::from_fourcc(&f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(b"JPEG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::parse("H264"), None);
        assert_eq!(PixelFormat::parse("MJPEG"), None);
    }

    #[test]
    fn header_walk_rejects_garbage_without_panicking() {
        assert!(matches!(jpeg_headers(b"hello"), Err(DecodeError::NotJpeg)));
        assert!(matches!(jpeg_headers(&[0xFF, 0xD8, 0xFF]), Err(DecodeError::Truncated { .. })));
        assert!(matches!(jpeg_headers(&[0xFF, 0xD8, 0x00, 0x00]), Err(DecodeError::Corrupt { offset: 2, .. })));
        // SOS without a frame header.
        assert!(matches!(jpeg_headers(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]), Err(DecodeError::Corrupt { .. })));
        let mut d = Decoder::new();
        let mut out = Vec::new();
        assert!(matches!(d.decode_mjpeg(&[0xFF, 0xD8, 1, 2, 3], None, &mut out), Err(DecodeError::Truncated { .. })));
    }
}
