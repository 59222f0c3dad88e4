//! `ailurus eval DIR`: the configured (reduced) model against the unreduced one and against
//! ground truth where it exists, with FPS. Unreadable images are reported and skipped; the
//! command then exits 2.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{ConfigArg, Overrides};
use ailurus::engine::Setting;
use ailurus::eval::{against_gt, iou, mae, mean};
use ailurus::frame::Mask;
use ailurus::model::io::{FrameRunner, Io};
use ailurus::source::{self, SourceError};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    ov: Overrides,
    dir: PathBuf,
}

/// Images of an eval folder: `DIR/JPEGImages/*` when it is a VOC layout, else `DIR/*`.
pub fn eval_images(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let voc = dir.join("JPEGImages");
    source::folder::list_images(if voc.is_dir() { &voc } else { dir })
}

pub fn command(a: Args) -> Result<()> {
    let cfg = super::config_with(&a.config, &a.ov)?;
    let images = eval_images(&a.dir)?;
    let seg = Arc::new(ailurus::app::segmenter(&cfg, &[])?);
    let size = cfg.model.input_size;
    let setting = ailurus::app::setting_for(&cfg, seg.sizes(), size);
    let full = Setting { input_size: size, m: usize::MAX };
    let io = Io::of(seg.manifest());
    let mut lane = seg.lane()?;
    let mut fr = FrameRunner::default();
    let (mut mask, mut ref_mask) = (Mask::default(), Mask::default());
    let (mut agree_iou, mut agree_mae, mut gt_fg, mut gt_miou) = (vec![], vec![], vec![], vec![]);
    let (mut t_red, mut t_full) = (Duration::ZERO, Duration::ZERO);
    let mut skipped = 0;
    println!("{:<28} {:>9} {:>9} {:>10} {:>10} {:>9}", "image", "ms", "ms full", "IoU(full)", "MAE(full)", "IoU(GT)");
    let bar = super::progress(images.len(), "evaluating");
    for (i, path) in images.iter().enumerate() {
        bar.inc(1);
        let frame = match source::folder::load_frame(path, i as u64) {
            Ok(f) => f,
            Err(e) => {
                bar.suspend(|| log::error!("{e}"));
                skipped += 1;
                continue;
            }
        };
        let t = Instant::now();
        fr.run(&io, &mut lane, &frame, setting, &mut mask)?;
        let dt = t.elapsed();
        let t = Instant::now();
        fr.run(&io, &mut lane, &frame, full, &mut ref_mask)?;
        let dt_full = t.elapsed();
        t_red += dt;
        t_full += dt_full;
        agree_iou.push(iou(&mask.classes, &ref_mask.classes));
        agree_mae.push(mae(&mask.scores, &ref_mask.scores));
        let mut gt_col = "-".to_string();
        if let Some((fg, bg)) = against_gt(path, &mask.classes, frame.width, frame.height)? {
            gt_fg.push(fg);
            gt_miou.push((fg + bg) / 2.0);
            gt_col = format!("{fg:.3}");
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (ms, ms_full) = (dt.as_secs_f64() * 1e3, dt_full.as_secs_f64() * 1e3);
        let (iou, mae) = (agree_iou[agree_iou.len() - 1], agree_mae[agree_mae.len() - 1]);
        bar.suspend(|| println!("{name:<28} {ms:>9.0} {ms_full:>9.0} {iou:>10.3} {mae:>10.4} {gt_col:>9}"));
    }
    bar.finish_and_clear();
    let n = agree_iou.len().max(1) as f64;
    println!(
        "summary: {} image(s) at {}px, strategy {} M={} (of {}): {:.2} FPS vs {:.2} FPS unreduced ({:.2}x); \
         agreement with unreduced: mask IoU {:.3}, MAE {:.4}; vs ground truth: fg IoU {:.3}, mIoU {:.3} ({} with GT)",
        agree_iou.len(),
        size,
        cfg.reduce.strategy,
        setting.m,
        seg.sizes()[0].n_tokens,
        n / t_red.as_secs_f64(),
        n / t_full.as_secs_f64(),
        t_full.as_secs_f64() / t_red.as_secs_f64(),
        mean(&agree_iou),
        mean(&agree_mae),
        mean(&gt_fg),
        mean(&gt_miou),
        gt_fg.len()
    );
    super::skipped(skipped, images.len())
}
