//! Mask -> images: the class-id PNG and the overlay the sinks and `segment` write.

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
