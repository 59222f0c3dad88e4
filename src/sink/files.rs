//! `files` sink: one mask PNG per frame (and optionally a coloured overlay), written atomically
//! (temp file + rename) with a retention limit.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Output, Sink, SinkError};
use crate::config::Problems;
use crate::post;

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
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            enabled: true,
            dir: "out/masks".into(),
            overlay: true,
            keep: 200,
        }
    }
}

impl FilesConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(
            !self.enabled || !self.dir.as_os_str().is_empty(),
            "sink.files",
            "dir",
            || "must not be empty".into(),
        );
    }
}

pub struct FilesSink {
    dir: PathBuf,
    overlay: bool,
    keep: usize,
    written: VecDeque<Vec<PathBuf>>,
}

impl FilesSink {
    pub fn build(cfg: &FilesConfig, base: &Path) -> Result<FilesSink, SinkError> {
        let dir = if cfg.dir.is_absolute() {
            cfg.dir.clone()
        } else {
            base.join(&cfg.dir)
        };
        std::fs::create_dir_all(&dir).map_err(|source| SinkError::Io {
            sink: "files",
            path: dir.display().to_string(),
            source,
        })?;
        Ok(FilesSink {
            dir,
            overlay: cfg.overlay,
            keep: cfg.keep,
            written: VecDeque::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Write `img` as PNG to `path` atomically: a temp file in the same folder, then rename.
pub fn write_png_atomic<P, C>(img: &image::ImageBuffer<P, C>, path: &Path) -> Result<(), SinkError>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let tmp = path.with_extension("png.tmp");
    let io = |source| SinkError::Io {
        sink: "files",
        path: path.display().to_string(),
        source,
    };
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| match e {
            image::ImageError::IoError(e) => io(e),
            other => SinkError::Other {
                sink: "files",
                msg: format!("{}: {other}", path.display()),
            },
        })?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Sink for FilesSink {
    fn name(&self) -> &'static str {
        "files"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        let stem = format!("{:08}", out.frame.seq);
        let mut paths = Vec::with_capacity(2);
        let mask_path = self.dir.join(format!("{stem}.mask.png"));
        write_png_atomic(&post::mask_to_png(&out.mask), &mask_path)?;
        paths.push(mask_path);
        if self.overlay {
            let p = self.dir.join(format!("{stem}.overlay.png"));
            write_png_atomic(&post::overlay(&out.frame, &out.mask), &p)?;
            paths.push(p);
        }
        self.written.push_back(paths);
        while self.keep > 0 && self.written.len() > self.keep {
            for p in self.written.pop_front().unwrap_or_default() {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }
}
