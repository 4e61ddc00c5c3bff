//! The agent as a system service: `cargo xtask deb` builds a Debian package (cargo-deb)
//! with the hardened unit (`packaging/umbra.service`) and a dry-run config; `cargo xtask
//! install-service` installs the same files on this machine and starts the service.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    build,
    util::{self, output, run},
};

/// The cargo-deb release this project is packaged with.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs cargo-deb if it is missing (or another version).
pub fn cargo_deb() -> Result<()> {
    let have = output("cargo", &["deb", "--version"]).unwrap_or_default();
    if have.contains(CARGO_DEB_VERSION) {
        return Ok(());
    }
    util::step(&format!("cargo install cargo-deb {CARGO_DEB_VERSION}"));
    util::cargo(&[
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ])
}

/// Builds the package: the release binary, or the debug one with `dev` (quick, for the
/// tests of the package's contents). Returns the `.deb`'s path.
pub fn deb(dev: bool) -> Result<PathBuf> {
    build(!dev, None)?;
    pack(!dev)
}

/// Packages the binary already built (release, or the debug one), without building.
/// Returns the `.deb`'s path.
pub fn pack(release: bool) -> Result<PathBuf> {
    cargo_deb()?;
    let out = util::target_dir().join("debian");
    // Only the package built now is left, so its path is known.
    if out.is_dir() {
        for e in fs::read_dir(&out)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    let mut args = vec!["deb", "-p", "umbra", "--no-build"];
    if release {
        args.extend(["--profile", "release", "--no-strip"]);
    } else {
        // The debug binary is 440 MB: packed as it is, xz took a minute and a half;
        // stripped (a copy; the build is left as it is) and packed fast, 5 s.
        args.extend(["--profile", "dev", "--strip", "--fast"]);
    }
    util::cargo(&args)?;
    let deb = fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("cargo deb left no .deb in {}", out.display()))?;
    eprintln!("built {}", deb.display());
    Ok(deb)
}

/// Installs the agent as a service on this machine: the binary, the unit, the config (kept
/// if one is there), then enables and starts it in dry-run.
pub fn install_service() -> Result<()> {
    if !util::is_root() {
        bail!("install-service writes /usr/bin, /etc/systemd and /etc/umbra: run it as root");
    }
    build(true, None)?;
    let root = util::root();
    let bin = util::target_dir().join("release").join("umbra");
    copy(&bin, Path::new("/usr/bin/umbra"), 0o755)?;
    copy(
        &root.join("packaging/umbra.service"),
        Path::new("/etc/systemd/system/umbra.service"),
        0o644,
    )?;
    let cfg = Path::new("/etc/umbra/umbra.toml");
    if cfg.exists() {
        eprintln!("kept {}", cfg.display());
    } else {
        fs::create_dir_all("/etc/umbra")?;
        copy(&root.join("packaging/umbra.toml"), cfg, 0o644)?;
    }
    if !Path::new("/run/systemd/system").is_dir() {
        eprintln!(
            "systemd is not running here: the files are installed; on a systemd machine run\n  systemctl daemon-reload && systemctl enable --now umbra"
        );
        return Ok(());
    }
    run(Command::new("systemctl").arg("daemon-reload"))?;
    run(Command::new("systemctl").args(["enable", "--now", "umbra.service"]))?;
    run(Command::new("systemctl").args(["--no-pager", "status", "umbra.service"]))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    run(Command::new("install")
        .arg("-D")
        .arg("-m")
        .arg(format!("{mode:o}"))
        .arg(from)
        .arg(to))?;
    eprintln!("installed {}", to.display());
    Ok(())
}
