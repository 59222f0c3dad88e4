//! Post-processing: model output -> mask at frame size, and mask -> images.

use crate::frame::{Frame, Mask};

/// Palette for class ids (saliency: 0 background, 1 salient).
pub const PALETTE: [[u8; 3]; 8] =
    [[0, 0, 0], [255, 64, 0], [0, 200, 255], [80, 255, 80], [255, 220, 0], [200, 0, 255], [255, 0, 120], [0, 120, 255]];

/// The class-id PNG: a grey image with ids scaled so that a saliency mask is viewable
/// (0 and 255); for K > 2 classes the raw id is written.
pub fn mask_to_png(mask: &Mask) -> image::GrayImage {
    let scale = if mask.num_classes <= 2 { 255 } else { 1 };
    let data = mask.classes.iter().map(|&c| c.saturating_mul(scale)).collect();
    image::GrayImage::from_raw(mask.width, mask.height, data).expect("mask buffer matches its size")
}

/// The frame with the mask blended over it (50% colour on non-background pixels).
pub fn overlay(frame: &Frame, mask: &Mask) -> image::RgbImage {
    let mut out = Vec::with_capacity(frame.rgb.len());
    for (px, &c) in frame.rgb.chunks_exact(3).zip(&mask.classes) {
        if c == 0 {
            out.extend_from_slice(px);
        } else {
            let col = PALETTE[c as usize % PALETTE.len()];
            for k in 0..3 {
                out.push(((px[k] as u16 + col[k] as u16) / 2) as u8);
            }
        }
    }
    image::RgbImage::from_raw(frame.width, frame.height, out).expect("overlay matches frame size")
}

/// Raw model output (`[K, s, s]` logits, or `[1, s, s]` saliency probabilities) -> mask at
/// `w x h`: upsample, then threshold (saliency) or argmax (classes). Reuses `mask`'s buffers.
pub fn to_mask(
    manifest: &crate::model::Manifest,
    raw: &[f32],
    input_size: u32,
    w: u32,
    h: u32,
    rs: &mut crate::pre::Resampler,
    mask: &mut Mask,
) {
    let s = input_size as usize;
    let (wu, hu) = (w as usize, h as usize);
    let px = wu * hu;
    mask.width = w;
    mask.height = h;
    mask.classes.resize(px, 0);
    if manifest.is_saliency() {
        mask.num_classes = 2;
        mask.scores.resize(px, 0.0);
        rs.resize_plane(&raw[..s * s], (s, s), (wu, hu), &mut mask.scores);
        let th = manifest.output.threshold;
        for (c, &p) in mask.classes.iter_mut().zip(&mask.scores) {
            *c = (p > th) as u8;
        }
    } else {
        let k = raw.len() / (s * s);
        mask.num_classes = k as u32;
        // Upsample class by class, keeping a running max in `scores`.
        mask.scores.resize(px * 2, 0.0);
        let (best, plane) = mask.scores.split_at_mut(px);
        best.fill(f32::NEG_INFINITY);
        for class in 0..k {
            rs.resize_plane(&raw[class * s * s..(class + 1) * s * s], (s, s), (wu, hu), plane);
            for ((b, c), &v) in best.iter_mut().zip(mask.classes.iter_mut()).zip(plane.iter()) {
                if v > *b {
                    *b = v;
                    *c = class as u8;
                }
            }
        }
        mask.scores.clear();
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
