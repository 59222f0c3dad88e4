//! `folder` source: the images of a folder (sorted by name), played as a stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::SourceHealth;
use super::{FrameSource, SourceError};
use crate::frame::Frame;

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "ppm"];

/// List the image files of a folder, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let origin = dir.display().to_string();
    let rd = std::fs::read_dir(dir).map_err(|source| SourceError::Io { origin: origin.clone(), source })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(SourceError::Unavailable {
            origin,
            msg: format!("no images ({}) in the folder", EXTENSIONS.join(", ")),
        });
    }
    Ok(files)
}

/// Decode one image file to an RGB frame.
pub fn load_frame(path: &Path, seq: u64) -> Result<Frame, SourceError> {
    let img = image::open(path).map_err(|e| SourceError::BadFrame {
        origin: path.display().to_string(),
        seq,
        msg: e.to_string(),
    })?;
    Ok(Frame::from_rgb_image(seq, img.to_rgb8(), path.display().to_string()))
}

pub struct FolderSource {
    name: String,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    seq: u64,
    period: Option<Duration>,
    last: Option<Instant>,
    health: Arc<SourceHealth>,
}

impl FolderSource {
    pub fn open(dir: &Path, looping: bool, fps: f64) -> Result<FolderSource, SourceError> {
        let files = list_images(dir)?;
        let name = dir.display().to_string();
        Ok(FolderSource {
            health: Arc::new(SourceHealth::new(name.clone(), "source", true)),
            name,
            files,
            next: 0,
            looping,
            seq: 0,
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            last: None,
        })
    }
}

impl FrameSource for FolderSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.next >= self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            self.next = 0;
        }
        if let (Some(period), Some(last)) = (self.period, self.last) {
            let due = last + period;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.last = Some(Instant::now());
        let path = self.files[self.next].clone();
        self.next += 1;
        let seq = self.seq;
        self.seq += 1;
        let got = load_frame(&path, seq);
        match &got {
            Ok(_) => self.health.frame(),
            Err(e) => {
                self.health.bad_frame();
                self.health.note_error(e);
            }
        }
        got.map(Some)
    }

    fn health(&self) -> Option<Arc<SourceHealth>> {
        Some(self.health.clone())
    }
}
