//! `ailurus calibrate`: measure the cost and fidelity of every `[budget]` setting on sample
//! images and write the calibration table the budget controller uses (once per device).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};

use super::ConfigArg;
use ailurus::budget::calibration::{calibrate, calibration_settings};
use ailurus::model::Io;
use ailurus::reduce::Strategy;
use ailurus::source::folder::{list_images, load_frame};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Folder of sample images (default: [source] path).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Where to write the table (default: [budget] calibration).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sample images to use.
    #[arg(long, default_value_t = 3)]
    frames: usize,
    /// Values of M measured per input size (the controller interpolates between them).
    #[arg(long, default_value_t = 4)]
    points: usize,
}

pub fn command(a: Args) -> Result<()> {
    let cfg = a.config.load()?;
    let images = a.images.unwrap_or_else(|| cfg.resolve(&cfg.source.path));
    let out = a.out.unwrap_or_else(|| cfg.resolve(&cfg.budget.calibration));
    let mut sizes = cfg.budget.sizes.clone();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let seg = Arc::new(ailurus::app::segmenter(&cfg, &sizes)?);
    let files = list_images(&images)?;
    let mut sample = Vec::new();
    for (i, p) in files.iter().take(a.frames.max(1)).enumerate() {
        match load_frame(p, i as u64) {
            Ok(f) => sample.push(f),
            Err(e) => log::warn!("{e} (skipped)"),
        }
    }
    if sample.is_empty() {
        bail!("calibration: no readable sample frames in {}", images.display());
    }
    let reducing = cfg.reduce.strategy.get() != Strategy::None;
    let settings = calibration_settings(&cfg.budget, seg.sizes(), reducing, a.points);
    log::info!("calibrating {} setting(s) on {} frame(s); this takes a while", settings.len(), sample.len());
    let t = Instant::now();
    let bar = super::progress(0, "calibrating");
    let mut lane = seg.lane()?;
    let mut table = calibrate(&mut lane, &Io::of(seg.manifest()), &sample, &settings, &mut |d, n| {
        bar.set_length(n as u64);
        bar.set_position(d as u64);
    })?;
    bar.finish_and_clear();
    table.origin = out.display().to_string();
    let comment = format!(
        "ailurus calibration table, written by `ailurus calibrate` in {:.0}s\n\
         model {} on {} ({} threads), reducer {} cut {}, {} sample frame(s) from {}\n\
         cost_ms = preprocess + inference (median); iou/mae = agreement with {}px unreduced",
        t.elapsed().as_secs_f64(),
        seg.manifest().name,
        cfg.model.device,
        cfg.model.threads,
        cfg.reduce.strategy,
        cfg.reduce.cut,
        sample.len(),
        images.display(),
        sizes.first().copied().unwrap_or(0),
    );
    table.write(&out, &comment)?;
    print!("{}", table.to_csv(&comment));
    println!("wrote {}", out.display());
    Ok(())
}
