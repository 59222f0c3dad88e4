//! Post-processing (src/model/io.rs, src/sink/render.rs, src/eval.rs) against slow, obvious references: the saliency threshold, the
//! K-class argmax, the bilinear upsampling to the frame size (non-square frames, both ways
//! round), the class-id PNG and the overlay, and `iou` / `mae` including their edge cases
//! (empty masks).

use std::path::Path;

use ailurus::eval::{iou, mae};
use ailurus::frame::{Frame, Mask};
use ailurus::model::io::{to_mask, Io};
use ailurus::model::Manifest;
use ailurus::pre::Resampler;
use ailurus::sink::render::{mask_to_png, overlay, PALETTE};

use crate::common::uniform;

/// A manifest whose output is `kind` with `threshold`, and `k` named classes.
fn manifest(kind: &str, threshold: f32, k: usize) -> Manifest {
    let classes: Vec<String> = (0..k).map(|c| format!("{{ name = \"c{c}\", color = [{}, 0, 0] }}", c * 20)).collect();
    let text = format!(
        "name = \"post\"\nfile = \"none.onnx\"\n\
         [input]\nname = \"x\"\nsize = 8\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\
         [tokens]\npatch = 4\nprefix = 1\nwidth = 8\nfinal_norm = \"n\"\nblocks = [\"b0\"]\n\
         [output]\nname = \"y\"\nkind = \"{kind}\"\nthreshold = {threshold:?}\nclasses = [{}]\n",
        classes.join(", ")
    );
    Manifest::parse(&text, Path::new("."), "post-test.toml").unwrap()
}

/// Plain bilinear upsampling of one `[sh, sw]` plane to `[dh, dw]` (dw >= sw, dh >= sh): pixel
/// centres aligned (`align_corners=False`), edges clamped.
fn upsample_ref(src: &[f32], (sw, sh): (usize, usize), (dw, dh): (usize, usize)) -> Vec<f32> {
    let axis = |i: usize, s: usize, d: usize| {
        let c = (i as f64 + 0.5) * s as f64 / d as f64 - 0.5;
        let lo = c.floor();
        let f = c - lo;
        let clamp = |j: f64| j.clamp(0.0, s as f64 - 1.0) as usize;
        (clamp(lo), clamp(lo + 1.0), f)
    };
    let mut out = vec![0.0; dw * dh];
    for y in 0..dh {
        let (y0, y1, fy) = axis(y, sh, dh);
        for x in 0..dw {
            let (x0, x1, fx) = axis(x, sw, dw);
            let v = |yy: usize, xx: usize| src[yy * sw + xx] as f64;
            let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
            let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
            out[y * dw + x] = (top * (1.0 - fy) + bottom * fy) as f32;
        }
    }
    out
}

/// `n` values uniform in [0, 1).
fn probs(n: usize, seed: u64) -> Vec<f32> {
    uniform(n, seed).into_iter().map(|v| (v + 1.0) / 2.0).collect()
}

#[test]
fn saliency_threshold_is_strictly_greater_at_the_model_size() {
    // Frame size == model size: the resampler is the identity, so scores are the raw values.
    let raw = [0.0, 0.5, 0.500_001, 1.0, 0.499_999, 0.3, 0.300_001, 0.9, 0.1];
    for th in [0.5f32, 0.3] {
        let m = manifest("saliency", th, 2);
        let mut mask = Mask::default();
        to_mask(Io::of(&m).output, &raw, 3, 3, 3, &mut Resampler::default(), &mut mask);
        assert_eq!((mask.width, mask.height, mask.num_classes), (3, 3, 2));
        assert_eq!(mask.scores, raw, "identity resampling at the model size");
        let want: Vec<u8> = raw.iter().map(|&p| (p > th) as u8).collect();
        assert_eq!(mask.classes, want, "threshold {th}: a score equal to it is background");
    }
}

#[test]
fn saliency_upsamples_to_non_square_frames_like_bilinear() {
    let m = manifest("saliency", 0.5, 2);
    let s = 8;
    let raw = probs(s * s, 3);
    let (mut rs, mut mask) = (Resampler::default(), Mask::default());
    // Wider than tall, taller than wide, then smaller again (the buffers shrink with it).
    for (w, h) in [(21usize, 13usize), (10, 27), (9, 8)] {
        to_mask(Io::of(&m).output, &raw, s as u32, w as u32, h as u32, &mut rs, &mut mask);
        assert_eq!((mask.width, mask.height), (w as u32, h as u32));
        assert_eq!((mask.classes.len(), mask.scores.len()), (w * h, w * h), "{w}x{h}");
        let want = upsample_ref(&raw, (s, s), (w, h));
        for (i, (&got, &want)) in mask.scores.iter().zip(&want).enumerate() {
            assert!((got - want).abs() < 1e-5, "{w}x{h} pixel ({}, {}): {got} vs {want}", i % w, i / w);
            if (want - 0.5).abs() > 1e-5 {
                assert_eq!(mask.classes[i], (want > 0.5) as u8, "{w}x{h} pixel ({}, {})", i % w, i / w);
            }
        }
    }
}

#[test]
fn a_horizontal_ramp_stays_horizontal_on_a_non_square_frame() {
    // Catches swapped axes, which a square frame would not: the score must grow with x only.
    let m = manifest("saliency", 0.5, 2);
    let s = 4;
    let raw: Vec<f32> = (0..s * s).map(|i| (i % s) as f32 / (s - 1) as f32).collect();
    let (w, h) = (16usize, 6usize);
    let mut mask = Mask::default();
    to_mask(Io::of(&m).output, &raw, s as u32, w as u32, h as u32, &mut Resampler::default(), &mut mask);
    for y in 0..h {
        let row = &mask.scores[y * w..(y + 1) * w];
        let d = row.iter().zip(&mask.scores[..w]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-6, "row {y} differs from row 0 by {d}");
        assert!(row.windows(2).all(|p| p[0] <= p[1]), "row {y} is not increasing: {row:?}");
    }
    assert_eq!(mask.classes[..w].iter().filter(|&&c| c == 1).count(), w / 2, "right half salient");
}

#[test]
fn classes_are_the_argmax_of_the_upsampled_logits() {
    let k = 3;
    let m = manifest("classes", 0.5, k);
    let s = 6;
    let raw: Vec<f32> = uniform(k * s * s, 17).into_iter().map(|v| 4.0 * v).collect();
    let (mut rs, mut mask) = (Resampler::default(), Mask::default());
    for (w, h) in [(19usize, 11usize), (7, 20), (s, s)] {
        to_mask(Io::of(&m).output, &raw, s as u32, w as u32, h as u32, &mut rs, &mut mask);
        assert_eq!((mask.width, mask.height, mask.num_classes), (w as u32, h as u32, k as u32));
        assert!(mask.scores.is_empty(), "no scores for a K-class model");
        let planes: Vec<Vec<f32>> =
            (0..k).map(|c| upsample_ref(&raw[c * s * s..(c + 1) * s * s], (s, s), (w, h))).collect();
        let mut checked = 0;
        for (i, &got) in mask.classes.iter().enumerate() {
            let mut order: Vec<(f32, usize)> = planes.iter().enumerate().map(|(c, p)| (p[i], c)).collect();
            order.sort_by(|a, b| b.0.total_cmp(&a.0));
            if order[0].0 - order[1].0 < 1e-4 {
                continue; // a near tie: rounding may pick either
            }
            assert_eq!(got as usize, order[0].1, "{w}x{h} pixel ({}, {})", i % w, i / w);
            checked += 1;
        }
        assert!(checked > w * h * 9 / 10, "{w}x{h}: only {checked} pixels without a near tie");
    }
}

#[test]
fn argmax_ties_go_to_the_lowest_class_and_a_dominant_class_wins_everywhere() {
    let (k, s) = (4, 4);
    let m = manifest("classes", 0.5, k);
    let mut mask = Mask::default();
    let mut rs = Resampler::default();
    to_mask(Io::of(&m).output, &vec![0.25; k * s * s], s as u32, 10, 5, &mut rs, &mut mask);
    assert!(mask.classes.iter().all(|&c| c == 0), "all equal: class 0");
    let mut raw = vec![-1.0; k * s * s];
    raw[2 * s * s..3 * s * s].fill(5.0);
    to_mask(Io::of(&m).output, &raw, s as u32, 10, 5, &mut rs, &mut mask);
    assert!(mask.classes.iter().all(|&c| c == 2), "class 2 dominates");
}

#[test]
fn mask_png_scales_saliency_ids_and_keeps_class_ids() {
    let mut mask = Mask { width: 3, height: 2, classes: vec![0, 1, 1, 0, 1, 0], scores: vec![], num_classes: 2 };
    let png = mask_to_png(&mask);
    assert_eq!(png.dimensions(), (3, 2));
    assert_eq!(png.into_raw(), vec![0, 255, 255, 0, 255, 0]);
    mask.num_classes = 5;
    mask.classes = vec![0, 1, 2, 3, 4, 4];
    assert_eq!(mask_to_png(&mask).into_raw(), mask.classes);
}

#[test]
fn overlay_blends_the_palette_over_non_background_pixels_only() {
    let (w, h) = (5u32, 3u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 50) as u8, (y * 90) as u8, 200]));
    let frame = Frame::from_rgb_image(0, img, "test");
    let classes: Vec<u8> = (0..w * h).map(|i| (i % 10) as u8).collect();
    let mask = Mask { width: w, height: h, classes: classes.clone(), scores: vec![], num_classes: 10 };
    let out = overlay(&frame, &mask);
    assert_eq!(out.dimensions(), (w, h));
    for (i, &c) in classes.iter().enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        let px = frame.pixel(x, y);
        let want = if c == 0 {
            px
        } else {
            let col = PALETTE[c as usize % PALETTE.len()];
            [0, 1, 2].map(|k| ((px[k] as u32 + col[k] as u32) / 2) as u8)
        };
        assert_eq!(out.get_pixel(x, y).0, want, "pixel ({x}, {y}) class {c}");
    }
}

/// |A ∩ B| / |A ∪ B| over non-zero pixels, by counting sets of indices.
fn iou_ref(a: &[u8], b: &[u8]) -> f64 {
    use std::collections::BTreeSet;
    let set = |m: &[u8]| m.iter().enumerate().filter(|(_, &c)| c != 0).map(|(i, _)| i).collect::<BTreeSet<_>>();
    let (a, b) = (set(a), set(b));
    let union = a.union(&b).count();
    if union == 0 {
        1.0
    } else {
        a.intersection(&b).count() as f64 / union as f64
    }
}

#[test]
fn iou_edge_cases_and_random_masks_match_the_set_reference() {
    assert_eq!(iou(&[], &[]), 1.0, "no pixels: perfect agreement");
    assert_eq!(iou(&[0; 16], &[0; 16]), 1.0, "two empty masks agree");
    assert_eq!(iou(&[0; 16], &[1; 16]), 0.0, "empty against full");
    assert_eq!(iou(&[1; 16], &[0; 16]), 0.0, "full against empty");
    assert_eq!(iou(&[1, 2, 3, 0], &[3, 1, 2, 0]), 1.0, "any non-zero class counts as foreground");
    assert_eq!(iou(&[1, 1, 0, 0], &[0, 1, 1, 0]), 1.0 / 3.0);
    for seed in 0..20u64 {
        let n = 1 + (seed as usize * 37) % 500;
        let bits = |s: u64, p: f32| uniform(n, s).iter().map(|&v| ((v + 1.0) / 2.0 < p) as u8 * 2).collect::<Vec<u8>>();
        let (a, b) = (bits(seed, 0.3), bits(seed + 100, 0.6));
        assert!((iou(&a, &b) - iou_ref(&a, &b)).abs() < 1e-12, "seed {seed}");
        assert_eq!(iou(&a, &b), iou(&b, &a), "symmetric");
    }
}

#[test]
fn mae_edge_cases_and_random_maps_match_the_plain_mean() {
    assert_eq!(mae(&[], &[]), 0.0, "empty maps: no error (no division by zero)");
    assert_eq!(mae(&[0.25; 8], &[0.25; 8]), 0.0);
    assert_eq!(mae(&[0.0, 1.0], &[1.0, 0.0]), 1.0);
    assert!((mae(&[0.0, 0.5, 1.0, 0.25], &[0.5, 0.5, 0.0, 0.0]) - 1.75 / 4.0).abs() < 1e-12);
    for seed in 0..10u64 {
        let n = 1 + seed as usize * 53;
        let (a, b) = (probs(n, seed), probs(n, seed + 50));
        let want = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / n as f64;
        assert!((mae(&a, &b) - want).abs() < 1e-9, "seed {seed}: {} vs {want}", mae(&a, &b));
    }
}
