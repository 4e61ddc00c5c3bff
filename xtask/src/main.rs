//! `cargo xtask`: everything around the code. Each subcommand installs what it needs
//! first (idempotently, quietly when present), so a fresh machine needs only these:
//!
//! - `cargo xtask run`: build and start the agent on working defaults.
//! - `cargo xtask test`: rustfmt, clippy (userspace and kernel), unit and privileged tests.
//! - `cargo xtask install`: only the installation step.
//! - `cargo xtask build [--release] [--target aarch64]`: build the agent.
//! - `cargo xtask bench overhead`: the agent's cost on a scheduler-heavy benchmark.

mod bench;
mod install;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, rustup components, bpf-linker, mounts.
    Install,
    /// Build the agent.
    Build {
        #[arg(long)]
        release: bool,
        /// Cross-build for another architecture (aarch64 or x86_64; static musl binary).
        #[arg(long)]
        target: Option<String>,
    },
    /// Build and run the agent (`umbra run` unless other arguments are given).
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `umbra`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole test suite, as CI runs it.
    Test,
    /// Whole-system benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    util::init_env();
    match cli.command {
        Cmd::Install => install::all(),
        Cmd::Build { release, target } => {
            install::all()?;
            build(release, target.as_deref())
        }
        Cmd::Run { release, args } => {
            install::all()?;
            build(release, None)?;
            let bin = util::target_dir()
                .join(if release { "release" } else { "debug" })
                .join("umbra");
            let args = if args.is_empty() {
                vec!["run".to_string()]
            } else {
                args
            };
            let _broker = if args.iter().any(|a| a.starts_with("--broker")) {
                None
            } else {
                util::local_broker()?
            };
            util::run_as_root(&bin, &args)
        }
        Cmd::Test => test(),
        Cmd::Bench { what } => {
            install::all()?;
            bench::run(what)
        }
    }
}

fn build(release: bool, target: Option<&str>) -> Result<()> {
    let mut args = vec!["build", "-p", "umbra"];
    if release {
        args.push("--release");
    }
    let triple;
    if let Some(t) = target {
        triple = install::musl_target(t)?;
        args.extend(["--target", triple.as_str()]);
    }
    util::cargo(&args)
}

fn test() -> Result<()> {
    install::all()?;
    util::step("rustfmt");
    util::cargo(&["+nightly", "fmt", "--all", "--", "--check"])?;
    util::step("clippy (userspace)");
    util::cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "umbra-ebpf",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    util::step("clippy (kernel programs)");
    util::cargo_in(
        "agent-ebpf",
        &[
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    util::step("build");
    // The fleet side too: the tests run `umbra hub`.
    util::cargo(&[
        "build",
        "-p",
        "umbra",
        "-p",
        "umbra-tests",
        "--features",
        "umbra/fleet",
        "--bins",
    ])?;
    util::step("unit tests");
    util::cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "umbra-ebpf",
        "--exclude",
        "umbra-tests",
        "--all-features",
    ])?;
    util::step("privileged tests (real kernel, real broker)");
    util::cargo(&["test", "-p", "umbra-tests", "--", "--test-threads=1"])?;
    util::step("all tests passed");
    Ok(())
}
