//! `umbra`: the command line. Parses, builds the config, calls the library.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use umbra::{
    config::Config,
    export, pipeline,
    record::Pace,
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
    /// Record what capture produces (samples and lifecycle events) to a file.
    Record {
        /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<u64>,
        /// The recording to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Sampling interval in ms (overrides capture.interval_ms).
        #[arg(long)]
        interval_ms: Option<u64>,
    },
    /// Replay a recording through aggregate and print shadow data points (no root needed).
    Replay {
        file: PathBuf,
        /// Replay N times faster than recorded (default 1).
        #[arg(long, conflicts_with = "as_fast_as_possible")]
        speed: Option<f64>,
        /// No waiting between intervals.
        #[arg(long)]
        as_fast_as_possible: bool,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Export a recording's shadow data points for training and for people.
    Export {
        file: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
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
        Command::Run { interval_ms, .. }
        | Command::Trace { interval_ms, .. }
        | Command::Record { interval_ms, .. } => *interval_ms,
        Command::Replay { .. } | Command::Export { .. } => None,
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
        Command::Record {
            duration, output, ..
        } => {
            let st = pipeline::record(&cfg, &output, duration.map(Duration::from_secs), shutdown)
                .await?;
            eprintln!(
                "umbra: recorded {} intervals and {} events to {}",
                st.ticks,
                st.events,
                output.display()
            );
        }
        Command::Replay {
            file,
            speed,
            as_fast_as_possible,
            json,
        } => {
            let pace = if as_fast_as_possible {
                Pace::AsFastAsPossible
            } else {
                Pace::Speed(speed.unwrap_or(1.0))
            };
            let mut out = stdout;
            pipeline::replay_windows(&cfg, &file, pace, |w| {
                pipeline::print_window(&mut out, w, json)
            })
            .await?;
        }
        Command::Export {
            file,
            format,
            output,
        } => {
            let f = std::fs::File::create(&output)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", output.display()))?;
            let mut out = std::io::BufWriter::new(f);
            let mut csv_header = matches!(format, ExportFormat::Csv);
            let n = pipeline::replay_windows(&cfg, &file, Pace::AsFastAsPossible, |w| {
                for p in &w.points {
                    match format {
                        ExportFormat::Jsonl => {
                            serde_json::to_writer(&mut out, p)?;
                            writeln!(out)?;
                        }
                        ExportFormat::Csv => {
                            if std::mem::take(&mut csv_header) {
                                writeln!(out, "{}", export::CSV_HEADER)?;
                            }
                            writeln!(out, "{}", export::csv_row(p))?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            out.flush()?;
            eprintln!("umbra: exported {n} intervals to {}", output.display());
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
