//! The agent: aggregate → history → predict → allocate → publish → output, with
//! commands from the fleet routed to the stage they concern. One [`Sink`] of the loop.
//!
//! Each window goes to the forecast stage (a closed bucket gives new forecasts), then to
//! the allocator with the tick and the latest forecasts; each exec goes to the allocator
//! as it arrives (per-request placement). What the allocator decided is shown
//! (`--explain`), published on its own topic and counted in status. At the end the
//! allocator puts every cgroup back.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    FeedStats, PipelineError, Sink,
    feed::Feed,
    launcher::{Launcher, Pending},
    wire,
};
use crate::{
    FastMap,
    aggregate::{Aggregator, History, Window, WorkloadId, exe_key},
    allocate::{
        self, Allocator, Decision, Mode,
        cgroups::{CPU_PERIOD_US, Group, Knob},
        control::Control,
        launch::LaunchReply,
    },
    anomaly::Detector,
    capture::{CaptureItem, Lifecycle, LifecycleKind, Tick},
    config::Config,
    insight::{Insights, Note, NoteKind, Reservation, next_bands},
    predict::{
        Forecast, ForecastStage,
        per_request::{self, ProfilePredictor, Reported},
        runtime,
    },
    publish::{
        self, Accepted, Inbound, ModelInfo, Stage, Status, command::Command, model::ModelBundle,
    },
    record::{Header, snapshot::Snapshots},
    view::{self, Drops, Frame, View},
};

/// Where the agent's windows go besides the fleet: the terminal, a function, or a tool
/// that looks inside (`umbra top`, the Perfetto trace, the report, the metrics).
pub trait Output: Send {
    fn window(&mut self, f: &Frame<'_>) -> std::io::Result<()>;

    /// Whether it wants forecasts and decisions (else the agent skips those stages).
    fn stages(&self) -> bool {
        true
    }

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

    /// Decisions not shown with a window (made after the last one).
    fn decisions(&mut self, _: &[Decision]) -> std::io::Result<()> {
        Ok(())
    }

    /// After the last window.
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<O: Output + ?Sized> Output for &mut O {
    fn window(&mut self, f: &Frame<'_>) -> std::io::Result<()> {
        (**self).window(f)
    }
    fn stages(&self) -> bool {
        (**self).stages()
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
    fn decisions(&mut self, ds: &[Decision]) -> std::io::Result<()> {
        (**self).decisions(ds)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        (**self).finish()
    }
}

/// A [`View`] on a writer; with `explain`, every decision below its window.
pub struct Shown<W: Write + Send> {
    pub view: View,
    pub out: W,
    pub explain: bool,
}

impl<W: Write + Send> Output for Shown<W> {
    fn window(&mut self, f: &Frame<'_>) -> std::io::Result<()> {
        self.view.window(&mut self.out, f)?;
        if self.explain {
            view::decisions(&mut self.out, f.decisions)?;
            view::requests(&mut self.out, f.requests)?;
        }
        Ok(())
    }

    fn insights(&mut self, i: &Insights) -> std::io::Result<()> {
        self.view.notes(&mut self.out, i)
    }

    fn decisions(&mut self, ds: &[Decision]) -> std::io::Result<()> {
        if self.explain {
            view::decisions(&mut self.out, ds)?;
        }
        Ok(())
    }
}

/// Every window to a function (`umbra export`).
pub struct Each<F>(pub F);

impl<F: FnMut(&Window) -> std::io::Result<()> + Send> Output for Each<F> {
    fn window(&mut self, f: &Frame<'_>) -> std::io::Result<()> {
        (self.0)(f.window)
    }

    fn stages(&self) -> bool {
        false
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
    /// Forecast and allocate (not needed to export windows).
    pub stages: bool,
    /// `umbra run --enforce`: allocation writes from the start (this run only).
    pub enforce: bool,
}

/// The agent proper: windows from aggregate into history, the fleet and the output;
/// commands from the fleet routed to the stage they concern.
pub struct Agent<O: Output> {
    aggregate: Aggregator,
    history: History,
    forecast: Option<ForecastStage>,
    /// The latest forecast of each workload.
    forecasts: Vec<Forecast>,
    allocate: Option<Allocator>,
    /// Per-request predictions (the profile store): every exec predicted, for the
    /// allocator's per-request placement (at the exec) and for summaries (at the process's
    /// first sample, where capture — or a recording — names its executable). A replay's
    /// store holds its own runs.
    requests: Option<ProfilePredictor>,
    /// Execs not predicted yet, whose first sample has not come: exec time and file name.
    unsampled: FastMap<u32, (u64, String)>,
    /// Requests predicted and ended since the last window, for the output.
    reported: Vec<Reported>,
    /// Wall-clock ms minus boot-clock ms as first seen, and again after the wall clock
    /// stepped: a request's exec has the same date in every summary it is in.
    wall_offset_ms: Option<i64>,
    /// `umbra exec`'s socket.
    launcher: Option<Launcher>,
    /// Decided since the last window (execs arrive between windows).
    decided: Vec<Decision>,
    decisions: u64,
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
    /// How often profiles with new runs go to the fleet (0: never), and when they last did
    /// (the window's clock).
    profiles_every_ms: u64,
    profiles_sent_ms: u64,
}

/// Profiles in one `profiles` message, at most (a row is ~150 bytes).
const PROFILES_PER_MESSAGE: usize = 256;

/// What, besides capture, wakes the agent.
pub enum AgentWake {
    Inbound(Inbound),
    Status,
    /// `umbra exec` asks for a group.
    Launch(Pending),
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
        let mut control = control;
        let live = opts.stages && feed.live && opts.persist;
        let (forecast, allocate) = if opts.stages {
            (
                Some(ForecastStage::live(
                    &cfg.predict,
                    header.interval_ms as u64,
                    opts.persist.then_some(p.state_dir.as_path()),
                    None,
                    runtime::default_runtime(),
                )),
                Some(start_allocator(
                    cfg,
                    live,
                    opts.enforce,
                    &mut control,
                    &mut problems,
                )?),
            )
        } else {
            (None, None)
        };
        let (requests, launcher) = if live {
            start_requests(cfg, &mut problems)
        } else if opts.stages && !feed.live {
            let p = ProfilePredictor::in_memory(&cfg.predict.request_model);
            (Some(p.reporting()), None)
        } else {
            (None, None)
        };
        let node = p.node_id();
        let anomaly = cfg.anomaly.enabled.then(|| {
            let interval = cfg.predict.interval_ms(header.interval_ms as u64);
            Detector::new(cfg.anomaly.clone(), interval)
        });
        let mut agent = Agent {
            aggregate: Aggregator::new(cfg.aggregate.group_by, header.interval_ms),
            history: History::new(cfg.aggregate.history.clone()),
            forecast,
            forecasts: Vec::new(),
            allocate,
            requests,
            unsampled: FastMap::default(),
            reported: Vec::new(),
            wall_offset_ms: None,
            launcher,
            decided: Vec::new(),
            decisions: 0,
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
            profiles_every_ms: p.profiles_every_ms,
            profiles_sent_ms: 0,
        };
        agent
            .status_every
            .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        agent.status_every.reset();
        if opts.publish {
            let settings = p.settings()?;
            let stage = Stage::start(p, settings, agent.status())?;
            if let Some(m) = stage.stored_model()
                && let Err(e) = agent.install_model(&m)
            {
                agent.problems.push(e);
            }
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
            mode: self
                .allocate
                .as_ref()
                .map_or(self.control.mode(), |a| a.mode())
                .name()
                .into(),
            model: self.model.clone(),
            workloads: self.workloads,
            capture_drops: self.kernel_drops + self.feed.dropped(),
            hostname: self.node.hostname.clone(),
            node_id_source: self.node.source.into(),
            instance: self.instance,
            problems: self.problems.clone(),
            allocation: self
                .allocate
                .as_ref()
                .map(|a| Box::new(wire::allocation_status(&a.stats(), self.decisions))),
            predict: self.forecast.as_ref().map(|f| Box::new(f.status())),
            requests: self.requests.as_ref().map(|r| Box::new(r.status())),
            ..Default::default()
        };
        if let Some(p) = &self.publish {
            p.fill_status(&mut s);
        }
        if let Some(r) = &self.requests
            && let Some(e) = &r.last_error
        {
            s.problems.push(format!(
                "profile store: {e}; {} runs kept in memory only",
                r.unjournaled
            ));
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

    fn window(&mut self, t: &Tick, w: &Window, lost: u64) -> Result<(), PipelineError> {
        self.history.insert(w);
        self.watch(w);
        self.workloads = w.points.len() as u32;
        // The first window holds everything since each process was first seen: kept out
        // of forecasts, allocation and summaries, and out of the table of a live run (a
        // replay shows it).
        let first = std::mem::take(&mut self.first);
        if !first {
            // The bands in effect for this interval: made one bucket earlier.
            for f in &self.forecasts {
                self.insights.workload(&f.workload).forecast = next_bands(f);
            }
            if let Some(fs) = self.forecast.as_mut().and_then(|f| f.push(w)) {
                self.expect(&fs);
                if let Some(p) = &mut self.publish {
                    p.forecasts(&fs);
                }
                self.forecasts = fs;
            }
            if let Some(a) = &mut self.allocate {
                let drifting: Vec<WorkloadId> = self
                    .anomaly
                    .as_ref()
                    .map(|d| d.drifting().map(|(id, _)| id.clone()).collect())
                    .unwrap_or_default();
                self.decided.extend(a.drifting(&drifting));
                let ds = a.tick(t, w, &self.forecasts, &self.control);
                self.decided.extend(ds);
            }
        }
        let drops = Drops {
            kernel: lost,
            channel: self.feed.dropped(),
        };
        if first {
            // Its decisions (execs placed before it) wait for the next window.
            if !self.live {
                self.output.window(&Frame {
                    window: w,
                    drops,
                    forecasts: &self.forecasts,
                    decisions: &[],
                    requests: &self.reported,
                })?;
            }
            self.reported.clear();
            return Ok(());
        }
        let decided = std::mem::take(&mut self.decided);
        self.decisions += decided.len() as u64;
        self.note_allocation(w.node.timestamp_ms, &decided);
        self.output.window(&Frame {
            window: w,
            drops,
            forecasts: &self.forecasts,
            decisions: &decided,
            requests: &self.reported,
        })?;
        self.reported.clear();
        self.insights.timestamp_ms = w.node.timestamp_ms;
        self.output.insights(&self.insights)?;
        self.insights.notes.clear();
        if self.output.wants_status() {
            let s = self.status();
            self.output.status(&s);
        }
        if self.publish.is_some() {
            let status = self.status();
            let mode = status.mode.clone();
            if let Some(p) = &mut self.publish {
                p.window(w);
                p.decisions(wire::decisions(w.node.timestamp_ms, &mode, &decided));
                p.remember(status);
            }
            self.publish_profiles(w.node.timestamp_ms);
        }
        Ok(())
    }

    /// Every `publish.profiles_every_ms`, the profiles with runs since they were last
    /// sent (all of them after a start), in messages of at most [`PROFILES_PER_MESSAGE`].
    /// A live agent's only: a replay's profiles are of its own runs, kept in memory.
    fn publish_profiles(&mut self, now_ms: u64) {
        let (Some(p), Some(r), true) = (&mut self.publish, &mut self.requests, self.live) else {
            return;
        };
        let every = self.profiles_every_ms;
        if every == 0 || now_ms.saturating_sub(self.profiles_sent_ms) < every {
            return;
        }
        self.profiles_sent_ms = now_ms;
        loop {
            let (rows, more) = r.take_changed(PROFILES_PER_MESSAGE);
            if rows.is_empty() {
                break;
            }
            p.profiles(wire::profiles(rows, more));
            if more == 0 {
                break;
            }
        }
    }

    /// The allocate stage's state and decisions into the insights: each managed
    /// workload's tier and what its group reserves, each decision a note.
    fn note_allocation(&mut self, now_ms: u64, decided: &[Decision]) {
        self.insights.model = self
            .forecast
            .as_ref()
            .and_then(|f| f.status().model_version);
        let Some(a) = &self.allocate else { return };
        for st in a.workloads() {
            let amount = |k: Knob| st.applied.get(&k).and_then(|v| v.amount());
            let wi = self.insights.workload(&st.workload);
            wi.tier = Some(st.tier.name().into());
            wi.reservation = Some(Reservation {
                cpu_cores: amount(Knob::CpuMax).map(|q| q as f64 / CPU_PERIOD_US as f64),
                memory_bytes: amount(Knob::MemoryMin)
                    .or_else(|| amount(Knob::MemoryLow))
                    .or_else(|| amount(Knob::MemoryHigh))
                    .map(|b| b as f64),
            });
        }
        let by_group: std::collections::HashMap<&Group, (&WorkloadId, &str)> = a
            .workloads()
            .map(|st| (&st.group, (&st.workload, st.name.as_str())))
            .collect();
        let mut notes = Vec::new();
        for d in decided {
            let owner = match d {
                Decision::Tier { workload, name, .. } => Some((workload, name.as_str())),
                Decision::Set { action, .. } => by_group.get(&action.group).copied(),
                Decision::Place { group, .. }
                | Decision::Hold { group, .. }
                | Decision::Release { group, .. }
                | Decision::Egress { group, .. } => by_group.get(group).copied(),
            };
            let text = d.text();
            notes.push((owner.map(|(w, n)| (w.clone(), n.to_string())), text));
        }
        for (owner, text) in notes {
            if let Some((w, _)) = &owner {
                self.insights.workload(w).last_decision = Some(text.clone());
            }
            self.insights.notes.push(Note {
                timestamp_ms: now_ms,
                kind: NoteKind::Decision,
                name: owner.as_ref().map(|(_, n)| n.clone()).unwrap_or_default(),
                workload: owner.map(|(w, _)| w),
                text,
            });
        }
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

    /// The fleet's model (verified and stored by the publish stage) into the forecast
    /// stage. Refused by the stage (another interval, a schema this build cannot feed),
    /// it stays stored and the model in use keeps forecasting; the reply says why.
    fn install_model(&mut self, bundle: &ModelBundle) -> Result<String, String> {
        let info = bundle.info();
        let Some(f) = &mut self.forecast else {
            self.model = Some(info.clone());
            return Ok(format!("model {} {} stored", info.name, info.version));
        };
        match f.install("fleet", &bundle.onnx) {
            Ok(_) => {
                let text = format!("model {} {} stored and in use", info.name, info.version);
                self.model = Some(info);
                Ok(text)
            }
            Err(e) => {
                warn!(error = %e, "Fleet model stored but not in use");
                Err(format!(
                    "model {} {} stored but not in use: {e}",
                    info.name, info.version
                ))
            }
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
            // The allocator enters the mode first: a mode it cannot enter is refused.
            Command::SetMode(m) => match self.allocate.as_mut().map(|a| a.set_mode(m)) {
                Some(Err(e)) => Err(format!("mode {} refused: {e}", m.name())),
                _ => Ok(kept(self.control.set_mode(m), format!("mode {}", m.name()))),
            },
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

    /// An exec or exit, to the per-request predictions: a request opened (or ended), and
    /// the exec predicted at its process's first sample, where capture has named its
    /// executable — unless the allocator places it on its own and asks for its prediction
    /// now ([`Allocator::on_exec`]; a live agent only).
    fn request_event(&mut self, ev: &Lifecycle) {
        let Some(r) = &mut self.requests else {
            return;
        };
        r.event(ev);
        if let LifecycleKind::Exec { filename, .. } = &ev.kind {
            let tgid = if ev.tgid != 0 { ev.tgid } else { ev.pid };
            if self.unsampled.len() >= per_request::MAX_KEYS {
                self.unsampled.clear();
            }
            self.unsampled
                .insert(tgid, (ev.timestamp_ns, filename.clone()));
        }
        let Some(a) = &mut self.allocate else {
            return;
        };
        let (live, unsampled) = (self.live, &mut self.unsampled);
        let mut predict = |tgid: u32, _: &str| {
            // Read from /proc: the exec's own process only while it runs.
            live.then(|| {
                unsampled.remove(&tgid);
                r.predict_exec(ev)
            })
            .flatten()
        };
        let ds = a.on_exec(ev, &mut predict, &self.control);
        self.decided.extend(ds);
    }

    /// A tick, to the per-request predictions: the new processes predicted, the requests
    /// that ended learned, and what was predicted and ended to the summaries.
    fn request_tick(&mut self, t: &Tick, w: &Window) {
        let Some(r) = &mut self.requests else {
            return;
        };
        if !self.unsampled.is_empty() {
            for s in &t.samples {
                if let Some((exec_ns, exe)) = self.unsampled.remove(&s.tgid) {
                    let (key, name) = exe_key(s);
                    r.predict_shown(s.tgid, &key.0, &exe, &name, exec_ns);
                }
            }
            // Every process exec'd before the tick has a sample in it (a final one if it
            // exited): the rest were exec'd after it.
            self.unsampled.retain(|_, (ns, _)| *ns > t.timestamp_ns);
        }
        r.tick(t, w);
        let (reports, dropped) = r.take_reports();
        let now = t.wall_ms as i64 - (t.timestamp_ns / 1_000_000) as i64;
        let offset = match self.wall_offset_ms {
            Some(o) if (now - o).abs() <= 1000 => o,
            _ => *self.wall_offset_ms.insert(now),
        };
        if let Some(p) = &mut self.publish {
            p.requests(reports.iter().map(|q| wire::request(q, offset)), dropped);
        }
        self.reported.extend(reports);
    }

    /// `umbra exec` asks for a group for a process it is about to start.
    fn launch(&mut self, p: Pending) {
        let req = p.request;
        let prediction = self
            .requests
            .as_mut()
            .and_then(|r| r.predict(0, &req.exe, crate::capture::procfs::boot_ns()));
        let reply = match &mut self.allocate {
            None => LaunchReply::refused("this agent does not allocate".into()),
            Some(a) => {
                match a.reserve_for_exec(&req.exe, req.workload.as_deref(), prediction.as_ref()) {
                    Ok(r) => {
                        self.decided.extend(r.decisions);
                        LaunchReply {
                            ok: true,
                            error: None,
                            group: r.group.to_string(),
                            target: Some(r.target),
                            limits: r
                                .limits
                                .iter()
                                .map(|(k, v)| format!("{k} {}", v.show(*k)))
                                .collect(),
                            held: r.held,
                        }
                    }
                    Err(e) => LaunchReply::refused(e.to_string()),
                }
            }
        };
        let _ = p.reply.send(reply);
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
        let t = match item {
            CaptureItem::Tick(t) => t,
            CaptureItem::Event(ev) => {
                if self.requests.is_some() {
                    self.request_event(&ev);
                } else if let Some(a) = &mut self.allocate {
                    let ds = a.on_exec(&ev, &mut |_, _| None, &self.control);
                    self.decided.extend(ds);
                }
                return Ok(());
            }
        };
        self.kernel_drops = self.kernel_drops.max(t.drops.lost());
        let w = self.aggregate.tick(&t);
        self.request_tick(&t, &w);
        self.window(&t, &w, t.drops.lost())
    }

    async fn wake(&mut self) -> AgentWake {
        let Agent {
            publish,
            status_every,
            launcher,
            ..
        } = self;
        let has_publish = publish.is_some();
        let inbound = async {
            match publish {
                Some(p) => match p.next_inbound().await {
                    Some(msg) => AgentWake::Inbound(msg),
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let status = async {
            if !has_publish {
                std::future::pending::<()>().await;
            }
            status_every.tick().await;
            AgentWake::Status
        };
        let launch = async {
            match launcher.as_mut() {
                Some(l) => match l.next().await {
                    Some(p) => AgentWake::Launch(p),
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            w = inbound => w,
            w = status => w,
            w = launch => w,
        }
    }

    fn on(&mut self, wake: AgentWake) -> Result<(), PipelineError> {
        match wake {
            AgentWake::Status => self.publish_status(),
            AgentWake::Launch(p) => self.launch(p),
            AgentWake::Inbound(msg) => {
                let accepted = match &mut self.publish {
                    Some(p) => p.accept(msg),
                    None => Accepted::Refused,
                };
                match accepted {
                    Accepted::Command { topic, id, command } => self.command(topic, id, command),
                    Accepted::Model { topic, bundle } => {
                        let r = self.install_model(&bundle);
                        self.reply(&topic, None, r);
                        self.publish_status();
                    }
                    Accepted::Refused => {}
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        self.launcher = None;
        // Every cgroup back as it was, before anything else on the way out.
        if let Some(r) = self.allocate.take().and_then(Allocator::shutdown)
            && !r.failures.is_empty()
        {
            self.problems.push(format!(
                "{} cgroup changes not restored (the journal keeps them for the next start): {}",
                r.failures.len(),
                r.failures.join("; ")
            ));
        }
        if let Some(ended) = self.snapshots.end(None) {
            self.snapshot_ended(ended);
        }
        if let Some(f) = &mut self.forecast
            && let Err(e) = f.save()
        {
            warn!(error = %e, "Calibration state not kept");
        }
        if let Some(r) = &mut self.requests {
            r.save();
        }
        let decided = std::mem::take(&mut self.decided);
        self.decisions += decided.len() as u64;
        let _ = self.output.decisions(&decided);
        // The output's end (a trace's last packets, a report's page) must not keep what
        // is spooled from the broker: its error is returned after.
        let finished = self.output.finish();
        let status = self.status();
        if let Some(mut p) = self.publish.take() {
            p.decisions(wire::decisions(
                crate::capture::procfs::wall_ms(),
                &status.mode,
                &decided,
            ));
            p.remember(status);
            p.finish(self.drain).await;
        }
        Ok(finished?)
    }
}

/// The allocate stage: on the live machine, after putting back what a killed run left
/// (its journal), in the mode asked for — `--enforce`, else the last `set-mode` command,
/// else `allocate.mode`; on a recording, offline (decides and explains only). A mode
/// the machine cannot give (no cgroup hierarchy) is an error with `--enforce`, a problem
/// in status otherwise.
fn start_allocator(
    cfg: &Config,
    live: bool,
    enforce: bool,
    control: &mut Control,
    problems: &mut Vec<String>,
) -> Result<Allocator, PipelineError> {
    if !live {
        return Ok(Allocator::offline(&cfg.allocate, cfg.aggregate.group_by));
    }
    if enforce {
        control.assume_mode(Mode::Enforce);
    } else if !control.mode_was_set() {
        control.assume_mode(cfg.allocate.mode);
    }
    let dir = allocate::state_dir(&cfg.allocate, &cfg.publish.state_dir);
    let started = Allocator::start(&cfg.allocate, cfg.aggregate.group_by, &dir, Mode::DryRun);
    let mut a = match started {
        Ok((a, restored)) => {
            if let Some(r) = restored {
                info!(
                    processes = r.processes,
                    settings = r.settings,
                    groups = r.groups,
                    "Cgroups of the last run put back"
                );
                if !r.failures.is_empty() {
                    problems.push(format!(
                        "cgroups of the last run not all put back: {}",
                        r.failures.join("; ")
                    ));
                }
            }
            a
        }
        Err(e) if !enforce => {
            warn!(error = %e, "Allocation decides and explains only");
            problems.push(format!("allocation decides and explains only: {e}"));
            control.assume_mode(Mode::DryRun);
            Allocator::offline(&cfg.allocate, cfg.aggregate.group_by)
        }
        Err(e) => return Err(e.into()),
    };
    if cfg.allocate.workload.iter().any(|w| w.egress) {
        match crate::capture::egress::EgressLimiter::load() {
            Ok(l) => a.set_egress(Box::new(l)),
            Err(e) => {
                warn!(error = %e, "Egress is not limited");
                problems.push(format!("egress is not limited: {e}"));
            }
        }
    }
    if control.mode() == Mode::Enforce
        && let Err(e) = a.set_mode(Mode::Enforce)
    {
        if enforce {
            return Err(e.into());
        }
        warn!(error = %e, "Allocation stays in dry-run");
        problems.push(format!("allocation stays in dry-run: {e}"));
        control.assume_mode(Mode::DryRun);
    }
    Ok(a)
}

/// Per-request predictions (the profile store under the state dir) and `umbra exec`'s
/// socket, for a live agent; each missing one is a problem in status, not an error.
fn start_requests(
    cfg: &Config,
    problems: &mut Vec<String>,
) -> (Option<ProfilePredictor>, Option<Launcher>) {
    let profiles = match ProfilePredictor::open(&cfg.publish.state_dir.join("profiles")) {
        Ok((p, _)) => {
            use crate::predict::source::{ModelSetting, shipped};
            let setting = &cfg.predict.request_model;
            // A build without the model runtime, or without a shipped request model, is
            // not a problem unless a file was asked for.
            let asked = matches!(ModelSetting::parse(setting), ModelSetting::File(_))
                || (cfg!(feature = "onnx") && shipped::REQUEST.is_some());
            let p = p
                .with_model(per_request::request_model(setting))
                .reporting();
            if asked {
                problems.extend(p.model_problem.clone());
            }
            Some(p)
        }
        Err(e) => {
            warn!(error = %e, "No per-request predictions");
            problems.push(format!("no per-request predictions: {e}"));
            None
        }
    };
    let dir = allocate::state_dir(&cfg.allocate, &cfg.publish.state_dir);
    let path = dir.join(allocate::launch::SOCKET);
    let launcher = match Launcher::bind(&path) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, socket = %path.display(), "umbra exec cannot reach this agent");
            problems.push(format!("umbra exec socket {}: {e}", path.display()));
            None
        }
    };
    (profiles, launcher)
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
