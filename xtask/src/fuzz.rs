//! `cargo xtask fuzz`: the fuzz targets (fuzz/, cargo-fuzz on nightly), each for a set
//! time, installing cargo-fuzz when missing.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args as ClapArgs;

use crate::util::{self, output, run};

/// Every target under fuzz/fuzz_targets, in the order `--all` runs them.
pub const TARGETS: &[&str] = &[
    "record_decoder",
    "mqtt_command",
    "model_bundle",
    "spool_segment",
    "config",
    "profile_decoder",
    "earned_decoder",
    "mqtt_message",
];

#[derive(ClapArgs)]
pub struct Args {
    /// Targets to run (default: all of them, one after another).
    targets: Vec<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

pub fn run_targets(args: &Args) -> Result<()> {
    cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("unknown fuzz target {t:?}: one of {}", TARGETS.join(", "));
    }
    for t in targets {
        util::step(&format!("fuzz {t} for {} s", args.seconds));
        let corpus = util::root().join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={}", args.seconds)])
            .current_dir(util::root().join("fuzz")))?;
    }
    Ok(())
}

fn cargo_fuzz() -> Result<()> {
    if output("cargo", &["fuzz", "--version"]).is_some() {
        return Ok(());
    }
    util::step("cargo install cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}
