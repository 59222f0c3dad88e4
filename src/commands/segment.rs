//! `ailurus segment IMG...`: a mask and an overlay PNG per image into `--out` (and with
//! `--clusters` the cluster view of the token partition, NAME.clusters.png), with the IoU
//! against a ground truth found next to the image. An image that cannot be read is reported
//! and skipped; the others are still segmented, and the command then exits 2.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{ConfigArg, Overrides};
use ailurus::engine::Engine;
use ailurus::frame::Mask;
use ailurus::model::io::{FrameRunner, Io};
use ailurus::reduce::Partition;
use ailurus::sink::clusters;
use ailurus::sink::files::write_png_atomic;
use ailurus::sink::render::{mask_to_png, overlay};
use ailurus::source::folder::load_frame;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    ov: Overrides,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value = "out/segment")]
    out: PathBuf,
    /// Also write NAME.clusters.png: the token partition at the cut (one colour per cluster,
    /// centres marked, M and the input size in the corner). None for an image that ran
    /// unreduced (M >= N), which the line then says.
    #[arg(long)]
    clusters: bool,
}

pub fn command(a: Args) -> Result<()> {
    let cfg = super::config_with(&a.config, &a.ov)?;
    let out = &a.out;
    std::fs::create_dir_all(out).with_context(|| format!("output folder {}", out.display()))?;
    let seg = Arc::new(ailurus::app::segmenter(&cfg, &[])?);
    let setting = ailurus::app::setting_for(&cfg, seg.sizes(), cfg.model.input_size);
    let io = Io::of(seg.manifest());
    let mut lane = seg.lane()?;
    let mut fr = FrameRunner::default();
    let mut mask = Mask::default();
    let mut partition = Partition::default();
    let (mut ious, mut skipped) = (Vec::new(), 0);
    for (i, path) in a.images.iter().enumerate() {
        let frame = match load_frame(path, i as u64) {
            Ok(f) => f,
            Err(e) => {
                log::error!("{e}");
                skipped += 1;
                continue;
            }
        };
        let t = Instant::now();
        fr.run(&io, &mut lane, &frame, setting, &mut mask)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
        write_png_atomic(&mask_to_png(&mask), &out.join(format!("{stem}.mask.png")))?;
        write_png_atomic(&overlay(&frame, &mask), &out.join(format!("{stem}.overlay.png")))?;
        let drawn = a.clusters && lane.partition(&mut partition);
        if drawn {
            let (w, h) = clusters::view_size(&partition, frame.width, frame.height);
            let img = clusters::draw(&partition, w, h)
                .map_err(|e| anyhow::anyhow!("{}: cluster view: {e}", path.display()))?;
            write_png_atomic(&img, &out.join(format!("{stem}.clusters.png")))?;
        }
        let salient = mask.classes.iter().filter(|&&c| c != 0).count() as f64 / mask.classes.len().max(1) as f64;
        let mut line = format!(
            "{}: {}x{} at {}px M={} {:.0} ms, salient {:.1}%",
            path.display(),
            frame.width,
            frame.height,
            setting.input_size,
            fr.m_used,
            ms,
            100.0 * salient
        );
        if a.clusters && !drawn {
            line += ", unreduced (M = N): no clusters.png";
        }
        if let Some((fg, bg)) = ailurus::eval::against_gt(path, &mask.classes, frame.width, frame.height)? {
            ious.push(fg);
            line += &format!(", IoU vs ground truth {:.3} (background {:.3}, mIoU {:.3})", fg, bg, (fg + bg) / 2.0);
        }
        println!("{line}");
    }
    if !ious.is_empty() {
        let mean = ailurus::eval::mean(&ious);
        println!("mean foreground IoU vs ground truth over {} image(s): {mean:.3}", ious.len());
    }
    super::skipped(skipped, a.images.len())
}
