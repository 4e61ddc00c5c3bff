//! The MQTT side: an [`Outbox`] the pipeline writes to (a spool append, never a network
//! wait), and the publisher, two tasks around one rumqttc connection:
//!
//! - the **poller** alone drives rumqttc's event loop: connects (with backoff), subscribes
//!   again on every ConnAck (clean sessions forget subscriptions), publishes the retained
//!   birth status, turns PubAcks into spool acknowledgements and hands incoming commands
//!   and models on through a bounded channel;
//! - the **sender** moves spooled messages into rumqttc's request channel with
//!   `try_publish` only, at most [`WINDOW`] unacknowledged at a time, so neither task
//!   ever waits on a full request channel (publishing from the polling task with an
//!   awaiting `publish` is rumqttc's classic deadlock).
//!
//! rumqttc reports `Outgoing::Publish(pkid)` in the order requests were queued; a FIFO of
//! spool seqs, pushed under the same lock as the request, maps each pkid to its seq, so a
//! PubAck acknowledges exactly the message it belongs to. Every connection gets a fresh
//! event loop: nothing queued for a dead connection can be mistaken for a new one, and
//! after a reconnect the sender starts again from the oldest unacknowledged message
//! (QoS 1: duplicates are possible and subscribers drop them by seq).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    message::{Body, CmdResult, Envelope, Kind, Payload, SCHEMA, SpoolStatus, Status, Topics},
    spool::{Recovered, Spool, SpoolError, SpoolLimits},
    stage::Bucket,
};

/// Spooled messages handed to rumqttc and not yet acknowledged, at most.
pub const WINDOW: usize = 32;
/// rumqttc's request channel: the window, plus subscriptions, birth and goodbye.
const REQUEST_CAPACITY: usize = WINDOW + 16;
/// Largest MQTT packet in or out (a model update is the largest).
pub const MAX_PACKET: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("broker {url}: {message}")]
    Broker { url: String, message: String },
    #[error("TLS file {path}: {message}")]
    Tls { path: PathBuf, message: String },
}

/// Where the broker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number 1..65535"))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err("has no host".into());
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// Loopback: the only place plain-text MQTT is allowed without saying so.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// TLS and login settings (paths are read when connecting).
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Everything the publisher needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub broker: BrokerUrl,
    pub topics: Topics,
    pub payload: Payload,
    pub keep_alive: Duration,
    pub security: Security,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

/// Messages the spool could not take (a full disk, a read-only state directory), kept in
/// memory and sent unsequenced (seq 0) at most this many; older ones are dropped, counted.
const MAX_UNSPOOLED: usize = 256;
const MAX_UNSPOOLED_BYTES: usize = 4 << 20;
/// Command replies waiting for the broker, at most: they are never spooled, so no flood of
/// commands can push summaries out of the spool.
const MAX_REPLIES: usize = 64;

/// The pipeline's handle on the outgoing messages: `push` encodes and appends to the spool
/// (or, when the spool cannot be written, to a bounded queue in memory) and wakes the
/// sender. Never touches the network.
#[derive(Clone)]
pub struct Outbox {
    spool: Arc<Mutex<Spool>>,
    memory: Arc<Mutex<Memory>>,
    node: Arc<str>,
    wake: Arc<Notify>,
}

/// Messages held in memory: unspooled ones and command replies, each with a local id.
#[derive(Default)]
struct Memory {
    next_id: u64,
    unspooled: VecDeque<(u64, Bytes)>,
    unspooled_bytes: usize,
    replies: VecDeque<(u64, Bytes)>,
    /// Since start: messages sent unspooled, and those dropped from memory.
    unspooled_total: u64,
    unspooled_dropped: u64,
    replies_dropped: u64,
    /// The last spool error, until an append succeeds again.
    error: Option<String>,
    errors: u64,
}

impl Memory {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.unspooled.iter().position(|(i, _)| *i == id) {
            if let Some((_, b)) = self.unspooled.remove(i) {
                self.unspooled_bytes -= b.len();
            }
        } else if let Some(i) = self.replies.iter().position(|(i, _)| *i == id) {
            self.replies.remove(i);
        }
    }
}

impl Outbox {
    pub fn open(
        dir: &std::path::Path,
        limits: SpoolLimits,
        node: &str,
    ) -> Result<(Outbox, Recovered), SpoolError> {
        let (spool, rec) = Spool::open(dir, limits)?;
        Ok((
            Outbox {
                spool: Arc::new(Mutex::new(spool)),
                memory: Arc::default(),
                node: node.into(),
                wake: Arc::new(Notify::new()),
            },
            rec,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool half-written (every
        // append is one write, cut back when it fails), so a poisoned lock is still usable.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mem(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn envelope(&self, seq: u64, body: Body) -> Envelope {
        Envelope {
            schema: SCHEMA,
            node: self.node.to_string(),
            seq,
            time_ms: crate::capture::procfs::wall_ms(),
            historical: false,
            body,
        }
    }

    /// Spools a message and returns its seq; a command reply is never spooled (seq 0). When
    /// the spool cannot take it, the message waits in memory instead (seq 0, counted) and
    /// the error is returned for the caller to report: nothing stops going out.
    pub fn push(&self, body: Body) -> Result<u64, SpoolError> {
        if matches!(body, Body::CmdResult(_)) {
            let bytes = Bytes::from(self.envelope(0, body).encode(Payload::Postcard));
            let mut m = self.mem();
            if m.replies.len() >= MAX_REPLIES {
                m.replies.pop_front();
                m.replies_dropped += 1;
            }
            let id = m.id();
            m.replies.push_back((id, bytes));
            drop(m);
            self.wake.notify_one();
            return Ok(0);
        }
        let result = {
            let mut s = self.lock();
            let env = self.envelope(s.next_seq(), body);
            s.append(&env.encode(Payload::Postcard))
                .map_err(|e| (e, env))
        };
        let out = match result {
            Ok(seq) => {
                self.mem().error = None;
                Ok(seq)
            }
            Err((e, mut env)) => {
                env.seq = 0;
                let bytes = Bytes::from(env.encode(Payload::Postcard));
                let mut m = self.mem();
                m.error = Some(e.to_string());
                m.errors += 1;
                m.unspooled_total += 1;
                m.unspooled_bytes += bytes.len();
                let id = m.id();
                m.unspooled.push_back((id, bytes));
                while m.unspooled.len() > MAX_UNSPOOLED || m.unspooled_bytes > MAX_UNSPOOLED_BYTES {
                    if let Some((_, b)) = m.unspooled.pop_front() {
                        m.unspooled_bytes -= b.len();
                        m.unspooled_dropped += 1;
                    }
                }
                Err(e)
            }
        };
        self.wake.notify_one();
        out
    }

    /// The broker acknowledged a message.
    fn ack(&self, sent: Sent) {
        match sent {
            Sent::Spool(seq) => {
                if let Err(e) = self.lock().ack(seq) {
                    // The acknowledgement holds in memory; only the cursor file is behind,
                    // which means resending (harmless: subscribers drop repeats by seq).
                    let mut m = self.mem();
                    m.error = Some(e.to_string());
                    m.errors += 1;
                }
            }
            Sent::Memory(id) => self.mem().remove(id),
            Sent::Untracked => {}
        }
    }

    pub fn status(&self) -> SpoolStatus {
        let (pending, bytes, dropped) = {
            let s = self.lock();
            (s.pending(), s.bytes(), s.dropped())
        };
        let m = self.mem();
        SpoolStatus {
            pending,
            bytes,
            dropped,
            unspooled: m.unspooled_total,
            unspooled_dropped: m.unspooled_dropped,
            replies_dropped: m.replies_dropped,
            error: m.error.clone(),
        }
    }

    /// Messages not yet acknowledged: spooled and in memory.
    pub fn pending(&self) -> u64 {
        let spooled = self.lock().pending();
        let m = self.mem();
        spooled + (m.unspooled.len() + m.replies.len()) as u64
    }

    /// Writes the acknowledgement cursor and syncs the open segment.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.lock().sync()
    }

    /// The next message held in memory from `after` on (replies first): id, bytes.
    fn next_memory(&self, after: u64) -> Option<(u64, Bytes)> {
        let m = self.mem();
        m.replies
            .iter()
            .chain(m.unspooled.iter())
            .filter(|(id, _)| *id > after)
            .min_by_key(|(id, _)| *id)
            .cloned()
    }
}

/// What a message handed to rumqttc was, for its PubAck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Spool(u64),
    Memory(u64),
    /// Birth status, subscriptions: nothing to acknowledge.
    Untracked,
}

/// A command or model update from the fleet, for the pipeline to validate and apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// `name` is the topic's last level (`set-mode`, …).
    Command {
        topic: String,
        name: String,
        payload: Bytes,
    },
    Model {
        topic: String,
        payload: Bytes,
    },
}

/// State shared by poller and sender.
struct Link {
    /// The live connection's client, once it is ready (subscribed, birth sent).
    client: Option<AsyncClient>,
    /// Publishes queued in rumqttc, oldest first.
    queued: VecDeque<Sent>,
    /// Sent and awaiting PubAck.
    by_pkid: HashMap<u16, Sent>,
    /// Next seq the sender looks at.
    next_send: u64,
    /// Messages in memory with an id at or below it were handed to this connection.
    memory_sent: u64,
    /// Messages with a lower seq were spooled before this connection: historical.
    live_from: u64,
}

impl Link {
    fn in_flight(&self) -> usize {
        self.queued.len() + self.by_pkid.len()
    }

    fn reset(&mut self) {
        self.client = None;
        self.queued.clear();
        self.by_pkid.clear();
    }
}

/// Runs the publisher until `shutdown`; then says goodbye (retained offline status).
/// `status` gives the agent's current state for birth and goodbye messages.
pub async fn run(
    settings: Settings,
    outbox: Outbox,
    inbound: mpsc::Sender<Inbound>,
    status: impl Fn() -> Status + Send + 'static,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    let opts = options(&settings, &status())?;
    let link = Arc::new(Mutex::new(Link {
        client: None,
        queued: VecDeque::new(),
        by_pkid: HashMap::new(),
        next_send: 0,
        memory_sent: 0,
        live_from: 0,
    }));
    let sender = tokio::spawn(send_loop(
        link.clone(),
        outbox.clone(),
        settings.clone(),
        shutdown.clone(),
    ));
    let result = poll_loop(
        &settings, opts, &link, &outbox, &inbound, &status, &shutdown,
    )
    .await;
    shutdown.cancel();
    let _ = sender.await;
    if let Err(e) = outbox.sync() {
        warn!(error = %e, "Spool not synced at shutdown; unacknowledged messages may be sent again");
    }
    result
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    link.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connection options shared by the agent and the fleet tools: a clean session, large
/// packets, TLS and login as configured.
pub fn connect_options(
    broker: &BrokerUrl,
    client_id: String,
    security: &Security,
    keep_alive: Duration,
) -> Result<MqttOptions, PublishError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight((WINDOW * 2) as u16);
    if let (Some(u), p) = (&security.username, &security.password) {
        o.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if broker.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(security)?),
        )));
    }
    Ok(o)
}

/// A client of the fleet tools (`umbra sub`, `umbra hub`) for the broker at `url`.
pub fn fleet_client(
    url: &str,
    client_id: String,
    security: &Security,
    cap: usize,
    tweak: impl FnOnce(&mut MqttOptions),
) -> Result<(AsyncClient, EventLoop), PublishError> {
    let broker = BrokerUrl::parse(url).map_err(|message| PublishError::Broker {
        url: url.into(),
        message,
    })?;
    let mut opts = connect_options(&broker, client_id, security, Duration::from_secs(30))?;
    tweak(&mut opts);
    Ok(AsyncClient::new(opts, cap))
}

fn options(s: &Settings, status: &Status) -> Result<MqttOptions, PublishError> {
    let id = format!("umbra-{}-{}", s.topics.fleet, s.topics.node);
    let mut o = connect_options(&s.broker, id, &s.security, s.keep_alive)?;
    let goodbye = Status {
        online: false,
        ..status.clone()
    };
    o.set_last_will(LastWill::new(
        s.topics.of(Kind::Status),
        envelope(s, 0, Body::Status(goodbye)),
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// An unspooled message (birth and goodbye status): seq 0.
fn envelope(s: &Settings, seq: u64, body: Body) -> Vec<u8> {
    Envelope {
        schema: SCHEMA,
        node: s.topics.node.clone(),
        seq,
        time_ms: crate::capture::procfs::wall_ms(),
        historical: false,
        body,
    }
    .encode(s.payload)
}

/// rustls with the ring provider: CA verification always; a client certificate if set.
pub fn tls_config(sec: &Security) -> Result<rustls::ClientConfig, PublishError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let tls_err = |path: &PathBuf, message: String| PublishError::Tls {
        path: path.clone(),
        message,
    };
    let Some(ca) = &sec.ca_file else {
        return Err(PublishError::Tls {
            path: PathBuf::new(),
            message: "mqtts:// needs publish.ca_file (the CA that signed the broker's certificate)"
                .into(),
        });
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect())
        .map_err(|e| tls_err(ca, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(ca, "holds no PEM certificate".into()));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| tls_err(ca, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(ca, e.to_string()))?
        .with_root_certificates(roots);
    match (&sec.client_cert_file, &sec.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect())
                .map_err(|e| tls_err(cert, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(cert, e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    settings: &Settings,
    opts: MqttOptions,
    link: &Mutex<Link>,
    outbox: &Outbox,
    inbound: &mpsc::Sender<Inbound>,
    status: &(impl Fn() -> Status + Send),
    shutdown: &CancellationToken,
) -> Result<(), PublishError> {
    let base = settings.topics.base();
    let mut backoff = Duration::from_millis(250);
    let mut was_connected = false;
    let mut failures = 0u64;
    // "Busy" replies to commands the full queue refused: rate-limited like every reply.
    let mut busy = Bucket::new();
    loop {
        let (client, mut events) = AsyncClient::new(opts.clone(), REQUEST_CAPACITY);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => {
                    goodbye(settings, link, &client, &mut events, status).await;
                    return Ok(());
                }
                ev = events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(250);
                    failures = 0;
                    let mut l = lock(link);
                    for t in
                        std::iter::once(settings.topics.commands()).chain(settings.topics.models())
                    {
                        if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                            warn!(topic = t, error = %e, "Cannot subscribe");
                        }
                    }
                    let birth = Body::Status(Status {
                        online: true,
                        ..status()
                    });
                    l.queued.push_back(Sent::Untracked);
                    if let Err(e) = client.try_publish(
                        settings.topics.of(Kind::Status),
                        QoS::AtLeastOnce,
                        true,
                        envelope(settings, 0, birth),
                    ) {
                        l.queued.pop_back();
                        warn!(error = %e, "Birth message not queued");
                    }
                    l.client = Some(client.clone());
                    l.next_send = 0;
                    l.memory_sent = 0;
                    l.live_from = outbox.lock().next_seq();
                    drop(l);
                    info!(
                        broker = settings.url,
                        node = settings.topics.node,
                        "Connected to the broker"
                    );
                    was_connected = true;
                    outbox.wake.notify_one();
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut l = lock(link);
                    if let Some(sent) = l.queued.pop_front() {
                        l.by_pkid.insert(pkid, sent);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    let sent = lock(link).by_pkid.remove(&a.pkid);
                    if let Some(sent) = sent {
                        outbox.ack(sent);
                        outbox.wake.notify_one();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    route(
                        &base, settings, outbox, inbound, &mut busy, p.topic, p.payload,
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    lock(link).reset();
                    failures += 1;
                    if was_connected {
                        warn!(broker = settings.url, error = %e, "Broker connection lost; spooling until it is back");
                        was_connected = false;
                    } else if failures == 1 || failures.is_multiple_of(20) {
                        warn!(broker = settings.url, error = %e, failures, "Broker unreachable; spooling and retrying");
                    } else {
                        debug!(broker = settings.url, error = %e, ?backoff, "Broker unreachable");
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Hands a command or model on; replies at once when it cannot be taken.
fn route(
    base: &str,
    settings: &Settings,
    outbox: &Outbox,
    inbound: &mpsc::Sender<Inbound>,
    busy: &mut Bucket,
    topic: String,
    payload: Bytes,
) {
    let rest = topic.strip_prefix(base).and_then(|r| r.strip_prefix('/'));
    let msg = match rest {
        // Our own replies come back through `cmd/#`.
        Some("cmd/result") => return,
        Some(r) if r.starts_with("cmd/") => Inbound::Command {
            name: r["cmd/".len()..].to_string(),
            topic,
            payload,
        },
        _ if settings.topics.models().contains(&topic) => Inbound::Model { topic, payload },
        _ => return,
    };
    if let Err(e) = inbound.try_send(msg) {
        let topic = match e.into_inner() {
            Inbound::Command { topic, .. } | Inbound::Model { topic, .. } => topic,
        };
        debug!(topic, "Command queue full; command refused");
        if !busy.take() {
            outbox.mem().replies_dropped += 1;
            return;
        }
        // Replies are never spooled: this cannot fail.
        let _ = outbox.push(Body::CmdResult(CmdResult {
            id: None,
            topic,
            ok: false,
            message: "agent busy: too many commands queued; send it again later".into(),
        }));
    }
}

/// On shutdown: a retained offline status, then a clean disconnect (so the broker does not
/// publish the Last Will), waiting briefly for both to leave.
async fn goodbye(
    settings: &Settings,
    link: &Mutex<Link>,
    client: &AsyncClient,
    events: &mut EventLoop,
    status: &(impl Fn() -> Status + Send),
) {
    let connected = lock(link).client.take().is_some();
    if !connected {
        return;
    }
    let bye = Body::Status(Status {
        online: false,
        ..status()
    });
    let _ = client.try_publish(
        settings.topics.of(Kind::Status),
        QoS::AtLeastOnce,
        true,
        envelope(settings, 0, bye),
    );
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// How long the sender waits without a wake-up before looking at the outbox again.
const SEND_BACKSTOP: Duration = Duration::from_secs(10);

async fn send_loop(
    link: Arc<Mutex<Link>>,
    outbox: Outbox,
    settings: Settings,
    shutdown: CancellationToken,
) {
    loop {
        match send_ready(&link, &outbox, &settings) {
            Ok(true) => {
                // rumqttc's channel was full: let the poller drain it.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "Spool read failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = outbox.wake.notified() => {}
            // Every change that lets more out notifies (`notify_one` keeps the permit when
            // nobody waits); a slow tick anyway, as a backstop, rare enough that an idle
            // agent does not wake for it.
            _ = tokio::time::sleep(SEND_BACKSTOP) => {}
        }
    }
}

/// Queues messages while the window allows: those held in memory first (they have no
/// other copy), then the spool's in order. Returns true when rumqttc's request channel
/// was full.
fn send_ready(link: &Mutex<Link>, outbox: &Outbox, s: &Settings) -> Result<bool, SpoolError> {
    let mut l = lock(link);
    let Some(client) = l.client.clone() else {
        return Ok(false);
    };
    while l.in_flight() < WINDOW {
        let (sent, seq, bytes) = if let Some((id, bytes)) = outbox.next_memory(l.memory_sent) {
            (Sent::Memory(id), 0, bytes)
        } else if let Some((seq, bytes)) = outbox.lock().next_from(l.next_send)? {
            (Sent::Spool(seq), seq, bytes)
        } else {
            return Ok(false);
        };
        let historical = seq > 0 && seq < l.live_from;
        // Stored as postcard; re-encoded when the wire wants JSON or the flag.
        let stored_schema = Envelope::schema_of(&bytes);
        let (kind, payload) = match Envelope::decode(&bytes) {
            Ok(mut env)
                if historical
                    || s.payload != Payload::Postcard
                    || stored_schema != Some(SCHEMA) =>
            {
                env.historical = historical;
                (env.body.kind(), env.encode(s.payload))
            }
            Ok(env) => (env.body.kind(), bytes.to_vec()),
            Err(e) => {
                // Written by an agent and CRC-checked: only a newer agent's spool after a
                // downgrade gets here. Skip it rather than block the rest.
                warn!(seq, error = %e, "Spooled message unreadable; skipped");
                match sent {
                    Sent::Spool(seq) => l.next_send = seq + 1,
                    Sent::Memory(id) => l.memory_sent = id,
                    Sent::Untracked => {}
                }
                outbox.ack(sent);
                continue;
            }
        };
        let topic = s.topics.of(kind);
        let retain = kind == Kind::Status;
        match client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => {
                l.queued.push_back(sent);
                match sent {
                    Sent::Spool(seq) => l.next_send = seq + 1,
                    Sent::Memory(id) => l.memory_sent = id,
                    Sent::Untracked => {}
                }
            }
            Err(_) => return Ok(true),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1").unwrap();
        assert_eq!((u.port, u.tls, u.is_loopback()), (1883, false, true));
        let u = BrokerUrl::parse("mqtts://hub.example.com:9999").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls, u.is_loopback()),
            ("hub.example.com", 9999, true, false)
        );
        assert!(BrokerUrl::parse("mqtt://[::1]:1884").unwrap().is_loopback());
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://h:x").is_err());
        assert!(BrokerUrl::parse("mqtt://").is_err());
    }
}
