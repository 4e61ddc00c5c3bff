//! What people see on the terminal: the table of `umbra run` and `umbra replay`, and one
//! JSON object a line. Names come from the system (executables, cgroups, comm) and may be
//! anything: they are cut on character boundaries and control characters are escaped, so
//! a name can neither panic the table nor break a terminal.

use std::io::Write;

use crate::{
    aggregate::{ShadowPoint, Window},
    allocate::Decision,
    insight::{Insights, NoteKind},
    predict::{Band, Forecast, Target, per_request::Reported},
    trace,
};

/// At most `max` characters of `s`, with control characters escaped; `…` marks a cut.
pub fn clip(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.pop();
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How windows are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Nothing (a daemon with its output elsewhere).
    Quiet,
    /// Node totals and the busiest workloads each interval (`umbra run`).
    Table { top: usize },
    /// Every point, as a table or one JSON object a line (`umbra replay`).
    Points { json: bool },
}

/// Drops as the table shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Lost in the kernel (full maps, ring buffer), since start.
    pub kernel: u64,
    /// Lost between capture and the agent (a consumer too slow), since start.
    pub channel: u64,
}

/// What the agent has to show for an interval.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub window: &'a Window,
    pub drops: Drops,
    /// The latest forecast of each workload (made at the last closed forecast bucket).
    pub forecasts: &'a [Forecast],
    /// What the allocate stage decided since the last frame.
    pub decisions: &'a [Decision],
    /// The requests predicted, and those predicted that ended, since the last frame.
    pub requests: &'a [Reported],
}

impl<'a> Frame<'a> {
    /// A window alone: no forecasts, no decisions.
    pub fn plain(window: &'a Window, drops: Drops) -> Frame<'a> {
        Frame {
            window,
            drops,
            forecasts: &[],
            decisions: &[],
            requests: &[],
        }
    }
}

impl View {
    pub fn window<W: Write>(&self, out: &mut W, f: &Frame<'_>) -> std::io::Result<()> {
        match *self {
            View::Quiet => Ok(()),
            View::Table { top } => table(out, f.window, top, f.drops, f.forecasts),
            View::Points { json } => points(out, f.window, json),
        }
    }
}

/// Decisions, explained, one a line (`umbra run --explain`).
pub fn decisions<W: Write>(out: &mut W, ds: &[Decision]) -> std::io::Result<()> {
    for d in ds {
        writeln!(out, "   {} {}", d.kind(), clip(&d.text(), 600))?;
    }
    out.flush()
}

/// Requests predicted and ended, one a line (`umbra run --explain`): what each was
/// predicted to need (p50 and the p10–p90 band) and what made it; what each that ended
/// used.
pub fn requests<W: Write>(out: &mut W, rs: &[Reported]) -> std::io::Result<()> {
    let band = |b: &Band, show: &dyn Fn(f64) -> String| {
        format!("{} [{}-{}]", show(b.p50), show(b.p10), show(b.p90))
    };
    let secs = |s: f64| format!("{s:.2}");
    let mem = |b: f64| trace::bytes(b.max(0.0) as u64);
    for r in rs {
        let who = format!("{} (pid {})", clip(&r.name, 40), r.tgid);
        let [cpu, peak, duration, _] = &r.bands;
        match r.used {
            None => writeln!(
                out,
                "   request {who}: cpu {} s, peak RSS {}, {} s ({}, {} runs)",
                band(cpu, &secs),
                band(peak, &mem),
                band(duration, &secs),
                r.source,
                r.runs
            )?,
            Some([c, p, d, _]) => writeln!(
                out,
                "   ended   {who}: cpu {} s{}, peak RSS {}, {} s",
                secs(c),
                // Over as shown, not by a rounding's width.
                if secs(c) != secs(cpu.p90) && c > cpu.p90 {
                    " (over its p90)"
                } else {
                    ""
                },
                if p > 0.0 { mem(p) } else { "-".into() },
                secs(d)
            )?,
        }
    }
    out.flush()
}

/// A forecast's first step of CPU as the table shows it: `p50 [p10-p90]`, in percent of
/// a core.
fn cpu_band(f: Option<&Forecast>) -> String {
    match f.and_then(|f| f.of(Target::Cpu).first()) {
        Some(b) => format!(
            "{:.0} [{:.0}-{:.0}]",
            b.p50 * 100.0,
            b.p10 * 100.0,
            b.p90 * 100.0
        ),
        None => "-".into(),
    }
}

impl View {
    /// Anomalies and drift, one line each (the table views; JSON lines stay points only).
    pub fn notes<W: Write>(&self, out: &mut W, i: &Insights) -> std::io::Result<()> {
        if matches!(self, View::Quiet | View::Points { json: true }) {
            return Ok(());
        }
        for n in &i.notes {
            if matches!(n.kind, NoteKind::Anomaly | NoteKind::Drift) {
                writeln!(out, "!! {:<8} {}", n.kind.name(), clip(&n.text, 400))?;
            }
        }
        Ok(())
    }
}

/// Every point of a window: one JSON object a line, or a table.
pub fn points<W: Write>(out: &mut W, w: &Window, json: bool) -> std::io::Result<()> {
    if json {
        for p in &w.points {
            serde_json::to_writer(&mut *out, p)?;
            writeln!(out)?;
        }
        Ok(())
    } else {
        table(out, w, usize::MAX, Drops::default(), &[])
    }
}

/// Node totals, then workloads by CPU.
fn table<W: Write>(
    out: &mut W,
    w: &Window,
    top: usize,
    drops: Drops,
    forecasts: &[Forecast],
) -> std::io::Result<()> {
    let n = &w.node;
    let secs = n.interval_ms.max(1) as f64 / 1000.0;
    let rate = |b: u64| trace::bytes((b as f64 / secs) as u64);
    writeln!(
        out,
        "-- {} workloads, node cpu {:.1}% of {} cpus, mem available {}, read {}/s write {}/s, net tx {}/s rx {}/s, execs {}, kernel drops {}, channel drops {}",
        w.points.len(),
        n.cpu_busy_ns as f64 * 100.0 / (n.interval_ms.max(1) as f64 * 1e6 * n.cpus.max(1) as f64),
        n.cpus,
        trace::bytes(n.mem_available_bytes),
        rate(n.totals.read_bytes),
        rate(n.totals.write_bytes),
        rate(n.totals.net_tx_bytes),
        rate(n.totals.net_rx_bytes),
        n.input.execs,
        drops.kernel,
        drops.channel,
    )?;
    if top == 0 {
        return out.flush();
    }
    writeln!(
        out,
        "{:<20} {:>5} {:>7} {:>15} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}  WORKLOAD",
        "NAME",
        "PROCS",
        "CPU%",
        "NEXT p50[band]",
        "RSS",
        "READ/s",
        "WRITE/s",
        "TX/s",
        "RX/s",
        "EXECS"
    )?;
    let by_id: std::collections::HashMap<&crate::aggregate::WorkloadId, &Forecast> =
        forecasts.iter().map(|f| (&f.workload, f)).collect();
    let mut points: Vec<&ShadowPoint> = w.points.iter().collect();
    points.sort_by(|a, b| {
        b.profile
            .cpu_ns
            .cmp(&a.profile.cpu_ns)
            .then(a.workload.cmp(&b.workload))
    });
    for p in points.into_iter().take(top) {
        writeln!(
            out,
            "{:<20} {:>5} {:>7.1} {:>15} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}  {}",
            clip(&p.name, 20),
            p.processes,
            p.profile.cpu_cores * 100.0,
            cpu_band(by_id.get(&p.workload).copied()),
            trace::bytes(p.profile.rss_bytes),
            rate(p.profile.read_bytes),
            rate(p.profile.write_bytes),
            rate(p.profile.net_tx_bytes),
            rate(p.profile.net_rx_bytes),
            p.input.execs,
            clip(&p.workload.0, 40),
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{NodePoint, ProductionInput, ResourceProfile, WorkloadId};

    #[test]
    fn clip_cuts_on_characters_and_escapes_controls() {
        assert_eq!(clip("nginx", 20), "nginx");
        assert_eq!(clip("ééééé", 3), "éé…");
        assert_eq!(clip("a\u{1b}[2Jb", 20), "a\\u{1b}[2Jb");
        assert_eq!(clip("", 3), "");
    }

    #[test]
    fn a_table_of_strange_names_does_not_panic() {
        let names = [
            "é".repeat(50),
            "\u{fffd}\u{fffd}bad-utf8".into(),
            "x".repeat(5000),
            "日本語のプロセス名".repeat(9),
            "tab\tnew\nline".into(),
        ];
        let w = Window {
            points: names
                .iter()
                .map(|n| ShadowPoint {
                    timestamp_ms: 1,
                    interval_ms: 1000,
                    workload: WorkloadId(format!("cgroup:/{n}")),
                    name: n.clone(),
                    processes: 1,
                    input: ProductionInput::default(),
                    profile: ResourceProfile::default(),
                })
                .collect(),
            node: NodePoint::default(),
        };
        let mut out = Vec::new();
        let f = Frame {
            window: &w,
            drops: Drops::default(),
            forecasts: &[],
            decisions: &[],
            requests: &[],
        };
        View::Table { top: 10 }.window(&mut out, &f).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2 + names.len());
        assert!(!text.contains('\t'));
    }

    #[test]
    fn requests_show_their_prediction_then_what_they_used() {
        let b = |p50: f64| Band {
            p10: p50 / 2.0,
            p50,
            p90: p50 * 2.0,
        };
        let r = Reported {
            tgid: 42,
            exec_ns: 1,
            key: "exe:sha256:ab".into(),
            name: "xz\n".into(),
            source: "model".into(),
            runs: 5,
            bands: [b(1.0), b(2e6), b(3.0), b(0.0)],
            used: None,
        };
        let ended = |cpu: f64, peak: f64| Reported {
            used: Some([cpu, peak, 2.5, 0.0]),
            ..r.clone()
        };
        let mut out = Vec::new();
        requests(&mut out, &[r.clone(), ended(2.5, 0.0), ended(2.001, 3e6)]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "   request xz\\n (pid 42): cpu 1.00 [0.50-2.00] s, peak RSS 1.9MiB [976.6KiB-3.8MiB], \
                 3.00 [1.50-6.00] s (model, 5 runs)",
                "   ended   xz\\n (pid 42): cpu 2.50 s (over its p90), peak RSS -, 2.50 s",
                "   ended   xz\\n (pid 42): cpu 2.00 s, peak RSS 2.9MiB, 2.50 s",
            ]
        );
    }
}
