//! Charts as SVG, drawn with `plotters` (its SVG backend only: text is written as SVG `<text>`
//! and laid out by plotters' built-in estimate, so no font files are read).
//!
//! * [`sweep`]: `bench`'s chart: TTFT p90 (log scale) and output tok/s against the offered rate,
//!   one line per policy.
//! * [`validate_ttft_p90`] and [`validate_throughput`]: `validate`'s charts: TTFT p90 (log
//!   scale) and output tok/s per stage of the llm-d ladder against the stage's request rate,
//!   podsim's arms (solid, dots) beside the published llm-d figures (dashed, crosses) in the
//!   same colour. [`write_validate`] writes both.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Summary;
use crate::validate::ArmResult;

/// Series colours, in order of first appearance.
const COLORS: [RGBColor; 10] = [
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];

/// One series of a panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub label: String,
    /// Index into the palette (cycled).
    pub color: usize,
    /// Dashed with crosses (reference figures) rather than solid with dots.
    pub dashed: bool,
    /// (x, y); points with a non-finite y (or y ≤ 0 on a log axis) are left out.
    pub points: Vec<(f64, f64)>,
}

/// One chart panel: axes and its series.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub caption: String,
    pub x_desc: String,
    pub y_desc: String,
    pub log_y: bool,
    pub lines: Vec<Line>,
}

const PANEL_W: u32 = 500;
const PANEL_H: u32 = 400;
const LEGEND_W: u32 = 300;
const TITLE_H: u32 = 40;

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Tick label: integers without decimals, others with up to three significant decimals.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 * v.abs().max(1.0) {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// `panels` side by side under `title`, with one legend (every label once, in order) on the right.
pub fn svg(title: &str, panels: &[Panel]) -> Result<String, String> {
    let mut legend: Vec<&Line> = Vec::new();
    for l in panels.iter().flat_map(|p| &p.lines) {
        if !legend.iter().any(|x| x.label == l.label) {
            legend.push(l);
        }
    }
    let width = PANEL_W * panels.len().max(1) as u32 + LEGEND_W;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, PANEL_H + TITLE_H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 16).into_font().style(FontStyle::Bold))
            .map_err(|e| e.to_string())?;
        let (plots, key) = root.split_horizontally(PANEL_W * panels.len() as u32);
        for (area, panel) in plots.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        for (i, l) in legend.iter().enumerate() {
            let y = 30 + 22 * i as i32;
            let style = color(l.color).stroke_width(2);
            if l.dashed {
                key.draw(&PathElement::new(vec![(10, y), (18, y)], style))
                    .and_then(|_| key.draw(&PathElement::new(vec![(24, y), (32, y)], style)))
                    .and_then(|_| key.draw(&Cross::new((21, y), 4, style)))
            } else {
                key.draw(&PathElement::new(vec![(10, y), (32, y)], style))
                    .and_then(|_| key.draw(&Circle::new((21, y), 3, style.filled())))
            }
            .and_then(|_| key.draw(&Text::new(l.label.clone(), (40, y - 7), ("sans-serif", 13))))
            .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<(), String> {
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!p.log_y || y > 0.0);
    let pts: Vec<(f64, f64)> = p
        .lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .filter(keep)
        .collect();
    let xmax = pts.iter().map(|p| p.0).fold(0.0_f64, f64::max).max(1.0) * 1.05;
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&p.caption, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    if p.log_y {
        // Whole decades around the data.
        let (lo, hi) = if ymin.is_finite() {
            let lo = ymin.log10().floor();
            (10f64.powf(lo), 10f64.powf(ymax.log10().ceil().max(lo + 1.0)))
        } else {
            (0.01, 100.0)
        };
        let chart = builder
            .build_cartesian_2d(0.0..xmax, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        fill(chart, p, keep)
    } else {
        let chart = builder
            .build_cartesian_2d(0.0..xmax, 0.0..ymax.max(1.0) * 1.1)
            .map_err(|e| e.to_string())?;
        fill(chart, p, keep)
    }
}

fn fill<DB: DrawingBackend, Y>(
    mut chart: ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    p: &Panel,
    keep: impl Fn(&(f64, f64)) -> bool,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(&p.x_desc)
        .y_desc(&p.y_desc)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(WHITE)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    for l in &p.lines {
        let pts: Vec<(f64, f64)> = l.points.iter().copied().filter(&keep).collect();
        let style = color(l.color).stroke_width(2);
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        if l.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|&x| Cross::new(x, 4, style)))
                .map_err(err)?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(err)?;
            chart
                .draw_series(pts.iter().map(|&x| Circle::new(x, 3, style.filled())))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// `bench`'s chart: TTFT p90 (log scale) and output tok/s against the offered rate (`unit`:
/// `QPS` or `concurrency`), one line per policy.
pub fn sweep(title: &str, rows: &[Summary], unit: &str) -> Result<String, String> {
    let mut policies: Vec<&str> = Vec::new();
    for r in rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let lines = |f: fn(&Summary) -> f64| -> Vec<Line> {
        policies
            .iter()
            .enumerate()
            .map(|(i, p)| Line {
                label: p.to_string(),
                color: i,
                dashed: false,
                points: rows.iter().filter(|r| r.policy == *p).map(|r| (r.qps, f(r))).collect(),
            })
            .collect()
    };
    let x_desc = format!("offered {unit}");
    svg(
        title,
        &[
            Panel {
                caption: "TTFT p90".into(),
                x_desc: x_desc.clone(),
                y_desc: "TTFT p90 (s, log scale)".into(),
                log_y: true,
                lines: lines(|r| r.ttft_p90),
            },
            Panel {
                caption: "output throughput".into(),
                x_desc,
                y_desc: "output tokens/s".into(),
                log_y: false,
                lines: lines(|r| r.output_tok_s),
            },
        ],
    )
}

/// One `validate` panel: for each arm, podsim's stages and the published ones.
fn validate_panel(
    arms: &[ArmResult],
    caption: &str,
    y_desc: &str,
    log_y: bool,
    sim: fn(&crate::ladder::StageReport) -> Option<f64>,
    published: fn(&crate::validate::PublishedStage) -> Option<f64>,
) -> Panel {
    let mut lines = Vec::new();
    for (i, a) in arms.iter().enumerate() {
        let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        lines.push(Line {
            label: format!("{} (podsim)", a.arm),
            color: 3 + 2 * i,
            dashed: false,
            points: a.rows.iter().map(|(p, s)| (p.rate, nan(sim(s)))).collect(),
        });
        lines.push(Line {
            label: format!("{} (llm-d published)", a.arm),
            color: 3 + 2 * i,
            dashed: true,
            points: a.rows.iter().map(|(p, _)| (p.rate, nan(published(p)))).collect(),
        });
    }
    Panel {
        caption: caption.into(),
        x_desc: "request rate (QPS)".into(),
        y_desc: y_desc.into(),
        log_y,
        lines,
    }
}

/// `validate`'s TTFT p90 chart: per stage, podsim's and the published p90 of each arm (log
/// scale; published 0.0, an empty histogram, is left out).
pub fn validate_ttft_p90(title: &str, arms: &[ArmResult]) -> Result<String, String> {
    let panel = validate_panel(
        arms,
        "TTFT p90 vs request rate",
        "TTFT p90 (s, log scale)",
        true,
        |s| s.ttft_p90,
        |p| p.ttft_p90,
    );
    svg(title, &[panel])
}

/// `validate`'s throughput chart: per stage, podsim's and the published output tok/s of each arm.
pub fn validate_throughput(title: &str, arms: &[ArmResult]) -> Result<String, String> {
    let panel = validate_panel(
        arms,
        "output throughput vs request rate",
        "output tokens/s",
        false,
        |s| Some(s.output_tok_s),
        |p| Some(p.output_tok_s),
    );
    svg(title, &[panel])
}

/// Writes `validate-ttft-p90.svg` and `validate-throughput.svg` into `dir` (created if needed).
pub fn write_validate(dir: &Path, title: &str, arms: &[ArmResult]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, svg) in [
        ("validate-ttft-p90.svg", validate_ttft_p90(title, arms)?),
        ("validate-throughput.svg", validate_throughput(title, arms)?),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(100.0), "100");
        assert_eq!(tick(0.1), "0.1");
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(2500.0), "2500");
    }
}
