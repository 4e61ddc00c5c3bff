//! Wires the stages: the only module that knows all of them. A capture task feeds a
//! bounded channel; consumers never block it (a full channel drops, counted and logged).
//! Shutdown comes from a token (SIGINT/SIGTERM in `main`) or a duration.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    aggregate::{Aggregator, History, ShadowPoint, Window},
    capture::{CaptureError, CaptureItem, KernelCapture, Source},
    config::{Config, ConfigError},
    publish::{
        self, Body, CmdResult, Control, Effect, Inbound, ModelInfo, Outbox, PublishError, Status,
        command::Mode, model::ModelStore, spool::SpoolError, summary::Summarizer,
    },
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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("a pipeline task failed: {0}")]
    Task(String),
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

/// How windows are shown on the way.
#[derive(Clone, Copy, Debug)]
pub enum View {
    /// The busiest workloads each interval (`umbra run`).
    Table { top: usize },
    /// Every point, as a table or one JSON object a line (`umbra replay`).
    Points { json: bool },
}

/// `umbra run`: the agent's main job: capture → aggregate → publish, with a table of the
/// busiest workloads each interval.
pub async fn run<W: Write>(
    cfg: &Config,
    out: W,
    top: usize,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let Running { rx, task, dropped } = start_capture(cfg, &shutdown)?;
    let task = tokio::spawn(async move {
        match task.await {
            Ok(r) => r.map_err(PipelineError::from),
            Err(e) => Err(PipelineError::Task(e.to_string())),
        }
    });
    deadline(&shutdown, duration);
    let header = live_header(cfg);
    let view = View::Table { top };
    // On the way out, a moment for the last summary to reach the broker; whatever does
    // not stays spooled for the next start.
    let drain = Some(Duration::from_secs(2));
    agent(cfg, header, rx, task, dropped, out, view, drain, shutdown).await
}

/// `umbra replay --publish`: a recording driven through the whole agent, summaries and
/// all, to the configured broker; waits up to `drain` for the spool to empty at the end.
pub async fn replay_agent<W: Write>(
    cfg: &Config,
    path: &Path,
    pace: Pace,
    out: W,
    json: bool,
    drain: Duration,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let reader = Reader::open(path)?;
    let header = reader.header().clone();
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let mut source = Replay::new(reader, pace);
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => break,
                item = source.next() => item?,
            };
            let Some(item) = item else { break };
            if tx.send(item).await.is_err() {
                break;
            }
        }
        match source.error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    });
    let dropped = Arc::new(AtomicU64::new(0));
    let view = View::Points { json };
    agent(
        cfg,
        header,
        rx,
        task,
        dropped,
        out,
        view,
        Some(drain),
        shutdown,
    )
    .await
}

fn live_header(cfg: &Config) -> Header {
    Header {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        node: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        interval_ms: cfg.capture.interval_ms as u32,
        start_ms: crate::capture::procfs::wall_ms(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The agent proper: capture items in, windows out to the view, history and (if enabled)
/// the fleet. Ends on `shutdown` or when the source ends.
#[allow(clippy::too_many_arguments)]
async fn agent<W: Write>(
    cfg: &Config,
    header: Header,
    mut rx: mpsc::Receiver<CaptureItem>,
    task: JoinHandle<Result<(), PipelineError>>,
    dropped: Arc<AtomicU64>,
    mut out: W,
    view: View,
    drain: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let mut agg = Aggregator::new(cfg.aggregate.group_by, header.interval_ms);
    let mut history = History::new(cfg.aggregate.history.clone());
    let mut link = if cfg.publish.enabled {
        Some(Publishing::start(cfg, &header)?)
    } else {
        None
    };
    let mut first = true;
    let mut status_every =
        tokio::time::interval(Duration::from_millis(cfg.publish.status_every_ms));
    status_every.tick().await;
    let mut kernel_drops = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => {
                let Some(item) = item else { break };
                if let Some(l) = &mut link {
                    l.tap(&item);
                }
                let CaptureItem::Tick(t) = item else { continue };
                kernel_drops = kernel_drops.max(t.drops.lost());
                let w = agg.tick(&t);
                history.insert(&w);
                // The first window holds everything since each process was first seen:
                // shown in a replay, kept out of tables and summaries of a live run.
                let skip = std::mem::take(&mut first);
                match view {
                    View::Table { top } if !skip => render_window(
                        &mut out,
                        &w,
                        top,
                        t.drops.lost(),
                        dropped.load(Ordering::Relaxed),
                    )?,
                    View::Points { json } => print_window(&mut out, &w, json)?,
                    View::Table { .. } => {}
                }
                if let Some(l) = &mut link
                    && !skip
                {
                    l.window(&w, kernel_drops + dropped.load(Ordering::Relaxed));
                }
            }
            Some(msg) = async {
                match &mut link {
                    Some(l) => l.inbound.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(l) = &mut link {
                    l.command(&msg);
                }
            }
            _ = status_every.tick(), if link.is_some() => {
                if let Some(l) = &mut link {
                    l.status();
                }
            }
        }
    }
    if let Some(l) = link {
        l.finish(drain).await?;
    }
    shutdown.cancel();
    drop(rx);
    match task.await {
        Ok(r) => r,
        Err(e) => Err(PipelineError::Task(e.to_string())),
    }
}

/// The publish stage as the pipeline drives it: summaries into the outbox, commands and
/// models applied, status kept current, trace snapshots recorded.
struct Publishing {
    outbox: Outbox,
    control: Control,
    summarizer: Summarizer,
    inbound: mpsc::Receiver<Inbound>,
    task: JoinHandle<Result<(), PublishError>>,
    stop: CancellationToken,
    shared: Arc<Mutex<Shared>>,
    snapshot: Option<Snapshot>,
    state_dir: PathBuf,
    header: Header,
    spool_errors: u64,
    started: Instant,
}

/// What status reports, as the pipeline last saw it.
#[derive(Clone, Default)]
struct Shared {
    mode: String,
    model: Option<ModelInfo>,
    workloads: u32,
    capture_drops: u64,
}

fn status_of(shared: &Mutex<Shared>, outbox: &Outbox, kernel: &str, started: Instant) -> Status {
    let s = shared.lock().map(|g| g.clone()).unwrap_or_default();
    Status {
        online: true,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel.into(),
        uptime_s: started.elapsed().as_secs(),
        mode: s.mode,
        model: s.model,
        workloads: s.workloads,
        capture_drops: s.capture_drops,
        spool: outbox.status(),
    }
}

struct Snapshot {
    writer: Writer,
    path: PathBuf,
    until: Instant,
    id: Option<String>,
    ticks: u64,
    events: u64,
}

impl Publishing {
    fn start(cfg: &Config, header: &Header) -> Result<Publishing, PipelineError> {
        let p = &cfg.publish;
        let settings = p.settings()?;
        let (outbox, recovered) = Outbox::open(
            &p.state_dir.join("spool"),
            p.spool_limits(),
            &settings.topics.node,
        )?;
        if recovered.truncated_bytes > 0 {
            warn!(
                bytes = recovered.truncated_bytes,
                "Spool tail was damaged and cut"
            );
        }
        let key = match &p.model_public_key {
            Some(k) => Some(
                publish::model::public_key(k).map_err(|e| ConfigError::Invalid {
                    key: "publish.model_public_key",
                    value: k.clone(),
                    expected: e.to_string(),
                })?,
            ),
            None => None,
        };
        let control = Control::new(Mode::DryRun, key, ModelStore::new(&p.state_dir));
        let shared = Arc::new(Mutex::new(Shared {
            mode: control.mode.name().into(),
            model: control.model_info(),
            ..Default::default()
        }));
        let (tx, inbound) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let status = {
            let (shared, outbox, kernel) = (shared.clone(), outbox.clone(), header.kernel.clone());
            move || status_of(&shared, &outbox, &kernel, started)
        };
        info!(
            broker = settings.url,
            fleet = settings.topics.fleet,
            node = settings.topics.node,
            spooled = recovered.pending,
            "Publishing"
        );
        let task = tokio::spawn(publish::client::run(
            settings,
            outbox.clone(),
            tx,
            status,
            stop.clone(),
        ));
        Ok(Publishing {
            outbox,
            control,
            summarizer: Summarizer::new(p.summary_every_ms, p.max_workloads as usize),
            inbound,
            task,
            stop,
            shared,
            snapshot: None,
            state_dir: p.state_dir.clone(),
            header: header.clone(),
            spool_errors: 0,
            started,
        })
    }

    fn push(&mut self, body: Body) {
        if let Err(e) = self.outbox.push(body) {
            self.spool_errors += 1;
            if self.spool_errors.is_power_of_two() {
                warn!(error = %e, errors = self.spool_errors, "Message not spooled");
            }
        }
    }

    /// A window for the summaries; `capture_drops` is what capture lost since start.
    fn window(&mut self, w: &Window, capture_drops: u64) {
        if let Ok(mut s) = self.shared.lock() {
            s.workloads = w.points.len() as u32;
            s.capture_drops = capture_drops;
        }
        if let Some(sum) = self.summarizer.push(w) {
            self.push(Body::Summary(sum));
        }
    }

    fn status(&mut self) {
        let s = status_of(
            &self.shared,
            &self.outbox,
            &self.header.kernel,
            self.started,
        );
        self.push(Body::Status(s));
    }

    fn command(&mut self, msg: &Inbound) {
        let (reply, effect) = self.control.handle(msg);
        if let Ok(mut s) = self.shared.lock() {
            s.mode = self.control.mode.name().into();
            s.model = self.control.model_info();
        }
        let topic = reply.topic.clone();
        self.push(Body::CmdResult(reply));
        match effect {
            Effect::None => {}
            // The predict stage takes the model from `control` when it lands; status
            // tells the fleet which model is active.
            Effect::Status | Effect::Model(_) => self.status(),
            Effect::Snapshot { seconds, id } => {
                if let Err(message) = self.start_snapshot(seconds, id.clone()) {
                    self.push(Body::CmdResult(CmdResult {
                        id,
                        topic,
                        ok: false,
                        message,
                    }));
                }
            }
        }
    }

    fn start_snapshot(&mut self, seconds: u32, id: Option<String>) -> Result<(), String> {
        if self.snapshot.is_some() {
            return Err("a trace snapshot is already being recorded".into());
        }
        let dir = self.state_dir.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{}.umbra", crate::capture::procfs::wall_ms()));
        let header = Header {
            start_ms: crate::capture::procfs::wall_ms(),
            ..self.header.clone()
        };
        let writer = Writer::create(&path, &header).map_err(|e| e.to_string())?;
        info!(file = %path.display(), seconds, "Trace snapshot started");
        self.snapshot = Some(Snapshot {
            writer,
            path,
            until: Instant::now() + Duration::from_secs(seconds as u64),
            id,
            ticks: 0,
            events: 0,
        });
        Ok(())
    }

    /// Every capture item passes here first: a running snapshot records it.
    fn tap(&mut self, item: &CaptureItem) {
        let Some(s) = &mut self.snapshot else { return };
        let written = s.writer.write(item);
        match item {
            CaptureItem::Tick(_) => s.ticks += 1,
            CaptureItem::Event(_) => s.events += 1,
        }
        if written.is_err() || Instant::now() >= s.until {
            self.end_snapshot(written.err().map(|e| e.to_string()));
        }
    }

    fn end_snapshot(&mut self, error: Option<String>) {
        let Some(mut s) = self.snapshot.take() else {
            return;
        };
        let flushed = s.writer.flush().err().map(|e| e.to_string());
        let size = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        let (ok, message) = match error.or(flushed) {
            Some(e) => (false, format!("snapshot {} failed: {e}", s.path.display())),
            None => (
                true,
                format!(
                    "snapshot {}: {} intervals, {} events, {size} bytes",
                    s.path.display(),
                    s.ticks,
                    s.events
                ),
            ),
        };
        info!(ok, message, "Trace snapshot ended");
        self.push(Body::CmdResult(CmdResult {
            id: s.id,
            topic: "cmd/trace-snapshot".into(),
            ok,
            message,
        }));
    }

    /// The last partial summary, then (for a replay) a wait for the spool to empty, then
    /// the publisher's goodbye.
    async fn finish(mut self, drain: Option<Duration>) -> Result<(), PipelineError> {
        self.end_snapshot(None);
        if let Some(sum) = self.summarizer.flush() {
            self.push(Body::Summary(sum));
        }
        if let Some(d) = drain {
            let until = Instant::now() + d;
            while self.outbox.status().pending > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = self.outbox.status().pending;
            if left > 0 {
                warn!(
                    pending = left,
                    "Broker did not take every message; they stay spooled for the next run"
                );
            }
        }
        self.stop.cancel();
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(PipelineError::Task(e.to_string())),
        }
    }
}

/// `umbra record`: the capture stream to a file.
pub async fn record(
    cfg: &Config,
    path: &Path,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<RecordStats, PipelineError> {
    let header = live_header(cfg);
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
