//! Wires the stages: the only module that knows all of them. A capture task feeds a
//! bounded channel; consumers never block it (a full channel drops, counted and logged).
//! Shutdown comes from a token (SIGINT/SIGTERM in `main`) or a duration.

use std::{
    collections::HashMap,
    io::Write,
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
    capture::{CaptureError, CaptureItem, KernelCapture, ProcCounters, Source, Tick},
    config::Config,
    trace::{self, Filter, Tracer},
};

/// Items buffered between capture and its consumers.
const CHANNEL_DEPTH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("writing output: {0}")]
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

/// `umbra run`: the agent's main job. At this stage: capture, and a per-process table
/// each interval.
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
    let mut table = TopTable::default();
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => item,
        };
        match item {
            Some(CaptureItem::Tick(t)) => {
                table.render(&mut out, &t, top, dropped.load(Ordering::Relaxed))?
            }
            Some(CaptureItem::Event(_)) => {}
            None => break,
        }
    }
    shutdown.cancel();
    finish(task).await
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

/// The per-interval table of `umbra run`: the busiest processes and node totals.
#[derive(Default)]
struct TopTable {
    prev: HashMap<(u32, u64), ProcCounters>,
    last_ns: Option<u64>,
}

impl TopTable {
    fn render<W: Write>(
        &mut self,
        out: &mut W,
        t: &Tick,
        top: usize,
        dropped: u64,
    ) -> std::io::Result<()> {
        let span = self
            .last_ns
            .map(|l| t.timestamp_ns.saturating_sub(l))
            .unwrap_or(0);
        self.last_ns = Some(t.timestamp_ns);
        let mut rows = Vec::new();
        let mut total = ProcCounters::default();
        for s in &t.samples {
            let key = (s.tgid, s.start_ns);
            let d = self.prev.get(&key).map(|p| s.counters.since(p));
            self.prev.insert(key, s.counters.clone());
            if let Some(d) = d {
                total.add(&d);
                rows.push((s, d));
            }
        }
        self.prev.retain(|(tgid, start), _| {
            t.samples
                .iter()
                .any(|s| s.tgid == *tgid && s.start_ns == *start && s.exit.is_none())
        });
        if span == 0 {
            return Ok(());
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.cpu_ns));
        let secs = span as f64 / 1e9;
        writeln!(
            out,
            "-- {} processes, cpu {:.1}%, read {}/s, write {}/s, net tx {}/s rx {}/s, kernel drops {}, channel drops {dropped}",
            t.samples.len(),
            total.cpu_ns as f64 * 100.0 / span as f64,
            trace::bytes((total.read_bytes as f64 / secs) as u64),
            trace::bytes((total.write_bytes as f64 / secs) as u64),
            trace::bytes((total.net_tx_bytes as f64 / secs) as u64),
            trace::bytes((total.net_rx_bytes as f64 / secs) as u64),
            t.drops.lost(),
        )?;
        writeln!(
            out,
            "{:>8} {:<16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "PID", "COMM", "CPU%", "RSS", "READ/s", "WRITE/s", "TX/s", "RX/s"
        )?;
        for (s, d) in rows.iter().take(top) {
            writeln!(
                out,
                "{:>8} {:<16} {:>6.1} {:>10} {:>10} {:>10} {:>10} {:>10}",
                s.tgid,
                s.comm,
                d.cpu_ns as f64 * 100.0 / span as f64,
                trace::bytes(s.memory.rss()),
                trace::bytes((d.read_bytes as f64 / secs) as u64),
                trace::bytes((d.write_bytes as f64 / secs) as u64),
                trace::bytes((d.net_tx_bytes as f64 / secs) as u64),
                trace::bytes((d.net_rx_bytes as f64 / secs) as u64),
            )?;
        }
        out.flush()
    }
}
