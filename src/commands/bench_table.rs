//! The `ailurus bench` sweep's outputs: its table as text (with the machine line), as CSV (the
//! machine on every row, so CSVs of several machines can be concatenated), and the Pareto
//! picture. Owns only presentation: the rows are measured in `bench.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::bench::{Row, AMBIGUOUS_MARGIN, AMBIGUOUS_SHARE};

/// The table as text.
pub fn format_table(rows: &[Row]) -> String {
    let rss = ailurus::model::memory::peak_rss().map_or("?".into(), |b| format!("{:.0} MB", b as f64 / 1e6));
    let mut s = format!("# {}; bench peak RSS {rss}\n", ailurus::model::isa::machine_line());
    s += &format!(
        "{:<10} {:>2} {:>5} {:>5} {:>4} {:>8} {:>7} {:>6} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {}\n",
        "strategy",
        "a",
        "size",
        "M",
        "bias",
        "ms/frm",
        "speedup",
        "ideal",
        "of-ideal",
        "red%",
        "stem",
        "middle",
        "head",
        "IoU",
        "IoU-min",
        "MAE",
        "IoU-GT"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:>2} {:>5} {:>5} {:>4} {:>8.0} {:>6.2}x {:>5.2}x {:>7.0}% {:>5.1}% {:>7.0} {:>7.0} {:>7.0} {:>7.3} {:>7.3} {:>7.4} {:>6.3}{}\n",
            r.strategy,
            if r.cut == 0 { "-".to_string() } else { r.cut.to_string() },
            r.size,
            r.m,
            if r.strategy == "none" || r.strategy == "lowres" { "-" } else if r.bias { "on" } else { "off" },
            r.ms,
            r.speedup,
            r.ideal,
            100.0 * r.speedup / r.ideal,
            100.0 * r.reduce_share,
            r.stem_ms,
            r.middle_ms,
            r.head_ms,
            r.iou,
            r.iou_min,
            r.mae,
            r.gt_iou,
            if r.pareto { "  *pareto" } else { "" }
        );
    }
    s
}

/// The table as CSV.
pub fn write_csv(rows: &[Row], path: &Path) -> std::io::Result<()> {
    let mut s = String::from(
        "strategy,cut,size,m,n,bias,ms,speedup,ideal,reduce_share,stem_ms,middle_ms,head_ms,iou,iou_min,mae,gt_iou,pareto,cpu,isa,kernels\n",
    );
    // The machine on every row: CSVs of several machines can be concatenated.
    let cpu = ailurus::model::isa::cpu_model().replace(',', " ");
    let isa = ailurus::model::isa::level();
    let kernels: Vec<String> = ailurus::model::isa::kernels().iter().map(|(f, k)| format!("{f}={k}")).collect();
    let machine = format!("{cpu},{isa},{}", kernels.join(" "));
    for r in rows {
        s += &format!(
            "{},{},{},{},{},{},{:.3},{:.4},{:.4},{:.5},{:.3},{:.3},{:.3},{:.5},{:.5},{:.5},{:.5},{},{machine}\n",
            r.strategy,
            r.cut,
            r.size,
            r.m,
            r.n,
            r.bias,
            r.ms,
            r.speedup,
            r.ideal,
            r.reduce_share,
            r.stem_ms,
            r.middle_ms,
            r.head_ms,
            r.iou,
            r.iou_min,
            r.mae,
            r.gt_iou,
            r.pareto
        );
    }
    write_text(path, &s)
}

/// The line under the table naming the photos whose unreduced mask is ambiguous (most of it
/// near the threshold): on those every setting, a lower resolution too, can flip the mask.
pub fn format_ambiguous(photos: &[PathBuf], ambiguous: &[f64]) -> String {
    let named: Vec<String> = photos
        .iter()
        .zip(ambiguous)
        .filter(|(_, &a)| a >= AMBIGUOUS_SHARE)
        .map(|(p, a)| format!("{} ({:.0}%)", name(p), 100.0 * a))
        .collect();
    let rule = format!(
        ">= {:.0}% of the unreduced scores within {} of the threshold",
        100.0 * AMBIGUOUS_SHARE,
        AMBIGUOUS_MARGIN
    );
    if named.is_empty() {
        format!("# IoU-min: the worst photo's; no ambiguous photo ({rule})\n")
    } else {
        format!(
            "# IoU-min: the worst photo's; ambiguous photos ({rule}; any small change flips their masks, so their \
             IoU says little and drags the mean; see the per-photo CSV): {}\n",
            named.join(", ")
        )
    }
}

/// `out/bench.csv` -> `out/bench_photos.csv`.
pub fn photo_csv_path(csv: &Path) -> PathBuf {
    let stem = csv.file_stem().map_or("bench".into(), |s| s.to_string_lossy().into_owned());
    csv.with_file_name(format!("{stem}_photos.csv"))
}

/// One line per (setting, photo): the photo's mask IoU against unreduced, with the reference's
/// ambiguous share and its MAE, so a mean can be taken apart.
pub fn write_photo_csv(rows: &[Row], photos: &[PathBuf], ambiguous: &[f64], path: &Path) -> std::io::Result<()> {
    let mut s = String::from("strategy,cut,size,m,bias,photo,ambiguous_share,iou,mae\n");
    for r in rows.iter().filter(|r| !r.ious.is_empty()) {
        for (((p, a), iou), mae) in photos.iter().zip(ambiguous).zip(&r.ious).zip(&r.maes) {
            let photo = name(p).replace(',', " ");
            s += &format!("{},{},{},{},{},{photo},{a:.4},{iou:.5},{mae:.5}\n", r.strategy, r.cut, r.size, r.m, r.bias);
        }
    }
    write_text(path, &s)
}

/// `s` into `path`, its folder made first.
fn write_text(path: &Path, s: &str) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, s)
}

fn name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The Pareto picture: speed-up against `none` (x) and mask IoU against `none` (y), one curve
/// per strategy (and proportional attention on/off).
pub fn write_plot(rows: &[Row], path: &Path) -> Result<(), image::ImageError> {
    use super::plot::{Plot, Series, PALETTE};
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        let key = match r.strategy.as_str() {
            "none" | "lowres" => "lowres (+none)".to_string(),
            s => format!("{s} a={}{}", r.cut, if r.bias { "" } else { " no-bias" }),
        };
        groups.entry(key).or_default().push((r.speedup, r.iou));
    }
    let series = groups
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut points))| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name, points, color: PALETTE[i % PALETTE.len()], line: true }
        })
        .collect();
    let plot = Plot {
        title: "ailurus bench: speed-up vs fidelity".into(),
        x_label: "speed-up vs none (same run)".into(),
        y_label: "mask IoU vs none".into(),
        series,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(image::ImageError::IoError)?;
    }
    plot.save(path, 1000, 700)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_photos_are_named_with_their_share() {
        let photos = [PathBuf::from("a/grass.png"), PathBuf::from("b/cat.jpg")];
        let line = format_ambiguous(&photos, &[0.76, 0.1]);
        assert!(line.contains("grass.png (76%)"), "{line}");
        assert!(!line.contains("cat.jpg"), "{line}");
        assert!(format_ambiguous(&photos, &[0.2, 0.1]).contains("no ambiguous photo"));
    }

    #[test]
    fn per_photo_csv_has_a_line_per_setting_and_photo() {
        let dir = std::env::temp_dir().join(format!("ailurus-photo-csv-{}", std::process::id()));
        let csv = dir.join("bench.csv");
        let per_photo = photo_csv_path(&csv);
        assert_eq!(per_photo, dir.join("bench_photos.csv"));
        let reference = Row { strategy: "none".into(), ..Default::default() };
        let reduced = Row {
            strategy: "ailurus".into(),
            cut: 4,
            size: 448,
            m: 640,
            bias: true,
            ious: vec![0.9, 0.05],
            maes: vec![0.01, 0.15],
            ..Default::default()
        };
        let photos = [PathBuf::from("x/cat,1.jpg"), PathBuf::from("grass.png")];
        write_photo_csv(&[reference, reduced], &photos, &[0.1, 0.76], &per_photo).unwrap();
        let text = std::fs::read_to_string(&per_photo).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "header + one line per photo of the reduced row: {text}");
        assert_eq!(lines[1], "ailurus,4,448,640,true,cat 1.jpg,0.1000,0.90000,0.01000");
        assert_eq!(lines[2], "ailurus,4,448,640,true,grass.png,0.7600,0.05000,0.15000");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
