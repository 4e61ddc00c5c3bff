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

/// Two agents on one state directory would cut each other's spool records as torn and
/// undo each other's allocations: the second is refused, naming the directory and the
/// first one's pid, before it touches anything.
#[test]
fn a_second_agent_on_the_same_state_directory_is_refused() {
    if !privileged("a_second_agent_on_the_same_state_directory_is_refused") {
        return;
    }
    let state = ::tempfile::tempdir().unwrap();
    let mut f = tempfile();
    writeln!(
        f.1,
        "[publish]\nenabled = false\nstate_dir = \"{}\"",
        state.path().display()
    )
    .unwrap();
    let config = f.0.to_str().unwrap().to_string();
    let mut first = umbra()
        .args(["--config", &config, "run", "--duration", "60", "--top", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Holding the directory once its pid is in the lock file.
    let lock = state.path().join("agent.lock");
    let mine = first.id().to_string();
    let held = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&lock).is_ok_and(|s| s.trim() == mine)
    });
    let second = umbra()
        .args(["--config", &config, "run", "--duration", "1", "--top", "0"])
        .output()
        .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let ended = first.wait().unwrap();
    assert!(
        held,
        "the first agent never wrote its pid to {}",
        lock.display()
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second ran: {err}");
    assert!(
        err.contains("another umbra agent")
            && err.contains(&format!("pid {mine}"))
            && err.contains(&state.path().display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(ended.success(), "the first agent: {ended}");
}
