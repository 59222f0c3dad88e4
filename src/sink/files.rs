//! `files` sink: one mask PNG per frame (and optionally a coloured overlay), written atomically
//! (temp file + rename), with a retention limit by frame count and by bytes.
//!
//! Retention covers the files this sink names (`<seq>.mask.png`, `<seq>.overlay.png`) in its
//! folder, including those left by an earlier run: they are found at start-up and expire first
//! (oldest modification time first), so a service restarted for months stays within its limits.
//! A frame whose name is written again (sequence numbers restart with the process) replaces the
//! old entry. Must not touch any other file in the folder.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::{Output, Sink, SinkError};
use crate::problems::Problems;

/// `[sink.files]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    pub enabled: bool,
    /// Output folder (created if missing).
    pub dir: PathBuf,
    /// Also write `<name>.overlay.png`.
    pub overlay: bool,
    /// Keep at most this many frames' files (0 = unlimited).
    pub keep: usize,
    /// Keep at most this many bytes of files (0 = unlimited). The newest frame is always kept.
    pub max_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig { enabled: true, dir: "out/masks".into(), overlay: true, keep: 200, max_bytes: 0 }
    }
}

impl FilesConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(!self.enabled || !self.dir.as_os_str().is_empty(), "sink.files", "dir", || "must not be empty".into());
    }
}

/// The files of one frame on disk.
#[derive(Debug)]
struct Entry {
    stem: String,
    /// Matches `live[stem].0` while this entry is the current owner of the name.
    generation: u64,
    paths: Vec<PathBuf>,
}

pub struct FilesSink {
    dir: PathBuf,
    overlay: bool,
    keep: usize,
    max_bytes: u64,
    /// Oldest first; may hold superseded entries (generation mismatch), skipped on expiry.
    written: VecDeque<Entry>,
    /// stem -> (generation, bytes) of the frames currently on disk.
    live: HashMap<String, (u64, u64)>,
    total_bytes: u64,
    next_generation: u64,
    /// Stream folders (`dir/NAME/`, `[streams.*]`) made so far.
    made: Vec<String>,
}

impl FilesSink {
    pub fn build(cfg: &FilesConfig, base: &Path) -> Result<FilesSink, SinkError> {
        let dir = if cfg.dir.is_absolute() { cfg.dir.clone() } else { base.join(&cfg.dir) };
        let io = |source| SinkError::Io { sink: "files", path: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut sink = FilesSink {
            dir: dir.clone(),
            overlay: cfg.overlay,
            keep: cfg.keep,
            max_bytes: cfg.max_bytes,
            written: VecDeque::new(),
            live: HashMap::new(),
            total_bytes: 0,
            next_generation: 1,
            made: Vec::new(),
        };
        sink.adopt_existing().map_err(io)?;
        sink.expire();
        Ok(sink)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Frames currently kept on disk, and their total size in bytes.
    pub fn retained(&self) -> (usize, u64) {
        (self.live.len(), self.total_bytes)
    }

    /// Take over the files an earlier run left (oldest first); delete its stray temp files.
    fn adopt_existing(&mut self) -> std::io::Result<()> {
        let mut found: HashMap<String, (SystemTime, u64, Vec<PathBuf>)> = HashMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".png.tmp") && own_stem(name.trim_end_matches(".tmp")).is_some() {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(stem) = own_stem(name) else { continue };
            let meta = entry.metadata()?;
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let e = found.entry(stem.to_string()).or_insert((mtime, 0, Vec::new()));
            e.0 = e.0.max(mtime);
            e.1 += meta.len();
            e.2.push(entry.path());
        }
        let mut found: Vec<_> = found.into_iter().collect();
        found.sort_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0)));
        for (stem, (_, bytes, paths)) in found {
            self.track(stem, paths, bytes);
        }
        Ok(())
    }

    /// Record a frame's files as the newest, replacing an older frame of the same name.
    fn track(&mut self, stem: String, paths: Vec<PathBuf>, bytes: u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Some((_, old_bytes)) = self.live.insert(stem.clone(), (generation, bytes)) {
            self.total_bytes -= old_bytes;
        }
        self.total_bytes += bytes;
        self.written.push_back(Entry { stem, generation, paths });
    }

    fn over_limit(&self) -> bool {
        (self.keep > 0 && self.live.len() > self.keep) || (self.max_bytes > 0 && self.total_bytes > self.max_bytes)
    }

    /// Delete the oldest frames until within limits, always keeping the newest one.
    fn expire(&mut self) {
        while self.over_limit() && self.live.len() > 1 {
            let Some(e) = self.written.pop_front() else {
                break;
            };
            match self.live.get(&e.stem) {
                Some(&(generation, bytes)) if generation == e.generation => {
                    for p in &e.paths {
                        if let Err(err) = std::fs::remove_file(p) {
                            if err.kind() != std::io::ErrorKind::NotFound {
                                log::warn!("sink files: {}: cannot delete: {err}", p.display());
                            }
                        }
                    }
                    self.live.remove(&e.stem);
                    self.total_bytes -= bytes;
                }
                _ => {} // superseded by a newer frame of the same name
            }
        }
    }
}

/// `00000042` for `00000042.mask.png` / `00000042.overlay.png`; None for other names.
fn own_stem(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".mask.png").or_else(|| name.strip_suffix(".overlay.png"))?;
    (!stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())).then_some(stem)
}

/// Write `img` as PNG to `path` atomically: a temp file in the same folder, then rename.
pub fn write_png_atomic<P, C>(img: &image::ImageBuffer<P, C>, path: &Path) -> Result<(), SinkError>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let tmp = path.with_extension("png.tmp");
    let io = |source| SinkError::Io { sink: "files", path: path.display().to_string(), source };
    img.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| match e {
        image::ImageError::IoError(e) => io(e),
        source => SinkError::Encode { sink: "files", path: path.display().to_string(), source },
    })?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn file_len(path: &Path) -> Result<u64, SinkError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|source| SinkError::Io {
        sink: "files",
        path: path.display().to_string(),
        source,
    })
}

impl Sink for FilesSink {
    fn name(&self) -> &'static str {
        "files"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        // A named stream's frames go to `dir/NAME/` (its sequence numbers are its own); the
        // limits count the frames of all streams together.
        let stream = &*out.frame.stream;
        let stem =
            if stream.is_empty() { format!("{:08}", out.frame.seq) } else { format!("{stream}/{:08}", out.frame.seq) };
        if !stream.is_empty() && !self.made.iter().any(|m| m == stream) {
            let sub = self.dir.join(stream);
            std::fs::create_dir_all(&sub).map_err(|source| SinkError::Io {
                sink: "files",
                path: sub.display().to_string(),
                source,
            })?;
            self.made.push(stream.to_string());
        }
        let mut paths = Vec::with_capacity(2);
        let mask_path = self.dir.join(format!("{stem}.mask.png"));
        write_png_atomic(&super::render::mask_to_png(&out.mask), &mask_path)?;
        let mut bytes = file_len(&mask_path)?;
        paths.push(mask_path);
        if self.overlay {
            let p = self.dir.join(format!("{stem}.overlay.png"));
            write_png_atomic(&super::render::overlay(&out.frame, &out.mask), &p)?;
            bytes += file_len(&p)?;
            paths.push(p);
        }
        self.track(stem, paths, bytes);
        self.expire();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stem_accepts_only_our_names() {
        assert_eq!(own_stem("00000042.mask.png"), Some("00000042"));
        assert_eq!(own_stem("7.overlay.png"), Some("7"));
        assert_eq!(own_stem("notes.mask.png"), None);
        assert_eq!(own_stem(".mask.png"), None);
        assert_eq!(own_stem("00000042.png"), None);
        assert_eq!(own_stem("readme.txt"), None);
    }
}
