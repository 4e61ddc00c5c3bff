//! `umbra top --replay` in a real pseudo-terminal (tmux), driven by keys as a person
//! would: the screen is read back after each key.
#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use umbra_tests::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.umbra"))
}

struct Tmux {
    session: String,
}

impl Tmux {
    fn tmux(&self, args: &[&str]) -> String {
        let o = Command::new("tmux").args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", &self.session, k]);
        }
    }

    /// Waits until the screen shows `what`.
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < deadline, "never showed {what:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.session])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .output();
    }
}

#[test]
fn top_over_a_recording_sorts_filters_and_quits_by_keys() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            !in_ci(),
            "tmux is missing (cargo xtask install puts it there)"
        );
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let cmd = format!(
        "{} top --replay {} --speed 4; echo $? > {}",
        workspace_bin("umbra").display(),
        fixture("compile").display(),
        status.display()
    );
    let t = Tmux {
        session: format!("umbra-top-{}", std::process::id()),
    };
    let o = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "180",
            "-y",
            "40",
        ])
        .arg(&cmd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let s = t.wait_for("sorted by cpu");
    assert!(s.contains("umbra top"), "{s}");
    // Windows arrive as the recording plays.
    t.wait_for("window 3");

    t.keys(&["m"]);
    let s = t.wait_for("sorted by memory");
    assert!(s.contains("RSS▼"), "{s}");

    // Filter: only rows whose name holds "cc" (the compiler's processes).
    t.keys(&["/", "cc", "Enter"]);
    let s = t.wait_for("filter \"cc\"");
    let rows: Vec<&str> = s
        .lines()
        .skip_while(|l| !l.starts_with("NAME"))
        .skip(1)
        .take_while(|l| !l.starts_with('─'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!rows.is_empty(), "{s}");
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().next().unwrap().contains("cc")),
        "{s}"
    );

    t.keys(&["space"]);
    t.wait_for("PAUSED");
    t.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!t.alive(), "q did not quit");
    assert_eq!(std::fs::read_to_string(&status).unwrap().trim(), "0");
}
