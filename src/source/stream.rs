//! `stream` source: a recorded raw camera stream played back, for reproducing problems without
//! the camera. Two layouts:
//! - plain concatenated JPEG frames (what `cat *.jpg` or `ffmpeg -f mjpeg` produce), each frame
//!   any size;
//! - a one-line text header `ailurus-stream 1 <FOURCC> <W>x<H> <FPS>\n` followed by frames:
//!   concatenated JPEGs for `MJPG`, or fixed-size packed frames (`W*H*bpp` bytes) for `YUYV`,
//!   `GREY`, `RGB3`. `ailurus record` writes this layout.
//!
//! Corrupt or truncated frames are counted and returned as errors, and playback continues at the
//! next frame. Pacing: `--realtime` plays at the header's rate (30 fps without a header); a
//! `[source] fps` overrides it. Owns the file layout (reader and `StreamWriter`) and the JPEG
//! frame splitter. Must not talk to devices.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::clock::{Clock, Pacer, RealClock};
use super::decode::{Decoder, PixelFormat};
use super::health::SourceHealth;
use super::{FrameSource, SourceError};
use crate::frame::{Frame, FramePool};

/// The first word of a stream header.
pub const MAGIC: &str = "ailurus-stream";
/// Rate assumed for `--realtime` when the file has no header.
pub const DEFAULT_FPS: f64 = 30.0;
const CHUNK: usize = 64 * 1024;
/// A JPEG larger than this without an end marker is treated as corrupt.
const MAX_JPEG: usize = 64 << 20;

/// The header line of a recorded stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamHeader {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

impl std::fmt::Display for StreamHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{MAGIC} 1 {} {}x{} {}", self.format, self.width, self.height, self.fps)
    }
}

/// Why a stream file's header line is not one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    #[error("header {line:?}: expected `{MAGIC} 1 <FOURCC> <W>x<H> <FPS>`")]
    Shape { line: String },
    #[error("header {line:?}: not an `{MAGIC} 1` file")]
    Magic { line: String },
    #[error("header: unknown format {fourcc:?} (MJPG, YUYV, GREY, RGB3)")]
    Format { fourcc: String },
    #[error("header: size {size:?} is not WxH in 1..16384")]
    Size { size: String },
    #[error("header: YUYV width {width} is odd")]
    OddYuyv { width: u32 },
    #[error("header: fps {fps:?} is not a positive number")]
    Fps { fps: String },
}

impl StreamHeader {
    /// Parse the header line (without its newline).
    pub fn parse(line: &str) -> Result<StreamHeader, HeaderError> {
        let parts: Vec<&str> = line.split_ascii_whitespace().collect();
        let [magic, version, fourcc, size, fps] = parts[..] else {
            return Err(HeaderError::Shape { line: line.to_string() });
        };
        if magic != MAGIC || version != "1" {
            return Err(HeaderError::Magic { line: line.to_string() });
        }
        let format = PixelFormat::parse(fourcc).ok_or_else(|| HeaderError::Format { fourcc: fourcc.to_string() })?;
        let bad_size = || HeaderError::Size { size: size.to_string() };
        let (w, h) = size.split_once('x').ok_or_else(bad_size)?;
        let dim = |s: &str| s.parse::<u32>().ok().filter(|&v| v > 0 && v <= 16384);
        let (width, height) = dim(w).zip(dim(h)).ok_or_else(bad_size)?;
        if format == PixelFormat::Yuyv && width % 2 == 1 {
            return Err(HeaderError::OddYuyv { width });
        }
        let fps: f64 = fps
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .ok_or_else(|| HeaderError::Fps { fps: fps.to_string() })?;
        Ok(StreamHeader { format, width, height, fps })
    }

    /// Bytes per frame of a raw format (`None` for MJPEG).
    pub fn frame_len(&self) -> Option<usize> {
        self.format.bytes_per_pixel().map(|b| self.width as usize * self.height as usize * b)
    }
}

/// Where a JPEG starting at offset 0 ends, as far as the bytes at hand tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// A whole frame of this many bytes (through EOI).
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
    /// The structure is broken (or a new frame starts before this one ended).
    Corrupt,
}

/// Follow the marker segments and entropy-coded data of the JPEG at the start of `d`.
pub fn scan_jpeg(d: &[u8]) -> Scan {
    if d.len() < 2 {
        return Scan::Incomplete;
    }
    if d[0] != 0xFF || d[1] != 0xD8 {
        return Scan::Corrupt;
    }
    let mut i = 2;
    loop {
        if i + 1 >= d.len() {
            return Scan::Incomplete;
        }
        if d[i] != 0xFF {
            return Scan::Corrupt;
        }
        match d[i + 1] {
            0xFF => i += 1,
            0xD8 => return Scan::Corrupt,
            0xD9 => return Scan::Complete(i + 2),
            0x01 | 0xD0..=0xD7 => i += 2,
            m => {
                if i + 3 >= d.len() {
                    return Scan::Incomplete;
                }
                let len = ((d[i + 2] as usize) << 8) | d[i + 3] as usize;
                if len < 2 {
                    return Scan::Corrupt;
                }
                i += 2 + len;
                if m == 0xDA {
                    match skip_entropy(d, i) {
                        Some(next) => i = next,
                        None => return Scan::Incomplete,
                    }
                }
            }
        }
    }
}

/// From inside entropy-coded data, the offset of the next real marker (`None`: need more bytes).
fn skip_entropy(d: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let j = i + d.get(i..)?.iter().position(|&b| b == 0xFF)?;
        let next = *d.get(j + 1)?;
        match next {
            0x00 | 0xD0..=0xD7 => i = j + 2,
            0xFF => i = j + 1,
            _ => return Some(j),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Playback options.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    pub looping: bool,
    /// Play at the recorded rate.
    pub realtime: bool,
    /// Play at this rate instead (0 = not set).
    pub fps: f64,
}

/// The `stream` source.
pub struct StreamSource {
    name: String,
    path: PathBuf,
    file: File,
    data_start: u64,
    header: Option<StreamHeader>,
    looping: bool,
    pacer: Option<Pacer>,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    eof: bool,
    frames_this_pass: u64,
    seq: u64,
    decoder: Decoder,
    pool: Arc<FramePool>,
    health: Arc<SourceHealth>,
}

impl StreamSource {
    pub fn open(path: &Path, opts: StreamOptions) -> Result<StreamSource, SourceError> {
        Self::open_with_clock(path, opts, Arc::new(RealClock))
    }

    /// `open` with an injected clock for the pacing.
    pub fn open_with_clock(
        path: &Path,
        opts: StreamOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<StreamSource, SourceError> {
        let name = path.display().to_string();
        let io_err = |source| SourceError::Io { origin: name.clone(), source };
        let mut file = File::open(path).map_err(io_err)?;
        let mut head = [0u8; 256];
        let n = read_up_to(&mut file, &mut head).map_err(io_err)?;
        let head = &head[..n];
        let (header, data_start) = if head.starts_with(MAGIC.as_bytes()) {
            let end = head
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| unavailable(&name, "header line has no newline within 256 bytes"))?;
            let line = std::str::from_utf8(&head[..end]).map_err(|_| unavailable(&name, "header is not text"))?;
            (Some(StreamHeader::parse(line).map_err(|e| unavailable(&name, &e.to_string()))?), end as u64 + 1)
        } else if head.starts_with(&[0xFF, 0xD8]) {
            (None, 0)
        } else {
            return Err(unavailable(
                &name,
                &format!("not a recorded stream: expected an `{MAGIC}` header or a JPEG start (FF D8)"),
            ));
        };
        file.seek(SeekFrom::Start(data_start)).map_err(io_err)?;
        let rate = if opts.fps > 0.0 {
            Some(opts.fps)
        } else if opts.realtime {
            Some(header.map_or(DEFAULT_FPS, |h| h.fps))
        } else {
            None
        };
        Ok(StreamSource {
            health: Arc::new(SourceHealth::new(name.clone(), "stream", true)),
            name,
            path: path.to_path_buf(),
            file,
            data_start,
            header,
            looping: opts.looping,
            pacer: rate.map(|fps| Pacer::new(clock, fps)),
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            eof: false,
            frames_this_pass: 0,
            seq: 0,
            decoder: Decoder::new(),
            pool: Arc::new(FramePool::new(4)),
        })
    }

    /// The header, when the file has one.
    pub fn header(&self) -> Option<StreamHeader> {
        self.header
    }

    fn io(&self, source: std::io::Error) -> SourceError {
        SourceError::Io { origin: self.name.clone(), source }
    }

    /// Read more bytes into the buffer (compacting it first); sets `eof` at the end.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() < self.filled + CHUNK {
            self.buf.resize(self.filled + CHUNK, 0);
        }
        let n = read_up_to(&mut self.file, &mut self.buf[self.filled..])?;
        self.filled += n;
        self.eof = n == 0;
        Ok(())
    }

    /// The byte range of the next JPEG in the buffer (a broken one runs to the next start).
    fn next_jpeg(&mut self) -> std::io::Result<Option<(usize, usize)>> {
        // Find the start of the next frame, skipping garbage.
        loop {
            if let Some(k) = find(&self.buf[self.pos..self.filled], &[0xFF, 0xD8]) {
                self.pos += k;
                break;
            }
            self.pos = self.filled.saturating_sub(1).max(self.pos);
            if self.eof {
                return Ok(None);
            }
            self.fill()?;
        }
        loop {
            let avail = self.filled - self.pos;
            match scan_jpeg(&self.buf[self.pos..self.filled]) {
                Scan::Complete(n) => return Ok(Some(self.take(n))),
                Scan::Incomplete if self.eof => return Ok(Some(self.take(avail))),
                Scan::Incomplete if avail <= MAX_JPEG => self.fill()?,
                Scan::Incomplete | Scan::Corrupt => return self.resync().map(Some),
            }
        }
    }

    /// A broken frame: it runs to the next `FF D8 FF` (or the end of the file).
    fn resync(&mut self) -> std::io::Result<(usize, usize)> {
        let mut from = 2;
        loop {
            if let Some(k) = find(&self.buf[self.pos + from..self.filled], &[0xFF, 0xD8, 0xFF]) {
                return Ok(self.take(from + k));
            }
            let avail = self.filled - self.pos;
            if self.eof || avail > MAX_JPEG {
                return Ok(self.take(avail));
            }
            from = avail.saturating_sub(2).max(2);
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> (usize, usize) {
        let r = (self.pos, self.pos + n);
        self.pos += n;
        r
    }

    /// Bytes of the next raw frame; a short tail is returned as is (it fails to decode).
    fn next_raw(&mut self, len: usize) -> std::io::Result<Option<(usize, usize)>> {
        self.pos = 0;
        self.buf.resize(len.max(self.buf.len()), 0);
        let n = read_up_to(&mut self.file, &mut self.buf[..len])?;
        self.filled = n;
        Ok((n > 0).then_some((0, n)))
    }

    fn rewind(&mut self) -> Result<(), SourceError> {
        self.file.seek(SeekFrom::Start(self.data_start)).map_err(|e| self.io(e))?;
        (self.pos, self.filled, self.eof, self.frames_this_pass) = (0, 0, false, 0);
        Ok(())
    }

    fn next_bytes(&mut self) -> Result<Option<(usize, usize)>, SourceError> {
        let got = match self.header.and_then(|h| h.frame_len()) {
            Some(len) => self.next_raw(len),
            None => self.next_jpeg(),
        };
        got.map_err(|e| self.io(e))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn unavailable(name: &str, msg: &str) -> SourceError {
    SourceError::Unavailable { origin: name.to_string(), msg: msg.to_string() }
}

impl FrameSource for StreamSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let (a, b) = match self.next_bytes()? {
            Some(r) => r,
            None if self.looping && self.frames_this_pass > 0 => {
                self.rewind()?;
                match self.next_bytes()? {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        self.frames_this_pass += 1;
        let seq = self.seq;
        self.seq += 1;
        if let Some(p) = self.pacer.as_mut() {
            p.pace();
        }
        let (format, w, h) = self.header.map_or((PixelFormat::Mjpeg, 0, 0), |h| (h.format, h.width, h.height));
        let mut rgb = self.pool.take(0);
        match self.decoder.decode(format, &self.buf[a..b], w, h, 0, &mut rgb) {
            Ok((width, height)) => {
                self.health.frame();
                let origin = format!("{}#{seq}", self.path.display());
                Ok(Some(Frame {
                    seq,
                    captured: Instant::now(),
                    captured_wall: SystemTime::now(),
                    width,
                    height,
                    rgb,
                    origin,
                    stream: crate::frame::unnamed(),
                    stream_index: 0,
                    epoch: 0,
                }))
            }
            Err(source) => {
                self.pool.give(rgb);
                let e = SourceError::Decode { origin: self.name.clone(), seq, source };
                self.health.bad_frame();
                self.health.note_error(&e);
                Err(e)
            }
        }
    }

    fn recycle(&mut self, frame: Frame) {
        self.pool.give(frame.rgb);
    }

    fn health(&self) -> Option<Arc<SourceHealth>> {
        Some(self.health.clone())
    }
}

/// Writes a recorded stream (header + frames). Raw frames are packed (the stride removed).
pub struct StreamWriter<W: Write> {
    out: W,
    header: StreamHeader,
    frames: u64,
}

impl StreamWriter<BufWriter<File>> {
    /// Create (truncate) `path` and write the header.
    pub fn create(path: &Path, header: StreamHeader) -> Result<Self, SourceError> {
        let origin = path.display().to_string();
        let file = File::create(path).map_err(|source| SourceError::Io { origin: origin.clone(), source })?;
        StreamWriter::new(BufWriter::new(file), header).map_err(|source| SourceError::Io { origin, source })
    }
}

impl<W: Write> StreamWriter<W> {
    pub fn new(mut out: W, header: StreamHeader) -> std::io::Result<Self> {
        write!(out, "{header}")?;
        Ok(StreamWriter { out, header, frames: 0 })
    }

    /// Append one frame as delivered: a JPEG as is, a raw frame row by row (`stride` bytes per
    /// line, 0 = packed). A raw frame shorter than the header's size is an error.
    pub fn write_frame(&mut self, data: &[u8], stride: usize) -> std::io::Result<()> {
        match self.header.format.bytes_per_pixel() {
            None => self.out.write_all(data)?,
            Some(bpp) => {
                let line = self.header.width as usize * bpp;
                let stride = if stride == 0 { line } else { stride.max(line) };
                let rows = self.header.height as usize;
                if data.len() < stride * (rows - 1) + line {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "raw frame of {} bytes is shorter than {}x{}",
                            data.len(),
                            self.header.width,
                            self.header.height
                        ),
                    ));
                }
                for y in 0..rows {
                    self.out.write_all(&data[y * stride..y * stride + line])?;
                }
            }
        }
        self.frames += 1;
        Ok(())
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flush, returning the frame count.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush()?;
        Ok(self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_nonsense() {
        let h = StreamHeader { format: PixelFormat::Yuyv, width: 640, height: 480, fps: 30.0 };
        let line = h.to_string();
        assert_eq!(line, "ailurus-stream 1 YUYV 640x480 30\n");
        assert_eq!(StreamHeader::parse(line.trim_end()).unwrap(), h);
        assert_eq!(h.frame_len(), Some(640 * 480 * 2));
        for bad in [
            "ailurus-stream 2 YUYV 640x480 30",
            "ailurus-stream 1 H264 640x480 30",
            "ailurus-stream 1 YUYV 641x480 30",
            "ailurus-stream 1 YUYV 640x0 30",
            "ailurus-stream 1 YUYV 640x480 -1",
            "ailurus-stream 1 YUYV",
        ] {
            assert!(StreamHeader::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scan_handles_stuffing_restarts_and_truncation() {
        // SOI, APP0 (len 4), SOS (len 2), entropy with FF00 stuffing and RST0, EOI.
        let jpeg =
            [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0xFF, 0xD9, 0xFF, 0xDA, 0, 2, 1, 0xFF, 0x00, 2, 0xFF, 0xD0, 3, 0xFF, 0xD9];
        assert_eq!(scan_jpeg(&jpeg), Scan::Complete(jpeg.len()), "an FF D9 inside a segment payload is not the end");
        for cut in 0..jpeg.len() {
            assert_eq!(scan_jpeg(&jpeg[..cut]), Scan::Incomplete, "cut at {cut}");
        }
        let mut two = jpeg[..16].to_vec();
        two.extend_from_slice(&jpeg);
        assert_eq!(scan_jpeg(&two), Scan::Corrupt, "a new SOI before EOI");
        assert_eq!(scan_jpeg(&[0xFF, 0xD8, 0x12, 0x34]), Scan::Corrupt);
    }
}
