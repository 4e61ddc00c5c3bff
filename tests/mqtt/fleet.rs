//! The agent and the fleet over a real mosquitto broker (Debian's package), started by
//! each test on a free loopback port: summaries end to end, broker outages, `kill -9`,
//! commands and models good and bad, TLS, and hubs sharing a fleet.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use parquet::file::reader::{FileReader, SerializedFileReader};
use umbra::{publish::Summary, record::Reader};
use umbra_tests::{
    mqtt::{
        Broker, Umbra, agent_config, expected_summaries, fixture, have_mosquitto, json_lines,
        replay_publish, sub, summary_files, wait_until,
    },
    privileged, workspace_bin,
};

/// Bodies of `umbra sub --json` lines of one node, by seq.
fn bodies(lines: &[serde_json::Value], node: &str) -> BTreeMap<u64, serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["envelope"]["node"] == node)
        .map(|l| {
            (
                l["envelope"]["seq"].as_u64().unwrap(),
                l["envelope"]["body"].clone(),
            )
        })
        .collect()
}

/// `rec` replayed as fast as it goes by an agent of config `cfg` publishing as `node`,
/// until the subscriber writing `out` holds `want` summaries in all; the node's, decoded.
fn replayed(d: &Path, out: &Path, cfg: &Path, rec: &Path, node: &str, want: usize) -> Vec<Summary> {
    let mut a = replay_publish(
        cfg,
        rec,
        &["--as-fast-as-possible"],
        d.join(format!("{node}.log")),
    );
    assert!(a.wait_exit(Duration::from_secs(60)), "{}", a.log());
    assert!(
        wait_until(Duration::from_secs(10), || json_lines(out).len() >= want),
        "{} of {want} summaries arrived; agent log: {}",
        json_lines(out).len(),
        a.log()
    );
    bodies(&json_lines(out), node)
        .into_values()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

#[test]
fn replayed_summaries_arrive_and_decode_to_the_same_values() {
    if !have_mosquitto("replayed_summaries_arrive_and_decode_to_the_same_values") {
        return;
    }
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("sub.jsonl");
    let s = sub(
        &b.url(),
        &["--kind", "summary"],
        &out,
        d.path().join("sub.log"),
    );
    let rec = fixture("batch.umbra");
    let mut want = 0;
    for (node, payload) in [("pc", "postcard"), ("js", "json")] {
        let extra = format!("summary_every_ms = 3000\npayload = \"{payload}\"");
        let cfg = agent_config(d.path(), &b.url(), node, &extra);
        let expected = expected_summaries(&cfg, &rec);
        assert!(expected.len() >= 4, "{} summaries", expected.len());
        want += expected.len();
        // Their requests are checked against the recording below.
        let got: Vec<Summary> = replayed(d.path(), &out, &cfg, &rec, node, want)
            .into_iter()
            .map(|s| Summary {
                requests: Vec::new(),
                requests_omitted: 0,
                ..s
            })
            .collect();
        assert_eq!(got, expected, "{node} ({payload})");
        assert!(
            got.iter().any(
                |s| !s.predictor.is_empty() && s.workloads.iter().any(|w| w.forecast.is_some())
            ),
            "summaries carry the forecasts"
        );
    }
    drop(s);
}

/// A replay's summaries carry each request (a process exec) predicted from the profiles
/// of the runs before it, and, once it ended, what it used: checked against the
/// recording's execs, exits and samples.
#[test]
fn replayed_summaries_carry_each_requests_prediction_and_what_it_used() {
    use umbra::{
        capture::{CaptureItem, LifecycleKind},
        publish::RequestSummary,
    };
    if !have_mosquitto("replayed_summaries_carry_each_requests_prediction_and_what_it_used") {
        return;
    }
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("sub.jsonl");
    let s = sub(
        &b.url(),
        &["--kind", "summary"],
        &out,
        d.path().join("sub.log"),
    );
    let rec = fixture("compress.umbra");
    let cfg = agent_config(d.path(), &b.url(), "rq", "summary_every_ms = 3000");
    let want = expected_summaries(&cfg, &rec).len();
    let summaries = replayed(d.path(), &out, &cfg, &rec, "rq", want);
    drop(s);
    // The recording: each process's execs and exit (boot clock: its final sample's, else
    // its exit event's), its CPU time, and the
    // clocks' offset at the first tick (the agent dates execs by it).
    let (mut execs, mut exits) = (BTreeMap::<u32, Vec<u64>>::new(), BTreeMap::new());
    let (mut cpu_ns, mut offset_ms) = (BTreeMap::<u32, u64>::new(), None);
    let mut reader = Reader::open(&rec).unwrap();
    while let Some(item) = reader.next_item() {
        match item.unwrap() {
            CaptureItem::Event(e) => match e.kind {
                LifecycleKind::Exec { .. } => execs.entry(e.tgid).or_default().push(e.timestamp_ns),
                LifecycleKind::Exit { .. } if e.pid == e.tgid => {
                    exits.insert(e.tgid, e.timestamp_ns);
                }
                _ => {}
            },
            CaptureItem::Tick(t) => {
                offset_ms.get_or_insert(t.wall_ms as i64 - (t.timestamp_ns / 1_000_000) as i64);
                for p in &t.samples {
                    let c = cpu_ns.entry(p.tgid).or_default();
                    *c = (*c).max(p.counters.cpu_ns);
                    if let Some(x) = p.exit {
                        exits.insert(p.tgid, x.timestamp_ns);
                    }
                }
            }
        }
    }
    let offset_ms = offset_ms.unwrap();
    let exec_ms = |ns: u64| ((ns / 1_000_000) as i64 + offset_ms) as u64;
    let rows: Vec<(usize, &RequestSummary)> = summaries
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.requests.iter().map(move |r| (i, r)))
        .collect();
    assert!(summaries.iter().all(|s| s.requests_omitted == 0));
    // Where each request was predicted and ended: by summary.
    let (mut predicted, mut ended) = (BTreeMap::new(), BTreeMap::new());
    for &(i, r) in &rows {
        // An exec of the recording, the end of its request, its bands in order.
        let at = execs
            .get(&r.pid)
            .and_then(|es| es.iter().position(|&ns| exec_ms(ns) == r.exec_ms))
            .unwrap_or_else(|| panic!("no such exec in the recording: {r:?}"));
        for b in [
            r.cpu_seconds,
            r.peak_rss_bytes,
            r.duration_seconds,
            r.io_bytes,
        ] {
            assert!(b[0] <= b[1] && b[1] <= b[2], "{r:?}");
        }
        assert_eq!(r.source.starts_with("prior:"), r.runs == 0, "{r:?}");
        match r.used {
            None => {
                let twice = predicted.insert((r.pid, r.exec_ms), i);
                assert!(twice.is_none(), "predicted twice: {r:?}");
            }
            Some(u) => {
                let twice = ended.insert((r.pid, r.exec_ms), i);
                assert!(twice.is_none(), "ended twice: {r:?}");
                let es = &execs[&r.pid];
                let exec_ns = es[at];
                let end_ns = es.get(at + 1).or(exits.get(&r.pid)).copied().unwrap();
                let secs = (end_ns - exec_ns) as f64 / 1e9;
                assert!(
                    (u.duration_seconds as f64 - secs).abs() < 1e-3,
                    "{secs} s: {r:?}"
                );
                let cpu = cpu_ns[&r.pid] as f64 / 1e9;
                assert!(
                    u.cpu_seconds >= 0.0 && u.cpu_seconds as f64 <= cpu + 1e-3,
                    "{r:?}"
                );
            }
        }
    }
    // A request that ended in a later period than its prediction's is in both: its
    // prediction's row first, without what it used.
    for (req, at) in &predicted {
        assert!(ended.get(req).is_none_or(|end| end > at), "{req:?}");
    }
    let own = rows.iter().filter(|(_, r)| r.runs > 0).count();
    assert!(
        ended.len() >= 20 && own >= 20 && own < rows.len(),
        "{} ended, {own} of {} from the executable's own runs",
        ended.len(),
        rows.len()
    );
}

/// A live agent publishing a summary a second; a hub storing them.
struct Fleet {
    broker: Broker,
    dir: tempfile::TempDir,
    hub: Option<Umbra>,
    cfg: PathBuf,
}

impl Fleet {
    fn new(node: &str) -> Fleet {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let cfg = agent_config(
            dir.path(),
            &broker.url(),
            node,
            "summary_every_ms = 1000\nstatus_every_ms = 5000\nmax_backoff_ms = 1000",
        );
        let mut f = Fleet {
            broker,
            dir,
            hub: None,
            cfg,
        };
        f.start_hub();
        f
    }

    fn start_hub(&mut self) {
        let data = self.dir.path().join("hub");
        let stats = self.dir.path().join("hub-stats.json");
        let hub = Umbra::start(
            &[
                "hub",
                "--broker",
                &self.broker.url(),
                "--fleet",
                "test",
                "--data",
                data.to_str().unwrap(),
                "--id",
                "hub-a",
                "--table-secs",
                "0",
                "--flush-secs",
                "1",
                "--stats",
                stats.to_str().unwrap(),
            ],
            self.dir.path().join("hub.log"),
        );
        assert!(
            hub.wait_log("Hub connected", Duration::from_secs(10)),
            "{}",
            hub.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        self.hub = Some(hub);
    }

    fn agent(&self, n: u32) -> Umbra {
        let a = Umbra::start(
            &["--config", self.cfg.to_str().unwrap(), "run", "--top", "0"],
            self.dir.path().join(format!("agent{n}.log")),
        );
        assert!(
            a.wait_log("Connected to the broker", Duration::from_secs(30)),
            "{}",
            a.log()
        );
        a
    }

    /// Stops the hub; what it saw of `node`, and the (seq, workload) of every stored row.
    fn hub_result(&mut self, node: &str) -> (serde_json::Value, Vec<(u64, String)>) {
        let hub = self.hub.take().unwrap();
        let log = hub.log.clone();
        assert!(hub.stop(), "hub did not stop cleanly: {}", read(&log));
        let stats: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.path().join("hub-stats.json")).unwrap())
                .unwrap();
        let rows = parquet_rows(&self.dir.path().join("hub"))
            .into_iter()
            .filter(|r| r.0 == node)
            .map(|r| (r.1, r.2))
            .collect();
        (stats[node].clone(), rows)
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// (node, seq, workload) of every row of every summaries file in `dir` (not the
/// profiles' table beside them).
fn parquet_rows(dir: &Path) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    for p in summary_files(dir) {
        let r = SerializedFileReader::new(fs::File::open(&p).unwrap()).unwrap();
        for row in r.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let mut node = String::new();
            let mut seq = 0;
            let mut workload = String::new();
            for (name, f) in row.get_column_iter() {
                match (name.as_str(), f) {
                    ("node", parquet::record::Field::Str(s)) => node = s.clone(),
                    ("workload", parquet::record::Field::Str(s)) => workload = s.clone(),
                    ("seq", parquet::record::Field::Long(v)) => seq = *v as u64,
                    _ => {}
                }
            }
            out.push((node, seq, workload));
        }
    }
    out
}

/// Every message in order, none lost, none stored twice.
fn assert_complete(seen: &serde_json::Value, rows: &[(u64, String)], min_summaries: u64) {
    assert_eq!(seen["missing"], 0, "messages lost: {seen}");
    assert_eq!(seen["out_of_order"], 0, "messages out of order: {seen}");
    let summaries = seen["summaries"].as_u64().unwrap();
    assert!(summaries >= min_summaries, "{seen}");
    let distinct: BTreeSet<&(u64, String)> = rows.iter().collect();
    assert_eq!(distinct.len(), rows.len(), "a row stored twice");
    let seqs: BTreeSet<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs.len() as u64, summaries, "every summary stored");
}

/// A live agent predicts each exec as it happens: a program run again and again is
/// predicted from its own runs, and what each run used follows in the summaries; a shell
/// script, from the script's runs (not its shell's).
#[test]
fn a_live_agents_summaries_carry_its_requests() {
    use umbra::publish::RequestSummary;
    let name = "a_live_agents_summaries_carry_its_requests";
    if !privileged(name) || !have_mosquitto(name) {
        return;
    }
    let f = Fleet::new("live-rq");
    let out = f.dir.path().join("sub.jsonl");
    let _s = sub(
        &f.broker.url(),
        &["--kind", "summary", "--node", "live-rq"],
        &out,
        f.dir.path().join("sub.log"),
    );
    let a = f.agent(1);
    let input = f.dir.path().join("input");
    fs::write(&input, vec![7u8; 32 << 20]).unwrap();
    let script = f.dir.path().join("job.sh");
    fs::write(&script, "head -c 4000000 /dev/zero | gzip -1 > /dev/null\n").unwrap();
    let start_ms = umbra::capture::procfs::wall_ms();
    let mut pids = BTreeSet::new();
    for _ in 0..10 {
        let c = Command::new("sha256sum").arg(&input).output().unwrap();
        assert!(c.status.success());
        let c = Command::new("sh").arg(&script).output().unwrap();
        assert!(c.status.success());
        std::thread::sleep(Duration::from_millis(300));
    }
    let rows = |name: &str| -> Vec<RequestSummary> {
        bodies(&json_lines(&out), "live-rq")
            .into_values()
            .flat_map(|v| serde_json::from_value::<Summary>(v).unwrap().requests)
            .filter(|r| r.name == name)
            .collect()
    };
    let ended = |rs: &[RequestSummary]| rs.iter().filter(|r| r.used.is_some()).count();
    assert!(
        // The runs before the first is learned have nothing to be predicted from (the
        // store is new): up to three, a tick of a second apart.
        wait_until(Duration::from_secs(20), || {
            ended(&rows("sha256sum")) >= 6 && ended(&rows("job.sh")) >= 6
        }),
        "{:#?}\n{:#?}\n{}",
        rows("sha256sum"),
        rows("job.sh"),
        a.log()
    );
    let log = a.log.clone();
    assert!(a.stop(), "{}", read(&log));
    let scripts = rows("job.sh");
    let last = scripts.iter().rev().find(|r| r.used.is_some()).unwrap();
    assert!(
        last.runs >= 4 && last.key.starts_with("script:sha256:"),
        "{scripts:#?}"
    );
    let rows = rows("sha256sum");
    for r in &rows {
        assert!(r.exec_ms >= start_ms.saturating_sub(1000), "{r:?}");
        if let Some(u) = r.used {
            assert!(pids.insert(r.pid), "ended twice: {r:?}");
            assert!(
                u.duration_seconds > 0.0 && u.duration_seconds < 10.0,
                "{r:?}"
            );
            assert!(u.cpu_seconds > 0.0, "{r:?}");
        }
    }
    // The last runs are predicted from its own runs.
    let last = rows.iter().rev().find(|r| r.used.is_some()).unwrap();
    assert!(
        last.runs >= 4 && !last.source.starts_with("prior"),
        "{rows:#?}"
    );
    assert!(last.key.starts_with("exe:sha256:"), "{last:?}");
}

#[test]
fn a_30_s_broker_outage_loses_nothing_and_keeps_order() {
    let name = "a_30_s_broker_outage_loses_nothing_and_keeps_order";
    if !privileged(name) || !have_mosquitto(name) {
        return;
    }
    let mut f = Fleet::new("outage");
    let a = f.agent(1);
    std::thread::sleep(Duration::from_secs(4));
    f.broker.stop();
    std::thread::sleep(Duration::from_secs(30));
    f.broker.restart();
    assert!(
        wait_until(Duration::from_secs(30), || a
            .log()
            .matches("Connected to the broker")
            .count()
            >= 2),
        "agent did not reconnect: {}",
        a.log()
    );
    std::thread::sleep(Duration::from_secs(5));
    let log = a.log.clone();
    assert!(a.stop(), "agent did not stop cleanly: {}", read(&log));
    std::thread::sleep(Duration::from_secs(2));
    let (seen, rows) = f.hub_result("outage");
    // ~40 s of summaries at one a second, most of them spooled and flagged historical.
    assert_complete(&seen, &rows, 20);
    assert!(seen["historical"].as_u64().unwrap() >= 20, "{seen}");
}

#[test]
fn spooled_messages_survive_kill_9_of_the_agent() {
    let name = "spooled_messages_survive_kill_9_of_the_agent";
    if !privileged(name) || !have_mosquitto(name) {
        return;
    }
    let mut f = Fleet::new("killed");
    let a = f.agent(1);
    std::thread::sleep(Duration::from_secs(3));
    f.broker.stop();
    std::thread::sleep(Duration::from_secs(8));
    // Mid-outage: summaries of the last 8 s exist only in the spool.
    a.kill9();
    f.broker.restart();
    let b = f.agent(2);
    assert!(
        b.wait_log("Spool holds unsent messages", Duration::from_secs(1)),
        "{}",
        b.log()
    );
    std::thread::sleep(Duration::from_secs(5));
    let log = b.log.clone();
    assert!(b.stop(), "{}", read(&log));
    std::thread::sleep(Duration::from_secs(2));
    let (seen, rows) = f.hub_result("killed");
    assert_complete(&seen, &rows, 8);
    assert!(seen["historical"].as_u64().unwrap() >= 6, "{seen}");
}

/// `umbra hub keygen`: (key file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new(workspace_bin("umbra"))
        .args(["hub", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

fn publish_model(broker: &str, key: &Path, onnx: &Path, version: &str) {
    let out = Command::new(workspace_bin("umbra"))
        .args(["hub", "publish-model"])
        .arg(onnx)
        .arg("--key")
        .arg(key)
        .args(["--version", version])
        .args(["--broker", broker, "--fleet", "test", "--node", "cmd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn bad_commands_and_models_are_refused_and_the_agent_keeps_running() {
    if !have_mosquitto("bad_commands_and_models_are_refused_and_the_agent_keeps_running") {
        return;
    }
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let (key, public) = keygen(d.path(), "fleet.key");
    let (other_key, _) = keygen(d.path(), "other.key");
    let cfg = agent_config(
        d.path(),
        &b.url(),
        "cmd",
        &format!("fleet_public_key = \"{public}\"\nsummary_every_ms = 2000"),
    );
    let results = d.path().join("results.jsonl");
    let _s = sub(
        &b.url(),
        &["--node", "cmd", "--kind", "cmd/result"],
        &results,
        d.path().join("sub.log"),
    );
    // A slow replay: the agent runs for about a minute.
    let mut a = replay_publish(
        &cfg,
        &fixture("batch.umbra"),
        &["--speed", "0.25"],
        d.path().join("agent.log"),
    );
    assert!(
        a.wait_log("Connected to the broker", Duration::from_secs(20)),
        "{}",
        a.log()
    );
    let cmd = |name: &str, payload: &[u8]| {
        b.publish(&format!("umbra/v1/test/cmd/cmd/{name}"), payload, &[])
    };
    // The runtime fixture (not a trained model): a valid forecaster for this build.
    let onnx = fixture("onnx/forecast_fixture.onnx");
    let signing = umbra::publish::model::signing_key(&key).unwrap();
    let now = umbra::capture::procfs::wall_ms();
    let signed = |name: &str, fields: &str, ts: u64, nonce: &str, k: &ed25519_dalek::SigningKey| {
        let topic = format!("umbra/v1/test/cmd/cmd/{name}");
        umbra::publish::command::sign(&topic, &serde_json::from_str(fields).unwrap(), ts, nonce, k)
    };
    let other = umbra::publish::model::signing_key(&other_key).unwrap();
    let good_mode = signed(
        "set-mode",
        r#"{"id":"m1","mode":"enforce"}"#,
        now,
        "n-1",
        &signing,
    );

    cmd("set-mode", b"{not json");
    cmd("reboot", b"{}");
    cmd("trace-snapshot", br#"{"id":"t0","seconds":100000}"#);
    b.publish("umbra/v1/test/cmd/model", b"\x00\x01garbage", &[]);
    publish_model(&b.url(), &other_key, &onnx, "1");
    // A model this build cannot run, signed with the right key (the hub's own tool
    // refuses to publish it, so it is signed here).
    let bad = umbra::publish::model::ModelBundle {
        format: umbra::publish::model::BUNDLE_FORMAT,
        name: "forecast".into(),
        version: "2".into(),
        onnx: fs::read(fixture("onnx/forecast_unknown_feature.onnx")).unwrap(),
    };
    b.publish(
        "umbra/v1/test/cmd/model",
        &umbra::publish::model::SignedModel::sign(&bad, &signing).encode(),
        &[],
    );
    cmd("set-mode", br#"{"id":"u1","mode":"enforce"}"#);
    cmd(
        "set-mode",
        &signed("set-mode", r#"{"mode":"enforce"}"#, now, "n-2", &other),
    );
    cmd(
        "set-mode",
        &signed(
            "set-mode",
            r#"{"mode":"enforce"}"#,
            now - 3_600_000,
            "n-3",
            &signing,
        ),
    );
    cmd("set-mode", &good_mode);
    cmd("set-mode", &good_mode);
    publish_model(&b.url(), &key, &onnx, "3");
    // The operator's tool: signs, sends, prints the node's reply.
    let out = Command::new(workspace_bin("umbra"))
        .args([
            "hub",
            "command",
            "trace-snapshot",
            r#"{"id":"t1","seconds":1}"#,
            "--key",
        ])
        .arg(&key)
        .args(["--broker", &b.url(), "--fleet", "test", "--node", "cmd"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok: recording 1 s"),
        "{out:?}"
    );

    // Thirteen replies: refusals and acceptances, the snapshot's start and its end.
    let n = 13;
    assert!(
        wait_until(Duration::from_secs(20), || json_lines(&results).len() >= n),
        "{:#?}\nagent: {}",
        json_lines(&results),
        a.log()
    );
    let replies: Vec<(bool, String)> = json_lines(&results)
        .iter()
        .map(|l| {
            let b = &l["envelope"]["body"];
            (
                b["ok"].as_bool().unwrap(),
                b["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect: [(bool, &str); 12] = [
        (false, "not a valid JSON object"),
        (false, "unknown command \"reboot\""),
        (false, "between 1 and 300"),
        (false, "not a signed Umbra model bundle"),
        (false, "signature does not verify"),
        (false, "unknown feature \"gpu_util\""),
        (false, "must be signed with the fleet key"),
        (
            false,
            "signature does not verify against publish.fleet_public_key",
        ),
        (false, "stale or replayed"),
        // Signed, fresh and obeyed — by an allocator that cannot write on a replay.
        (
            false,
            "mode enforce refused: allocation needs a cgroup hierarchy",
        ),
        (false, "was used before"),
        (true, "model forecast 3 stored"),
    ];
    for (i, (ok, text)) in expect.iter().enumerate() {
        assert!(
            replies[i].0 == *ok && replies[i].1.contains(text),
            "reply {i}: {:?}, expected {ok} {text:?}; all: {replies:#?}",
            replies[i]
        );
    }
    assert!(
        replies[12].0 && replies[12].1.contains("recording 1 s of capture"),
        "{replies:#?}"
    );
    let done = &replies[12.min(replies.len() - 1)];
    assert!(
        wait_until(Duration::from_secs(10), || json_lines(&results).iter().any(
            |l| l["envelope"]["body"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(" intervals, ")
                && l["envelope"]["body"]["ok"] == true
        )),
        "snapshot never finished: {done:?} {:#?}",
        json_lines(&results)
    );
    // Still running, and its status says what the commands did.
    assert!(a.running(), "agent died: {}", a.log());
    let status = d.path().join("status.jsonl");
    let mut st = Umbra::start_with_stdout(
        &[
            "sub",
            "--broker",
            &b.url(),
            "--fleet",
            "test",
            "--node",
            "cmd",
            "--kind",
            "status",
            "--json",
            "--count",
            "1",
        ],
        d.path().join("status.log"),
        fs::File::create(&status).unwrap(),
    );
    assert!(st.wait_exit(Duration::from_secs(10)), "{}", st.log());
    let s = &json_lines(&status)[0]["envelope"]["body"];
    assert_eq!(s["mode"], "dry-run", "{s}");
    assert_eq!(s["model"]["version"], "3", "{s}");
    assert_eq!(s["online"], true, "{s}");
    let log = a.log.clone();
    assert!(a.stop(), "{}", read(&log));
    // The agent comes back (a mode set by command survives a restart: the allocate
    // stage's control tests; a replay refuses enforce).
    let status2 = d.path().join("status2.jsonl");
    let _st = Umbra::start_with_stdout(
        &[
            "sub",
            "--broker",
            &b.url(),
            "--fleet",
            "test",
            "--node",
            "cmd",
            "--kind",
            "status",
            "--json",
        ],
        d.path().join("status2.log"),
        fs::File::create(&status2).unwrap(),
    );
    let _again = replay_publish(
        &cfg,
        &fixture("idle.umbra"),
        &["--speed", "0.5"],
        d.path().join("agent2.log"),
    );
    let online = || {
        json_lines(&status2)
            .into_iter()
            .map(|l| l["envelope"]["body"].clone())
            .find(|b| b["online"] == true)
    };
    assert!(
        wait_until(Duration::from_secs(20), || online().is_some()),
        "{:#?}",
        json_lines(&status2)
    );
    let s = online().unwrap();
    assert_eq!(s["mode"], "dry-run", "{s}");
    // A snapshot file was written and is a valid recording.
    let snaps: Vec<PathBuf> = fs::read_dir(d.path().join("cmd").join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snaps.len(), 1);
    assert!(Reader::open(&snaps[0]).is_ok());
}

/// A CA and a certificate it signed for `name` (server or client): PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        fs::write(&ca, cert.pem()).unwrap();
        Pki {
            ca,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn leaf(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[test]
fn tls_with_generated_certificates_works_and_a_wrong_ca_is_refused() {
    if !have_mosquitto("tls_with_generated_certificates_works_and_a_wrong_ca_is_refused") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(d.path(), "fleet");
    let (server, server_key) = pki.leaf(d.path(), "broker");
    let (client, client_key) = pki.leaf(d.path(), "edge");
    let wrong = Pki::new(d.path(), "wrong");
    let b = Broker::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        pki.ca.display(),
        server.display(),
        server_key.display()
    ));
    let tls = |ca: &Path| {
        format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nsummary_every_ms = 3000",
            ca.display(),
            client.display(),
            client_key.display()
        )
    };
    // Subscriber over TLS with the right CA.
    let sub_cfg = agent_config(d.path(), &b.url(), "viewer", &tls(&pki.ca));
    let out = d.path().join("sub.jsonl");
    let s = Umbra::start_with_stdout(
        &[
            "--config",
            sub_cfg.to_str().unwrap(),
            "sub",
            "--fleet",
            "test",
            "--kind",
            "summary",
            "--json",
        ],
        d.path().join("sub.log"),
        fs::File::create(&out).unwrap(),
    );
    assert!(
        s.wait_log("Subscribed", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let cfg = agent_config(d.path(), &b.url(), "tls", &tls(&pki.ca));
    let rec = fixture("compile.umbra");
    let want = expected_summaries(&cfg, &rec).len();
    let mut a = replay_publish(
        &cfg,
        &rec,
        &["--as-fast-as-possible"],
        d.path().join("a.log"),
    );
    assert!(a.wait_exit(Duration::from_secs(30)), "{}", a.log());
    assert!(
        wait_until(Duration::from_secs(10), || json_lines(&out).len() >= want),
        "{} of {want} over TLS; agent: {}",
        json_lines(&out).len(),
        a.log()
    );
    // The same agent trusting another CA refuses the broker's certificate.
    let bad = agent_config(d.path(), &b.url(), "wrongca", &tls(&wrong.ca));
    let mut w = replay_publish(
        &bad,
        &rec,
        &["--as-fast-as-possible", "--drain-secs", "3"],
        d.path().join("w.log"),
    );
    assert!(w.wait_exit(Duration::from_secs(30)), "{}", w.log());
    let log = w.log();
    assert!(!log.contains("Connected to the broker"), "{log}");
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "the refusal names the certificate: {log}"
    );
    assert!(log.contains("stay spooled"), "{log}");
}

#[test]
fn a_broker_requiring_a_password_takes_the_right_one_only() {
    if !have_mosquitto("a_broker_requiring_a_password_takes_the_right_one_only") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let passwd = d.path().join("passwd");
    let st = Command::new(umbra_tests::mqtt::MOSQUITTO_PASSWD)
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["edge", "s3cret"])
        .status()
        .unwrap();
    assert!(st.success());
    let b = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    let rec = fixture("compile.umbra");
    for (node, password, accepted) in [("good", "s3cret", true), ("bad", "guess", false)] {
        let pw = d.path().join(format!("{node}.pw"));
        fs::write(&pw, format!("{password}\n")).unwrap();
        let cfg = agent_config(
            d.path(),
            &b.url(),
            node,
            &format!("username = \"edge\"\npassword_file = \"{}\"", pw.display()),
        );
        let mut a = replay_publish(
            &cfg,
            &rec,
            &["--as-fast-as-possible", "--drain-secs", "3"],
            d.path().join(format!("{node}.log")),
        );
        assert!(a.wait_exit(Duration::from_secs(30)), "{}", a.log());
        let log = a.log();
        assert_eq!(log.contains("Connected to the broker"), accepted, "{log}");
        assert_eq!(log.contains("stay spooled"), !accepted, "{log}");
        if !accepted {
            assert!(
                log.contains("Broker unreachable"),
                "the refusal is reported: {log}"
            );
        }
    }
}

#[test]
fn two_hubs_share_a_fleet_with_none_lost_and_none_stored_twice() {
    if !have_mosquitto("two_hubs_share_a_fleet_with_none_lost_and_none_stored_twice") {
        return;
    }
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let hub = |id: &str| {
        let data = d.path().join(id);
        let h = Umbra::start(
            &[
                "hub",
                "--broker",
                &b.url(),
                "--fleet",
                "test",
                "--group",
                "hubs",
                "--id",
                id,
                "--data",
                data.to_str().unwrap(),
                "--table-secs",
                "0",
            ],
            d.path().join(format!("{id}.log")),
        );
        assert!(
            h.wait_log("Hub connected", Duration::from_secs(10)),
            "{}",
            h.log()
        );
        h
    };
    let hubs = [hub("hub-1"), hub("hub-2")];
    std::thread::sleep(Duration::from_millis(500));
    let mut expected = BTreeSet::new();
    let mut agents = Vec::new();
    for (i, rec) in ["batch", "compile", "compress", "http", "idle"]
        .iter()
        .enumerate()
    {
        let node = format!("n{i}");
        let cfg = agent_config(d.path(), &b.url(), &node, "summary_every_ms = 1000");
        let rec = fixture(&format!("{rec}.umbra"));
        for seq in 1..=expected_summaries(&cfg, &rec).len() as u64 {
            expected.insert((node.clone(), seq));
        }
        agents.push(replay_publish(
            &cfg,
            &rec,
            &["--as-fast-as-possible"],
            d.path().join(format!("{node}.log")),
        ));
    }
    for mut a in agents {
        assert!(a.wait_exit(Duration::from_secs(30)), "{}", a.log());
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut stored: Vec<BTreeSet<(String, u64)>> = Vec::new();
    for (i, h) in hubs.into_iter().enumerate() {
        let log = h.log.clone();
        assert!(h.stop(), "{}", read(&log));
        stored.push(
            parquet_rows(&d.path().join(format!("hub-{}", i + 1)))
                .into_iter()
                .map(|(n, s, _)| (n, s))
                .collect(),
        );
    }
    assert!(
        !stored[0].is_empty() && !stored[1].is_empty(),
        "both hubs took a share: {} and {}",
        stored[0].len(),
        stored[1].len()
    );
    assert!(stored[0].is_disjoint(&stored[1]), "a summary stored twice");
    let all: BTreeSet<(String, u64)> = stored[0].union(&stored[1]).cloned().collect();
    assert_eq!(all, expected, "summaries lost");
}
