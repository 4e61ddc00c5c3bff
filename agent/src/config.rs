//! Umbra's configuration: one TOML file (`--config`), every key optional, defaults that
//! work; unknown keys are errors. Command-line flags override the file. Validation turns
//! it into values the stages can trust.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{GroupBy, HistoryConfig},
    allocate::config::AllocateConfig,
    anomaly::AnomalyConfig,
    capture::Hook,
    metrics::MetricsConfig,
    predict::PredictConfig,
    publish::{
        BrokerUrl, Payload, Security, Settings, Topics, identity::NodeId, model,
        spool::SpoolLimits, valid_level,
    },
};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: CaptureConfig,
    pub aggregate: AggregateConfig,
    pub publish: PublishConfig,
    pub predict: PredictConfig,
    pub allocate: AllocateConfig,
    /// `[metrics]`: the Prometheus endpoint (off by default).
    pub metrics: MetricsConfig,
    /// `[anomaly]`: how far from its band a workload may go, and drift.
    pub anomaly: AnomalyConfig,
}

/// `[publish]`: the MQTT link to the fleet hub (see `docs/mqtt.md`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Publish at all (`umbra run`; `umbra replay --publish` turns it on for a replay).
    pub enabled: bool,
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub broker: String,
    /// Topic levels: `umbra/v1/<fleet>/<node>/…`. `node` defaults to the hostname.
    pub fleet: String,
    pub node: String,
    /// `"postcard"` (compact) or `"json"`.
    pub payload: Payload,
    /// Length of a summary period, ms.
    pub summary_every_ms: u64,
    /// How often status is published (besides at connect and on request), ms.
    pub status_every_ms: u64,
    /// How often the executables' profiles with new runs are published (`profiles`
    /// topic), ms; 0: never.
    pub profiles_every_ms: u64,
    /// Workloads listed in a summary; the rest are folded into one `other` row.
    pub max_workloads: u32,
    /// Where the spool, the active model and trace snapshots live.
    pub state_dir: PathBuf,
    /// Spool budget on disk, bytes; beyond it the oldest messages are dropped (counted).
    pub spool_max_bytes: u64,
    /// Spool segment size, bytes (at most a quarter of the budget).
    pub spool_segment_bytes: u64,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u64,
    /// Longest pause between reconnection attempts, ms.
    pub max_backoff_ms: u64,
    /// CA certificate (PEM) that signed the broker's; required for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require them.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub username: Option<String>,
    /// A file holding the password (kept out of the config file).
    pub password_file: Option<PathBuf>,
    /// Plain-text MQTT to a host other than loopback. Off: credentials and data would
    /// cross the network in the clear.
    pub allow_plaintext: bool,
    /// The fleet's ed25519 public key (base64): commands that change the agent
    /// (`set-mode`, `set-tier`, `trace-snapshot`) and model updates must be signed with it.
    /// Without it they are refused; `status` needs no signature.
    pub fleet_public_key: Option<String>,
    /// A key for model updates only (the fleet key is used when unset; the fleet key
    /// falls back to this one when only it is set, as in earlier versions).
    pub model_public_key: Option<String>,
    /// How old (or how far in the future) a signed command may be, seconds.
    pub command_max_age_s: u64,
    /// Trace snapshots kept under `<state_dir>/snapshots`, at most: files, and bytes in
    /// all (the oldest go first; a snapshot stops when it reaches the byte limit).
    pub snapshots_max_files: u32,
    pub snapshots_max_bytes: u64,
}

/// The verifying keys of `[publish]`.
pub struct Keys {
    pub commands: Option<ed25519_dalek::VerifyingKey>,
    pub models: Option<ed25519_dalek::VerifyingKey>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            enabled: true,
            broker: "mqtt://127.0.0.1:1883".into(),
            fleet: "default".into(),
            node: String::new(),
            payload: Payload::Postcard,
            summary_every_ms: 10_000,
            status_every_ms: 60_000,
            profiles_every_ms: 600_000,
            max_workloads: 100,
            state_dir: PathBuf::from("/var/lib/umbra"),
            spool_max_bytes: 32 << 20,
            spool_segment_bytes: 1 << 20,
            keep_alive_s: 30,
            max_backoff_ms: 30_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            username: None,
            password_file: None,
            allow_plaintext: false,
            fleet_public_key: None,
            model_public_key: None,
            command_max_age_s: 300,
            snapshots_max_files: 8,
            snapshots_max_bytes: 256 << 20,
        }
    }
}

impl PublishConfig {
    /// The node's id: configured, or derived from the hardware (see
    /// [`NodeId`](crate::publish::identity::NodeId)).
    pub fn node_id(&self) -> NodeId {
        NodeId::resolve(&self.node)
    }

    /// The keys commands and models are verified with.
    pub fn keys(&self) -> Result<Keys, ConfigError> {
        let parse = |key: &'static str, v: &Option<String>| {
            v.as_ref()
                .map(|k| {
                    model::public_key(k).map_err(|e| ConfigError::Invalid {
                        key,
                        value: k.clone(),
                        expected: format!("an ed25519 public key in base64: {e}"),
                    })
                })
                .transpose()
        };
        let fleet = parse("publish.fleet_public_key", &self.fleet_public_key)?;
        let model = parse("publish.model_public_key", &self.model_public_key)?;
        Ok(Keys {
            commands: fleet.or(model),
            models: model.or(fleet),
        })
    }

    /// Settings for the publisher, with secrets read from their files.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let broker = BrokerUrl::parse(&self.broker).map_err(|e| ConfigError::Invalid {
            key: "publish.broker",
            value: self.broker.clone(),
            expected: format!("a broker URL: {e}"),
        })?;
        let password = match &self.password_file {
            Some(p) => Some(
                fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read {
                        path: p.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => None,
        };
        Ok(Settings {
            url: self.broker.clone(),
            broker,
            topics: Topics {
                fleet: self.fleet.clone(),
                node: self.node_id().id,
            },
            payload: self.payload,
            keep_alive: Duration::from_secs(self.keep_alive_s),
            security: Security {
                ca_file: self.ca_file.clone(),
                client_cert_file: self.client_cert_file.clone(),
                client_key_file: self.client_key_file.clone(),
                username: self.username.clone(),
                password,
            },
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        })
    }

    pub fn spool_limits(&self) -> SpoolLimits {
        SpoolLimits {
            max_bytes: self.spool_max_bytes,
            segment_bytes: self.spool_segment_bytes,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, expected: &str| ConfigError::Invalid {
            key,
            value,
            expected: expected.into(),
        };
        let broker = BrokerUrl::parse(&self.broker).map_err(|e| {
            invalid(
                "publish.broker",
                self.broker.clone(),
                &format!("mqtt://host[:port] or mqtts://host[:port] ({e})"),
            )
        })?;
        if !broker.tls && !broker.is_loopback() && !self.allow_plaintext {
            return Err(invalid(
                "publish.broker",
                self.broker.clone(),
                "mqtts:// for a remote broker (TLS), or set publish.allow_plaintext = true to send in the clear",
            ));
        }
        if broker.tls && self.ca_file.is_none() {
            return Err(invalid(
                "publish.ca_file",
                "(unset)".into(),
                "the CA certificate (PEM) that signed the broker's certificate, for mqtts://",
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                "publish.client_cert_file",
                format!("{:?}", self.client_cert_file),
                "client_cert_file and client_key_file together, or neither",
            ));
        }
        for (key, v) in [("publish.fleet", &self.fleet), ("publish.node", &self.node)] {
            let may_be_empty = key == "publish.node";
            let ok = valid_level(v) || (may_be_empty && v.is_empty());
            if !ok {
                return Err(invalid(
                    key,
                    format!("{v:?}"),
                    "1-64 characters without '/', '+', '#'",
                ));
            }
        }
        check(
            "publish.summary_every_ms",
            self.summary_every_ms,
            100..=3_600_000,
        )?;
        check(
            "publish.status_every_ms",
            self.status_every_ms,
            1000..=86_400_000,
        )?;
        if self.profiles_every_ms != 0 {
            check(
                "publish.profiles_every_ms",
                self.profiles_every_ms,
                1000..=86_400_000,
            )?;
        }
        check("publish.max_workloads", self.max_workloads, 1..=100_000)?;
        check("publish.keep_alive_s", self.keep_alive_s, 5..=3600)?;
        check("publish.max_backoff_ms", self.max_backoff_ms, 100..=600_000)?;
        check(
            "publish.spool_max_bytes",
            self.spool_max_bytes,
            1 << 16..=1 << 40,
        )?;
        check(
            "publish.spool_segment_bytes",
            self.spool_segment_bytes,
            1 << 14..=(self.spool_max_bytes / 4).max(1 << 14),
        )?;
        check(
            "publish.command_max_age_s",
            self.command_max_age_s,
            10..=86_400,
        )?;
        check(
            "publish.snapshots_max_files",
            self.snapshots_max_files,
            1..=10_000,
        )?;
        check(
            "publish.snapshots_max_bytes",
            self.snapshots_max_bytes,
            1 << 20..=1 << 40,
        )?;
        self.keys()?;
        Ok(())
    }
}

/// `[aggregate]`: how processes become workloads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// `"exe"` (by executable content hash) or `"cgroup"` (by cgroup v2 directory).
    pub group_by: GroupBy,
    /// `[aggregate.history]`: downsampling tiers and the memory budget.
    pub history: HistoryConfig,
}

/// `[capture]`: the kernel programs and their maps.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// How often the maps are read into samples, ms.
    pub interval_ms: u64,
    /// Processes tracked at once (`PROC_STATS`); beyond it new processes are dropped, counted.
    pub max_processes: u32,
    /// Threads tracked at once (`THREADS`).
    pub max_threads: u32,
    /// Size of the exec/fork/exit ring buffer, KiB (a power of two, ≥ 64).
    pub ring_buffer_kib: u32,
    /// Block requests in flight whose latency is tracked.
    pub max_block_requests: u32,
    /// Sockets whose owner is remembered (for closes and retransmits).
    pub max_sockets: u32,
    /// Use BTF tracepoints where the kernel has them (cheaper); classic ones otherwise.
    pub btf_tracepoints: bool,
    /// Where per-process counters come from: `"auto"` (the task iterator, read once a
    /// tick, where the kernel has it, else the per-event hooks; the default), `"iterator"`
    /// (the iterator or an error) or `"hooks"`.
    pub counters: crate::capture::Counters,
    /// The per-event hooks only they can measure with (run-queue latency histograms,
    /// every syscall counted), on top of the task iterator. Off by default (their cost is
    /// in BENCHMARKS.md); `umbra trace` turns it on for its own run.
    pub detail: bool,
    /// Hooks to leave off, by tracepoint name (e.g. `"page_fault_user"`).
    pub disable: Vec<String>,
    /// Fault injection, for tests only (not read from the file): tracepoints
    /// (`"category/name"`) the probe treats as missing from this kernel, so the fallback
    /// and the error for a missing tracepoint run on a kernel that has them.
    #[serde(skip)]
    pub simulate_missing: Vec<String>,
    /// Wake the reader at every exec (set by the agent when allocation places requests
    /// as they start; not read from the file).
    #[serde(skip)]
    pub wake_on_exec: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            interval_ms: 1000,
            max_processes: 8192,
            max_threads: 32768,
            ring_buffer_kib: 1024,
            max_block_requests: 16384,
            max_sockets: 16384,
            btf_tracepoints: true,
            counters: crate::capture::Counters::Auto,
            detail: false,
            disable: Vec::new(),
            simulate_missing: Vec::new(),
            wake_on_exec: false,
        }
    }
}

impl CaptureConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn ring_buffer_bytes(&self) -> u32 {
        self.ring_buffer_kib.saturating_mul(1024)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config value {key} = {value} is invalid: {expected}")]
    InvalidAt {
        key: String,
        value: String,
        expected: String,
    },
    #[error("config value {key} = {value} is invalid: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
}

impl Config {
    /// Reads and validates `path`; defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// Checks every value; call again after command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.metrics.validate()?;
        self.anomaly.validate()?;
        let c = &self.capture;
        check("capture.interval_ms", c.interval_ms, 10..=60_000)?;
        check("capture.max_processes", c.max_processes, 64..=4_194_304)?;
        check("capture.max_threads", c.max_threads, 64..=4_194_304)?;
        check(
            "capture.max_block_requests",
            c.max_block_requests,
            64..=1_048_576,
        )?;
        check("capture.max_sockets", c.max_sockets, 64..=4_194_304)?;
        check("capture.ring_buffer_kib", c.ring_buffer_kib, 64..=262_144)?;
        if !c.ring_buffer_kib.is_power_of_two() {
            return Err(ConfigError::Invalid {
                key: "capture.ring_buffer_kib",
                value: c.ring_buffer_kib.to_string(),
                expected: "a power of two (64, 128, … 262144)".into(),
            });
        }
        let h = &self.aggregate.history;
        if h.tiers.is_empty()
            || h.tiers
                .iter()
                .any(|t| t.resolution_ms == 0 || t.span_ms < t.resolution_ms)
            || h.tiers
                .windows(2)
                .any(|w| w[1].resolution_ms % w[0].resolution_ms != 0)
        {
            return Err(ConfigError::Invalid {
                key: "aggregate.history.tiers",
                value: format!("{:?}", h.tiers),
                expected: "finest first, each resolution a multiple of the previous one, each span at least its resolution".into(),
            });
        }
        check(
            "aggregate.history.budget_bytes",
            h.budget_bytes,
            1 << 16..=1 << 34,
        )?;
        self.publish.validate()?;
        self.predict.validate(c.interval_ms)?;
        self.allocate
            .validate()
            .map_err(|(key, value, expected)| ConfigError::InvalidAt {
                key,
                value,
                expected,
            })?;
        for name in &c.disable {
            match Hook::from_name(name) {
                None => {
                    let known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
                    return Err(ConfigError::Invalid {
                        key: "capture.disable",
                        value: format!("{name:?}"),
                        expected: format!("one of {}", known.join(", ")),
                    });
                }
                Some(h) if h.required() => {
                    return Err(ConfigError::Invalid {
                        key: "capture.disable",
                        value: format!("{name:?}"),
                        expected: "an optional hook: the agent cannot run without this one".into(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// `value` within `range`, else the error naming `key`.
pub(crate) fn check<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            value: value.to_string(),
            expected: format!("between {} and {}", range.start(), range.end()),
        })
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults");
        assert_eq!(Config::parse("").expect("empty"), Config::default());
    }

    #[test]
    fn file_values_override_defaults() {
        let c = Config::parse("[capture]\ninterval_ms = 250\ndisable = [\"page_fault_user\"]\n")
            .expect("parse");
        c.validate().expect("valid");
        assert_eq!(c.capture.interval_ms, 250);
        assert_eq!(c.capture.max_processes, 8192);
    }

    #[rstest]
    #[case("[capture]\nintervall_ms = 5\n", "unknown field")]
    #[case("[capture]\ninterval_ms = \"fast\"\n", "invalid type")]
    #[case("[captur]\n", "unknown field")]
    #[case("[aggregate]\ngroup_by = \"pod\"\n", "unknown variant")]
    fn bad_files_name_the_problem(#[case] text: &str, #[case] needle: &str) {
        let e = Config::parse(text).expect_err("must fail");
        assert!(e.contains(needle), "{e}");
    }

    #[rstest]
    #[case("[capture]\ninterval_ms = 0\n", "capture.interval_ms")]
    #[case("[capture]\nring_buffer_kib = 100\n", "capture.ring_buffer_kib")]
    #[case("[capture]\ndisable = [\"nope\"]\n", "capture.disable")]
    #[case("[capture]\ndisable = [\"sched_switch\"]\n", "capture.disable")]
    #[case("[aggregate.history]\ntiers = []\n", "aggregate.history.tiers")]
    #[case(
        "[[allocate.workload]]\npriority = \"critical\"\n",
        "allocate.workload[0]"
    )]
    #[case("[allocate]\nroot = \"../etc\"\n", "allocate.root")]
    #[case("[publish]\nprofiles_every_ms = 10\n", "publish.profiles_every_ms")]
    #[case("[allocate.request]\nwarm_ms = 86400000\n", "allocate.request.warm_ms")]
    #[case(
        "[[aggregate.history.tiers]]\nresolution_ms = 1000\nspan_ms = 60000\n[[aggregate.history.tiers]]\nresolution_ms = 1500\nspan_ms = 600000\n",
        "aggregate.history.tiers"
    )]
    fn bad_values_name_the_key(#[case] text: &str, #[case] key: &str) {
        let e = Config::parse(text)
            .expect("parse")
            .validate()
            .expect_err("invalid");
        assert!(e.to_string().contains(key), "{e}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let e = Config::load(Some(Path::new("/nonexistent/umbra.toml"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/umbra.toml"));
    }
}
