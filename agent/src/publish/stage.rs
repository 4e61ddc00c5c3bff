//! The publish stage as the agent loop drives it: windows fold into summaries that go to
//! the outbox; status is kept current for the publisher's birth and Last Will messages;
//! commands and model updates from the fleet are checked here (signatures, freshness,
//! schema) and handed back to the loop, which routes them to the stage they concern;
//! replies go out rate-limited.
//!
//! The publisher (the rumqttc tasks) is supervised: if it ends with an error or panics, the
//! error is logged and shown in status, and it is started again with backoff. The outbox
//! (spool and memory queue) outlives it, so nothing spooled is lost.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ed25519_dalek::VerifyingKey;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    Body, CmdResult, Decisions, Inbound, Outbox, PublishError, RequestSummary, Settings, Status,
    client,
    command::{Command, Verifier},
    model::{ModelBundle, ModelError, ModelStore, SignedModel},
    summary::Summarizer,
};
use crate::{aggregate::Window, config::PublishConfig};

/// Command replies per second in the long run, and the burst allowed.
const REPLY_RATE: f64 = 2.0;
const REPLY_BURST: f64 = 32.0;
/// Longest wait before the publisher is started again after it failed.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// What a message from the fleet asks for, once checked.
#[derive(Debug)]
pub enum Accepted {
    Command {
        topic: String,
        id: Option<String>,
        command: Command,
    },
    /// A verified model, already stored as the active one.
    Model {
        topic: String,
        bundle: Box<ModelBundle>,
    },
    /// Refused; the reply is already on its way.
    Refused,
}

/// A token bucket for command replies ([`REPLY_RATE`], [`REPLY_BURST`]).
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new() -> Bucket {
        Bucket {
            tokens: REPLY_BURST,
            at: Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * REPLY_RATE).min(REPLY_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Stage {
    outbox: Outbox,
    summarizer: Summarizer,
    inbound: mpsc::Receiver<Inbound>,
    supervisor: JoinHandle<()>,
    stop: CancellationToken,
    /// The status the publisher sends at connect and leaves as its Last Will.
    shared: Arc<Mutex<Status>>,
    /// Why the publisher last failed, until it is running again.
    failure: Arc<Mutex<Option<String>>>,
    verifier: Verifier,
    model_key: Option<VerifyingKey>,
    store: ModelStore,
    replies: Bucket,
    replies_limited: u64,
    spool_errors: u64,
}

impl Stage {
    /// Opens the spool and starts the publisher. `status` is the agent's state at start.
    pub fn start(
        p: &PublishConfig,
        settings: Settings,
        status: Status,
    ) -> Result<Stage, PublishError> {
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
        let (tx, inbound) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let shared = Arc::new(Mutex::new(status));
        let failure = Arc::new(Mutex::new(None));
        info!(
            broker = settings.url,
            fleet = settings.topics.fleet,
            node = settings.topics.node,
            spooled = recovered.pending,
            "Publishing"
        );
        let supervisor = tokio::spawn(supervise(
            settings,
            outbox.clone(),
            tx,
            shared.clone(),
            failure.clone(),
            stop.clone(),
        ));
        let keys = p.keys().map_err(|e| PublishError::Broker {
            url: p.broker.clone(),
            message: e.to_string(),
        })?;
        Ok(Stage {
            outbox,
            summarizer: Summarizer::new(p.summary_every_ms, p.max_workloads as usize),
            inbound,
            supervisor,
            stop,
            shared,
            failure,
            verifier: Verifier::new(
                keys.commands,
                p.command_max_age_s * 1000,
                Some(&p.state_dir.join("command-nonces.json")),
            ),
            model_key: keys.models,
            store: ModelStore::new(&p.state_dir),
            replies: Bucket::new(),
            replies_limited: 0,
            spool_errors: 0,
        })
    }

    /// The stored model, verified again (it is kept across restarts), if there is one.
    pub fn stored_model(&self) -> Option<ModelBundle> {
        let key = self.model_key.as_ref()?;
        match self.store.load(key) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "Stored model ignored");
                None
            }
        }
    }

    fn push(&mut self, body: Body) {
        if let Err(e) = self.outbox.push(body) {
            self.spool_errors += 1;
            if self.spool_errors.is_power_of_two() {
                warn!(error = %e, errors = self.spool_errors, "Spool cannot be written; messages go out from memory meanwhile");
            }
        }
    }

    /// The forecasts made as a bucket closed: summaries carry them.
    pub fn forecasts(&mut self, fs: &[crate::predict::Forecast]) {
        self.summarizer.forecasts(fs);
    }

    /// Requests predicted and ended, and how many more were not kept: summaries carry
    /// them.
    pub fn requests(&mut self, rows: impl IntoIterator<Item = RequestSummary>, dropped: u64) {
        for r in rows {
            self.summarizer.request(r);
        }
        self.summarizer.omit(dropped);
    }

    /// A window for the summaries.
    pub fn window(&mut self, w: &Window) {
        if let Some(sum) = self.summarizer.push(w) {
            self.push(Body::Summary(sum));
        }
    }

    /// The allocate stage's decisions of an interval, as one message on their own topic
    /// (spooled like summaries). Nothing is sent when nothing was decided.
    pub fn decisions(&mut self, d: Decisions) {
        if !d.decisions.is_empty() || d.omitted > 0 {
            self.push(Body::Decisions(d));
        }
    }

    /// Executables' profiles, on their own topic.
    pub fn profiles(&mut self, p: super::message::Profiles) {
        if !p.profiles.is_empty() {
            self.push(Body::Profiles(p));
        }
    }

    /// An anomaly or a drift, on its own topic.
    pub fn anomaly(&mut self, a: super::message::AnomalyReport) {
        self.push(Body::Anomaly(a));
    }

    /// What the publish stage itself reports in status: its spool, and its problems.
    pub fn fill_status(&self, s: &mut Status) {
        s.spool = self.outbox.status();
        s.spool.replies_dropped += self.replies_limited;
        if let Some(e) = &s.spool.error {
            s.problems
                .push(format!("{e} (messages go out from memory meanwhile)"));
        }
        if let Some(f) = self.failure.lock().ok().and_then(|f| f.clone()) {
            s.problems.push(format!("publisher: {f}"));
        }
    }

    /// The agent's current status: kept for birth and Last Will, and published now.
    pub fn status(&mut self, s: Status) {
        self.remember(s.clone());
        self.push(Body::Status(s));
    }

    /// Keeps `s` for the publisher's next birth message and Last Will.
    pub fn remember(&mut self, s: Status) {
        if let Ok(mut g) = self.shared.lock() {
            *g = s;
        }
    }

    /// The next command or model update from the fleet.
    pub async fn next_inbound(&mut self) -> Option<Inbound> {
        self.inbound.recv().await
    }

    /// Checks a message from the fleet. A refusal is answered here.
    pub fn accept(&mut self, msg: Inbound) -> Accepted {
        match msg {
            Inbound::Command {
                topic,
                name,
                payload,
            } => {
                let now = crate::capture::procfs::wall_ms();
                match self.verifier.check(&topic, &name, &payload, now) {
                    Ok((command, id)) => {
                        info!(topic, ?command, "Command");
                        Accepted::Command { topic, id, command }
                    }
                    Err(e) => {
                        warn!(topic, error = %e, "Command refused");
                        self.reply(&topic, None, Err(e.to_string()));
                        Accepted::Refused
                    }
                }
            }
            Inbound::Model { topic, payload } => {
                let verified = match &self.model_key {
                    None => Err(ModelError::NoKey),
                    Some(key) => SignedModel::verify(&payload, key)
                        .and_then(|b| self.store.install(&payload).map(|()| b)),
                };
                match verified {
                    Ok(b) => {
                        info!(model = b.name, version = b.version, "Model received");
                        Accepted::Model {
                            topic,
                            bundle: Box::new(b),
                        }
                    }
                    Err(e) => {
                        warn!(topic, error = %e, "Model refused");
                        self.reply(&topic, None, Err(e.to_string()));
                        Accepted::Refused
                    }
                }
            }
        }
    }

    /// Answers a command or model update (rate-limited: a flood of bad commands gets some
    /// answers, not all, and never crowds out summaries).
    pub fn reply(&mut self, topic: &str, id: Option<String>, r: Result<String, String>) {
        if !self.replies.take() {
            self.replies_limited += 1;
            return;
        }
        let (ok, message) = match r {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        self.push(Body::CmdResult(CmdResult {
            id,
            topic: topic.to_string(),
            ok,
            message,
        }));
    }

    /// The last partial summary, then (for a replay) a wait for the outbox to empty, then
    /// the publisher's goodbye.
    pub async fn finish(mut self, drain: Option<Duration>) {
        if let Some(sum) = self.summarizer.flush() {
            self.push(Body::Summary(sum));
        }
        if let Some(d) = drain {
            let until = Instant::now() + d;
            while self.outbox.pending() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = self.outbox.pending();
            if left > 0 {
                warn!(
                    pending = left,
                    "Broker did not take every message; they stay spooled for the next run"
                );
            }
        }
        self.stop.cancel();
        if let Err(e) = self.supervisor.await {
            warn!(error = %e, "Publisher did not stop cleanly");
        }
    }
}

/// Runs the publisher until `stop`, starting it again whenever it fails.
async fn supervise(
    settings: Settings,
    outbox: Outbox,
    inbound: mpsc::Sender<Inbound>,
    shared: Arc<Mutex<Status>>,
    failure: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let status = {
            let shared = shared.clone();
            move || shared.lock().map(|s| s.clone()).unwrap_or_default()
        };
        let run = tokio::spawn(client::run(
            settings.clone(),
            outbox.clone(),
            inbound.clone(),
            status,
            stop.clone(),
        ));
        let why = match run.await {
            Ok(Ok(())) if stop.is_cancelled() => return,
            Ok(Ok(())) => "stopped unexpectedly".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("crashed: {e}"),
        };
        warn!(error = why, restart_in = ?backoff, "Publisher failed; starting it again");
        if let Ok(mut f) = failure.lock() {
            *f = Some(why);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
        if let Ok(mut f) = failure.lock() {
            *f = None;
        }
    }
}
