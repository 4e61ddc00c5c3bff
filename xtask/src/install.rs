//! Installs what building and testing Umbra needs, idempotently: each check is cheap and
//! silent when the thing is already there.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::util::{self, output, run};

/// Debian packages: LLVM 22 for bpf-linker (nightly rustc uses LLVM 22 too); zstd for the
/// shipped recordings (`models/data`), which tests unpack.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "clang-22",
    "libzstd-dev",
    "zstd",
];
/// The MQTT broker and its command-line clients, for `cargo xtask run` (a local broker
/// when none is given) and the MQTT tests.
const BROKER_PACKAGES: &[&str] = &["mosquitto", "mosquitto-clients"];
/// The bpf-linker release built against Debian's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn all() -> Result<()> {
    apt(PACKAGES)?;
    apt_with(BROKER_PACKAGES, &["--no-install-recommends"])?;
    rustup()?;
    bpf_linker()?;
    mounts()?;
    Ok(())
}

/// Installs the Debian packages of `pkgs` that are missing (one `apt-get update` first).
pub fn apt(pkgs: &[&str]) -> Result<()> {
    apt_with(pkgs, &[])
}

pub fn apt_with(pkgs: &[&str], extra: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages {}; run `sudo apt-get install -y {}` or run xtask as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    util::step(&format!("apt-get install {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(extra)
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${db:Status-Status}", pkg])
        .is_some_and(|s| s.trim() == "installed")
}

fn rustup() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        util::step("rustup toolchain install nightly");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let have = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    for c in ["rust-src", "rustfmt", "clippy"] {
        if !have.lines().any(|l| l.starts_with(c)) {
            util::step(&format!("rustup component add {c} --toolchain nightly"));
            run(Command::new("rustup").args(["component", "add", c, "--toolchain", "nightly"]))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let v = output("bpf-linker", &["--version"]).unwrap_or_default();
    if v.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    util::step(&format!(
        "cargo install bpf-linker {BPF_LINKER_VERSION} (against LLVM 22)"
    ));
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

/// tracefs (to attach tracepoints) and bpffs.
fn mounts() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = |fs: &str, at: &str| {
        mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(at) && l.split_whitespace().nth(2) == Some(fs)
        })
    };
    for (fs, at) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if mounted(fs, at) || !Path::new(at).is_dir() {
            continue;
        }
        if !util::is_root() {
            eprintln!("note: {fs} is not mounted at {at}; privileged tests will skip (needs root)");
            continue;
        }
        util::step(&format!("mount -t {fs} {fs} {at}"));
        run(Command::new("mount").args(["-t", fs, fs, at]))?;
    }
    Ok(())
}

/// The musl triple for `arch`, with its rustup target installed.
pub fn musl_target(arch: &str) -> Result<String> {
    let triple = match arch {
        "aarch64" | "arm64" | "aarch64-unknown-linux-musl" => "aarch64-unknown-linux-musl",
        "x86_64" | "amd64" | "x86_64-unknown-linux-musl" => "x86_64-unknown-linux-musl",
        other => bail!("unknown target {other:?}: use aarch64 or x86_64"),
    };
    let have = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !have.lines().any(|l| l.trim() == triple) {
        util::step(&format!("rustup target add {triple}"));
        run(Command::new("rustup").args(["target", "add", triple]))?;
    }
    Ok(triple.to_string())
}

/// What the tests of the tools need: tmux (drives `umbra top` in a pseudo-terminal),
/// headless Chromium (opens `umbra report`), dpkg-dev and systemd (`cargo xtask deb`'s
/// dependencies and `systemd-analyze verify`), and promtool (checks the metrics).
const TOOL_TEST_PACKAGES: &[&str] = &["tmux", "chromium", "dpkg-dev", "systemd"];

pub fn tool_tests() -> Result<()> {
    apt_with(TOOL_TEST_PACKAGES, &["--no-install-recommends"])?;
    promtool().map(|_| ())
}

/// `promtool` from Debian's `prometheus` package, extracted under `target/tools/` rather
/// than installed: installing the package would start a Prometheus server. The tests find
/// it there (or on PATH).
pub fn promtool() -> Result<std::path::PathBuf> {
    let dir = util::target_dir().join("tools/prometheus");
    let bin = dir.join("usr/bin/promtool");
    if bin.is_file() {
        return Ok(bin);
    }
    util::step("apt-get download prometheus (for promtool)");
    let tmp = util::target_dir().join("tools/download");
    std::fs::create_dir_all(&tmp)?;
    let download = || {
        run(Command::new("apt-get")
            .args(["download", "-qq", "prometheus"])
            .current_dir(&tmp))
    };
    if download().is_err() {
        // No package lists yet.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        download()?;
    }
    let deb = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("prometheus_"))
        })
        .ok_or_else(|| anyhow::anyhow!("apt-get download prometheus left no package"))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !bin.is_file() {
        bail!("{} holds no usr/bin/promtool", deb.display());
    }
    Ok(bin)
}
