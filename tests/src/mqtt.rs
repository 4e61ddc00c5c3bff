//! A real mosquitto broker (Debian's package) for the MQTT tests, on a free loopback port,
//! with its own config, persistence file and log in a temporary directory; and helpers to
//! run `umbra` processes against it.

use std::{
    fs,
    io::Read,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use umbra::{
    aggregate::Aggregator,
    capture::CaptureItem,
    config::Config,
    predict::ForecastStage,
    publish::{Summary, summary::Summarizer},
    record::Reader,
};

use crate::{in_ci, workspace_bin};

/// Where Debian installs the broker and its clients.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const MOSQUITTO_PUB: &str = "/usr/bin/mosquitto_pub";
pub const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

/// Whether the broker is installed; prints why not, and fails under CI (where
/// `cargo xtask test` installs it).
pub fn have_mosquitto(test: &str) -> bool {
    if Path::new(MOSQUITTO).exists() && Path::new(MOSQUITTO_PUB).exists() {
        return true;
    }
    let why = format!(
        "{test}: needs mosquitto and mosquitto-clients (`cargo xtask install` installs them)"
    );
    assert!(!in_ci(), "{why}, and CI=true forbids skipping");
    eprintln!("skipped: {why}");
    false
}

pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Broker {
    /// A plain-text broker on loopback, persistent sessions kept across restarts.
    pub fn start() -> Broker {
        Broker::start_with("")
    }

    /// `extra` is appended to the listener's config (e.g. TLS settings).
    pub fn start_with(extra: &str) -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.to_string(),
            child: None,
        };
        b.restart();
        b
    }

    pub fn url(&self) -> String {
        let scheme = if self.extra.contains("certfile") {
            "mqtts"
        } else {
            "mqtt"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with the same persistence file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let d = self.dir.path();
        let conf = d.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence true\npersistence_location {}/\nautosave_interval 1\n\
                 log_dest file {}/mosquitto.log\nlog_type all\n\
                 listener {} 127.0.0.1\n{}\n{}\n",
                d.display(),
                d.display(),
                self.port,
                if self.extra.contains("allow_anonymous") {
                    ""
                } else {
                    "allow_anonymous true"
                },
                self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < end,
                "mosquitto did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Publishes with Debian's `mosquitto_pub` (QoS 1); `payload` is a file's bytes.
    pub fn publish(&self, topic: &str, payload: &[u8], tls: &[&str]) {
        let f = self.dir.path().join("payload.bin");
        std::fs::write(&f, payload).expect("payload file");
        let st = Command::new(MOSQUITTO_PUB)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
            ])
            .arg("-f")
            .arg(&f)
            .args(tls)
            .status()
            .expect("mosquitto_pub");
        assert!(st.success(), "mosquitto_pub {topic} failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An `umbra` process with its stderr in a file (logs to assert on).
pub struct Umbra {
    pub child: Child,
    pub log: PathBuf,
}

impl Umbra {
    pub fn start(args: &[&str], log: PathBuf) -> Umbra {
        Umbra::start_with_stdout(args, log, Stdio::null())
    }

    pub fn start_with_stdout(args: &[&str], log: PathBuf, stdout: impl Into<Stdio>) -> Umbra {
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(workspace_bin("umbra"))
            .args(args)
            .env("UMBRA_LOG", "info,umbra=debug")
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .expect("start umbra");
        Umbra { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as systemd stops it; waits and returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let ok = self.wait_exit(Duration::from_secs(20));
        std::mem::forget(self);
        ok
    }

    /// SIGKILL: nothing is flushed, nothing is said goodbye.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a line in the log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Umbra {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a file of JSON lines, as `umbra sub --json` writes them.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// A config file for an agent publishing to `broker`.
pub fn agent_config(dir: &Path, broker: &str, node: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{node}.toml"));
    std::fs::write(
        &p,
        format!(
            "[publish]\nbroker = \"{broker}\"\nfleet = \"test\"\nnode = \"{node}\"\n\
             state_dir = \"{}\"\n{extra}\n",
            dir.join(node).display()
        ),
    )
    .expect("write config");
    p
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The summaries the agent must publish for a replayed recording: every window but the
/// first (it holds everything since each process was first seen), folded per period, and
/// the last partial period at the end.
pub fn expected_summaries(cfg: &Path, recording: &Path) -> Vec<Summary> {
    let cfg = Config::load(Some(cfg)).unwrap();
    let mut reader = Reader::open(recording).unwrap();
    let mut agg = Aggregator::new(cfg.aggregate.group_by, reader.header().interval_ms);
    let mut sum = Summarizer::new(
        cfg.publish.summary_every_ms,
        cfg.publish.max_workloads as usize,
    );
    // The forecasts, as the agent makes them from the second window on.
    let mut forecasts = ForecastStage::live(
        &cfg.predict,
        reader.header().interval_ms as u64,
        None,
        None,
        umbra::predict::runtime::default_runtime(),
    );
    let mut out = Vec::new();
    let mut first = true;
    while let Some(item) = reader.next_item() {
        if let CaptureItem::Tick(t) = item.unwrap() {
            let w = agg.tick(&t);
            if !std::mem::take(&mut first) {
                if let Some(fs) = forecasts.push(&w) {
                    sum.forecasts(&fs);
                }
                out.extend(sum.push(&w));
            }
        }
    }
    out.extend(sum.flush());
    out
}

/// The hub's summaries files in `data` (not the profiles' table beside them).
pub fn summary_files(data: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(data) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("summaries-") && name.ends_with(".parquet")
        })
        .collect()
}

pub fn replay_publish(cfg: &Path, recording: &Path, extra: &[&str], log: PathBuf) -> Umbra {
    let mut args = vec!["--config", cfg.to_str().unwrap(), "replay"];
    args.push(recording.to_str().unwrap());
    args.push("--publish");
    args.extend(extra);
    Umbra::start(&args, log)
}

pub fn sub(broker: &str, extra: &[&str], out: &Path, log: PathBuf) -> Umbra {
    let mut args = vec!["sub", "--broker", broker, "--fleet", "test", "--json"];
    args.extend(extra);
    let u = Umbra::start_with_stdout(&args, log, fs::File::create(out).unwrap());
    assert!(
        u.wait_log("Subscribed", Duration::from_secs(10)),
        "{}",
        u.log()
    );
    // The SUBSCRIBE goes out right after the log line: let the broker take it.
    std::thread::sleep(Duration::from_millis(300));
    u
}
