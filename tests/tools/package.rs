//! The Debian package (`cargo xtask deb`, built before the tests by `cargo xtask test`):
//! its files, its control data, that installing it enables and starts the unit, the unit's
//! hardening, and `systemd-analyze verify` on the unit as packaged.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use umbra_tests::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package under `target/debian/`, if one was built.
fn deb() -> Option<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("debian");
    let found = std::fs::read_dir(&dir).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "no .deb in {}: cargo xtask test builds it first",
            dir.display()
        );
        eprintln!(
            "skipped: no .deb in {} (run `cargo xtask deb --dev`)",
            dir.display()
        );
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn unit_value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_package_installs_the_agent_its_unit_and_a_dry_run_config() {
    let Some(deb) = deb() else { return };
    let files = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for want in [
        "./usr/bin/umbra",
        "/lib/systemd/system/umbra.service",
        "./etc/umbra/umbra.toml",
        "./usr/share/doc/umbra/README.md",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(want)),
            "{want} missing:\n{files}"
        );
    }
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: umbra"), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");

    let x = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()));
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(x.path().join("DEBIAN")));
    // Installing enables and starts the service; the config stays the admin's.
    let postinst = std::fs::read_to_string(x.path().join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");
    assert!(
        postinst.contains("enable") && postinst.contains("umbra.service"),
        "{postinst}"
    );
    assert!(postinst.contains("start"), "{postinst}");
    let conffiles = std::fs::read_to_string(x.path().join("DEBIAN/conffiles")).unwrap();
    assert!(conffiles.contains("/etc/umbra/umbra.toml"));

    // The packaged binary runs, and takes the packaged config: publishing off, dry-run.
    let bin = x.path().join("usr/bin/umbra");
    let cfg = x.path().join("etc/umbra/umbra.toml");
    let v = run(Command::new(&bin).arg("--version"));
    assert!(v.starts_with("umbra "), "{v}");
    let config = std::fs::read_to_string(&cfg).unwrap();
    assert!(config.contains("enabled = false"), "{config}");
    // A replay reads the config: an invalid one would fail here.
    let o = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["replay", "--as-fast-as-possible"])
        .arg(root().join("tests/fixtures/idle.umbra"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let unit = [
        "usr/lib/systemd/system/umbra.service",
        "lib/systemd/system/umbra.service",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(x.path().join(p)).ok())
    .expect("the unit");
    verify(&unit, x.path());
}

/// The unit's hardening, and `systemd-analyze verify` with the packaged binary.
fn verify(unit: &str, root: &Path) {
    let exec = unit_value(unit, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(exec[0].starts_with("/usr/bin/umbra --config /etc/umbra/umbra.toml run"));
    assert_eq!(unit_value(unit, "Delegate"), ["yes"]);
    assert_eq!(unit_value(unit, "ProtectSystem"), ["strict"]);
    assert_eq!(unit_value(unit, "NoNewPrivileges"), ["yes"]);
    let caps: Vec<&str> = unit_value(unit, "CapabilityBoundingSet")[0]
        .split_whitespace()
        .collect();
    assert!(
        caps.contains(&"CAP_BPF") && caps.contains(&"CAP_PERFMON"),
        "{caps:?}"
    );
    for never in [
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_NET_ADMIN",
        "CAP_SETUID",
    ] {
        assert!(!caps.contains(&never), "{never} in {caps:?}");
    }
    // Writable cgroups: neither of the settings that make /sys/fs/cgroup read-only.
    assert!(unit_value(unit, "ProtectControlGroups").is_empty());
    assert!(unit_value(unit, "ProtectKernelTunables").is_empty());

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!in_ci(), "systemd-analyze is missing");
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // The unit as packaged, its ExecStart pointed at the packaged binary.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("umbra.service");
    let bin = root.join("usr/bin/umbra");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/umbra", &bin.display().to_string()),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {said}");
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("umbra.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {said}");
    // And systemd's own exposure score (0 safest, 10 least safe).
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&local)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for umbra.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in {text}"));
    assert!(score <= 5.0, "exposure {score}:\n{text}");
}
