//! cgroup v2 as the allocate stage will use it: a group under the agent's own subtree
//! (`umbra.test/…` in the cgroup2 mount) with the cpu, memory and io controllers, limits
//! written and read back, a process placed in it, and its pressure and events read.
//!
//! A kernel (or host layout) without these controllers is a fact of the machine, not a
//! privilege problem: the test skips with the reason, even under CI — except in a
//! `cargo xtask vm-test` guest, whose kernels have them, where it must run.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    path::{Path, PathBuf},
};

use umbra::capture::cgroup2_root;
use umbra_tests::*;

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "io"];
const MIB: u64 = 1 << 20;

/// Skips with `why`, or fails where the machine is known to offer the feature.
fn unavailable(test: &str, why: &str) {
    assert!(!in_vm(), "{test}: {why}, and a vm-test guest must have it");
    eprintln!("skipped: {test}: {why}");
}

/// Removes the agent's test subtree, deepest first, whatever happened.
struct Subtree(PathBuf);

impl Drop for Subtree {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.0) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn write(p: &Path, v: &str) {
    fs::write(p, v).unwrap_or_else(|e| panic!("write {v:?} to {}: {e}", p.display()));
}

/// `key value` lines (cpu.stat, memory.events) as a lookup.
fn flat_keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
        .trim()
        .parse()
        .unwrap()
}

/// `total=` of the `some` line of a pressure file, µs.
fn pressure_some_total(p: &Path) -> u64 {
    let text = read(p);
    let some = text
        .lines()
        .find(|l| l.starts_with("some "))
        .unwrap_or_else(|| panic!("no `some` line in {}: {text:?}", p.display()));
    assert!(some.contains("avg10="), "{}: {some}", p.display());
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .unwrap_or_else(|| panic!("no total in {}: {some}", p.display()))
        .parse()
        .unwrap()
}

#[test]
fn a_group_under_the_agent_subtree_takes_limits_and_reports_pressure() {
    const TEST: &str = "a_group_under_the_agent_subtree_takes_limits_and_reports_pressure";
    if !privileged(TEST) {
        return;
    }
    let Some(root) = cgroup2_root() else {
        return unavailable(TEST, "no cgroup2 mount in /proc/mounts");
    };
    let available = read(&root.join("cgroup.controllers"));
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return unavailable(
            TEST,
            &format!(
                "cgroup2 at {} has no {} controller(s) (it offers {available:?}); \
                 on a hybrid host the v1 hierarchies own them",
                root.display(),
                missing.join("/")
            ),
        );
    }
    let enable = "+cpu +memory +io";
    if let Err(e) = fs::write(root.join("cgroup.subtree_control"), enable) {
        return unavailable(
            TEST,
            &format!(
                "cannot enable {enable} in {}/cgroup.subtree_control: {e}",
                root.display()
            ),
        );
    }
    let top = root.join("umbra.test");
    let _cleanup = Subtree(top.clone());
    if !top.exists() {
        fs::create_dir(&top).unwrap();
    }
    write(&top.join("cgroup.subtree_control"), enable);
    let grp = top.join(format!("smoke-{}", std::process::id()));
    fs::create_dir(&grp).unwrap();
    let have = read(&grp.join("cgroup.controllers"));
    for c in CONTROLLERS {
        assert!(
            have.split_whitespace().any(|h| h == c),
            "{c} not delegated to {}: {have:?}",
            grp.display()
        );
    }
    for f in ["io.stat", "cpu.pressure", "memory.pressure", "io.pressure"] {
        assert!(grp.join(f).exists(), "{} missing", grp.join(f).display());
    }

    // Limits: 20% of one CPU, an 8 MiB high-water mark.
    write(&grp.join("cpu.max"), "20000 100000");
    assert_eq!(read(&grp.join("cpu.max")), "20000 100000");
    let high = 8 * MIB;
    write(&grp.join("memory.high"), &high.to_string());
    assert_eq!(read(&grp.join("memory.high")), high.to_string());

    // A spinner placed in the group is throttled by cpu.max.
    let mut spin = Workload::start(&["spin", "100"]);
    write(&grp.join("cgroup.procs"), &spin.pid().to_string());
    let name = grp.strip_prefix(&root).unwrap().display().to_string();
    let own = read(Path::new(&format!("/proc/{}/cgroup", spin.pid())));
    assert!(
        own.lines().any(|l| l == format!("0::/{name}")),
        "process {} is not in {name}: {own:?}",
        spin.pid()
    );
    // The group's usage and the spinner's own CPU over the same window: from just before
    // it starts spinning to just after it is done (it waits, using nothing, at each end;
    // what the move into the group cost is left out of both).
    let before = schedstat_ns(spin.pid());
    let usage_before = flat_keyed(&read(&grp.join("cpu.stat")), "usage_usec");
    spin.go();
    spin.wait_done();
    let used = schedstat_ns(spin.pid()) - before;
    let stat = read(&grp.join("cpu.stat"));
    eprintln!(
        "cpu.stat of {name}: {}; the spinner used {used} ns there",
        stat.replace('\n', ", ")
    );
    let usage = (flat_keyed(&stat, "usage_usec") - usage_before) * 1000;
    assert!(
        rel_err(usage as f64, used as f64) <= 0.05,
        "the group's usage {usage} ns vs its only process's {used} ns: {stat}"
    );
    assert!(
        flat_keyed(&stat, "nr_throttled") > 0,
        "100 ms of CPU under a 20% quota was never throttled: {stat}"
    );
    spin.finish();
    let cpu_some = pressure_some_total(&grp.join("cpu.pressure"));

    // Page cache beyond memory.high is reclaimed: counted in memory.events, and the
    // reclaim shows as memory pressure. (File pages, not anonymous memory: without swap,
    // anonymous memory over the mark is only throttled, for seconds.)
    let file = disk_dir().join(format!("cgroup-v2-{}", std::process::id()));
    let writer = Workload::start(&[
        "io",
        file.to_str().unwrap(),
        &(4 * high).to_string(),
        "plain",
    ]);
    write(&grp.join("cgroup.procs"), &writer.pid().to_string());
    writer.go();
    writer.wait();
    let _ = fs::remove_file(&file);
    let events = read(&grp.join("memory.events"));
    let mem_some = pressure_some_total(&grp.join("memory.pressure"));
    eprintln!(
        "memory.events of {name}: {}; pressure some total: cpu {cpu_some} µs, memory \
         {mem_some} µs",
        events.replace('\n', ", ")
    );
    assert!(
        flat_keyed(&events, "high") > 0,
        "{} MiB written under a {} MiB memory.high: {events}",
        4 * high / MIB,
        high / MIB
    );
    assert!(
        mem_some > 0,
        "reclaim above memory.high stalled nobody (memory.pressure some total is 0)"
    );
    fs::remove_dir(&grp).unwrap_or_else(|e| panic!("rmdir {}: {e}", grp.display()));
}
