//! Wires the stages: the only module that knows all of them. A capture task feeds a
//! bounded channel; consumers never block it (a full channel drops, counted and logged).
//! Shutdown comes from a token (SIGINT/SIGTERM in `main`) or a duration.

use std::{
    io::Write,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    aggregate::{Aggregator, History, ShadowPoint, Window},
    capture::{CaptureError, CaptureItem, KernelCapture, Source},
    config::Config,
    record::{Header, Pace, Reader, RecordError, Replay, Writer},
    trace::{self, Filter, Tracer},
};

/// Items buffered between capture and its consumers.
const CHANNEL_DEPTH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("writing output")]
    Output(#[from] std::io::Error),
}

/// Runs `source` until it ends, fails or `shutdown` fires, sending what it yields into
/// `tx` without ever waiting on the consumer.
pub async fn capture_task<S: Source>(
    mut source: S,
    tx: mpsc::Sender<CaptureItem>,
    shutdown: CancellationToken,
    dropped: Arc<AtomicU64>,
) -> Result<(), CaptureError> {
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            item = source.next() => item?,
        };
        let Some(item) = item else { return Ok(()) };
        match tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(dropped = n, "Consumer too slow; capture items dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
        }
    }
}

/// Starts the kernel capture and its task; returns the receiving end.
/// The running capture: its output, its task, and the count of items dropped on the way.
struct Running {
    rx: mpsc::Receiver<CaptureItem>,
    task: tokio::task::JoinHandle<Result<(), CaptureError>>,
    dropped: Arc<AtomicU64>,
}

fn start_capture(cfg: &Config, shutdown: &CancellationToken) -> Result<Running, PipelineError> {
    let source = KernelCapture::load(&cfg.capture)?;
    for (hook, status) in &source.report().hooks {
        info!(%hook, ?status, "Hook");
    }
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let dropped = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(capture_task(source, tx, shutdown.clone(), dropped.clone()));
    Ok(Running { rx, task, dropped })
}

/// Stops on `shutdown` or after `duration`.
fn deadline(shutdown: &CancellationToken, duration: Option<Duration>) {
    if let Some(d) = duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.cancel();
        });
    }
}

async fn finish(
    task: tokio::task::JoinHandle<Result<(), CaptureError>>,
) -> Result<(), PipelineError> {
    match task.await {
        Ok(r) => Ok(r?),
        Err(e) => Err(PipelineError::Output(std::io::Error::other(e))),
    }
}

/// `umbra run`: the agent's main job. At this stage: capture → aggregate, and a table of
/// the busiest workloads (shadow data points) each interval.
pub async fn run<W: Write>(
    cfg: &Config,
    mut out: W,
    top: usize,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let Running {
        mut rx,
        task,
        dropped,
    } = start_capture(cfg, &shutdown)?;
    deadline(&shutdown, duration);
    let mut agg = Aggregator::new(cfg.aggregate.group_by, cfg.capture.interval_ms as u32);
    let mut history = History::new(cfg.aggregate.history.clone());
    let mut first = true;
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => item,
        };
        match item {
            Some(CaptureItem::Tick(t)) => {
                let w = agg.tick(&t);
                history.insert(&w);
                // The first window holds everything since each process was first seen.
                if !std::mem::take(&mut first) {
                    render_window(
                        &mut out,
                        &w,
                        top,
                        t.drops.lost(),
                        dropped.load(Ordering::Relaxed),
                    )?;
                }
            }
            Some(CaptureItem::Event(_)) => {}
            None => break,
        }
    }
    shutdown.cancel();
    finish(task).await
}

/// `umbra record`: the capture stream to a file.
pub async fn record(
    cfg: &Config,
    path: &Path,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<RecordStats, PipelineError> {
    let header = Header {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        node: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        interval_ms: cfg.capture.interval_ms as u32,
        start_ms: crate::capture::procfs::wall_ms(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut w = Writer::create(path, &header)?;
    let Running { mut rx, task, .. } = start_capture(cfg, &shutdown)?;
    deadline(&shutdown, duration);
    let mut stats = RecordStats::default();
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        match &item {
            CaptureItem::Tick(_) => stats.ticks += 1,
            CaptureItem::Event(_) => stats.events += 1,
        }
        w.write(&item)?;
    }
    shutdown.cancel();
    while let Ok(item) = rx.try_recv() {
        w.write(&item)?;
    }
    w.flush()?;
    finish(task).await?;
    Ok(stats)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RecordStats {
    pub ticks: u64,
    pub events: u64,
}

/// Drives a recording through aggregate; `each` sees every window. The error that ended
/// a damaged recording comes back after every window before it was delivered.
pub async fn replay_windows(
    cfg: &Config,
    path: &Path,
    pace: Pace,
    mut each: impl FnMut(&Window) -> std::io::Result<()>,
) -> Result<u64, PipelineError> {
    let reader = Reader::open(path)?;
    let interval = reader.header().interval_ms;
    let mut source = Replay::new(reader, pace);
    let mut agg = Aggregator::new(cfg.aggregate.group_by, interval);
    let mut n = 0;
    while let Some(item) = source.next().await? {
        if let CaptureItem::Tick(t) = item {
            each(&agg.tick(&t))?;
            n += 1;
        }
    }
    match source.error.take() {
        Some(e) => Err(e.into()),
        None => Ok(n),
    }
}

/// Prints a window: one JSON object a line per point, or a table.
pub fn print_window<W: Write>(out: &mut W, w: &Window, json: bool) -> std::io::Result<()> {
    if json {
        for p in &w.points {
            serde_json::to_writer(&mut *out, p)?;
            writeln!(out)?;
        }
        Ok(())
    } else {
        render_window(out, w, usize::MAX, 0, 0)
    }
}

/// The table of `umbra run` and `umbra replay`: node totals, then workloads by CPU.
fn render_window<W: Write>(
    out: &mut W,
    w: &Window,
    top: usize,
    kernel_drops: u64,
    channel_drops: u64,
) -> std::io::Result<()> {
    let n = &w.node;
    let secs = n.interval_ms as f64 / 1000.0;
    let rate = |b: u64| trace::bytes((b as f64 / secs) as u64);
    writeln!(
        out,
        "-- {} workloads, node cpu {:.1}% of {} cpus, mem available {}, read {}/s write {}/s, net tx {}/s rx {}/s, execs {}, kernel drops {kernel_drops}, channel drops {channel_drops}",
        w.points.len(),
        n.cpu_busy_ns as f64 * 100.0 / (n.interval_ms as f64 * 1e6 * n.cpus.max(1) as f64),
        n.cpus,
        trace::bytes(n.mem_available_bytes),
        rate(n.totals.read_bytes),
        rate(n.totals.write_bytes),
        rate(n.totals.net_tx_bytes),
        rate(n.totals.net_rx_bytes),
        n.input.execs,
    )?;
    if top == 0 {
        return out.flush();
    }
    writeln!(
        out,
        "{:<20} {:>5} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}  WORKLOAD",
        "NAME", "PROCS", "CPU%", "RSS", "READ/s", "WRITE/s", "TX/s", "RX/s", "EXECS"
    )?;
    let mut points: Vec<&ShadowPoint> = w.points.iter().collect();
    points.sort_by(|a, b| {
        b.profile
            .cpu_ns
            .cmp(&a.profile.cpu_ns)
            .then(a.workload.cmp(&b.workload))
    });
    for p in points.into_iter().take(top) {
        let id = &p.workload.0;
        let short = if id.len() > 40 { &id[..40] } else { id };
        writeln!(
            out,
            "{:<20} {:>5} {:>7.1} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}  {short}",
            p.name.chars().take(20).collect::<String>(),
            p.processes,
            p.profile.cpu_cores * 100.0,
            trace::bytes(p.profile.rss_bytes),
            rate(p.profile.read_bytes),
            rate(p.profile.write_bytes),
            rate(p.profile.net_tx_bytes),
            rate(p.profile.net_rx_bytes),
            p.input.execs,
        )?;
    }
    out.flush()
}

/// `umbra trace`: the filtered live stream.
pub async fn trace<W: Write>(
    cfg: &Config,
    out: W,
    filter: Filter,
    json: bool,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let Running { mut rx, task, .. } = start_capture(cfg, &shutdown)?;
    deadline(&shutdown, duration);
    let mut tracer = Tracer::new(filter, json, out);
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => item,
        };
        match item {
            Some(item) => tracer.item(&item)?,
            None => break,
        }
    }
    shutdown.cancel();
    // What arrived before the stop is still shown.
    while let Ok(item) = rx.try_recv() {
        tracer.item(&item)?;
    }
    finish(task).await
}
