//! Evaluation: mask agreement (IoU, MAE) and ground-truth masks (finding them next to an
//! image, reading them, IoU against them). Used by the commands and tests; never on the
//! per-frame path.
//!
//! Supported layouts: VOC (`X/JPEGImages/a.jpg` + `X/SegmentationClass/a.png`), a `gt/`
//! folder beside the images (`d/a.jpg` + `d/gt/a.png`), or a sibling `d/a.gt.png`. A VOC class
//! PNG is a palette image: index 0 (black) is background, the void colour (224,224,192) is
//! ignored, every other colour is foreground.

use std::path::{Path, PathBuf};

/// Value of an ignored (void) pixel in a loaded ground truth.
pub const IGNORE: u8 = 255;

/// The ground-truth file for `image`, if one exists.
pub fn find_for(image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_str()?;
    let dir = image.parent()?;
    let mut candidates = vec![dir.join("gt").join(format!("{stem}.png")), dir.join(format!("{stem}.gt.png"))];
    if dir.file_name().is_some_and(|n| n == "JPEGImages") {
        if let Some(root) = dir.parent() {
            candidates.insert(0, root.join("SegmentationClass").join(format!("{stem}.png")));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Load a ground truth as foreground (1) / background (0) / ignore (255), resized (nearest) to
/// `w x h` if needed.
pub fn load_foreground(path: &Path, w: u32, h: u32) -> Result<Vec<u8>, image::ImageError> {
    let img = image::open(path)?.to_rgb8();
    let img = if img.dimensions() != (w, h) {
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Nearest)
    } else {
        img
    };
    Ok(img
        .pixels()
        .map(|p| match p.0 {
            [0, 0, 0] => 0,
            [224, 224, 192] => IGNORE,
            _ => 1,
        })
        .collect())
}

/// IoU of the foreground of `pred` (non-zero = foreground) against a ground truth, and the
/// background IoU, skipping ignored pixels: `(fg_iou, bg_iou)`.
pub fn iou_fg_bg(pred: &[u8], gt: &[u8]) -> (f64, f64) {
    let (mut fi, mut fu, mut bi, mut bu) = (0u64, 0u64, 0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gt) {
        if g == IGNORE {
            continue;
        }
        let (p, g) = (p != 0, g != 0);
        fi += (p && g) as u64;
        fu += (p || g) as u64;
        bi += (!p && !g) as u64;
        bu += (!p || !g) as u64;
    }
    let r = |i: u64, u: u64| if u == 0 { 1.0 } else { i as f64 / u as f64 };
    (r(fi, fu), r(bi, bu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_skips_ignored_pixels() {
        let pred = [1, 1, 0, 0, 1];
        let gt = [1, 0, 0, IGNORE, IGNORE];
        let (fg, bg) = iou_fg_bg(&pred, &gt);
        assert!((fg - 0.5).abs() < 1e-12);
        assert!((bg - 0.5).abs() < 1e-12);
    }

    #[test]
    fn ambiguous_share_counts_scores_near_the_threshold() {
        let scores = [0.0, 0.45, 0.5, 0.59, 0.61, 1.0, 0.41, 0.39];
        // 0.45, 0.5, 0.59, 0.41: four of eight within 0.1 of 0.5.
        assert!((ambiguous_share(&scores, 0.5, 0.1) - 0.5).abs() < 1e-12);
        assert_eq!(ambiguous_share(&[], 0.5, 0.1), 0.0);
        assert_eq!(ambiguous_share(&scores, 0.5, 0.0), 0.0);
    }
}

/// Intersection over union of the non-zero pixels of two class-id masks of equal size.
/// Two empty masks agree perfectly (1.0).
pub fn iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x != 0, y != 0);
        inter += (x && y) as u64;
        union += (x || y) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Mean absolute difference of two score maps.
pub fn mae(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / n as f64
}

/// Share of a saliency score map within `margin` of the mask's `threshold`: where it is large
/// (a texture, no salient object), any small change of the model flips much of the mask, so its
/// mask IoU says little about fidelity (the MAE still does).
pub fn ambiguous_share(scores: &[f32], threshold: f32, margin: f32) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let near = scores.iter().filter(|&&s| (s - threshold).abs() < margin).count();
    near as f64 / scores.len() as f64
}

/// A ground truth that exists but cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("ground truth {path}: {source}")]
pub struct GtError {
    pub path: String,
    #[source]
    pub source: image::ImageError,
}

/// `(fg_iou, bg_iou)` of a `w x h` class mask against the ground truth found next to `image`
/// (see [`find_for`]); None when there is none.
pub fn against_gt(image: &Path, classes: &[u8], w: u32, h: u32) -> Result<Option<(f64, f64)>, GtError> {
    let Some(path) = find_for(image) else { return Ok(None) };
    let gt = load_foreground(&path, w, h).map_err(|source| GtError { path: path.display().to_string(), source })?;
    Ok(Some(iou_fg_bg(classes, &gt)))
}

/// The mean of `v` (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
