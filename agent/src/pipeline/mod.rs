//! Wires the stages: the only module that knows all of them.
//!
//! ```text
//!  capture thread ──Feed (bounded in bytes)──▶ agent loop ──▶ aggregate → predict → allocate
//!  (kernel or a recording)                        ▲     (ticks)                   │ (cgroups)
//!                                                  │     execs ─────────────────▶ allocate
//!                                                  │                              ▼
//!                                                  └── commands ◀──── publish (MQTT) → view
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
//! - **Sinks**: [`Agent`] (aggregate → history → predict → allocate → publish → view,
//!   execs to allocate as they arrive, commands routed to the stage they concern), [`Recorder`] (`umbra record`), `Tracer` (`umbra trace`).

mod agent;
mod feed;
mod footprint;
mod launcher;
mod lock;
mod sinks;
mod wire;

use std::{
    future::Future,
    io::Write,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

pub use agent::{Agent, AgentOptions, AgentWake, Each, Output, Shown};
pub use feed::{Feed, FeedStats};
pub use lock::{LOCK_FILE, LockError, StateLock};
pub use sinks::{RecordStatsCell, Recorder};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    aggregate::Window,
    capture::{CaptureError, CaptureItem},
    config::{Config, ConfigError},
    publish,
    record::{Header, Pace, RecordError, Writer},
    trace::{Filter, Tracer},
    view::View,
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
    #[error(transparent)]
    Allocate(#[from] crate::allocate::AllocateError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("the capture thread failed: {0}")]
    Thread(String),
    #[error(transparent)]
    State(#[from] LockError),
}

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
// Entry points.

/// How `umbra run` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    pub duration: Option<Duration>,
    /// Allocation writes from the start (this run only; `set-mode` changes it).
    pub enforce: bool,
    /// Every decision shown with its explanation.
    pub explain: bool,
}

/// `umbra run`: the agent's main job on the live kernel.
pub async fn run<W: Write + Send>(
    cfg: &Config,
    out: W,
    view: View,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    // Before anything reads or writes the state directory (the journal's restore first).
    let _state = StateLock::acquire(&cfg.publish.state_dir)?;
    // Requests placed as they start want their exec events at once, not in batches.
    let mut with_wake = cfg.clone();
    with_wake.capture.wake_on_exec = cfg.allocate.workload.iter().any(|w| w.per_request);
    let feed = Feed::kernel(&with_wake)?;
    let shown = Shown {
        view,
        out,
        explain: opts.explain,
    };
    if !cfg.metrics.enabled {
        return run_agent(cfg, feed, shown, opts, shutdown).await;
    }
    let registry = crate::metrics::Registry::new();
    let stop = shutdown.child_token();
    let server = crate::metrics::serve(cfg.metrics.addr()?, registry.clone(), stop.clone()).await?;
    let metered = crate::metrics::Metered {
        inner: shown,
        registry,
        feed: feed.stats.clone(),
    };
    let r = run_agent(cfg, feed, metered, opts, shutdown).await;
    stop.cancel();
    let _ = server.await;
    r
}

async fn run_agent<O: Output>(
    cfg: &Config,
    feed: Feed,
    output: O,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let agent = Agent::new(
        cfg,
        live_header(cfg),
        &feed,
        output,
        AgentOptions {
            publish: cfg.publish.enabled,
            persist: true,
            // On the way out, a moment for the last summary to reach the broker; whatever
            // does not stays spooled for the next start.
            drain: Some(Duration::from_secs(2)),
            stages: true,
            enforce: opts.enforce,
        },
    )?;
    footprint::release_freed_heap();
    let code = footprint::release_startup_code();
    debug!(bytes = code, "Start-up's code pages released");
    let duration = opts.duration;
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
    // Published, it keeps its state as the live agent would: the state directory is its.
    let _state = publish
        .map(|_| StateLock::acquire(&cfg.publish.state_dir))
        .transpose()?;
    let (feed, header) = Feed::replay(path, pace)?;
    let stages = output.stages();
    let agent = Agent::new(
        cfg,
        header,
        &feed,
        output,
        AgentOptions {
            publish: publish.is_some(),
            // A replay published as the live agent would keeps its state as it would.
            persist: publish.is_some(),
            drain: publish,
            stages,
            enforce: false,
        },
    )?;
    drive(feed, agent, None, shutdown).await
}

/// Where a tool that looks inside reads from.
#[derive(Clone, Copy, Debug)]
pub enum From<'a> {
    /// The live kernel (needs root).
    Kernel,
    /// A recording, at its pace.
    Recording(&'a Path, Pace),
}

/// `umbra top`, `umbra trace --perfetto` and `umbra report`: the agent — aggregate and
/// the stages after it — publishing nothing and keeping no state, its windows and
/// conclusions into the output `make` builds from the source's header.
pub async fn look<O: Output>(
    cfg: &Config,
    from: From<'_>,
    make: impl FnOnce(&Header) -> std::io::Result<O>,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let (feed, header) = match from {
        From::Kernel => (Feed::kernel(cfg)?, live_header(cfg)),
        From::Recording(path, pace) => Feed::replay(path, pace)?,
    };
    let output = make(&header)?;
    let agent = Agent::new(
        cfg,
        header,
        &feed,
        output,
        AgentOptions {
            publish: false,
            persist: false,
            drain: None,
            stages: true,
            enforce: false,
        },
    )?;
    drive(feed, agent, duration, shutdown).await
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

/// `umbra trace`: the filtered stream, live or from a recording.
pub async fn trace<W: Write + Send>(
    cfg: &Config,
    from: From<'_>,
    out: W,
    filter: Filter,
    json: bool,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    // `umbra trace` attaches the detail level for its own run: run-queue histograms and
    // every syscall, for the kernel engineer looking.
    let mut cfg = cfg.clone();
    cfg.capture.detail = true;
    let feed = match from {
        From::Kernel => Feed::kernel(&cfg)?,
        From::Recording(path, pace) => Feed::replay(path, pace)?.0,
    };
    let sink = sinks::Tracing {
        tracer: Tracer::new(filter, json, out),
        feed: feed.stats.clone(),
        reported: 0,
    };
    drive(feed, sink, duration, shutdown).await
}
