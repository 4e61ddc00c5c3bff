//! `umbra report RECORDING… -o DIR`: an HTML page with SVG plots (plotters) for people who
//! would rather look than read — per busy workload, usage against its forecast band,
//! reservations against usage, anomalies marked — built by replaying each recording
//! through the agent.
//!
//! Built with the cargo feature `report` (plotters), which the edge build leaves out.
//! Forecast bands, reservations, decisions and anomalies are the agent's own where it has
//! them; while an agent makes no forecasts (no predict stage in its loop), the report
//! forecasts with the configured fallback baseline (`predict.fallback`), the same
//! [`ForecastStage`] the agent runs, and says so.

mod html;
mod plot;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tokio_util::sync::CancellationToken;

use crate::{
    aggregate::WorkloadId,
    config::Config,
    insight::{Insights, NoteKind, next_bands},
    pipeline::{self, Output, PipelineError},
    predict::{Band, ForecastStage, Target},
    record::{Header, Pace},
    view::Frame,
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot write the report to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plotting {what}: {message}")]
    Plot { what: String, message: String },
}

/// Workloads plotted per recording: the busiest by CPU, then any with anomalies.
pub const PLOTTED: usize = 6;

/// One workload over a recording.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub workload: WorkloadId,
    pub name: String,
    /// End of each interval it was seen in, ms since the start of the recording.
    pub t_ms: Vec<u64>,
    /// Usage per interval, per target ([`Target::ALL`] order).
    pub usage: [Vec<f64>; 4],
    /// The band forecast for each interval, per target.
    pub band: [Vec<Option<Band>>; 4],
    pub reserved_cpu: Vec<Option<f64>>,
    pub reserved_memory: Vec<Option<f64>>,
    /// (ms since start, text)
    pub anomalies: Vec<(u64, String)>,
    pub decisions: Vec<(u64, String)>,
    pub tier: Option<String>,
}

impl Series {
    pub fn cpu_seconds(&self, interval_ms: u32) -> f64 {
        self.usage[Target::Cpu as usize].iter().sum::<f64>() * interval_ms as f64 / 1000.0
    }

    pub fn peak(&self, t: Target) -> f64 {
        self.usage[t as usize].iter().copied().fold(0.0, f64::max)
    }

    /// Share of the intervals with a band whose usage fell inside it (p10–p90).
    pub fn coverage(&self, t: Target) -> Option<f64> {
        let (mut n, mut inside) = (0u32, 0u32);
        for (u, b) in self.usage[t as usize].iter().zip(&self.band[t as usize]) {
            if let Some(b) = b {
                n += 1;
                inside += (*u >= b.p10 && *u <= b.p90) as u32;
            }
        }
        (n > 0).then(|| inside as f64 / n as f64)
    }
}

/// One recording, replayed.
#[derive(Clone, Debug)]
pub struct Recording {
    pub path: PathBuf,
    pub header: Header,
    pub windows: u64,
    pub duration_ms: u64,
    /// Where the bands come from: the agent's predictor, or `baseline <name>` made here.
    pub forecaster: String,
    pub workloads: Vec<Series>,
    /// Node CPU busy, % of all CPUs, per interval.
    pub node_cpu: Vec<(u64, f64)>,
}

/// Gathers a recording's windows and insights.
struct Collector {
    header: Header,
    start_ms: Option<u64>,
    windows: u64,
    series: BTreeMap<WorkloadId, Series>,
    node_cpu: Vec<(u64, f64)>,
    /// Made here while the agent forecasts nothing.
    stage: ForecastStage,
    /// Per workload, the step-1 bands of the newest forecast and the interval they cover.
    next: BTreeMap<WorkloadId, (u64, u64, [Band; 4])>,
    agent_forecasts: bool,
    /// The model behind the agent's forecasts, when one runs.
    agent_model: Option<String>,
}

impl Collector {
    fn rel(&self, ms: u64) -> u64 {
        ms.saturating_sub(self.start_ms.unwrap_or(ms))
    }
}

impl Output for &mut Collector {
    fn window(&mut self, f: &Frame<'_>) -> std::io::Result<()> {
        let w = f.window;
        let now = w.node.timestamp_ms;
        // The first window holds everything since each process began: left out, as the
        // agent leaves it out of summaries.
        if self.start_ms.is_none() {
            self.start_ms = Some(now.saturating_sub(w.node.interval_ms as u64));
            return Ok(());
        }
        self.windows += 1;
        let t = self.rel(now);
        let n = &w.node;
        self.node_cpu.push((
            t,
            n.cpu_busy_ns as f64 * 100.0
                / (n.interval_ms.max(1) as f64 * 1e6 * n.cpus.max(1) as f64),
        ));
        for p in &w.points {
            let s = self
                .series
                .entry(p.workload.clone())
                .or_insert_with(|| Series {
                    workload: p.workload.clone(),
                    name: p.name.clone(),
                    ..Default::default()
                });
            s.t_ms.push(t);
            for tg in Target::ALL {
                s.usage[tg as usize].push(tg.of(p));
                let band = self
                    .next
                    .get(&p.workload)
                    .filter(|(from, to, _)| now > *from && now <= *to)
                    .map(|(_, _, b)| b[tg as usize]);
                s.band[tg as usize].push(band);
            }
            s.reserved_cpu.push(None);
            s.reserved_memory.push(None);
        }
        if !self.agent_forecasts
            && let Some(fs) = self.stage.push(w)
        {
            for f in fs {
                if let Some(b) = next_bands(&f) {
                    let to = f.made_ms + f.interval_ms as u64;
                    self.next.insert(f.workload.clone(), (f.made_ms, to, b));
                }
            }
        }
        Ok(())
    }

    fn insights(&mut self, i: &Insights) -> std::io::Result<()> {
        if self.start_ms.is_none() {
            return Ok(());
        }
        if i.model.is_some() {
            self.agent_model.clone_from(&i.model);
        }
        let t = self.rel(i.timestamp_ms);
        for (id, wi) in &i.workloads {
            let Some(s) = self.series.get_mut(id) else {
                continue;
            };
            if s.t_ms.last() != Some(&t) {
                continue;
            }
            if let Some(b) = wi.forecast {
                self.agent_forecasts = true;
                for tg in Target::ALL {
                    if let Some(last) = s.band[tg as usize].last_mut() {
                        *last = Some(b[tg as usize]);
                    }
                }
            }
            if let Some(r) = wi.reservation {
                if let Some(last) = s.reserved_cpu.last_mut() {
                    *last = r.cpu_cores;
                }
                if let Some(last) = s.reserved_memory.last_mut() {
                    *last = r.memory_bytes;
                }
            }
            if wi.tier.is_some() {
                s.tier.clone_from(&wi.tier);
            }
        }
        for n in &i.notes {
            let Some(s) = n.workload.as_ref().and_then(|w| self.series.get_mut(w)) else {
                continue;
            };
            let at = n.timestamp_ms.saturating_sub(self.start_ms.unwrap_or(0));
            match n.kind {
                NoteKind::Anomaly | NoteKind::Drift => s.anomalies.push((at, n.text.clone())),
                NoteKind::Decision => s.decisions.push((at, n.text.clone())),
            }
        }
        Ok(())
    }
}

/// Replays one recording through the agent and gathers what the report shows.
pub async fn collect(cfg: &Config, path: &Path) -> Result<Recording, ReportError> {
    let header = crate::record::Reader::open(path)
        .map_err(PipelineError::from)?
        .header()
        .clone();
    let mut c = Collector {
        stage: ForecastStage::baseline(&cfg.predict, header.interval_ms as u64),
        header,
        start_ms: None,
        windows: 0,
        series: BTreeMap::new(),
        node_cpu: Vec::new(),
        next: BTreeMap::new(),
        agent_forecasts: false,
        agent_model: None,
    };
    pipeline::look(
        cfg,
        pipeline::From::Recording(path, Pace::AsFastAsPossible),
        |_| Ok(&mut c),
        None,
        CancellationToken::new(),
    )
    .await?;
    let forecaster = if c.agent_forecasts {
        match &c.agent_model {
            Some(m) => format!("the agent's forecasts (model {m}, calibrated)"),
            None => format!(
                "the agent's forecasts (its fallback baseline `{}`, calibrated)",
                cfg.predict.fallback
            ),
        }
    } else {
        format!(
            "baseline `{}` at {} ms (predict.fallback; the agent made no forecasts)",
            c.stage.predictor().name(),
            c.stage.interval_ms()
        )
    };
    let duration_ms = c.node_cpu.last().map_or(0, |x| x.0);
    Ok(Recording {
        path: path.to_path_buf(),
        header: c.header,
        windows: c.windows,
        duration_ms,
        forecaster,
        workloads: c.series.into_values().collect(),
        node_cpu: c.node_cpu,
    })
}

/// The workloads a recording's section plots: the busiest by CPU, then those with
/// anomalies, at most [`PLOTTED`] + 4.
pub fn plotted(r: &Recording) -> Vec<&Series> {
    let mut by_cpu: Vec<&Series> = r.workloads.iter().collect();
    let iv = r.header.interval_ms;
    by_cpu.sort_by(|a, b| {
        b.cpu_seconds(iv)
            .total_cmp(&a.cpu_seconds(iv))
            .then(a.workload.cmp(&b.workload))
    });
    let mut out: Vec<&Series> = by_cpu.iter().take(PLOTTED).copied().collect();
    for s in by_cpu.iter().skip(PLOTTED) {
        if !s.anomalies.is_empty() && out.len() < PLOTTED + 4 {
            out.push(s);
        }
    }
    out
}

/// What a report holds, for the summary line and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportStats {
    pub recordings: usize,
    pub plots: usize,
    pub anomalies: usize,
}

/// `umbra report`: every recording replayed, one page `DIR/index.html`.
pub async fn write(
    cfg: &Config,
    recordings: &[PathBuf],
    dir: &Path,
) -> Result<(PathBuf, ReportStats), ReportError> {
    let mut rs = Vec::new();
    for p in recordings {
        rs.push(collect(cfg, p).await?);
    }
    let (page, stats) = html::page(&rs)?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let index = dir.join("index.html");
    std::fs::write(&index, page).map_err(|source| ReportError::Write {
        path: index.clone(),
        source,
    })?;
    Ok((index, stats))
}

#[cfg(test)]
mod tests;
