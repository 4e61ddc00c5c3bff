//! The `umbra` command line as users meet it: the real binary, real kernel.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use umbra_tests::*;

fn umbra() -> Command {
    let bin = workspace_bin("umbra");
    assert!(
        bin.exists(),
        "{} not built (cargo build -p umbra)",
        bin.display()
    );
    Command::new(bin)
}

#[test]
fn trace_exec_json_shows_a_true_run() {
    if !privileged("trace_exec_json_shows_a_true_run") {
        return;
    }
    let mut child = umbra()
        .args(["trace", "--kind", "exec", "--json", "--duration", "3"])
        .env("UMBRA_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Loading takes a while on a slow machine (an emulated guest: seconds): the execs
    // start once the agent says it is attached; its 3 s run from there.
    let stderr = child.stderr.take().unwrap();
    let (attached, rx) = mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Kernel capture attached") {
                let _ = attached.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "umbra trace never said it was attached:\n{}",
            logs.join().unwrap()
        );
    }
    for _ in 0..3 {
        Command::new("/bin/true").status().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = logs.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "umbra trace failed: {stderr}");
    let hit = stdout.lines().any(|l| {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        v["event"] == "exec" && v["filename"] == "/bin/true"
    });
    assert!(hit, "no exec line for /bin/true in:\n{stdout}");
}

#[test]
fn unknown_kind_is_a_usage_error() {
    let out = umbra().args(["trace", "--kind", "disk"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disk") && err.contains("exec, cpu, mem, io, net"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_config_value_is_named_and_exits_2() {
    let mut f = tempfile();
    writeln!(f.1, "[capture]\ninterval_ms = 0").unwrap();
    let out = umbra()
        .args(["--config", f.0.to_str().unwrap(), "run", "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("capture.interval_ms") && err.contains("between"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn unknown_config_key_is_named_and_exits_2() {
    let mut f = tempfile();
    writeln!(f.1, "[capture]\nintervall_ms = 5").unwrap();
    let out = umbra()
        .args([
            "--config",
            f.0.to_str().unwrap(),
            "trace",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("intervall_ms") && err.contains(f.0.to_str().unwrap()),
        "{err}"
    );
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("umbra-cli-{}-{}.toml", std::process::id(), rand()));
    let f = std::fs::File::create(&p).unwrap();
    (p, f)
}

fn rand() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}
