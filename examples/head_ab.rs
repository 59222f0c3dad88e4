//! The reuse path's head, own executor (partial, `src/reuse/head/`) against the tract head plan,
//! on the same frames in the same run: two reuse lanes, frames interleaved (A then B per frame),
//! so machine load hits both alike. Per setting: ms/frame of the whole lane, the head's ms/frame
//! (the head stage: everything after the encoder / carried middle) and share, the own head's
//! mean multiply-add fraction, and the largest output difference between the lanes.
//! With `head_threshold` above 0 the own head differs from the tract head (it keeps tokens that
//! moved less): the mask IoU between the lanes (saliency >= 0.5) shows by how much.
//! `cargo run --release --example head_ab [frames] [thresholds] [head_thresholds]` (needs `.cache`: the model and
//! `.cache/video/frames/carphone_pristine`, tools/decode_clips.sh). Embedded default config.
use std::sync::Arc;

use ailurus::config::Config;
use ailurus::engine::{FrameIo, Setting, StageTimes};
use ailurus::model::{Io, Segmenter, SegmenterOptions};
use ailurus::reuse::{ReuseConfig, ReuseModel};

fn main() {
    let frames: usize = std::env::args().nth(1).map_or(40, |s| s.parse().unwrap());
    let thresholds: Vec<f32> =
        std::env::args().nth(2).unwrap_or("0.3,0.2".into()).split(',').map(|s| s.parse().unwrap()).collect();
    let gates: Vec<f32> =
        std::env::args().nth(3).unwrap_or("0.1".into()).split(',').map(|s| s.parse().unwrap()).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::embedded_default().unwrap();
    ailurus::model::configure_cpu(&cfg.model);
    let size = 448;
    let opts = SegmenterOptions::from_config(&cfg.model, &cfg.reduce, &[size]);
    let seg = Arc::new(Segmenter::load(&root.join("models/vit_s_focus.toml"), &opts).unwrap());
    let io = Io::of(seg.manifest());
    let model = Arc::new(ReuseModel::new(seg.clone()).unwrap());
    let dir = root.join(".cache/video/frames/carphone_pristine");
    let mut inputs = Vec::new();
    let mut rs = ailurus::pre::Resampler::default();
    for i in 1..=frames {
        let f = ailurus::source::folder::load_frame(&dir.join(format!("{i:06}.png")), 0).unwrap();
        let mut x = Vec::new();
        io.preprocess(&f, size, &mut rs, &mut x);
        inputs.push(x);
    }
    println!("carphone_pristine, {frames} frames at {size} px, threads {:?}", cfg.model.threads);
    println!(
        "{:<28} {:>12} {:>12} {:>14} {:>14} {:>10} {:>10} IoU own/tract mean/min",
        "setting", "own ms/fr", "tract ms/fr", "own head ms", "tract head ms", "own macs", "max diff",
    );
    for (&t, &g) in thresholds.iter().flat_map(|t| gates.iter().map(move |g| (t, g))) {
        for m in [usize::MAX, 768] {
            let rc = ReuseConfig {
                enabled: true,
                threshold: t,
                carry_clusters: true,
                head_threshold: g,
                ..cfg.reuse.clone()
            };
            let (mut a, mut b) = (model.lane(rc.clone()).unwrap(), model.lane(rc).unwrap());
            b.set_own_head(false);
            let st = Setting { input_size: size, m };
            let (mut tot, mut head, mut macs, mut diff) = ([0.0f64; 2], [0.0f64; 2], 0.0, 0f32);
            let mut ious = Vec::new();
            let (mut oa, mut ob) = (Vec::new(), Vec::new());
            for x in &inputs {
                for (k, lane) in [&mut a, &mut b].into_iter().enumerate() {
                    let mut times = StageTimes::default();
                    let t0 = std::time::Instant::now();
                    let out = if k == 0 { &mut oa } else { &mut ob };
                    let r = lane.infer_setting(x, st, &mut times, out).unwrap();
                    if k == 0 {
                        macs += if r.head_ran { r.head.macs_fraction } else { 0.0 };
                        if std::env::var_os("HEAD_AB_DEBUG").is_some() {
                            eprintln!("refresh {:?} agreement {:?} head {:?}", r.refresh, r.agreement, r.head);
                        }
                    } else if std::env::var_os("HEAD_AB_DEBUG").is_some() {
                        eprintln!("  tract lane: refresh {:?} agreement {:?}", r.refresh, r.agreement);
                    }
                    tot[k] += t0.elapsed().as_secs_f64() * 1e3;
                    head[k] += times.head.as_secs_f64() * 1e3;
                }
                let d = oa.iter().zip(&ob).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
                if std::env::var_os("HEAD_AB_DEBUG").is_some() {
                    eprintln!("  diff {d:.2e}");
                }
                diff = diff.max(d);
                let (i, u) = oa.iter().zip(&ob).fold((0, 0), |(i, u), (p, q)| {
                    (i + (*p >= 0.5 && *q >= 0.5) as usize, u + (*p >= 0.5 || *q >= 0.5) as usize)
                });
                ious.push(if u == 0 { 1.0 } else { i as f64 / u as f64 });
            }
            let n = inputs.len() as f64;
            let name = if m == usize::MAX { format!("t={t} h={g}") } else { format!("t={t} h={g} carry M={m}") };
            let iou = (ious.iter().sum::<f64>() / n, ious.iter().copied().fold(1.0, f64::min));
            println!(
                "{name:<28} {:>12.1} {:>12.1} {:>8.1} ({:>3.0}%) {:>8.1} ({:>3.0}%) {:>10.3} {:>10.1e} {:.4}/{:.4}",
                tot[0] / n,
                tot[1] / n,
                head[0] / n,
                100.0 * head[0] / tot[0],
                head[1] / n,
                100.0 * head[1] / tot[1],
                macs / n,
                diff,
                iou.0,
                iou.1
            );
        }
    }
}
