//! The agent: aggregate → history → publish → output, with commands from the fleet
//! routed to the stage they concern. One [`Sink`] of the loop.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::warn;

use super::{FeedStats, PipelineError, Sink, feed::Feed};
use crate::{
    aggregate::{Aggregator, History, Window, WorkloadId},
    allocate::control::Control,
    anomaly::Detector,
    capture::CaptureItem,
    config::Config,
    insight::{Insights, Note, NoteKind},
    publish::{self, Accepted, Inbound, ModelInfo, Stage, Status, command::Command},
    record::{Header, snapshot::Snapshots},
    view::{Drops, View},
};

/// Where the agent's windows go besides the fleet: the terminal, a function, or a tool
/// that looks inside (`umbra top`, the Perfetto trace, the report, the metrics).
pub trait Output: Send {
    fn window(&mut self, w: &Window, drops: Drops) -> std::io::Result<()>;

    /// Every capture item, before aggregate sees it (per-process tools).
    fn item(&mut self, _item: &CaptureItem) -> std::io::Result<()> {
        Ok(())
    }

    /// The agent's conclusions for the window just shown: forecasts, tiers, decisions,
    /// anomalies.
    fn insights(&mut self, _i: &Insights) -> std::io::Result<()> {
        Ok(())
    }

    /// Whether [`status`](Self::status) wants the agent's status each window.
    fn wants_status(&self) -> bool {
        false
    }

    /// The agent's own health, after each window (when [`wants_status`](Self::wants_status)).
    fn status(&mut self, _s: &Status) {}

    /// After the last window.
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<O: Output + ?Sized> Output for &mut O {
    fn window(&mut self, w: &Window, drops: Drops) -> std::io::Result<()> {
        (**self).window(w, drops)
    }
    fn item(&mut self, item: &CaptureItem) -> std::io::Result<()> {
        (**self).item(item)
    }
    fn insights(&mut self, i: &Insights) -> std::io::Result<()> {
        (**self).insights(i)
    }
    fn wants_status(&self) -> bool {
        (**self).wants_status()
    }
    fn status(&mut self, s: &Status) {
        (**self).status(s)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        (**self).finish()
    }
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

    fn insights(&mut self, i: &Insights) -> std::io::Result<()> {
        self.view.notes(&mut self.out, i)
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
    /// The newest window's conclusions, for the output (filled by the stages that have them).
    insights: Insights,
    /// Anomalies and drift, judged against the forecasts handed to it ([`Agent::expect`]).
    anomaly: Option<Detector>,
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
        let anomaly = cfg.anomaly.enabled.then(|| {
            let interval = cfg.predict.interval_ms(header.interval_ms as u64);
            Detector::new(cfg.anomaly.clone(), interval)
        });
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
            insights: Insights::default(),
            anomaly,
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
        if let Some(d) = &self.anomaly {
            for (id, since) in d.drifting() {
                s.problems.push(format!(
                    "workload {} drifting since {since} ms: its forecasts no longer fit, flagged for retraining",
                    crate::view::clip(&id.0, 80)
                ));
            }
        }
        s
    }

    fn window(&mut self, w: &Window, lost: u64) -> Result<(), PipelineError> {
        self.history.insert(w);
        self.watch(w);
        self.workloads = w.points.len() as u32;
        // The first window holds everything since each process was first seen: kept out
        // of summaries, and out of the table of a live run (a replay shows it).
        let first = std::mem::take(&mut self.first);
        if !(first && self.live) {
            let drops = Drops {
                kernel: lost,
                channel: self.feed.dropped(),
            };
            self.output.window(w, drops)?;
            self.insights.timestamp_ms = w.node.timestamp_ms;
            self.output.insights(&self.insights)?;
            self.insights.notes.clear();
            if self.output.wants_status() {
                let s = self.status();
                self.output.status(&s);
            }
        }
        if first {
            return Ok(());
        }
        if self.publish.is_some() {
            let status = self.status();
            if let Some(p) = &mut self.publish {
                p.window(w);
                p.remember(status);
            }
        }
        Ok(())
    }

    /// Forecasts made when a bucket closed: the next bucket's anomalies are judged
    /// against them.
    pub fn expect(&mut self, forecasts: &[crate::predict::Forecast]) {
        if let Some(d) = &mut self.anomaly {
            d.expect(forecasts);
        }
    }

    /// Anomalies and drift of the buckets `w` closed: into the insights (shown, counted),
    /// to the fleet on their own topic; drifting workloads flagged.
    fn watch(&mut self, w: &Window) {
        let Some(d) = &mut self.anomaly else { return };
        for j in d.push(w) {
            let notes = j
                .anomalies
                .iter()
                .map(|a| (NoteKind::Anomaly, &a.workload, &a.name, a.text(), a.into()))
                .chain(
                    j.drifted
                        .iter()
                        .map(|x| (NoteKind::Drift, &x.workload, &x.name, x.text(), x.into())),
                );
            for (kind, workload, name, text, report) in notes {
                self.insights.notes.push(Note {
                    timestamp_ms: j.end_ms,
                    kind,
                    workload: Some(workload.clone()),
                    name: name.clone(),
                    text,
                });
                if let Some(p) = &mut self.publish {
                    p.anomaly(report);
                }
            }
        }
        for wi in self.insights.workloads.values_mut() {
            wi.drifting = false;
        }
        let drifting: Vec<WorkloadId> = d.drifting().map(|(id, _)| id.clone()).collect();
        for id in drifting {
            self.insights.workload(&id).drifting = true;
        }
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
        self.output.item(&item)?;
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
        self.output.finish()?;
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
