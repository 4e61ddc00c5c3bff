//! `umbra`: the command line. Parses, builds the config, calls the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use umbra::{
    config::Config,
    pipeline,
    trace::{CgroupId, Filter, Kind},
};

#[derive(Parser, Debug)]
#[command(
    name = "umbra",
    version,
    about = "Watches every process from inside the kernel"
)]
struct Cli {
    /// Config file (TOML); every key is optional.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log filter for stderr (tracing's env-filter syntax), e.g. `debug` or `umbra=trace`.
    #[arg(long, global = true, default_value = "info", env = "UMBRA_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: capture, and print the busiest processes each interval.
    Run {
        /// Sampling interval in ms (overrides capture.interval_ms).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<u64>,
        /// Processes shown per interval.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Live kernel events and per-process measurements, for kernel engineers.
    Trace {
        /// Only these processes (tgid or tid); repeatable.
        #[arg(long)]
        pid: Vec<u32>,
        /// Only processes with this comm (or executable name); repeatable.
        #[arg(long)]
        comm: Vec<String>,
        /// Only this cgroup: its id, or the path of its cgroup v2 directory.
        #[arg(long)]
        cgroup: Option<CgroupId>,
        /// What to show: exec, cpu, mem, io, net; repeatable or comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        kind: Vec<Kind>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
        /// Sampling interval in ms (overrides capture.interval_ms).
        #[arg(long)]
        interval_ms: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log);
    let mut cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("umbra: {e}");
            return ExitCode::from(2);
        }
    };
    let interval = match &cli.command {
        Command::Run { interval_ms, .. } | Command::Trace { interval_ms, .. } => *interval_ms,
    };
    if let Some(ms) = interval {
        cfg.capture.interval_ms = ms;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("umbra: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("umbra: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umbra: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let stdout = std::io::stdout().lock();
    match command {
        Command::Run { duration, top, .. } => {
            pipeline::run(
                &cfg,
                stdout,
                top,
                duration.map(Duration::from_secs),
                shutdown,
            )
            .await?
        }
        Command::Trace {
            pid,
            comm,
            cgroup,
            kind,
            duration,
            json,
            ..
        } => {
            let filter = Filter {
                pids: pid,
                comms: comm,
                cgroup,
                kinds: kind,
            };
            pipeline::trace(
                &cfg,
                stdout,
                filter,
                json,
                duration.map(Duration::from_secs),
                shutdown,
            )
            .await?
        }
    }
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
