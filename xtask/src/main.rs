//! `cargo xtask`: everything around the code. Each subcommand installs what it needs
//! first (idempotently, quietly when present), so a fresh machine needs only these:
//!
//! - `cargo xtask run`: build and start the agent on working defaults.
//! - `cargo xtask test`: rustfmt, clippy (userspace and kernel), unit and privileged tests.
//! - `cargo xtask install`: only the installation step.
//! - `cargo xtask build [--release] [--target aarch64]`: build the agent.
//! - `cargo xtask bench overhead`: the agent's cost on a scheduler-heavy benchmark;
//!   `cargo xtask bench ab`: a stepping load under static, VPA-like and Umbra limits.
//! - `cargo xtask vm-test [--kernel K]... [--arch A] [--filter T]...`: the privileged tests
//!   in QEMU guests on Debian's kernels and on arm64.
//! - `cargo xtask fuzz [TARGET]... [--seconds N]`: the fuzz targets, each for N seconds.
//! - `cargo xtask train [--search] [--from-hub DIR]`: train the models (models/) in a venv.
//! - `cargo xtask record-training [--only NAME,...]`: re-record and re-export the models'
//!   training and test data (root).
//! - `cargo xtask deb [--dev]`: the Debian package; `cargo xtask install-service`: the
//!   agent as a systemd service on this machine.

mod ab;
mod bench;
mod fuzz;
mod install;
mod models;
mod package;
mod placement;
mod util;
mod vm;

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
    /// The privileged tests in QEMU guests: Debian's 5.10, 6.1 and 6.12 kernels, arm64.
    VmTest(vm::Args),
    /// Train the models of models/ (Python venv from PyPI, pinned) and report held-out numbers.
    Train(models::TrainArgs),
    /// Re-record the models' training and test data on this machine and export it (root).
    RecordTraining(models::RecordArgs),
    /// Build the Debian package (target/debian/umbra_*.deb): the agent, its hardened
    /// systemd unit and a dry-run config; installing it starts the agent.
    Deb {
        /// From the debug build (quick; for tests), not the release one.
        #[arg(long)]
        dev: bool,
    },
    /// Install the agent as a systemd service here (binary, unit, config) and start it.
    InstallService,
    /// Whole-system benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
    /// The stepping load of `bench ab` (run by it).
    #[command(hide = true)]
    AbLoad(ab::LoadArgs),
    /// The fuzz targets (cargo-fuzz, nightly), each for a set time.
    Fuzz(fuzz::Args),
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
        Cmd::VmTest(args) => {
            install::all()?;
            vm::run(&args)
        }
        Cmd::Train(a) => models::train(&a),
        Cmd::RecordTraining(a) => models::record(&a),
        Cmd::Deb { dev } => {
            install::all()?;
            package::deb(dev).map(|_| ())
        }
        Cmd::InstallService => {
            install::all()?;
            package::install_service()
        }
        Cmd::AbLoad(a) => {
            ab::load(&a);
            Ok(())
        }
        Cmd::Bench { what } => {
            install::all()?;
            bench::run(what)
        }
        Cmd::Fuzz(args) => {
            install::all()?;
            fuzz::run_targets(&args)
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

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The privileged tests on this host: every integration test (real kernel, real broker)
/// on the default counters (the task iterator here) and the fork/exec storm.
fn host_privileged_tests() -> Result<()> {
    util::step("privileged tests (real kernel, real broker)");
    util::cargo(
        &[
            &["test"][..],
            WHOLE,
            &["--test", "*", "--", "--test-threads=1"],
        ]
        .concat(),
    )?;
    util::step("the fork/exec storm on the default counters");
    util::cargo(
        &[
            &["test"][..],
            WHOLE,
            &[
                &[
                    "--test",
                    "shadow",
                    "--",
                    "--ignored",
                    "--test-threads=1",
                    "--exact",
                ][..],
                STORM_TESTS,
            ]
            .concat(),
        ]
        .concat(),
    )
}

/// The capture tests again on the per-event hooks (kernels without the iterator). They
/// compare each interval with schedstat: run with no build beside them. This host's kernel
/// reports no switch away from its PID 1's threads (`sched/sched_switch`, tracefs and BPF
/// alike): a spinner those threads preempt is back on its CPU unseen, and its time comes
/// at its next reported switch-out — an interval 55–250 ms short and the next as much
/// over, most often with a build beside it (which keeps PID 1 busy). The hook counts such
/// switches (`switch_unreported`) and the spinner's test excuses an interval only around
/// them.
fn host_hooks_tests() -> Result<()> {
    util::step("capture tests on the per-event hooks (capture.counters = \"hooks\")");
    util::cargo_env(
        &[
            &["test"][..],
            WHOLE,
            &[
                "--test",
                "capture",
                "--test",
                "shadow",
                "--",
                "--test-threads=1",
            ],
        ]
        .concat(),
        &[("UMBRA_CAPTURE_COUNTERS", "hooks")],
    )
}

/// Ignored by default (on the per-event hooks the CPU sum is low, and the final counters
/// of a free are the iterator path's, see the tests): run on the host's default counters,
/// where they hold.
const STORM_TESTS: &[&str] = &[
    "a_fork_exec_storm_loses_nothing_uncounted_and_still_adds_up",
    "a_storm_past_every_buffer_keeps_its_cpu_time",
];

/// The package selection and features every build and test step of `test` uses.
const WHOLE: &[&str] = &["--workspace", "--exclude", "umbra-ebpf", "--all-features"];

fn test() -> Result<()> {
    if in_ci() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        // A clean clone builds once: incremental state would only take disk (~2 GB).
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    }
    install::all()?;
    install::tool_tests()?;
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
    // One build of everything the steps below run, with one feature resolution (the
    // whole workspace, all features, test targets included): each step selects the same
    // packages and features, so no step compiles a dependency again (a different package
    // selection resolves dependencies' features differently and rebuilt tract, parquet and
    // the agent, minutes each).
    util::step("build (every binary and test, all features)");
    util::cargo(&[&["build"][..], WHOLE, &["--bins", "--tests"]].concat())?;
    util::step("Debian package (of the debug build above, for the package tests)");
    package::pack(false)?;
    let vms = match vm::install() {
        Err(e) if !in_ci() => {
            eprintln!("skipped: VM tests (QEMU cannot be installed: {e:#})");
            false
        }
        installed => installed.map(|()| true)?,
    };
    let mut x86 = vm::Args::new(vm::Arch::X86_64, &[]);
    x86.hooks = vm::FALLBACK_ACCURACY
        .iter()
        .map(|f| f.to_string())
        .collect();
    let mut arm = vm::Args::new(vm::Arch::Aarch64, vm::ARM64_SMOKE);
    arm.smp = 2;
    std::thread::scope(|s| -> Result<()> {
        // Both guests' builds run at nice 19, one after the other, beside the host's tests
        // (the privileged ones mostly wait), and are done before any guest boots and before
        // the hooks' capture tests: a guest's tick-based /proc/stat, which the accuracy
        // tests compare against, loses ticks when its one QEMU thread shares a CPU with a
        // build (the hooks: see `host_hooks_tests`).
        let builds = vms.then(|| {
            s.spawn(|| -> Result<(vm::Prepared, vm::Prepared)> {
                Ok((vm::prepare(&x86)?, vm::prepare(&arm)?))
            })
        });
        util::step("unit tests");
        util::cargo(&[&["test"][..], WHOLE, &["--lib", "--bins"]].concat())?;
        util::cargo(&[&["test"][..], WHOLE, &["--doc"]].concat())?;
        models::pipeline_test(&util::target_dir().join("debug/umbra"))?;
        host_privileged_tests()?;
        let ready = match builds {
            Some(b) => {
                util::step("waiting for the guests' builds");
                Some(
                    b.join()
                        .map_err(|_| anyhow::anyhow!("the guests' build thread panicked"))??,
                )
            }
            None => None,
        };
        host_hooks_tests()?;
        let Some((x86_ready, arm_ready)) = ready else {
            return Ok(());
        };
        util::step("privileged tests in QEMU (Debian 5.10, 6.1 and 6.12, x86_64)");
        vm::run_prepared(&x86, x86_ready)?;
        util::step("capture smoke tests in QEMU (Debian 6.12, aarch64, 2 CPUs)");
        vm::run_prepared(&arm, arm_ready)
    })?;
    util::step("all tests passed");
    Ok(())
}
