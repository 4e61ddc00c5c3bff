//! Prometheus exposition of the agent's own health and of what it decided, for
//! operators: `GET /metrics` on a local address (`[metrics]`, off by default), in the
//! text format (0.0.4), names after Prometheus's conventions (`umbra_` prefix, base
//! units, `_total` counters, `_info` metrics for labels).
//!
//! The agent loop updates a [`Registry`] after each window (as an [`Output`] beside the
//! usual one); a small HTTP responder renders it on request. Nothing here blocks the loop
//! for longer than a copy of a few counters.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    capture::{CaptureItem, DropCounts, LifecycleKind, ProgramStats},
    config::ConfigError,
    insight::{Insights, NoteKind},
    pipeline::{FeedStats, Output},
    publish::Status,
    view::Frame,
};

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all (off by default).
    pub enabled: bool,
    /// Where: `host:port`. Loopback by default; another address exposes the agent's
    /// figures to that network.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| ConfigError::Invalid {
            key: "metrics.listen",
            value: format!("{:?}", self.listen),
            expected: format!("an address and port such as 127.0.0.1:9464 ({e})"),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.addr().map(|_| ())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for metrics on {addr}: {source}; set metrics.listen to a free local address"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What `/metrics` shows, updated by the agent loop.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: String,
    pub kernel: String,
    pub start_time_s: f64,
    pub mode: String,
    pub model: Option<(String, String, String)>,
    pub windows: u64,
    pub workloads: u64,
    /// Lifecycle events the agent received, by kind (exec, fork, exit).
    pub events: BTreeMap<&'static str, u64>,
    /// Kernel drops since load, by (program, kind).
    pub drops: DropCounts,
    /// Capture items lost between capture and the agent.
    pub channel_drops: u64,
    /// Run-time statistics of the kernel programs.
    pub programs: Vec<ProgramStats>,
    pub notes: BTreeMap<NoteKind, u64>,
    pub by_tier: BTreeMap<String, u64>,
    pub drifting: u64,
    pub spool_messages: u64,
    pub spool_bytes: u64,
    pub spool_dropped: u64,
    pub spool_unspooled: u64,
    pub problems: u64,
}

/// The shared figures.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<Mutex<Snapshot>>);

impl Registry {
    pub fn new() -> Self {
        let r = Registry::default();
        r.update(|s| {
            s.version = env!("CARGO_PKG_VERSION").into();
            s.start_time_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
        });
        r
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        render(&self.snapshot())
    }
}

/// Label values escaped as the text format wants (`\\`, `\"`, `\n`).
fn esc(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// The Prometheus text format of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut t = Text(String::new());
    t.family(
        "umbra_build_info",
        "gauge",
        "The running agent: version and kernel.",
    );
    t.sample(
        "umbra_build_info",
        &[("version", &s.version), ("kernel", &s.kernel)],
        1.0,
    );
    t.one(
        "umbra_start_time_seconds",
        "gauge",
        "When the agent started, seconds since the Unix epoch.",
        s.start_time_s,
    );
    t.family(
        "umbra_mode_info",
        "gauge",
        "Allocation mode: dry-run (decide and explain) or enforce.",
    );
    t.sample("umbra_mode_info", &[("mode", &s.mode)], 1.0);
    t.family(
        "umbra_model_info",
        "gauge",
        "The forecasting model in use (absent: baselines only).",
    );
    if let Some((name, version, sha)) = &s.model {
        t.sample(
            "umbra_model_info",
            &[("name", name), ("version", version), ("sha256", sha)],
            1.0,
        );
    }
    t.one(
        "umbra_windows_total",
        "counter",
        "Intervals aggregated into shadow data points.",
        s.windows as f64,
    );
    t.one(
        "umbra_workloads",
        "gauge",
        "Workloads in the newest interval.",
        s.workloads as f64,
    );
    t.family(
        "umbra_capture_events_total",
        "counter",
        "Lifecycle events received from the kernel, by kind.",
    );
    for (k, n) in &s.events {
        t.sample("umbra_capture_events_total", &[("kind", k)], *n as f64);
    }
    t.family(
        "umbra_hook_drops_total",
        "counter",
        "What a kernel program could not record (full map, full ring buffer, failed read), by hook and kind.",
    );
    for (hook, kind, n) in s.drops.by_program() {
        t.sample(
            "umbra_hook_drops_total",
            &[("hook", hook), ("kind", kind)],
            n as f64,
        );
    }
    t.one(
        "umbra_capture_channel_drops_total",
        "counter",
        "Capture items lost between the capture thread and the agent (the agent too slow).",
        s.channel_drops as f64,
    );
    t.family(
        "umbra_hook_runs_total",
        "counter",
        "Runs of each kernel program (needs BPF run-time statistics: kernel.bpf_stats_enabled or CAP_SYS_ADMIN).",
    );
    for p in &s.programs {
        t.sample(
            "umbra_hook_runs_total",
            &[("program", &p.name)],
            p.runs as f64,
        );
    }
    t.family(
        "umbra_hook_run_seconds_total",
        "counter",
        "Time spent in each kernel program; divided by umbra_hook_runs_total, the cost per run.",
    );
    for p in &s.programs {
        t.sample(
            "umbra_hook_run_seconds_total",
            &[("program", &p.name)],
            p.run_ns as f64 / 1e9,
        );
    }
    t.family(
        "umbra_decisions_total",
        "counter",
        "Allocation decisions made (written or explained only).",
    );
    t.sample(
        "umbra_decisions_total",
        &[],
        s.notes.get(&NoteKind::Decision).copied().unwrap_or(0) as f64,
    );
    t.one(
        "umbra_anomalies_total",
        "counter",
        "Anomalies found: intervals outside a workload's calibrated band, or a jump in its cost per unit of input.",
        s.notes.get(&NoteKind::Anomaly).copied().unwrap_or(0) as f64,
    );
    t.one(
        "umbra_drift_total",
        "counter",
        "Times a workload's forecast error was found drifting.",
        s.notes.get(&NoteKind::Drift).copied().unwrap_or(0) as f64,
    );
    t.family(
        "umbra_workloads_by_tier",
        "gauge",
        "Workloads by allocation tier (shadow, warm, full).",
    );
    for (tier, n) in &s.by_tier {
        t.sample("umbra_workloads_by_tier", &[("tier", tier)], *n as f64);
    }
    t.one(
        "umbra_workloads_drifting",
        "gauge",
        "Workloads flagged for retraining.",
        s.drifting as f64,
    );
    t.one(
        "umbra_spool_messages",
        "gauge",
        "Messages waiting in the spool for the broker's acknowledgement.",
        s.spool_messages as f64,
    );
    t.one(
        "umbra_spool_bytes",
        "gauge",
        "Bytes of the spool on disk.",
        s.spool_bytes as f64,
    );
    t.one(
        "umbra_spool_dropped_messages_total",
        "counter",
        "Messages dropped unsent because the spool was full.",
        s.spool_dropped as f64,
    );
    t.one(
        "umbra_spool_unspooled_messages_total",
        "counter",
        "Messages the spool could not take (full disk), sent from memory instead.",
        s.spool_unspooled as f64,
    );
    t.one(
        "umbra_problems",
        "gauge",
        "Conditions an operator should look at (see the status message).",
        s.problems as f64,
    );
    t.0
}

/// Feeds a [`Registry`] from the agent loop, beside another output.
pub struct Metered<O> {
    pub inner: O,
    pub registry: Registry,
    pub feed: Arc<FeedStats>,
}

impl<O: Output> Output for Metered<O> {
    fn window(&mut self, f: &Frame<'_>) -> io::Result<()> {
        let (w, drops) = (f.window, f.drops);
        let programs = self.feed.programs();
        self.registry.update(|s| {
            s.windows += 1;
            s.workloads = w.points.len() as u64;
            s.channel_drops = drops.channel;
            if !programs.is_empty() {
                s.programs = programs;
            }
        });
        self.inner.window(f)
    }

    fn item(&mut self, item: &CaptureItem) -> io::Result<()> {
        self.registry.update(|s| match item {
            CaptureItem::Event(e) => {
                let k = match e.kind {
                    LifecycleKind::Exec { .. } => "exec",
                    LifecycleKind::Fork => "fork",
                    LifecycleKind::Exit { .. } => "exit",
                };
                *s.events.entry(k).or_default() += 1;
            }
            CaptureItem::Tick(t) => s.drops = t.drops,
        });
        self.inner.item(item)
    }

    fn insights(&mut self, i: &Insights) -> io::Result<()> {
        self.registry.update(|s| {
            for k in NoteKind::ALL {
                let n = i.count(k) as u64;
                if n > 0 {
                    *s.notes.entry(k).or_default() += n;
                }
            }
            if !i.workloads.is_empty() {
                s.by_tier.clear();
                s.drifting = 0;
                for w in i.workloads.values() {
                    if let Some(t) = &w.tier {
                        *s.by_tier.entry(t.clone()).or_default() += 1;
                    }
                    s.drifting += w.drifting as u64;
                }
            }
        });
        self.inner.insights(i)
    }

    fn wants_status(&self) -> bool {
        true
    }

    fn status(&mut self, st: &Status) {
        self.registry.update(|s| {
            s.kernel.clone_from(&st.kernel);
            s.mode.clone_from(&st.mode);
            s.model = st
                .model
                .as_ref()
                .map(|m| (m.name.clone(), m.version.clone(), m.sha256.clone()));
            s.spool_messages = st.spool.pending;
            s.spool_bytes = st.spool.bytes;
            s.spool_dropped = st.spool.dropped;
            s.spool_unspooled = st.spool.unspooled;
            s.problems = st.problems.len() as u64;
        });
        self.inner.status(st)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.inner.finish()
    }
}

/// Binds `addr` (so a taken port is an error at start, naming it) and serves `/metrics`
/// from `registry` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(%local, "Metrics at http://{local}/metrics");
    Ok(tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = listener.accept() => c,
            };
            match conn {
                Ok((stream, peer)) => {
                    let r = registry.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, &r).await {
                            debug!(%peer, error = %e, "Metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "Metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

/// One HTTP/1.x request: `GET /metrics` (or `HEAD`), anything else 404/405.
async fn respond(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head, at most 8 KiB and 5 s.
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 8192 {
                break;
            }
        }
        io::Result::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head"))??;
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            "<html><body><a href=\"/metrics\">Umbra metrics</a></body></html>\n".into(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type_once() {
        let mut s = Snapshot {
            version: "0.1.0".into(),
            kernel: "6.18".into(),
            mode: "dry-run".into(),
            model: Some(("forecast".into(), "3".into(), "ab\"c".into())),
            ..Default::default()
        };
        s.events.insert("exec", 5);
        s.drops.0[0][0] = 3;
        s.programs.push(ProgramStats {
            name: "sched_switch".into(),
            runs: 10,
            run_ns: 2_000,
        });
        s.notes.insert(NoteKind::Anomaly, 2);
        let text = render(&s);
        let mut types = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(types.insert(name.to_string()), "{name} typed twice");
                assert!(name.starts_with("umbra_"));
            }
        }
        assert!(text.contains("umbra_capture_events_total{kind=\"exec\"} 5\n"));
        assert!(text.contains("umbra_hook_run_seconds_total{program=\"sched_switch\"} 0.000002\n"));
        assert!(text.contains("umbra_anomalies_total 2\n"));
        assert!(text.contains("sha256=\"ab\\\"c\""), "{text}");
        assert!(text.contains("umbra_hook_drops_total{hook=\"sched_switch\""));
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_refuses_other_paths() {
        let r = Registry::new();
        r.update(|s| s.workloads = 42);
        let stop = CancellationToken::new();
        // Port 0: any free port; bind again to learn it.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let task = serve(addr, r, stop.clone()).await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"));
        assert!(ok.contains("\numbra_workloads 42\n"), "{ok}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        // A second server on the same address: an error naming it.
        let e = serve(addr, Registry::new(), stop.clone())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        stop.cancel();
        task.await.unwrap();
    }
}
