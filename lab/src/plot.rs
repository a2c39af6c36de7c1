//! Charts of simulation runs: per-minute offered load, requests served, throttles and attempts
//! sent to a fallback, one line per policy, as an SVG (plotters).

use crate::simulate::{Minute, SimReport};
use plotters::prelude::*;
use std::path::Path;

type Metric = (&'static str, fn(&Minute) -> u64);

const PANELS: [Metric; 4] = [
    ("offered load (requests arriving per minute)", |m| m.offered),
    ("requests served per minute", |m| m.served),
    ("throttling answers per minute", |m| m.throttles),
    ("attempts sent to a fallback model per minute", |m| {
        m.fallbacks
    }),
];

/// Writes the four per-minute panels for `reports` to `path`.
pub fn per_minute_svg(reports: &[SimReport], path: &Path) -> std::io::Result<()> {
    draw(reports, path).map_err(std::io::Error::other)
}

fn draw(reports: &[SimReport], path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let minutes = reports
        .iter()
        .map(|r| r.per_minute.len())
        .max()
        .unwrap_or(0)
        .max(1) as u32;
    for (area, (title, metric)) in root.split_evenly((PANELS.len(), 1)).iter().zip(PANELS) {
        let top = reports
            .iter()
            .flat_map(|r| r.per_minute.iter().map(metric))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(0..minutes, 0..top + top / 10 + 1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("minute")
            .draw()
            .map_err(|e| e.to_string())?;
        // Offered load is the same for every policy (same seed, same arrivals): one line.
        let shown = if title.starts_with("offered") {
            &reports[..reports.len().min(1)]
        } else {
            reports
        };
        for (i, report) in shown.iter().enumerate() {
            let style = Palette99::pick(i).stroke_width(2);
            let points = report
                .per_minute
                .iter()
                .enumerate()
                .map(|(minute, m)| (minute as u32, metric(m)));
            let label = if shown.len() == 1 && reports.len() > 1 {
                "all policies".to_string()
            } else {
                report.policy.clone()
            };
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
