//! The `ailurus bench` sweep's outputs: its table as text (with the machine line), as CSV (the
//! machine on every row, so CSVs of several machines can be concatenated), and the Pareto
//! picture. Owns only presentation: the rows are measured in `bench.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use super::bench::Row;

/// The table as text.
pub fn format_table(rows: &[Row]) -> String {
    let rss = ailurus::model::memory::peak_rss().map_or("?".into(), |b| format!("{:.0} MB", b as f64 / 1e6));
    let mut s = format!("# {}; bench peak RSS {rss}\n", ailurus::model::isa::machine_line());
    s += &format!(
        "{:<10} {:>2} {:>5} {:>5} {:>4} {:>8} {:>7} {:>6} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {}\n",
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
        "MAE",
        "IoU-GT"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:>2} {:>5} {:>5} {:>4} {:>8.0} {:>6.2}x {:>5.2}x {:>7.0}% {:>5.1}% {:>7.0} {:>7.0} {:>7.0} {:>7.3} {:>7.4} {:>6.3}{}\n",
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
        "strategy,cut,size,m,n,bias,ms,speedup,ideal,reduce_share,stem_ms,middle_ms,head_ms,iou,mae,gt_iou,pareto,cpu,isa,kernels\n",
    );
    // The machine on every row: CSVs of several machines can be concatenated.
    let cpu = ailurus::model::isa::cpu_model().replace(',', " ");
    let isa = ailurus::model::isa::level();
    let kernels: Vec<String> = ailurus::model::isa::kernels().iter().map(|(f, k)| format!("{f}={k}")).collect();
    let machine = format!("{cpu},{isa},{}", kernels.join(" "));
    for r in rows {
        s += &format!(
            "{},{},{},{},{},{},{:.3},{:.4},{:.4},{:.5},{:.3},{:.3},{:.3},{:.5},{:.5},{:.5},{},{machine}\n",
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
            r.mae,
            r.gt_iou,
            r.pareto
        );
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, s)
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
