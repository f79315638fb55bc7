//! SVG plots of a run's summary (plotters): speedup vs k, per-position acceptance, and measured vs
//! predicted speedup.

use crate::records::Kind;
use crate::summary::CellSummary;
use anyhow::{anyhow, Result};
use plotters::element::ErrorBar;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (900, 540);

fn series_label(c: &CellSummary) -> String {
    format!("{} · {} · T={}", c.pair, c.prompt_set, c.temperature)
}

/// Spec cells grouped into lines (pair, set, temperature, schedule, top-p/k, length), in k order.
fn lines(cells: &[CellSummary]) -> BTreeMap<String, Vec<&CellSummary>> {
    let mut out: BTreeMap<String, Vec<&CellSummary>> = BTreeMap::new();
    for c in cells.iter().filter(|c| c.kind == Kind::Spec && c.speedup.is_some()) {
        let mut label = series_label(c);
        if c.schedule != "fixed" {
            label.push_str(&format!(" · {}", c.schedule));
        }
        out.entry(label).or_default().push(c);
    }
    for v in out.values_mut() {
        v.sort_by_key(|c| c.k);
    }
    out
}

/// k and positions are integers: label only the integer ticks.
fn integer_ticks(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else {
        String::new()
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Writes every plot into `dir`; returns the files written.
pub fn write_all(cells: &[CellSummary], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let lines = lines(cells);
    if lines.is_empty() {
        return Ok(written);
    }
    let p = dir.join("speedup_vs_k.svg");
    speedup_vs_k(&lines, &p)?;
    written.push(p);
    let p = dir.join("per_position_acceptance.svg");
    per_position(&lines, &p)?;
    written.push(p);
    let p = dir.join("measured_vs_predicted.svg");
    measured_vs_predicted(cells, &p)?;
    written.push(p);
    Ok(written)
}

fn speedup_vs_k(lines: &BTreeMap<String, Vec<&CellSummary>>, path: &Path) -> Result<()> {
    let ks: Vec<usize> = lines.values().flatten().map(|c| c.k).collect();
    let (kmin, kmax) = (*ks.iter().min().unwrap_or(&1) as f64, *ks.iter().max().unwrap_or(&1) as f64);
    let ys: Vec<f64> = lines.values().flatten().flat_map(|c| c.speedup.map(|s| [s.ci_low.unwrap_or(s.mean), s.ci_high.unwrap_or(s.mean)])).flatten().collect();
    let ymax = ys.iter().copied().fold(1.0f64, f64::max) * 1.1;
    let ymin = ys.iter().copied().fold(1.0f64, f64::min).min(0.0);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Measured speedup vs draft length k (mean, 95% CI)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((kmin - 0.5)..(kmax + 0.5), ymin..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels((kmax - kmin) as usize * 2 + 3)
        .x_label_formatter(&integer_ticks)
        .x_desc("k (drafted tokens per verification)")
        .y_desc("speedup vs target-only")
        .draw()
        .map_err(err)?;
    chart.draw_series(LineSeries::new([(kmin - 0.5, 1.0), (kmax + 0.5, 1.0)], BLACK.mix(0.4))).map_err(err)?;
    for (i, (label, cs)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = cs.iter().filter_map(|c| c.speedup.map(|s| (c.k as f64, s.mean))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
        chart
            .draw_series(cs.iter().filter_map(|c| {
                let s = c.speedup?;
                Some(ErrorBar::new_vertical(c.k as f64, s.ci_low?, s.mean, s.ci_high?, color.stroke_width(1), 8))
            }))
            .map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn per_position(lines: &BTreeMap<String, Vec<&CellSummary>>, path: &Path) -> Result<()> {
    // One line per series, at its largest k (the most positions measured).
    let longest: Vec<(&String, &CellSummary)> = lines.iter().filter_map(|(l, cs)| cs.last().map(|c| (l, *c))).collect();
    let positions = longest.iter().map(|(_, c)| c.per_position.len()).max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Per-position acceptance aᵢ = P(dᵢ accepted | d₁…dᵢ₋₁ accepted)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5..(positions as f64 + 0.5), 0.0..1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(positions * 2 + 1)
        .x_label_formatter(&integer_ticks)
        .x_desc("draft position i")
        .y_desc("acceptance rate")
        .draw()
        .map_err(err)?;
    for (i, (label, c)) in longest.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = c.per_position.iter().enumerate().filter(|(_, a)| a.is_finite()).map(|(j, &a)| ((j + 1) as f64, a)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{label} · k={}", c.k))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).position(SeriesLabelPosition::LowerRight).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn measured_vs_predicted(cells: &[CellSummary], path: &Path) -> Result<()> {
    let pts: Vec<(f64, f64, f64)> = cells
        .iter()
        .filter(|c| c.kind == Kind::Spec)
        .filter_map(|c| Some((c.predicted_speedup?, c.predicted_speedup_v?, c.speedup?.mean)))
        .filter(|(a, b, m)| a.is_finite() && b.is_finite() && m.is_finite())
        .collect();
    let hi = pts.iter().flat_map(|&(a, b, m)| [a, b, m]).fold(1.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Measured vs predicted speedup (one point per cell)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..hi, 0.0..hi)
        .map_err(err)?;
    chart.configure_mesh().x_desc("predicted speedup").y_desc("measured speedup").draw().map_err(err)?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (hi, hi)], BLACK.mix(0.4))).map_err(err)?.label("measured = predicted").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
    let blue = BLUE.to_rgba();
    let red = RED.to_rgba();
    chart
        .draw_series(pts.iter().map(|&(a, _, m)| Circle::new((a, m), 4, blue.filled())))
        .map_err(err)?
        .label("Leviathan: (1 − α^(k+1)) / ((1 − α)(kc + 1))")
        .legend(move |(x, y)| Circle::new((x + 9, y), 4, blue.filled()));
    chart
        .draw_series(pts.iter().map(|&(_, b, m)| TriangleMarker::new((b, m), 5, red.filled())))
        .map_err(err)?
        .label("with measured verification cost v: … / ((1 − α)(kc + v))")
        .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, red.filled()));
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
