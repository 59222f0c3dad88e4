//! The http sink's images of one `Output`, encoded on request: JPEG frame and overlay, the
//! mask PNG and the cluster view PNG. Must not cache or serve (that is `http.rs`).

use image::ImageEncoder;

use crate::sink::{Output, SinkError};

/// The images of a frame (the http sink caches them per kind for the frame they were made
/// from).
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Frame = 0,
    Overlay = 1,
    Mask = 2,
    Clusters = 3,
}

/// Encode one image of `out`: JPEG for the frame and the overlay, PNG for the mask and the
/// cluster view (an error for a frame without a partition: the caller checks first).
pub(super) fn encode(out: &Output, kind: Kind, quality: u8) -> Result<Vec<u8>, SinkError> {
    let mut buf = Vec::new();
    let f = &out.frame;
    let jpeg = |buf: &mut Vec<u8>, rgb: &[u8], w, h| {
        image::codecs::jpeg::JpegEncoder::new_with_quality(buf, quality).encode(
            rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
    };
    let res = match kind {
        Kind::Frame => jpeg(&mut buf, &f.rgb, f.width, f.height),
        Kind::Overlay => {
            let img = crate::sink::render::overlay(f, &out.mask);
            jpeg(&mut buf, img.as_raw(), img.width(), img.height())
        }
        Kind::Clusters => {
            let p = out.partition.as_deref().ok_or_else(|| format!("frame {} has no partition", f.seq));
            let img = p.and_then(|p| {
                let (w, h) = crate::sink::clusters::view_size(p, f.width, f.height);
                crate::sink::clusters::draw(p, w, h)
            });
            let img = img.map_err(|msg| SinkError::Other { sink: "http", msg: format!("cluster view: {msg}") })?;
            image::codecs::png::PngEncoder::new(&mut buf).write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
        }
        Kind::Mask => {
            let png = crate::sink::render::mask_to_png(&out.mask);
            image::codecs::png::PngEncoder::new(&mut buf).write_image(
                png.as_raw(),
                png.width(),
                png.height(),
                image::ExtendedColorType::L8,
            )
        }
    };
    res.map_err(|source| SinkError::Encode { sink: "http", path: format!("{kind:?} of frame {}", f.seq), source })?;
    Ok(buf)
}
