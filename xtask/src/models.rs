//! The models' side: the Python venv of `models/` (pinned requirements from PyPI), training
//! (`cargo xtask train`), the pipeline test, and re-recording the training data
//! (`cargo xtask record-training`).
//!
//! Data flow: `models/data/record.sh` records real programs (`umbra record`, root) into
//! `target/training-recordings/`. Every recording is shipped whole, zstd-compressed
//! (`models/data/{train,test}/*.umbra.zst`); the training recordings are also exported
//! with `umbra export` (the agent's own featurizers) into `models/data/*-train.csv.xz`,
//! which training reads. The test recordings are exported into `target/models-test/` only
//! for the held-out report. The pipeline test re-exports the shipped training recordings
//! and checks the bytes against the shipped exports.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    install,
    util::{self, output, root, run, step, target_dir},
};

/// The forecast interval the models are trained at (the agent's default, ms).
pub const INTERVAL_MS: &str = "5000";

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Compare the candidate architectures on the validation split first (slower).
    #[arg(long)]
    search: bool,
    /// Train the forecaster on an `umbra hub --data` directory's Parquet summaries.
    #[arg(long)]
    from_hub: Option<PathBuf>,
    /// Where the models go (default: models/, the shipped ones).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Only one model (forecast or request).
    #[arg(long)]
    only: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// Only these segments (comma-separated names; `models/data/record.sh --list`).
    #[arg(long)]
    only: Option<String>,
    /// Shorten every segment by this factor (a quick try; do not ship).
    #[arg(long)]
    scale: Option<f64>,
    /// Skip recording: export what target/training-recordings holds.
    #[arg(long)]
    export_only: bool,
}

fn models_dir() -> PathBuf {
    root().join("models")
}

fn venv_dir() -> PathBuf {
    target_dir().join("models-venv")
}

/// The venv's python, with models/requirements.txt installed (again when it changed).
pub fn venv() -> Result<PathBuf> {
    let dir = venv_dir();
    let py = dir.join("bin/python");
    let req = models_dir().join("requirements.txt");
    let want = fs::read_to_string(&req).with_context(|| format!("reading {}", req.display()))?;
    let stamp = dir.join("requirements.installed");
    if py.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(py);
    }
    let python = ["python3.11", "python3"]
        .into_iter()
        .find(|p| output(p, &["-c", "import venv, ensurepip"]).is_some());
    let python = match python {
        Some(p) => p,
        None => {
            install::apt(&["python3", "python3-venv"])?;
            "python3"
        }
    };
    step(&format!(
        "python venv {} ({})",
        dir.display(),
        req.display()
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    run(Command::new(python).arg("-m").arg("venv").arg(&dir))?;
    run(Command::new(&py).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]))?;
    run(Command::new(&py)
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&req))?;
    fs::write(&stamp, want)?;
    Ok(py)
}

fn umbra_bin(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "-p", "umbra"];
    if release {
        args.push("--release");
    }
    util::cargo(&args)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("umbra"))
}

fn export(umbra: &Path, format: &str, recordings: &[PathBuf], out: &Path) -> Result<()> {
    let mut cmd = Command::new(umbra);
    cmd.args(["--log", "warn", "export", "--format", format]);
    if format == "forecast" {
        cmd.args(["--interval-ms", INTERVAL_MS]);
    }
    run(cmd.args(recordings).arg("-o").arg(out))
}

/// The shipped recordings of a set (`models/data/<set>/*.umbra.zst`, set `train` or
/// `test`), decompressed into target/models-<set>/ (once), in name order.
pub fn recordings(set: &str) -> Result<Vec<PathBuf>> {
    install::apt(&["zstd"])?;
    let src = models_dir().join("data").join(set);
    let dst = target_dir().join(format!("models-{set}"));
    fs::create_dir_all(&dst)?;
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = fs::read_dir(&src)
        .with_context(|| format!("reading {}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".umbra.zst"))
        .collect();
    names.sort();
    for p in names {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".zst"))
            .context("a test recording without a name")?
            .to_string();
        let plain = dst.join(&name);
        let fresh = match (fs::metadata(&plain), fs::metadata(&p)) {
            (Ok(a), Ok(b)) => a.modified()? >= b.modified()?,
            _ => false,
        };
        if !fresh {
            run(Command::new("zstd")
                .args(["-q", "-d", "-f"])
                .arg(&p)
                .arg("-o")
                .arg(&plain))?;
        }
        out.push(plain);
    }
    Ok(out)
}

/// `cargo xtask train`.
pub fn train(a: &TrainArgs) -> Result<()> {
    let py = venv()?;
    let mut cmd = Command::new(&py);
    cmd.arg(models_dir().join("train.py"))
        .args(["--seed", &a.seed.to_string()]);
    if a.search {
        cmd.arg("--search");
    }
    if let Some(o) = &a.only {
        cmd.args(["--only", o]);
    }
    if let Some(h) = &a.from_hub {
        cmd.arg("--from-hub").arg(h);
    }
    let out = a.out.clone().unwrap_or_else(models_dir);
    cmd.arg("--out").arg(&out);
    if a.from_hub.is_none() {
        // The held-out report: the test recordings through the agent's exporters.
        let umbra = umbra_bin(true)?;
        let recs = recordings("test")?;
        let segs = segments()?;
        let of = |format: &str| -> Vec<PathBuf> {
            recs.iter()
                .filter(|r| {
                    let name = r.file_stem().and_then(|n| n.to_str()).unwrap_or("");
                    segs.iter()
                        .find(|s| s.name == name)
                        .is_none_or(|s| exports(s, format))
                })
                .cloned()
                .collect()
        };
        let dir = target_dir().join("models-test");
        export(
            &umbra,
            "forecast",
            &of("forecast"),
            &dir.join("forecast-test.csv"),
        )?;
        if has_request_export(&umbra) {
            export(
                &umbra,
                "requests",
                &of("requests"),
                &dir.join("requests-test.csv"),
            )?;
        }
        cmd.arg("--test").arg(&dir);
        cmd.arg("--report").arg(out.join("training-report.json"));
        step("training (models/train.py)");
        run(cmd.current_dir(root()))?;
        // In the order `tests/replay/models.rs` and BENCHMARKS.md give them: the request
        // rows depend on it (profiles learnt in one recording serve the next).
        let order = ["test-steps", "test-daily", "test-web", "test-requests"];
        let rank = |p: &PathBuf| {
            let stem = p.file_stem().and_then(|n| n.to_str()).unwrap_or("");
            order.iter().position(|o| *o == stem).unwrap_or(order.len())
        };
        let (mut forecast, mut all) = (of("forecast"), recs.clone());
        forecast.sort_by_key(rank);
        all.sort_by_key(rank);
        return judge(&umbra, &out, &forecast, &all);
    }
    step("training (models/train.py)");
    run(cmd.current_dir(root()))
}

/// The judge's report of the models just trained: `umbra eval --json` over the held-out
/// recordings — the forecaster's (its rows) and all of them (the request rows) — written
/// to `eval-report.json` beside the models, and its ratios printed. The training report's
/// held-out numbers are the Python pipeline's guide; these are the agent's own scoring,
/// which the acceptance and `tests/replay/models.rs` use.
fn judge(umbra: &Path, out: &Path, forecast: &[PathBuf], all: &[PathBuf]) -> Result<()> {
    step("the held-out recordings through umbra eval (eval-report.json)");
    let eval = |files: &[PathBuf]| -> Result<serde_json::Value> {
        let mut c = Command::new(umbra);
        c.args(["--log", "error", "eval", "--json", "--model"])
            .arg(out.join("forecast.onnx"))
            .arg("--request-model")
            .arg(out.join("request.onnx"))
            .args(files);
        let o = c.output().context("running umbra eval")?;
        if !o.status.success() {
            bail!(
                "umbra eval failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        serde_json::from_slice(&o.stdout).context("umbra eval --json printed no JSON")
    };
    let f = eval(forecast)?;
    let r = eval(all)?;
    let names = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let report = serde_json::json!({
        "recordings": { "forecast": names(forecast), "request": names(all) },
        "forecast": f["forecast"],
        "request": r["request"],
    });
    let path = out.join("eval-report.json");
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    for line in ratios(&report) {
        println!("  {line}");
    }
    Ok(())
}

/// Per section and target: the model's pinball over the best baseline's, as they are and
/// calibrated (`+aci`).
fn ratios(report: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    for section in ["forecast", "request"] {
        let rows = report[section].as_array().cloned().unwrap_or_default();
        let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_string();
        let mut targets: Vec<String> = Vec::new();
        for r in &rows {
            let t = field(r, "target");
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        for t in targets {
            for calibrated in [false, true] {
                let of = |kind: &str| {
                    rows.iter()
                        .filter(|r| {
                            let name = field(r, "predictor");
                            field(r, "target") == t
                                && field(r, "kind") == kind
                                && name.ends_with("+aci") == calibrated
                                && !name.contains('/')
                        })
                        .map(|r| {
                            (
                                field(r, "predictor"),
                                r["pinball"].as_f64().unwrap_or(f64::NAN),
                            )
                        })
                        .collect::<Vec<_>>()
                };
                let (Some((model, m)), Some((best, b))) = (
                    of("model").into_iter().next(),
                    of("baseline")
                        .into_iter()
                        .min_by(|a, b| a.1.total_cmp(&b.1)),
                ) else {
                    continue;
                };
                lines.push(format!("{section} {t}: {model} / {best} = {:.3}", m / b));
            }
        }
    }
    lines
}

fn has_request_export(umbra: &Path) -> bool {
    output(umbra.to_str().unwrap_or("umbra"), &["export", "--help"])
        .is_some_and(|h| h.contains("requests"))
}

/// The pipeline test of `cargo xtask test`: the shipped training recordings re-exported by
/// this build (`umbra`) give exactly the shipped exports; then (Python) a re-training on a
/// small slice exports a model that tract runs as JAX does, and the shipped models name
/// the shipped data (its sha256 re-derived).
pub fn pipeline_test(umbra: &Path) -> Result<()> {
    step("models: the shipped exports re-derived from the shipped training recordings");
    recordings("train")?;
    let dir = target_dir().join("models-train");
    // In record.sh's order, as exported when shipped.
    let segs: Vec<Segment> = segments()?
        .into_iter()
        .filter(|s| s.set == "train" && dir.join(format!("{}.umbra", s.name)).exists())
        .collect();
    for format in ["forecast", "requests"] {
        let names: Vec<PathBuf> = segs
            .iter()
            .filter(|s| exports(s, format))
            .map(|s| PathBuf::from(format!("{}.umbra", s.name)))
            .collect();
        let shipped = models_dir()
            .join("data")
            .join(format!("{format}-train.csv.xz"));
        if !shipped.exists() {
            continue;
        }
        let fresh = dir.join(format!("{format}-train.csv"));
        let mut cmd = Command::new(umbra);
        cmd.args(["--log", "warn", "export", "--format", format]);
        if format == "forecast" {
            cmd.args(["--interval-ms", INTERVAL_MS]);
        }
        run(cmd.args(&names).arg("-o").arg(&fresh).current_dir(&dir))?;
        let a = output(
            "sh",
            &["-c", &format!("xz -dc '{}' | sha256sum", shipped.display())],
        );
        let b = output("sha256sum", &[fresh.to_str().unwrap_or("")]);
        let hash =
            |s: Option<String>| s.and_then(|s| s.split_whitespace().next().map(String::from));
        let (a, b) = (hash(a), hash(b));
        if a.is_none() || a != b {
            bail!(
                "{} is not what this build exports from models/data/train ({} vs {}): the \
                 features changed; re-export and re-train (cargo xtask record-training \
                 --export-only, then cargo xtask train)",
                shipped.display(),
                a.unwrap_or_default(),
                b.unwrap_or_default()
            );
        }
    }
    let py = venv()?;
    step("models pipeline (re-train a slice, tract against JAX, shipped data identity)");
    run(Command::new(&py)
        .args(["-m", "unittest", "-v", "test_pipeline"])
        .current_dir(models_dir()))
}

/// `cargo xtask record-training`.
pub fn record(a: &RecordArgs) -> Result<()> {
    let recordings = target_dir().join("training-recordings");
    let umbra = umbra_bin(true)?;
    if !a.export_only {
        if !util::is_root() {
            bail!("recording needs root (umbra record): run `sudo cargo xtask record-training`");
        }
        install::all()?;
        let mut cmd = Command::new("bash");
        cmd.arg(models_dir().join("data/record.sh"))
            .arg("--umbra")
            .arg(&umbra)
            .arg("--out")
            .arg(&recordings);
        if let Some(o) = &a.only {
            cmd.args(["--only", o]);
        }
        if let Some(s) = a.scale {
            cmd.args(["--scale", &s.to_string()]);
        }
        step("recording (models/data/record.sh)");
        run(&mut cmd)?;
    }
    export_recordings(&umbra, &recordings)
}

/// A segment of record.sh.
struct Segment {
    name: String,
    /// `train` or `test`.
    set: String,
    /// Whether the forecaster trains and is tested on it (else the request model only).
    forecast: bool,
}

/// Whether the export `format` is made from `seg`: every recording gives requests, the
/// forecaster's recordings forecast rows.
fn exports(seg: &Segment, format: &str) -> bool {
    format == "requests" || seg.forecast
}

/// The segments of record.sh, in its order.
fn segments() -> Result<Vec<Segment>> {
    let list = output(
        "bash",
        &[
            models_dir().join("data/record.sh").to_str().unwrap_or(""),
            "--list",
        ],
    )
    .context("models/data/record.sh --list failed")?;
    Ok(list
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some(Segment {
                name: w.first()?.to_string(),
                set: w.get(1)?.to_string(),
                forecast: w.get(5).is_none_or(|u| *u == "all"),
            })
        })
        .collect())
}

/// The shipped data from the recordings: exports of the training set (xz), the test set
/// whole (zstd), the provenance.
fn export_recordings(umbra: &Path, dir: &Path) -> Result<()> {
    install::apt(&["xz-utils", "zstd"])?;
    let data = models_dir().join("data");
    let mut train = Vec::new();
    for seg in segments()? {
        let rec = dir.join(format!("{}.umbra", seg.name));
        if !rec.exists() {
            eprintln!(
                "note: {} is missing, not shipped (cargo xtask record-training --only {})",
                rec.display(),
                seg.name
            );
            continue;
        }
        fs::create_dir_all(data.join(&seg.set))?;
        step(&format!("shipping {} ({}, zstd -19)", seg.name, seg.set));
        run(Command::new("zstd")
            .args(["-q", "-19", "-f"])
            .arg(&rec)
            .arg("-o")
            .arg(data.join(&seg.set).join(format!("{}.umbra.zst", seg.name))))?;
        if seg.set == "train" {
            train.push(seg);
        }
    }
    let tmp = target_dir().join("models-export");
    fs::create_dir_all(&tmp)?;
    let mut formats = vec!["forecast"];
    if has_request_export(umbra) {
        formats.push("requests");
    }
    for format in formats {
        step(&format!(
            "umbra export --format {format} (training recordings)"
        ));
        // Names relative to the recordings directory: the rows carry them.
        let csv = tmp.join(format!("{format}-train.csv"));
        let names: Vec<PathBuf> = train
            .iter()
            .filter(|s| exports(s, format))
            .map(|s| PathBuf::from(format!("{}.umbra", s.name)))
            .collect();
        let mut cmd = Command::new(umbra);
        cmd.args(["--log", "warn", "export", "--format", format]);
        if format == "forecast" {
            cmd.args(["--interval-ms", INTERVAL_MS]);
        }
        run(cmd.args(&names).arg("-o").arg(&csv).current_dir(dir))?;
        let xz = data.join(format!("{format}-train.csv.xz"));
        run(Command::new("sh").arg("-c").arg(format!(
            "xz -9e -T1 -c '{}' > '{}'",
            csv.display(),
            xz.display()
        )))?;
    }
    let prov = dir.join("provenance.jsonl");
    if prov.exists() {
        fs::copy(&prov, data.join("provenance.jsonl"))?;
    }
    Ok(())
}
