//! Wires the stages: the only module that knows all of them.
//!
//! ```text
//!  capture thread ──Feed (bounded in bytes)──▶ agent loop ──▶ aggregate → publish → view
//!  (kernel or a recording)                        ▲                 │
//!                                                  └── commands ◀────┘ (MQTT, via publish)
//! ```
//!
//! - **Feed**: the capture source runs on its own OS thread (map reads, /proc reads and
//!   hashing are blocking work), so the async runtime stays free for the agent loop and
//!   publishing. Between them, a channel bounded in bytes: a live capture never waits on a
//!   slow consumer — what does not fit is dropped and counted — and lifecycle events may
//!   take only half of it, so ticks are never crowded out by a burst of events. A replay
//!   waits instead, losing nothing.
//! - **[`drive`]**: the one loop every entry point runs: capture items into a [`Sink`],
//!   plus whatever else the sink waits for (commands, timers), until the source ends or
//!   `shutdown` fires; then what was already captured is delivered and the sink finishes.
//! - **Sinks**: [`Agent`] (aggregate → history → publish → view, commands routed to the
//!   stage they concern), [`Recorder`] (`umbra record`), `Tracer` (`umbra trace`).

use std::{
    future::Future,
    io::Write,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    aggregate::{Aggregator, History, Window},
    allocate::control::Control,
    capture::{CaptureError, CaptureItem, KernelCapture, Source},
    config::{Config, ConfigError},
    publish::{self, Accepted, Inbound, ModelInfo, Stage, Status, command::Command},
    record::{Header, Pace, Reader, RecordError, Replay, Writer, snapshot::Snapshots},
    trace::{Filter, Tracer},
    view::{Drops, View},
};

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
    Publish(#[from] publish::PublishError),
    #[error("the capture thread failed: {0}")]
    Thread(String),
}

// ---------------------------------------------------------------------------------------
// Feed: the capture thread and the channel from it.

/// Bytes of capture items in flight to the agent loop, at most.
const FEED_BYTES: usize = 64 << 20;

/// What the feed lost on the way (a live capture only; a replay waits instead).
#[derive(Debug, Default)]
pub struct FeedStats {
    pub events_dropped: AtomicU64,
    pub ticks_dropped: AtomicU64,
}

impl FeedStats {
    pub fn dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed) + self.ticks_dropped.load(Ordering::Relaxed)
    }
}

/// The receiving end of a capture source running on its own thread.
pub struct Feed {
    rx: mpsc::UnboundedReceiver<(CaptureItem, usize)>,
    bytes: Arc<AtomicUsize>,
    room: Arc<Notify>,
    pub stats: Arc<FeedStats>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), PipelineError>>>,
    /// A live capture (the first window is a catch-up, not an interval).
    pub live: bool,
}

/// Roughly what an item holds in memory (for the byte bound).
fn approx_bytes(item: &CaptureItem) -> usize {
    match item {
        CaptureItem::Event(e) => 160 + e.comm.len(),
        CaptureItem::Tick(t) => {
            512 + t.samples.len() * (std::mem::size_of::<crate::capture::ProcessSample>() + 160)
        }
    }
}

impl Feed {
    /// The kernel capture, loaded here (so a load error is the caller's) and run on its
    /// own thread.
    pub fn kernel(cfg: &Config) -> Result<Feed, PipelineError> {
        let source = KernelCapture::load(&cfg.capture)?;
        for (hook, status) in &source.report().hooks {
            info!(%hook, ?status, "Hook");
        }
        Feed::spawn(source, true, |_| Ok(()))
    }

    /// A recording, replayed on its own thread; the error that ended a damaged one comes
    /// back from [`Feed::join`] after every item before it was delivered.
    pub fn replay(path: &Path, pace: Pace) -> Result<(Feed, Header), PipelineError> {
        let reader = Reader::open(path)?;
        let header = reader.header().clone();
        let feed = Feed::spawn(Replay::new(reader, pace), false, |r: &mut Replay| {
            match r.error.take() {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        })?;
        Ok((feed, header))
    }

    fn spawn<S: Source + 'static>(
        mut source: S,
        live: bool,
        end: impl FnOnce(&mut S) -> Result<(), PipelineError> + Send + 'static,
    ) -> Result<Feed, PipelineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(Notify::new());
        let stats = Arc::new(FeedStats::default());
        let stop = CancellationToken::new();
        let (b, r, st, s) = (bytes.clone(), room.clone(), stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("umbra-capture".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let sent = feed_loop(&mut source, &tx, &b, &r, &st, &s, live).await;
                    sent.and(end(&mut source))
                })
            })?;
        Ok(Feed {
            rx,
            bytes,
            room,
            stats,
            stop,
            thread: Some(thread),
            live,
        })
    }

    /// The next item; `None` once the source has ended.
    pub async fn recv(&mut self) -> Option<CaptureItem> {
        let (item, n) = self.rx.recv().await?;
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.room.notify_one();
        Some(item)
    }

    /// An item already waiting, if any.
    fn try_recv(&mut self) -> Option<CaptureItem> {
        let (item, n) = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        Some(item)
    }

    /// Stops the source and waits for its thread; its error, if it failed.
    pub fn join(mut self) -> Result<(), PipelineError> {
        self.stop.cancel();
        self.room.notify_one();
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        drop(self.rx);
        match t.join() {
            Ok(r) => r,
            Err(_) => Err(PipelineError::Thread("it panicked".into())),
        }
    }
}

/// The capture thread's loop: items from the source into the channel.
async fn feed_loop<S: Source>(
    source: &mut S,
    tx: &mpsc::UnboundedSender<(CaptureItem, usize)>,
    bytes: &AtomicUsize,
    room: &Notify,
    stats: &FeedStats,
    stop: &CancellationToken,
    live: bool,
) -> Result<(), PipelineError> {
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            item = source.next() => item?,
        };
        let Some(item) = item else { return Ok(()) };
        let n = approx_bytes(&item);
        let is_tick = matches!(item, CaptureItem::Tick(_));
        // Events may fill half the channel, ticks all of it.
        let limit = if is_tick { FEED_BYTES } else { FEED_BYTES / 2 };
        if live {
            if bytes.load(Ordering::Relaxed) + n > limit {
                let counter = if is_tick {
                    &stats.ticks_dropped
                } else {
                    &stats.events_dropped
                };
                let d = counter.fetch_add(1, Ordering::Relaxed) + 1;
                if d.is_power_of_two() {
                    warn!(
                        dropped = d,
                        tick = is_tick,
                        "Agent too slow for capture; items dropped"
                    );
                }
                continue;
            }
        } else {
            while bytes.load(Ordering::Relaxed) + n > limit && !stop.is_cancelled() {
                tokio::select! {
                    _ = room.notified() => {}
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
        bytes.fetch_add(n, Ordering::Relaxed);
        if tx.send((item, n)).is_err() {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The loop.

/// A consumer of the capture stream.
pub trait Sink {
    /// Something besides the stream the sink waits for (a command, a timer).
    type Wake: Send;

    fn item(&mut self, item: CaptureItem) -> Result<(), PipelineError>;

    /// Resolves when the sink has other work; never, by default.
    fn wake(&mut self) -> impl Future<Output = Self::Wake> + Send + '_ {
        std::future::pending()
    }

    fn on(&mut self, _wake: Self::Wake) -> Result<(), PipelineError> {
        Ok(())
    }

    /// After the last item.
    fn finish(self) -> impl Future<Output = Result<(), PipelineError>> + Send;
}

/// Runs `feed` into `sink` until the source ends or `shutdown` fires (or `duration`
/// passes); what was captured before the stop is still delivered.
pub async fn drive<S: Sink + Send>(
    mut feed: Feed,
    mut sink: S,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut failed = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => break,
            item = feed.recv() => match item {
                Some(item) => if let Err(e) = sink.item(item) { failed = Some(e); break },
                None => break,
            },
            wake = sink.wake() => if let Err(e) = sink.on(wake) { failed = Some(e); break },
        }
    }
    if failed.is_none() {
        while let Some(item) = feed.try_recv() {
            if let Err(e) = sink.item(item) {
                failed = Some(e);
                break;
            }
        }
    }
    let finished = sink.finish().await;
    let source = feed.join();
    match failed {
        Some(e) => Err(e),
        None => finished.and(source),
    }
}

// ---------------------------------------------------------------------------------------
// The agent.

/// Where the agent's windows go besides the fleet: the terminal, or a function.
pub trait Output: Send {
    fn window(&mut self, w: &Window, drops: Drops) -> std::io::Result<()>;
}

/// A [`View`] on a writer.
pub struct Shown<W: Write + Send> {
    pub view: View,
    pub out: W,
}

impl<W: Write + Send> Output for Shown<W> {
    fn window(&mut self, w: &Window, drops: Drops) -> std::io::Result<()> {
        self.view.window(&mut self.out, w, drops)
    }
}

/// Every window to a function (`umbra export`).
pub struct Each<F>(pub F);

impl<F: FnMut(&Window) -> std::io::Result<()> + Send> Output for Each<F> {
    fn window(&mut self, w: &Window, _: Drops) -> std::io::Result<()> {
        (self.0)(w)
    }
}

/// How an agent runs.
pub struct AgentOptions {
    /// Publish to the fleet (`publish.enabled` for `umbra run`, `--publish` for a replay).
    pub publish: bool,
    /// Keep the allocation state under the state dir (a live agent) or in memory.
    pub persist: bool,
    /// At the end, wait up to this long for the broker to take every message.
    pub drain: Option<Duration>,
}

/// The agent proper: windows from aggregate into history, the fleet and the output;
/// commands from the fleet routed to the stage they concern.
pub struct Agent<O: Output> {
    aggregate: Aggregator,
    history: History,
    control: Control,
    publish: Option<Stage>,
    snapshots: Snapshots,
    /// The topic of the running snapshot's command, for its reply.
    snapshot_topic: Option<String>,
    output: O,
    header: Header,
    live: bool,
    first: bool,
    feed: Arc<FeedStats>,
    kernel_drops: u64,
    workloads: u32,
    model: Option<ModelInfo>,
    problems: Vec<String>,
    node: publish::identity::NodeId,
    instance: u64,
    started: Instant,
    status_every: tokio::time::Interval,
    drain: Option<Duration>,
}

/// What, besides capture, wakes the agent.
pub enum AgentWake {
    Inbound(Inbound),
    Status,
}

impl<O: Output> Agent<O> {
    pub fn new(
        cfg: &Config,
        header: Header,
        feed: &Feed,
        output: O,
        opts: AgentOptions,
    ) -> Result<Agent<O>, PipelineError> {
        let p = &cfg.publish;
        let mut problems = Vec::new();
        let control = if opts.persist {
            let (c, err) = Control::open(&p.state_dir);
            if let Some(e) = err {
                warn!(error = %e, "Allocation state not restored");
                problems.push(e.to_string());
            }
            c
        } else {
            Control::ephemeral()
        };
        let node = p.node_id();
        let mut agent = Agent {
            aggregate: Aggregator::new(cfg.aggregate.group_by, header.interval_ms),
            history: History::new(cfg.aggregate.history.clone()),
            control,
            publish: None,
            snapshots: Snapshots::new(
                &p.state_dir.join("snapshots"),
                p.snapshots_max_files as usize,
                p.snapshots_max_bytes,
                header.clone(),
            ),
            snapshot_topic: None,
            output,
            header,
            live: feed.live,
            first: true,
            feed: feed.stats.clone(),
            kernel_drops: 0,
            workloads: 0,
            model: None,
            problems,
            node,
            instance: instance_id(),
            started: Instant::now(),
            status_every: tokio::time::interval(Duration::from_millis(p.status_every_ms)),
            drain: opts.drain,
        };
        agent
            .status_every
            .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        agent.status_every.reset();
        if opts.publish {
            let settings = p.settings()?;
            let stage = Stage::start(p, settings, agent.status())?;
            agent.model = stage.stored_model().map(|m| m.info());
            agent.publish = Some(stage);
        }
        Ok(agent)
    }

    /// The agent's state for the fleet.
    fn status(&self) -> Status {
        let mut s = Status {
            online: true,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: self.header.kernel.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            mode: self.control.mode().name().into(),
            model: self.model.clone(),
            workloads: self.workloads,
            capture_drops: self.kernel_drops + self.feed.dropped(),
            hostname: self.node.hostname.clone(),
            node_id_source: self.node.source.into(),
            instance: self.instance,
            problems: self.problems.clone(),
            ..Default::default()
        };
        if let Some(p) = &self.publish {
            p.fill_status(&mut s);
        }
        s
    }

    fn window(&mut self, w: &Window, lost: u64) -> Result<(), PipelineError> {
        self.history.insert(w);
        self.workloads = w.points.len() as u32;
        // The first window of a live run holds everything since each process was first
        // seen: kept out of tables and summaries (a replay shows it).
        let skip = self.live && std::mem::take(&mut self.first);
        if skip {
            return Ok(());
        }
        let drops = Drops {
            kernel: lost,
            channel: self.feed.dropped(),
        };
        self.output.window(w, drops)?;
        if self.publish.is_some() {
            let status = self.status();
            if let Some(p) = &mut self.publish {
                p.window(w);
                p.remember(status);
            }
        }
        Ok(())
    }

    fn reply(&mut self, topic: &str, id: Option<String>, r: Result<String, String>) {
        if let Some(p) = &mut self.publish {
            p.reply(topic, id, r);
        }
    }

    fn publish_status(&mut self) {
        let s = self.status();
        if let Some(p) = &mut self.publish {
            p.status(s);
        }
    }

    fn command(&mut self, topic: String, id: Option<String>, command: Command) {
        let kept = |r: Result<(), crate::allocate::control::ControlError>, text: String| match r {
            Ok(()) => text,
            Err(e) => format!("{text} (not kept across restarts: {e})"),
        };
        let r = match command {
            Command::SetMode(m) => Ok(kept(self.control.set_mode(m), format!("mode {}", m.name()))),
            Command::SetTier { workload, tier } => match self.control.set_tier(&workload, tier) {
                Err(crate::allocate::control::ControlError::TooManyTiers) => {
                    Err(crate::allocate::control::ControlError::TooManyTiers.to_string())
                }
                r => Ok(kept(
                    r,
                    format!(
                        "workload {} tier {tier:?}",
                        crate::view::clip(&workload, 80)
                    ),
                )),
            },
            Command::TraceSnapshot { seconds } => {
                let started = self.snapshots.start(seconds, id.clone());
                if started.is_ok() {
                    // Answered again when it ends.
                    self.snapshot_topic = Some(topic.clone());
                }
                started
            }
            Command::Status => Ok("status published".into()),
        };
        let changed = r.is_ok();
        self.reply(&topic, id, r);
        if changed {
            self.publish_status();
        }
    }

    fn snapshot_ended(&mut self, ended: crate::record::snapshot::Ended) {
        let topic = self
            .snapshot_topic
            .take()
            .unwrap_or_else(|| "cmd/trace-snapshot".into());
        let r = if ended.ok {
            Ok(ended.message)
        } else {
            Err(ended.message)
        };
        self.reply(&topic, ended.id, r);
    }
}

impl<O: Output> Sink for Agent<O> {
    type Wake = AgentWake;

    fn item(&mut self, item: CaptureItem) -> Result<(), PipelineError> {
        if let Some(ended) = self.snapshots.tap(&item) {
            self.snapshot_ended(ended);
        }
        let CaptureItem::Tick(t) = item else {
            return Ok(());
        };
        self.kernel_drops = self.kernel_drops.max(t.drops.lost());
        let w = self.aggregate.tick(&t);
        self.window(&w, t.drops.lost())
    }

    async fn wake(&mut self) -> AgentWake {
        match &mut self.publish {
            Some(p) => tokio::select! {
                Some(msg) = p.next_inbound() => AgentWake::Inbound(msg),
                _ = self.status_every.tick() => AgentWake::Status,
            },
            None => std::future::pending().await,
        }
    }

    fn on(&mut self, wake: AgentWake) -> Result<(), PipelineError> {
        match wake {
            AgentWake::Status => self.publish_status(),
            AgentWake::Inbound(msg) => {
                let accepted = match &mut self.publish {
                    Some(p) => p.accept(msg),
                    None => Accepted::Refused,
                };
                match accepted {
                    Accepted::Command { topic, id, command } => self.command(topic, id, command),
                    Accepted::Model { topic, bundle } => {
                        let info = bundle.info();
                        let text = format!("model {} {} stored", info.name, info.version);
                        self.model = Some(info);
                        self.reply(&topic, None, Ok(text));
                        self.publish_status();
                    }
                    Accepted::Refused => {}
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        if let Some(ended) = self.snapshots.end(None) {
            self.snapshot_ended(ended);
        }
        let status = self.status();
        if let Some(mut p) = self.publish.take() {
            p.remember(status);
            p.finish(self.drain).await;
        }
        Ok(())
    }
}

/// A random id per start of the agent.
fn instance_id() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = crate::capture::procfs::wall_ms();
        b = (t ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
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

// ---------------------------------------------------------------------------------------
// Recorder and tracer.

/// `umbra record`: the capture stream to a file.
pub struct Recorder {
    writer: Writer,
    pub stats: Arc<RecordStatsCell>,
}

#[derive(Debug, Default)]
pub struct RecordStatsCell {
    pub ticks: AtomicU64,
    pub events: AtomicU64,
}

impl Sink for Recorder {
    type Wake = ();

    fn item(&mut self, item: CaptureItem) -> Result<(), PipelineError> {
        match &item {
            CaptureItem::Tick(_) => self.stats.ticks.fetch_add(1, Ordering::Relaxed),
            CaptureItem::Event(_) => self.stats.events.fetch_add(1, Ordering::Relaxed),
        };
        Ok(self.writer.write(&item)?)
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        Ok(self.writer.flush()?)
    }
}

/// `umbra trace`: the filtered stream.
struct Tracing<W: Write> {
    tracer: Tracer<W>,
    feed: Arc<FeedStats>,
    reported: u64,
}

impl<W: Write + Send> Sink for Tracing<W> {
    type Wake = ();

    fn item(&mut self, item: CaptureItem) -> Result<(), PipelineError> {
        self.tracer.item(&item)?;
        self.report();
        Ok(())
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        self.report();
        Ok(())
    }
}

impl<W: Write> Tracing<W> {
    /// Channel drops on stderr, when they grow.
    fn report(&mut self) {
        let d = self.feed.dropped();
        if d > self.reported {
            self.reported = d;
            eprintln!(
                "umbra: {d} capture items dropped on the way (the terminal or the agent is too slow)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Entry points.

/// `umbra run`: the agent's main job on the live kernel.
pub async fn run<W: Write + Send>(
    cfg: &Config,
    out: W,
    view: View,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let feed = Feed::kernel(cfg)?;
    let agent = Agent::new(
        cfg,
        live_header(cfg),
        &feed,
        Shown { view, out },
        AgentOptions {
            publish: cfg.publish.enabled,
            persist: true,
            // On the way out, a moment for the last summary to reach the broker; whatever
            // does not stays spooled for the next start.
            drain: Some(Duration::from_secs(2)),
        },
    )?;
    drive(feed, agent, duration, shutdown).await
}

/// `umbra replay`: a recording through the agent, shown as points; with `publish`, the
/// whole agent, summaries published as the live agent would (waiting up to `drain` at
/// the end for the broker to take them).
pub async fn replay<O: Output>(
    cfg: &Config,
    path: &Path,
    pace: Pace,
    output: O,
    publish: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let (feed, header) = Feed::replay(path, pace)?;
    let agent = Agent::new(
        cfg,
        header,
        &feed,
        output,
        AgentOptions {
            publish: publish.is_some(),
            persist: false,
            drain: publish,
        },
    )?;
    drive(feed, agent, None, shutdown).await
}

/// Drives a recording through aggregate; `each` sees every window (`umbra export`).
pub async fn replay_windows(
    cfg: &Config,
    path: &Path,
    each: impl FnMut(&Window) -> std::io::Result<()> + Send,
) -> Result<(), PipelineError> {
    let mut cfg = cfg.clone();
    cfg.publish.enabled = false;
    replay(
        &cfg,
        path,
        Pace::AsFastAsPossible,
        Each(each),
        None,
        CancellationToken::new(),
    )
    .await
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RecordStats {
    pub ticks: u64,
    pub events: u64,
    /// Lost between capture and the file (the disk too slow).
    pub dropped: u64,
}

/// `umbra record`: the capture stream to a file.
pub async fn record(
    cfg: &Config,
    path: &Path,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<RecordStats, PipelineError> {
    let writer = Writer::create(path, &live_header(cfg))?;
    let feed = Feed::kernel(cfg)?;
    let feed_stats = feed.stats.clone();
    let stats = Arc::new(RecordStatsCell::default());
    let rec = Recorder {
        writer,
        stats: stats.clone(),
    };
    drive(feed, rec, duration, shutdown).await?;
    Ok(RecordStats {
        ticks: stats.ticks.load(Ordering::Relaxed),
        events: stats.events.load(Ordering::Relaxed),
        dropped: feed_stats.dropped(),
    })
}

/// `umbra trace`: the filtered live stream.
pub async fn trace<W: Write + Send>(
    cfg: &Config,
    out: W,
    filter: Filter,
    json: bool,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let feed = Feed::kernel(cfg)?;
    let sink = Tracing {
        tracer: Tracer::new(filter, json, out),
        feed: feed.stats.clone(),
        reported: 0,
    };
    drive(feed, sink, duration, shutdown).await
}
