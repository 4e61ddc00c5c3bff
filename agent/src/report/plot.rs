//! The report's SVG plots (plotters' SVG backend: text as SVG text, no font files).

use plotters::prelude::*;

use super::{ReportError, Series};
use crate::{predict::Target, trace::bytes};

const W: u32 = 860;
const H: u32 = 260;
const BAND: RGBColor = RGBColor(66, 133, 244);
const USAGE: RGBColor = RGBColor(20, 20, 20);
const ANOMALY: RGBColor = RGBColor(219, 40, 40);
const RESERVED: RGBColor = RGBColor(230, 120, 0);

fn err(what: &str) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Plot {
        what: what.to_string(),
        message,
    }
}

/// How values of a target are shown on the axis.
fn label(t: Target, v: f64) -> String {
    match t {
        Target::Cpu => format!("{v:.2}"),
        _ => bytes(v.max(0.0) as u64),
    }
}

fn title(t: Target) -> &'static str {
    match t {
        Target::Cpu => "CPU, cores",
        Target::Memory => "RSS",
        Target::Io => "file I/O per second",
        Target::Net => "network per second",
    }
}

/// Usage of `t` against its forecast band (p10–p90 shaded, p50 dashed), reservations
/// (CPU and memory), anomalies as red marks. An SVG document.
pub fn usage_vs_band(s: &Series, t: Target) -> Result<String, ReportError> {
    let what = format!("{} of {}", t.name(), s.name);
    let e = err(&what);
    let i = t as usize;
    let usage = &s.usage[i];
    let band = &s.band[i];
    let reserved = match t {
        Target::Cpu => &s.reserved_cpu,
        Target::Memory => &s.reserved_memory,
        _ => &Vec::new(),
    };
    let secs = |ms: u64| ms as f64 / 1000.0;
    let x_max = s.t_ms.last().map_or(1.0, |&m| secs(m)).max(1.0);
    let x_min = s.t_ms.first().map_or(0.0, |&m| secs(m));
    let mut y_max = usage.iter().copied().fold(0.0, f64::max);
    for b in band.iter().flatten() {
        y_max = y_max.max(b.p90);
    }
    for r in reserved.iter().flatten() {
        y_max = y_max.max(*r);
    }
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} — {}", s.name, title(t)), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_label_formatter(&|v| label(t, *v))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        // The band of each interval: a shaded bar from the interval's start to its end.
        let mut prev = x_min;
        let mut bars = Vec::new();
        let mut mid = Vec::new();
        for (k, &ms) in s.t_ms.iter().enumerate() {
            let x1 = secs(ms);
            let x0 = if k == 0 { x1 - 1.0 } else { prev };
            if let Some(Some(b)) = band.get(k) {
                bars.push(Rectangle::new(
                    [(x0.max(x_min), b.p10), (x1, b.p90)],
                    BAND.mix(0.25).filled(),
                ));
                mid.push((x0.max(x_min), b.p50));
                mid.push((x1, b.p50));
            }
            prev = x1;
        }
        let has_band = !bars.is_empty();
        chart
            .draw_series(bars)
            .map_err(|x| e(x.to_string()))?
            .label("forecast p10–p90")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], BAND.mix(0.25).filled())
            });
        if has_band {
            chart
                .draw_series(DashedLineSeries::new(mid, 4, 3, BAND.stroke_width(1)))
                .map_err(|x| e(x.to_string()))?
                .label("forecast p50")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BAND));
        }
        let line: Vec<(f64, f64)> = s
            .t_ms
            .iter()
            .zip(usage)
            .map(|(&ms, &v)| (secs(ms), v))
            .collect();
        chart
            .draw_series(LineSeries::new(line, USAGE.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label("used")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], USAGE.stroke_width(2)));
        let res: Vec<(f64, f64)> = s
            .t_ms
            .iter()
            .zip(reserved)
            .filter_map(|(&ms, r)| r.map(|r| (secs(ms), r)))
            .collect();
        if !res.is_empty() {
            chart
                .draw_series(LineSeries::new(res, RESERVED.stroke_width(2)))
                .map_err(|x| e(x.to_string()))?
                .label("reserved")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RESERVED.stroke_width(2)));
        }
        // Anomalies: a red mark at the usage of the interval they were found in.
        let marks: Vec<(f64, f64)> = s
            .anomalies
            .iter()
            .filter_map(|(ms, _)| {
                let k = s.t_ms.iter().position(|&x| x >= *ms)?;
                Some((secs(s.t_ms[k]), usage[k]))
            })
            .collect();
        if !marks.is_empty() {
            chart
                .draw_series(
                    marks
                        .into_iter()
                        .map(|p| TriangleMarker::new(p, 7, ANOMALY.filled())),
                )
                .map_err(|x| e(x.to_string()))?
                .label("anomaly")
                .legend(|(x, y)| TriangleMarker::new((x + 7, y), 6, ANOMALY.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// Reservations against usage, CPU and memory, as the share of the reservation used.
pub fn reserved_vs_used(s: &Series) -> Result<Option<String>, ReportError> {
    let what = format!("reservations of {}", s.name);
    let e = err(&what);
    let pairs = |used: &[f64], res: &[Option<f64>]| -> Vec<(f64, f64)> {
        s.t_ms
            .iter()
            .zip(used.iter().zip(res))
            .filter_map(|(&ms, (&u, r))| {
                r.filter(|r| *r > 0.0)
                    .map(|r| (ms as f64 / 1000.0, u / r * 100.0))
            })
            .collect()
    };
    let cpu = pairs(&s.usage[Target::Cpu as usize], &s.reserved_cpu);
    let mem = pairs(&s.usage[Target::Memory as usize], &s.reserved_memory);
    if cpu.is_empty() && mem.is_empty() {
        return Ok(None);
    }
    let x_max = s.t_ms.last().map_or(1.0, |&m| m as f64 / 1000.0).max(1.0);
    let y_max = cpu.iter().chain(&mem).map(|p| p.1).fold(100.0, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} — used, % of reserved", s.name),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|x| e(x.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 100.0), (x_max, 100.0)],
                RESERVED.stroke_width(1),
            ))
            .map_err(|x| e(x.to_string()))?
            .label("reserved (100%)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RESERVED));
        for (name, pts, c) in [("cpu", cpu, USAGE), ("memory", mem, BAND)] {
            if !pts.is_empty() {
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(|x| e(x.to_string()))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(Some(svg))
}
