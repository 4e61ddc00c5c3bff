//! The agent's link to the fleet when things go wrong: a full disk under the spool, a flood
//! of bad commands, a broker whose ACL gives each node only its own topics, and a spool
//! left by the previous release. Each runs against a real mosquitto on a free loopback port.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use parquet::file::reader::{FileReader, SerializedFileReader};
use umbra::publish::SCHEMA;
use umbra_tests::{
    mqtt::{
        Broker, MOSQUITTO_PASSWD, Umbra, agent_config, expected_summaries, fixture, have_mosquitto,
        json_lines, replay_publish, sub, summary_files, wait_until,
    },
    privileged,
};

/// A hub with a persistent session (it gets what was published while it was away).
fn hub(broker: &Broker, dir: &Path) -> Umbra {
    let data = dir.join("hub");
    let h = Umbra::start(
        &[
            "hub",
            "--broker",
            &broker.url(),
            "--fleet",
            "test",
            "--data",
            data.to_str().unwrap(),
            "--id",
            "hub-r",
            "--table-secs",
            "0",
            "--flush-secs",
            "1",
        ],
        dir.join("hub.log"),
    );
    assert!(
        h.wait_log("Hub connected", Duration::from_secs(10)),
        "{}",
        h.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    h
}

/// `start_ms` of every summary row the hub stored for `node`, and the seqs they came with.
fn stored_periods(data: &Path, node: &str) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut periods = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    for p in summary_files(data) {
        let r = SerializedFileReader::new(fs::File::open(&p).unwrap()).unwrap();
        for row in r.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let mut n = String::new();
            let (mut start, mut seq) = (0u64, 0u64);
            for (name, field) in row.get_column_iter() {
                match name.as_str() {
                    "node" => n = field.to_string().trim_matches('"').to_string(),
                    "start_ms" => start = field.to_string().parse().unwrap(),
                    "seq" => seq = field.to_string().parse().unwrap(),
                    _ => {}
                }
            }
            if n == node {
                periods.insert(start);
                seqs.insert(seq);
            }
        }
    }
    (periods, seqs)
}

/// A tmpfs mounted for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Fills it to the last byte.
    fn fill(&self) {
        let mut f = fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0xa5u8; 4096];
        while f.write_all(&block).is_ok() {}
        // Partial blocks too: the disk is full to the byte.
        while f.write_all(&block[..1]).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_neither_stops_summaries_nor_fails_the_agent() {
    let name = "a_full_disk_neither_stops_summaries_nor_fails_the_agent";
    if !privileged(name) || !have_mosquitto(name) {
        return;
    }
    let mut b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let cfg = agent_config(
        d.path(),
        &b.url(),
        "full",
        "summary_every_ms = 1000\nstatus_every_ms = 2000\nmax_backoff_ms = 500",
    );
    // The state dir (`<dir>/full`) on a small tmpfs.
    let disk = Tmpfs::mount(&d.path().join("full"), "2m");
    let h = hub(&b, d.path());
    let statuses = d.path().join("status.jsonl");
    let _s = sub(
        &b.url(),
        &["--node", "full", "--kind", "status"],
        &statuses,
        d.path().join("sub.log"),
    );
    let recording = fixture("batch.umbra");
    let mut a = replay_publish(
        &cfg,
        &recording,
        &["--speed", "1", "--drain-secs", "20"],
        d.path().join("agent.log"),
    );
    assert!(
        a.wait_log("Connected to the broker", Duration::from_secs(20)),
        "{}",
        a.log()
    );
    // The broker goes away: summaries wait in the spool. Then the disk fills up, and the
    // broker comes back.
    std::thread::sleep(Duration::from_secs(2));
    b.stop();
    std::thread::sleep(Duration::from_secs(3));
    disk.fill();
    b.restart();
    assert!(
        a.wait_exit(Duration::from_secs(90)),
        "the agent must end its replay cleanly on a full disk: {}",
        a.log()
    );
    let log = a.log();
    assert!(
        log.contains("Spool cannot be written"),
        "the full disk was never hit: {log}"
    );
    // Every period's summary reached the hub: spooled before the disk filled, or sent
    // from memory after.
    std::thread::sleep(Duration::from_secs(2));
    assert!(h.stop());
    let want: BTreeSet<u64> = expected_summaries(&cfg, &recording)
        .iter()
        .map(|s| s.start_ms)
        .collect();
    let (got, seqs) = stored_periods(&d.path().join("hub"), "full");
    assert_eq!(got, want, "periods missing at the hub");
    assert!(seqs.contains(&0), "nothing was sent unspooled: {seqs:?}");
    assert!(seqs.iter().any(|&s| s > 0), "nothing was spooled: {seqs:?}");
    // Status said so while it lasted.
    let said = json_lines(&statuses).iter().any(|l| {
        l["envelope"]["body"]["problems"]
            .as_array()
            .is_some_and(|p| {
                p.iter()
                    .any(|m| m.as_str().unwrap_or("").contains("No space"))
            })
    });
    assert!(
        said,
        "status never reported the full disk: {:#?}",
        json_lines(&statuses)
    );
}

#[test]
fn a_flood_of_bad_commands_pushes_no_summary_out_of_the_spool() {
    let name = "a_flood_of_bad_commands_pushes_no_summary_out_of_the_spool";
    if !have_mosquitto(name) {
        return;
    }
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    // A spool of 64 KiB: 20,000 replies spooled would push everything else out.
    let cfg = agent_config(
        d.path(),
        &b.url(),
        "flood",
        "summary_every_ms = 1000\nspool_max_bytes = 65536\nspool_segment_bytes = 16384",
    );
    let h = hub(&b, d.path());
    let replies = d.path().join("replies.jsonl");
    let _r = sub(
        &b.url(),
        &["--node", "flood", "--kind", "cmd/result"],
        &replies,
        d.path().join("sub.log"),
    );
    let recording = fixture("batch.umbra");
    let started = std::time::Instant::now();
    let mut a = replay_publish(
        &cfg,
        &recording,
        &["--speed", "1", "--drain-secs", "20"],
        d.path().join("agent.log"),
    );
    assert!(
        a.wait_log("Connected to the broker", Duration::from_secs(20)),
        "{}",
        a.log()
    );
    // 20,000 malformed commands as fast as the broker takes them.
    let mut p = Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port.to_string(),
            "-q",
            "1",
            "-l",
        ])
        .args(["-t", "umbra/v1/test/flood/cmd/set-mode"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = p.stdin.take().unwrap();
        for i in 0..20_000 {
            writeln!(stdin, "{{not json {i}").unwrap();
        }
    }
    assert!(p.wait().unwrap().success());
    assert!(a.wait_exit(Duration::from_secs(90)), "agent: {}", a.log());
    let ran_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    assert!(h.stop());
    let want: BTreeSet<u64> = expected_summaries(&cfg, &recording)
        .iter()
        .map(|s| s.start_ms)
        .collect();
    let (got, _) = stored_periods(&d.path().join("hub"), "flood");
    assert_eq!(got, want, "summaries lost to the flood");
    // Some replies, far from all: rate-limited (2 a second after a burst of 32), never
    // spooled; the refusals of a full command queue ("agent busy") too, by a bucket of
    // their own.
    let n = json_lines(&replies).len();
    let most = 2.0 * (32.0 + 2.0 * ran_s);
    assert!(
        n > 0 && n as f64 <= most,
        "{n} replies to 20,000 bad commands in {ran_s:.0} s (at most {most:.0})"
    );
}

/// Runs `mosquitto_sub` as `user` on `topic` for `secs`; the messages it got.
fn listen(b: &Broker, user: &str, topic: &str, secs: u32) -> std::process::Child {
    Command::new("/usr/bin/mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port.to_string()])
        .args(["-u", user, "-P", &format!("{user}-pw"), "-t", topic, "-v"])
        .args(["-W", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn publish_as(b: &Broker, user: &str, topic: &str, msg: &str) {
    let st = Command::new("/usr/bin/mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &b.port.to_string(), "-q", "1"])
        .args([
            "-u",
            user,
            "-P",
            &format!("{user}-pw"),
            "-t",
            topic,
            "-m",
            msg,
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

fn heard(c: std::process::Child) -> String {
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_documented_acl_gives_each_node_only_its_own_topics() {
    let name = "the_documented_acl_gives_each_node_only_its_own_topics";
    if !have_mosquitto(name) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let passwd = d.path().join("passwd");
    for (i, user) in ["edge-1", "edge-2", "hub"].iter().enumerate() {
        let mut c = Command::new(MOSQUITTO_PASSWD);
        if i == 0 {
            c.arg("-c");
        }
        let st = c
            .args(["-b"])
            .arg(&passwd)
            .args([user.to_string(), format!("{user}-pw")])
            .status()
            .unwrap();
        assert!(st.success());
    }
    // The ACL exactly as docs/mqtt.md shows it.
    let acl = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("mosquitto.acl");
    let b = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}",
        passwd.display(),
        acl.display()
    ));
    let pw = d.path().join("edge-1.pw");
    fs::write(&pw, "edge-1-pw\n").unwrap();
    let cfg = agent_config(
        d.path(),
        &b.url(),
        "edge-1",
        &format!(
            "summary_every_ms = 1000\nusername = \"edge-1\"\npassword_file = \"{}\"",
            pw.display()
        ),
    );
    let everything = listen(&b, "hub", "umbra/v1/#", 14);
    let other_cmds_as_edge1 = listen(&b, "edge-1", "umbra/v1/test/edge-2/cmd/#", 12);
    let own_cmds_as_edge2 = listen(&b, "edge-2", "umbra/v1/test/edge-2/cmd/#", 12);
    std::thread::sleep(Duration::from_millis(500));
    let mut a = replay_publish(
        &cfg,
        &fixture("idle.umbra"),
        &["--speed", "1"],
        d.path().join("agent.log"),
    );
    assert!(
        a.wait_log("Connected to the broker", Duration::from_secs(20)),
        "{}",
        a.log()
    );
    // The agent obeys its own commands (status needs no signature) and may answer.
    publish_as(
        &b,
        "hub",
        "umbra/v1/test/edge-1/cmd/status",
        "{\"id\":\"acl\"}",
    );
    // edge-1 tries to speak for edge-2 and to impersonate the fleet.
    publish_as(&b, "edge-1", "umbra/v1/test/edge-2/summary", "forged");
    publish_as(&b, "edge-1", "umbra/v1/test/edge-2/cmd/set-mode", "forged");
    publish_as(&b, "edge-1", "umbra/v1/test/model", "forged");
    // The hub commands edge-2.
    publish_as(&b, "hub", "umbra/v1/test/edge-2/cmd/status", "for edge-2");
    assert!(a.wait_exit(Duration::from_secs(60)), "{}", a.log());
    let all = heard(everything);
    assert!(all.contains("umbra/v1/test/edge-1/summary"), "{all}");
    assert!(all.contains("umbra/v1/test/edge-1/status"), "{all}");
    assert!(
        all.contains("umbra/v1/test/edge-1/cmd/result"),
        "no reply: {all}"
    );
    assert!(
        !all.contains("forged"),
        "a forged message got through: {all}"
    );
    assert!(all.contains("for edge-2"), "{all}");
    let sneaked = heard(other_cmds_as_edge1);
    assert!(
        sneaked.is_empty(),
        "edge-1 read edge-2's commands: {sneaked}"
    );
    let own = heard(own_cmds_as_edge2);
    assert!(
        own.contains("for edge-2") && !own.contains("forged"),
        "{own}"
    );
}

#[test]
fn a_spool_of_the_previous_release_is_sent_after_an_upgrade() {
    let name = "a_spool_of_the_previous_release_is_sent_after_an_upgrade";
    if !have_mosquitto(name) {
        return;
    }
    // Written with schemas 1 (umbra 0.1.0), 2 and 3: see each fixture's README. Schema
    // 3's summaries carry forecasts; they arrive with them.
    for (fixture_dir, node, forecasts) in [
        ("spool-v1", "v1node", false),
        ("spool-v2", "v2node", false),
        ("spool-v3", "v3node", true),
    ] {
        sends_an_old_spool(fixture_dir, node, forecasts);
    }
}

fn sends_an_old_spool(fixture_dir: &str, node: &str, forecasts: bool) {
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join(node).join("spool");
    fs::create_dir_all(&spool).unwrap();
    let src = fixture(fixture_dir);
    let mut old = 0;
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_str().unwrap().to_string();
        if n.ends_with(".seg") || n == "cursor" {
            fs::copy(&p, spool.join(&n)).unwrap();
            old += 1;
        }
    }
    assert!(old >= 2, "fixture spool missing");
    let (s, rec) = umbra::publish::spool::Spool::open(
        &spool,
        umbra::config::Config::default().publish.spool_limits(),
    )
    .unwrap();
    let pending = rec.pending;
    drop(s);
    assert!(pending >= 5, "the fixture holds {pending} messages");
    let cfg = agent_config(d.path(), &b.url(), node, "summary_every_ms = 1000");
    let got = d.path().join("got.jsonl");
    let _s = sub(&b.url(), &["--node", node], &got, d.path().join("sub.log"));
    let mut a = replay_publish(
        &cfg,
        &fixture("idle.umbra"),
        &["--as-fast-as-possible", "--drain-secs", "20"],
        d.path().join("agent.log"),
    );
    assert!(a.wait_exit(Duration::from_secs(60)), "{}", a.log());
    assert!(
        wait_until(Duration::from_secs(10), || {
            let seqs: BTreeSet<u64> = json_lines(&got)
                .iter()
                .filter(|l| l["envelope"]["historical"] == true)
                .filter_map(|l| l["envelope"]["seq"].as_u64())
                .collect();
            (1..=pending).all(|s| seqs.contains(&s))
        }),
        "old messages missing: {:#?}\n{}",
        json_lines(&got),
        a.log()
    );
    // They decode as summaries and status of this schema, with their old values.
    let lines = json_lines(&got);
    let first = lines.iter().find(|l| l["envelope"]["seq"] == 1).unwrap();
    assert_eq!(first["envelope"]["schema"], SCHEMA, "{first}");
    assert!(
        lines
            .iter()
            .filter(|l| l["envelope"]["historical"] == true)
            .any(|l| l["envelope"]["kind"] == "summary"
                && l["envelope"]["body"]["workloads"]
                    .as_array()
                    .is_some_and(|w| !w.is_empty())),
        "{lines:#?}"
    );
    let forecast = |l: &&serde_json::Value| {
        l["envelope"]["historical"] == true
            && l["envelope"]["body"]["workloads"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["forecast"]["cpu_cores"].is_array()))
    };
    assert_eq!(lines.iter().any(|l| forecast(&l)), forecasts, "{lines:#?}");
}
