//! The capture thread and the channel from it to the agent loop.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::PipelineError;
use crate::{
    capture::{
        CaptureError, CaptureItem, KernelCapture, ProgramStats, Source, enable_program_stats,
    },
    config::Config,
    record::{Header, Pace, Reader, Replay},
};

/// Bytes of capture items in flight to the agent loop, at most.
const FEED_BYTES: usize = 64 << 20;

/// What the feed lost on the way (a live capture only; a replay waits instead), and the
/// kernel programs' run-time statistics (a live capture with metrics on).
#[derive(Debug, Default)]
pub struct FeedStats {
    pub events_dropped: AtomicU64,
    pub ticks_dropped: AtomicU64,
    programs: Mutex<Vec<ProgramStats>>,
}

impl FeedStats {
    /// The kernel programs' runs and run time, as of the newest tick.
    pub fn programs(&self) -> Vec<ProgramStats> {
        self.programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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
        let stats = Arc::new(FeedStats::default());
        if !cfg.metrics.enabled {
            return Feed::spawn(source, true, stats, |_| Ok(()));
        }
        // The metrics show what each program costs: the kernel counts it while asked to.
        let enabled = enable_program_stats()
            .inspect_err(|e| {
                warn!(error = %e, "BPF run-time statistics not enabled: program runs and run time stay zero unless kernel.bpf_stats_enabled=1")
            })
            .ok();
        let measured = Measured {
            inner: source,
            stats: stats.clone(),
            _enabled: enabled,
        };
        Feed::spawn(measured, true, stats, |_| Ok(()))
    }

    /// A recording, replayed on its own thread; the error that ended a damaged one comes
    /// back from [`Feed::join`] after every item before it was delivered.
    pub fn replay(path: &Path, pace: Pace) -> Result<(Feed, Header), PipelineError> {
        let reader = Reader::open(path)?;
        let header = reader.header().clone();
        let stats = Arc::new(FeedStats::default());
        let feed = Feed::spawn(
            Replay::new(reader, pace),
            false,
            stats,
            |r: &mut Replay| match r.error.take() {
                Some(e) => Err(e.into()),
                None => Ok(()),
            },
        )?;
        Ok((feed, header))
    }

    fn spawn<S: Source + 'static>(
        mut source: S,
        live: bool,
        stats: Arc<FeedStats>,
        end: impl FnOnce(&mut S) -> Result<(), PipelineError> + Send + 'static,
    ) -> Result<Feed, PipelineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(Notify::new());
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
    pub(super) fn try_recv(&mut self) -> Option<CaptureItem> {
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

/// The kernel capture, its programs' statistics read after each tick.
struct Measured {
    inner: KernelCapture,
    stats: Arc<FeedStats>,
    /// Keeps the kernel counting while open.
    _enabled: Option<std::os::fd::OwnedFd>,
}

impl Source for Measured {
    async fn next(&mut self) -> Result<Option<CaptureItem>, CaptureError> {
        let item = self.inner.next().await?;
        if let Some(CaptureItem::Tick(_)) = &item {
            let p = self.inner.program_stats();
            *self
                .stats
                .programs
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = p;
        }
        Ok(item)
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
