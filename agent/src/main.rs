//! `umbra`: the command line. Parses, builds the config, calls the library.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use umbra::{
    config::Config,
    export, pipeline,
    record::Pace,
    trace::{CgroupId, Filter, Kind},
    view::View,
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
        /// Write the allocation decisions to the cgroups (default: dry-run, decide and
        /// explain only); for this run, until a `set-mode` command changes it.
        #[arg(long)]
        enforce: bool,
        /// Print every allocation decision with its explanation below each interval.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        publish: PublishArgs,
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
        /// Write a Perfetto trace (TrackEvent protobuf) to this file instead of lines:
        /// open it in ui.perfetto.dev.
        #[arg(long, value_name = "OUT.pftrace")]
        perfetto: Option<PathBuf>,
        /// Read a recording instead of the kernel (no root needed).
        #[arg(long, value_name = "FILE")]
        replay: Option<PathBuf>,
    },
    /// A live terminal view of workloads: CPU, memory, I/O, network, run-queue wait,
    /// forecast band, tier and last decision; keys sort and filter (q quits).
    Top {
        /// Show a recording instead of the live kernel (no root needed).
        #[arg(long, value_name = "FILE")]
        replay: Option<PathBuf>,
        /// With --replay: N times faster than recorded.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Sampling interval in ms (overrides capture.interval_ms).
        #[arg(long)]
        interval_ms: Option<u64>,
    },
    /// An HTML report with SVG plots of recordings: usage against the forecast band,
    /// reservations against usage, anomalies marked (needs a build with `--features report`).
    Report {
        #[arg(required = true)]
        recordings: Vec<PathBuf>,
        /// Directory for index.html.
        #[arg(short, long)]
        output: PathBuf,
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
        /// Also publish summaries to the broker, as the live agent does.
        #[arg(long)]
        publish: bool,
        /// Broker URL (overrides publish.broker).
        #[arg(long)]
        broker: Option<String>,
        /// With --publish: wait at most this long at the end for the broker to take
        /// every message.
        #[arg(long, default_value_t = 10)]
        drain_secs: u64,
    },
    /// Decode and print what a fleet's agents publish (for operators): every fleet and
    /// node unless --fleet / --node narrow it.
    Sub {
        #[command(flatten)]
        target: FleetTarget,
        /// Only this kind (summary, status, cmd/result).
        #[arg(long)]
        kind: Option<String>,
        /// One JSON object a line: `{"topic":…,"envelope":…}`.
        #[arg(long)]
        json: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// The fleet's hub: store summaries as Parquet, show the fleet, publish models
    /// (needs a build with `--features fleet`).
    Hub(Box<HubCli>),
    /// Replay recordings through allocation strategies (umbra, vpa, autopilot, static) and
    /// score each: slack, would-be throttling, memory violations, changes, cost.
    Simulate {
        #[arg(required = true)]
        recordings: Vec<PathBuf>,
        /// Only these strategies (repeatable; default: all): umbra, vpa (or vpa-like),
        /// autopilot (or autopilot-like), static (or static-limits).
        #[arg(long)]
        strategy: Vec<String>,
        /// Managed workloads per recording: the busiest by CPU-seconds.
        #[arg(long, default_value_t = 10)]
        workloads: usize,
        /// `{"strategies": [...]}` instead of a table.
        #[arg(long)]
        json: bool,
        /// Each managed workload's score too, per recording and strategy (JSON:
        /// `"workloads": [...]`), with the intervals it spent at the static limits.
        #[arg(long)]
        by_workload: bool,
        /// Each strategy's intervals scored by what held them too: the static limits, the
        /// strategy's limits for the workload, or its requests' own (JSON: `"holders"`).
        #[arg(long)]
        by_holder: bool,
        /// Umbra holds each workload as a whole, without placing its execs on their own.
        #[arg(long)]
        no_per_request: bool,
        /// Reservations against usage over time (the first recording) as SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Start a command inside a cgroup the running agent reserves for it (before the
    /// command's first instruction); exits with the command's status.
    Exec {
        /// Reserve under this workload (its id or name); default: the command's executable.
        #[arg(long)]
        workload: Option<String>,
        /// Print the group, its limits and what placing cost, on stderr.
        #[arg(long)]
        report: bool,
        /// State directory of the agent to ask (overrides publish.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Export recordings for training and for people: shadow data points (csv, jsonl) or
    /// the predict stage's feature rows (forecast; see models/CONTRACT.md).
    Export {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Forecast step, ms, a multiple of the recordings' interval (--format forecast;
        /// default: predict.interval_ms).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// argv hash buckets of the request features (--format requests).
        #[arg(long, default_value_t = umbra::predict::request::DEFAULT_HASH_BUCKETS)]
        hash_buckets: usize,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Replay recordings through every forecaster (each baseline and the model, as they
    /// are and calibrated) and score them: pinball loss per quantile, p10–p90 coverage,
    /// MAE of p50, per target.
    Eval {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object: {"forecast": [...], "request": [...]}.
        #[arg(long)]
        json: bool,
        /// Draw the band against the actual for one workload to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// The workload plotted (its name or key, or a part of it; default: the busiest).
        #[arg(long)]
        workload: Option<String>,
        /// The target plotted: cpu, rss (memory), io or net.
        #[arg(long, default_value = "cpu")]
        target: String,
        /// The forecast model evaluated (default: predict.model when it is a file, else
        /// the shipped model when this build has one).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The per-request model evaluated beside the profile baseline (default:
        /// predict.request_model when it is a file, else the shipped one when this build
        /// has one).
        #[arg(long)]
        request_model: Option<PathBuf>,
        /// Forecast step, ms (default: the model's, else predict.interval_ms).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Score only buckets after this fraction of each recording (a time split).
        #[arg(long, default_value_t = 0.0)]
        score_after: f64,
    },
    /// The profile store: every executable's past runs (quantiles of CPU seconds, peak
    /// RSS, duration, I/O bytes).
    Profiles {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// State directory (overrides publish.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// Overrides of `[publish]` for `umbra run`.
#[derive(clap::Args, Debug)]
struct PublishArgs {
    /// Broker URL (overrides publish.broker).
    #[arg(long)]
    broker: Option<String>,
    /// Do not publish (overrides publish.enabled).
    #[arg(long)]
    no_publish: bool,
    /// Node name in topics (overrides publish.node).
    #[arg(long)]
    node: Option<String>,
    /// State directory: spool, model, snapshots (overrides publish.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// A broker, and a fleet and node on it (topic levels `<fleet>`, `<node>`).
#[derive(clap::Args, Debug)]
struct FleetTarget {
    /// Broker URL (default: publish.broker of the config).
    #[arg(long)]
    broker: Option<String>,
    /// Fleet: topic level `<fleet>`.
    #[arg(long)]
    fleet: Option<String>,
    /// Node: topic level `<node>`.
    #[arg(long)]
    node: Option<String>,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct HubCli {
    #[command(subcommand)]
    action: Option<HubAction>,
    #[command(flatten)]
    run: HubRun,
}

#[derive(clap::Args, Debug)]
struct HubRun {
    /// Broker URL (default: publish.broker of the config).
    #[arg(long)]
    broker: Option<String>,
    /// Directory for the Parquet files.
    #[arg(long, default_value = "hub-data")]
    data: PathBuf,
    /// Fleet to subscribe to (default: publish.fleet).
    #[arg(long)]
    fleet: Option<String>,
    /// Share the fleet with other hubs of this group (MQTT shared subscription).
    #[arg(long)]
    group: Option<String>,
    /// MQTT client id (stable ids keep the broker session across restarts).
    #[arg(long)]
    id: Option<String>,
    /// Write a Parquet file at this many rows, or this often.
    #[arg(long, default_value_t = 10_000)]
    flush_rows: usize,
    #[arg(long, default_value_t = 60)]
    flush_secs: u64,
    /// Print the fleet table this often (0: never).
    #[arg(long, default_value_t = 5)]
    table_secs: u64,
    /// Stop after this many summaries.
    #[arg(long)]
    max_summaries: Option<u64>,
    /// At exit, write what was seen per node as JSON to this file.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum HubAction {
    /// Sign an ONNX model with its schema and publish it, retained, to the fleet.
    PublishModel {
        /// The .onnx file.
        file: PathBuf,
        /// Signing key file (from `umbra hub keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The model's name (default: its schema's kind, `forecast` or `request`).
        #[arg(long)]
        name: Option<String>,
        /// Its version (default: its schema's `model_version`).
        #[arg(long)]
        version: Option<String>,
        /// Fleet default: publish.fleet; node default: the whole fleet.
        #[command(flatten)]
        target: FleetTarget,
    },
    /// Sign a command with the fleet key, send it to one node and print its reply.
    Command {
        /// set-mode, set-tier, trace-snapshot or status.
        name: String,
        /// The command's fields as a JSON object, e.g. '{"mode":"enforce"}'.
        #[arg(default_value = "{}")]
        fields: String,
        /// Signing key file (from `umbra hub keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Wait this long for the node's reply (0: do not wait).
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
        /// The node: --node is required.
        #[command(flatten)]
        target: FleetTarget,
    },
    /// Make an ed25519 key pair: the private key to a file, the public key (for
    /// publish.fleet_public_key) to stdout.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
    /// Per workload and forecast bucket: the feature vocabulary and the targets.
    Forecast,
    /// Per completed request (exec'd image): its features at the exec and its outcomes.
    Requests,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `umbra top` draws on the terminal: a log line there would tear its screen.
    init_logs(&cli.log, !matches!(cli.command, Command::Top { .. }));
    let mut cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("umbra: {e}");
            return ExitCode::from(2);
        }
    };
    let interval = match &cli.command {
        Command::Run { interval_ms, .. }
        | Command::Top { interval_ms, .. }
        | Command::Trace { interval_ms, .. }
        | Command::Record { interval_ms, .. } => *interval_ms,
        Command::Replay { .. }
        | Command::Export { .. }
        | Command::Eval { .. }
        | Command::Profiles { .. }
        | Command::Sub { .. }
        | Command::Hub(_)
        | Command::Simulate { .. }
        | Command::Exec { .. }
        | Command::Report { .. } => None,
    };
    if let Some(ms) = interval {
        cfg.capture.interval_ms = ms;
    }
    match &cli.command {
        Command::Run { publish, .. } => {
            if let Some(b) = &publish.broker {
                cfg.publish.broker = b.clone();
            }
            if let Some(n) = &publish.node {
                cfg.publish.node = n.clone();
            }
            if let Some(d) = &publish.state_dir {
                cfg.publish.state_dir = d.clone();
            }
            if publish.no_publish {
                cfg.publish.enabled = false;
            }
        }
        Command::Replay {
            publish, broker, ..
        } => {
            cfg.publish.enabled = *publish;
            if let Some(b) = broker {
                cfg.publish.broker = b.clone();
            }
        }
        Command::Sub {
            target: FleetTarget {
                broker: Some(b), ..
            },
            ..
        } => cfg.publish.broker = b.clone(),
        Command::Exec {
            state_dir: Some(d), ..
        } => cfg.publish.state_dir = d.clone(),
        _ => {}
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("umbra: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text the message
/// before it already holds (most of Umbra's errors name their source in their own text).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let stdout = std::io::stdout();
    match command {
        Command::Run {
            duration,
            top,
            enforce,
            explain,
            ..
        } => {
            let opts = pipeline::RunOptions {
                duration: duration.map(Duration::from_secs),
                enforce,
                explain,
            };
            pipeline::run(&cfg, stdout, View::Table { top }, opts, shutdown).await?
        }
        Command::Trace {
            pid,
            comm,
            cgroup,
            kind,
            duration,
            json,
            perfetto,
            replay,
            ..
        } => {
            let from = match &replay {
                Some(f) => pipeline::From::Recording(f, Pace::AsFastAsPossible),
                None => pipeline::From::Kernel,
            };
            let duration = duration.map(Duration::from_secs);
            if let Some(out) = perfetto {
                let s = umbra::perfetto::write(&cfg, from, &out, duration, shutdown).await?;
                eprintln!(
                    "umbra: wrote {} processes, {} workloads, {} counter values and {} instants ({} bytes) to {}; open it in https://ui.perfetto.dev",
                    s.processes,
                    s.workloads,
                    s.counter_values,
                    s.instants,
                    s.bytes,
                    out.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let filter = Filter {
                pids: pid,
                comms: comm,
                cgroup,
                kinds: kind,
            };
            pipeline::trace(&cfg, from, stdout, filter, json, duration, shutdown).await?
        }
        Command::Top { replay, speed, .. } => {
            if !(speed.is_finite() && speed > 0.0) {
                anyhow::bail!("--speed must be a positive number, not {speed}");
            }
            let (from, label) = match &replay {
                Some(f) => (
                    pipeline::From::Recording(f, Pace::Speed(speed)),
                    f.display().to_string(),
                ),
                None => (pipeline::From::Kernel, "live".to_string()),
            };
            umbra::top::run(&cfg, from, label, shutdown).await?
        }
        Command::Report { recordings, output } => report(&cfg, &recordings, &output).await?,
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
            if st.dropped > 0 {
                eprintln!(
                    "umbra: {} capture items were dropped on the way to the file: the recording is incomplete",
                    st.dropped
                );
            }
        }
        Command::Replay {
            file,
            speed,
            as_fast_as_possible,
            json,
            publish,
            drain_secs,
            ..
        } => {
            let pace = if as_fast_as_possible {
                Pace::AsFastAsPossible
            } else {
                Pace::Speed(speed.unwrap_or(1.0))
            };
            let out = pipeline::Shown {
                view: View::Points { json },
                out: std::io::BufWriter::new(stdout),
                explain: false,
            };
            let drain = publish.then(|| Duration::from_secs(drain_secs));
            pipeline::replay(&cfg, &file, pace, out, drain, shutdown).await?;
        }
        Command::Sub {
            target,
            kind,
            json,
            count,
        } => {
            let settings = cfg.publish.settings()?;
            let filter = umbra::fleet::sub::Filter {
                fleet: target.fleet,
                node: target.node,
                kind,
            };
            umbra::fleet::sub::run(
                &cfg.publish.broker,
                &settings.security,
                &filter,
                json,
                count,
                stdout.lock(),
                shutdown,
            )
            .await?;
        }
        Command::Hub(hub) => hub_command(*hub, &cfg, shutdown).await?,
        Command::Simulate {
            recordings,
            strategy,
            workloads,
            json,
            by_workload,
            by_holder,
            no_per_request,
            plot,
        } => {
            let mut sim = umbra::simulate::SimConfig::new(&cfg);
            sim.per_request = !no_per_request;
            if !strategy.is_empty() {
                sim.strategies = strategy
                    .into_iter()
                    .map(|s| umbra::simulate::strategy_named(&s).map_or(s, str::to_string))
                    .collect();
            }
            sim.workloads = workloads;
            sim.by_workload = by_workload;
            sim.by_holder = by_holder;
            let s =
                tokio::task::spawn_blocking(move || umbra::simulate::simulate(&recordings, &sim))
                    .await??;
            for n in &s.notes {
                eprintln!("umbra: {n}");
            }
            if json {
                println!("{}", serde_json::to_string(&s.report)?);
            } else {
                print!("{}", umbra::simulate::table(&s.report));
                if by_holder {
                    print!("\n{}", umbra::simulate::holder_table(&s.report));
                }
                if by_workload {
                    print!("\n{}", umbra::simulate::workload_table(&s.report));
                }
            }
            if let Some(p) = plot {
                umbra::simulate::write_svg(&s, &p)?;
                eprintln!("umbra: plot written to {}", p.display());
            }
        }
        Command::Exec {
            workload,
            report,
            command,
            ..
        } => {
            use umbra::allocate::{self, launch};
            let socket =
                allocate::state_dir(&cfg.allocate, &cfg.publish.state_dir).join(launch::SOCKET);
            let stop = shutdown.clone();
            let l = tokio::task::spawn_blocking(move || {
                launch::launch(&socket, workload.as_deref(), &command, &|| {
                    stop.is_cancelled()
                })
            })
            .await??;
            if report {
                eprintln!(
                    "umbra exec: pid {} in {}{}{}; reserved in {} µs, started in {} µs; exit {}",
                    l.pid,
                    l.reply.group,
                    if l.reply.limits.is_empty() {
                        String::new()
                    } else {
                        format!(" with {}", l.reply.limits.join(", "))
                    },
                    if l.reply.held {
                        " (held: frozen until capacity frees)"
                    } else {
                        ""
                    },
                    l.reserve.as_micros(),
                    l.spawn.as_micros(),
                    l.status
                );
            }
            return Ok(ExitCode::from(l.status.clamp(0, 255) as u8));
        }
        Command::Export {
            files,
            format,
            interval_ms,
            hash_buckets,
            output,
        } => {
            let f = std::fs::File::create(&output)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", output.display()))?;
            let mut out = std::io::BufWriter::new(f);
            let what = match format {
                ExportFormat::Forecast => {
                    let interval = match interval_ms {
                        Some(ms) => ms,
                        None => {
                            let rec = export::recording_interval_ms(&files[0])?;
                            cfg.predict.interval_ms(rec as u64)
                        }
                    };
                    let rows =
                        export::forecast(&files, cfg.aggregate.group_by, interval, &mut out)?;
                    format!("{rows} feature rows at {interval} ms")
                }
                ExportFormat::Requests => {
                    let rows =
                        export::requests(&files, cfg.aggregate.group_by, hash_buckets, &mut out)?;
                    format!("{rows} requests")
                }
                ExportFormat::Csv | ExportFormat::Jsonl => {
                    let mut csv_header = matches!(format, ExportFormat::Csv);
                    let mut n = 0u64;
                    for file in &files {
                        pipeline::replay_windows(&cfg, file, |w| {
                            n += 1;
                            for p in &w.points {
                                if matches!(format, ExportFormat::Jsonl) {
                                    serde_json::to_writer(&mut out, p)?;
                                    writeln!(out)?;
                                } else {
                                    if std::mem::take(&mut csv_header) {
                                        writeln!(out, "{}", export::CSV_HEADER)?;
                                    }
                                    writeln!(out, "{}", export::csv_row(p))?;
                                }
                            }
                            Ok(())
                        })
                        .await?;
                    }
                    format!("{n} intervals")
                }
            };
            out.flush()?;
            eprintln!("umbra: exported {what} to {}", output.display());
        }
        Command::Eval {
            files,
            json,
            plot,
            workload,
            target,
            model,
            request_model,
            interval_ms,
            score_after,
        } => {
            let plot_target = umbra::eval::target_named(&target)
                .ok_or_else(|| anyhow::anyhow!("--target {target:?}: one of cpu, rss, io, net"))?;
            if !(0.0..1.0).contains(&score_after) {
                anyhow::bail!("--score-after {score_after}: a fraction in [0, 1)");
            }
            use umbra::predict::source::{ModelSetting, shipped};
            // The file given, else the configured file, else the shipped model.
            let chosen = |given: Option<PathBuf>,
                          setting: &str,
                          built_in: Option<&'static [u8]>,
                          what: &str|
             -> anyhow::Result<Option<(String, Vec<u8>)>> {
                Ok(
                    match given.or_else(|| match ModelSetting::parse(setting) {
                        ModelSetting::File(p) => Some(p),
                        _ => None,
                    }) {
                        Some(p) => Some((
                            p.display().to_string(),
                            std::fs::read(&p)
                                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
                        )),
                        None if setting == "shipped" => {
                            built_in.map(|b| (format!("shipped {what}"), b.to_vec()))
                        }
                        None => None,
                    },
                )
            };
            let model = chosen(
                model,
                &cfg.predict.model,
                shipped::FORECAST,
                "forecast.onnx",
            )?;
            let request_model = chosen(
                request_model,
                &cfg.predict.request_model,
                shipped::REQUEST,
                "request.onnx",
            )?;
            let opts = umbra::eval::EvalOptions {
                interval_ms,
                score_after,
                model,
                plot,
                plot_workload: workload,
                plot_target,
                group_by: cfg.aggregate.group_by,
                request_model,
            };
            let runtime = umbra::predict::runtime::default_runtime();
            let report = umbra::eval::run(&files, &cfg.predict, &opts, runtime.as_ref())?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if json {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else {
                umbra::eval::print_table(&mut out, &report)?;
            }
        }
        Command::Profiles { json, state_dir } => {
            let dir = state_dir.unwrap_or_else(|| cfg.publish.state_dir.clone());
            let stdout = std::io::stdout();
            umbra::predict::profiles::print(&dir, json, &mut stdout.lock())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "report"))]
async fn report(_: &Config, _: &[PathBuf], _: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!(
        "this umbra was built without reports: build it with `cargo build --release --features report`"
    )
}

#[cfg(feature = "report")]
async fn report(cfg: &Config, recordings: &[PathBuf], dir: &std::path::Path) -> anyhow::Result<()> {
    let (index, s) = umbra::report::write(cfg, recordings, dir).await?;
    eprintln!(
        "umbra: report of {} recording(s), {} plots, {} anomalies: {}",
        s.recordings,
        s.plots,
        s.anomalies,
        index.display()
    );
    Ok(())
}

#[cfg(not(feature = "fleet"))]
async fn hub_command(_: HubCli, _: &Config, _: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!(
        "this umbra was built without the fleet side: build it with `cargo build --release --features fleet`"
    )
}

#[cfg(feature = "fleet")]
async fn hub_command(hub: HubCli, cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    use umbra::fleet::hub;
    let security = cfg.publish.settings()?.security;
    match hub.action {
        Some(HubAction::Keygen { out }) => {
            let (seed, public) = umbra::publish::model::generate_key()?;
            write_private(&out, &seed)?;
            println!("{public}");
            eprintln!(
                "umbra: private key written to {}; put the public key above in publish.fleet_public_key",
                out.display()
            );
        }
        Some(HubAction::PublishModel {
            file,
            key,
            name,
            version,
            target,
        }) => {
            let url = target.broker.unwrap_or_else(|| cfg.publish.broker.clone());
            let fleet = target.fleet.unwrap_or_else(|| cfg.publish.fleet.clone());
            let b = hub::publish_model(
                &url,
                &security,
                &fleet,
                target.node.as_deref(),
                &file,
                &key,
                name.as_deref(),
                version.as_deref(),
            )
            .await?;
            println!(
                "published model {} {} sha256 {}",
                b.name,
                b.version,
                b.info().sha256
            );
        }
        Some(HubAction::Command {
            name,
            fields,
            key,
            wait_secs,
            target,
        }) => {
            let Some(node) = target.node else {
                anyhow::bail!("umbra hub command needs --node: commands go to one node");
            };
            let url = target.broker.unwrap_or_else(|| cfg.publish.broker.clone());
            let fleet = target.fleet.unwrap_or_else(|| cfg.publish.fleet.clone());
            let reply = hub::send_command(
                &url,
                &security,
                &fleet,
                &node,
                &name,
                &fields,
                &key,
                Duration::from_secs(wait_secs),
            )
            .await?;
            match reply {
                Some(r) if r.ok => println!("ok: {}", r.message),
                Some(r) => anyhow::bail!("refused: {}", r.message),
                None if wait_secs == 0 => println!("sent"),
                None => anyhow::bail!("sent, but no reply within {wait_secs} s"),
            }
        }
        None => {
            let r = hub.run;
            let args = hub::HubArgs {
                url: r.broker.unwrap_or_else(|| cfg.publish.broker.clone()),
                security,
                fleet: r.fleet.unwrap_or_else(|| cfg.publish.fleet.clone()),
                group: r.group,
                client_id: r
                    .id
                    .unwrap_or_else(|| format!("umbra-hub-{}", std::process::id())),
                data: r.data,
                flush_rows: r.flush_rows,
                flush_every: Duration::from_secs(r.flush_secs),
                table_every: (r.table_secs > 0).then(|| Duration::from_secs(r.table_secs)),
                max_summaries: r.max_summaries,
            };
            let h = hub::run(&args, std::io::stdout(), shutdown).await?;
            eprintln!(
                "umbra: hub stored {} summaries from {} nodes in {} ({} duplicates dropped)",
                h.summaries,
                h.nodes.len(),
                args.data.display(),
                h.duplicates()
            );
            if let Some(p) = r.stats {
                std::fs::write(&p, serde_json::to_vec_pretty(&h.nodes)?)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(feature = "fleet")]
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create key file {}: {e}", path.display()))?;
    writeln!(f, "{text}")?;
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

fn init_logs(filter: &str, to_stderr: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = if to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::sink)
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(umbra::record::RecordError::Io {
            path: "a.umbra".into(),
            source: io,
        });
        assert_eq!(chain(&e), "recording a.umbra: No such file");
        // A context that does not repeat its cause keeps it.
        let e = anyhow::anyhow!("disk full").context("writing the spool");
        assert_eq!(chain(&e), "writing the spool: disk full");
    }
}
