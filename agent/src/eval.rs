//! `umbra eval`: recordings replayed through every forecaster — each baseline and the
//! model, each as it is and calibrated — with the very [`Predictor`] code the agent runs,
//! scored against what happened.
//!
//! Every closed bucket, each predictor forecasts every tracked workload for the next
//! `horizon` buckets; each step's band is scored when its bucket closes, if the workload
//! was present in it (ran at all): pinball loss per quantile, whether the outcome fell in
//! p10–p90, the absolute error of p50. `--score-after F` scores only the buckets after the
//! first fraction F of each recording (a time split); files never trained on are scored
//! whole. Each recording replays through fresh predictors (an agent started for it).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    aggregate::{GroupBy, WorkloadId},
    export::{self, Step},
    predict::{
        Band, Batch, BucketConfig, Featurizer, Forecast, LEVELS, PredictConfig, Predictor,
        PredictorKind, Target, baseline,
        calibrate::Calibrated,
        exec::{Exec, Guard, load_request_model},
        onnx::{LoadError, Model, OnnxForecaster},
        profiles::OUTCOMES,
        request::{DEFAULT_HASH_BUCKETS, RequestFeaturizer},
        runtime::Runtime,
        schema::ModelKind,
    },
    record::RecordError,
};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error(
        "{path} was recorded every {recorded} ms; the forecast interval {interval_ms} ms is not a multiple of it"
    )]
    Interval {
        path: String,
        interval_ms: u64,
        recorded: u32,
    },
    #[error(
        "--interval-ms {given}: {origin} forecasts {model} ms buckets and would be fed others (the agent refuses such a model); leave --interval-ms out, or give {model}"
    )]
    ModelInterval {
        given: u64,
        model: u64,
        origin: String,
    },
    #[error("--plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("no workload matches --workload {0:?}")]
    NoWorkload(String),
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
}

/// A forecast target as the report names it: `cpu`, `rss` (resident memory, the agent's
/// `memory` target), `io`, `net`.
pub fn target_name(t: Target) -> &'static str {
    match t {
        Target::Memory => "rss",
        t => t.name(),
    }
}

/// The target a report name (or the agent's own name) stands for.
pub fn target_named(name: &str) -> Option<Target> {
    Target::ALL
        .into_iter()
        .find(|&t| target_name(t) == name || t.name() == name)
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    pub predictor: String,
    pub kind: &'static str,
    pub target: String,
    /// Mean pinball loss over the three quantiles.
    pub pinball: f64,
    /// Share of outcomes inside p10–p90.
    pub coverage: f64,
    pub mae_p50: f64,
    #[serde(skip)]
    pub pinball_q: [f64; 3],
    #[serde(skip)]
    pub n: u64,
}

/// The whole report: `{"forecast": [...], "request": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub forecast: Vec<Score>,
    pub request: Vec<Score>,
}

/// The pinball (quantile) loss of predicting `q̂` at level `tau` for outcome `y`.
#[inline]
pub fn pinball(tau: f64, y: f64, q: f64) -> f64 {
    let d = y - q;
    if d >= 0.0 { tau * d } else { (tau - 1.0) * d }
}

/// Running sums of one predictor and target.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acc {
    pinball: [f64; 3],
    inside: u64,
    abs: f64,
    n: u64,
}

impl Acc {
    pub fn add(&mut self, b: &Band, y: f64) {
        for (i, (tau, q)) in LEVELS.iter().zip([b.p10, b.p50, b.p90]).enumerate() {
            self.pinball[i] += pinball(*tau, y, q);
        }
        self.inside += (b.p10 <= y && y <= b.p90) as u64;
        self.abs += (y - b.p50).abs();
        self.n += 1;
    }

    /// The means; with no outcome scored, not numbers (`null` in JSON, `—` in the table):
    /// a loss of 0 would read as a perfect forecast.
    pub fn score(&self, predictor: &str, kind: PredictorKind, target: &str) -> Score {
        let n = if self.n == 0 { f64::NAN } else { self.n as f64 };
        let pinball_q = self.pinball.map(|p| p / n);
        Score {
            predictor: predictor.into(),
            kind: match kind {
                PredictorKind::Model => "model",
                PredictorKind::Baseline => "baseline",
            },
            target: target.into(),
            pinball: pinball_q.iter().sum::<f64>() / 3.0,
            coverage: self.inside as f64 / n,
            mae_p50: self.abs / n,
            pinball_q,
            n: self.n,
        }
    }
}

/// What `umbra eval` compares.
pub struct EvalOptions {
    pub interval_ms: Option<u64>,
    /// Only buckets after this fraction of each recording are scored.
    pub score_after: f64,
    /// The forecast model to evaluate: (its name for messages, its bytes), if any.
    pub model: Option<(String, Vec<u8>)>,
    /// The workload to plot (a substring of its name or key; default: the one that used
    /// the most CPU), and the target.
    pub plot: Option<PathBuf>,
    pub plot_workload: Option<String>,
    pub plot_target: Target,
    pub group_by: GroupBy,
    /// The per-request model to evaluate beside the profile baseline: (its name for
    /// messages, its bytes), if any.
    pub request_model: Option<(String, Vec<u8>)>,
}

/// One predictor under evaluation.
struct Entry {
    p: Box<dyn Predictor>,
    acc: [Acc; 4],
    /// Per workload, the forecasts of the last `horizon` buckets.
    pending: HashMap<WorkloadId, VecDeque<Forecast>>,
}

/// Points of the plot: bucket end, actual, and the step-1 band made a bucket before.
type PlotSeries = Vec<(u64, f64, Band)>;

/// The predictors `umbra eval` runs: the model, the model with `predict.candidates`
/// blended per workload as the live agent runs it (named `MODEL/CANDIDATES`), and each
/// baseline, as they are and calibrated.
fn predictors(
    cfg: &PredictConfig,
    model: Option<&(Vec<u8>, String)>,
    runtime: &dyn Runtime,
) -> Result<Vec<Entry>, EvalError> {
    let load = || -> Result<Option<Box<dyn Predictor>>, EvalError> {
        let Some((bytes, origin)) = model else {
            return Ok(None);
        };
        let m = Model::load(origin, bytes, ModelKind::Forecast, runtime)?;
        Ok(Some(Box::new(OnnxForecaster::new(m)?)))
    };
    // The model with its candidates, named apart from the model alone.
    let live = |p: Box<dyn Predictor>| -> Option<Box<dyn Predictor>> {
        let name = format!("{}/{}", p.name(), cfg.candidates.join(","));
        let s = crate::predict::select_with_candidates(cfg, p).ok()?;
        Some(Box::new(s.named(name)))
    };
    let all = || -> Result<Vec<Box<dyn Predictor>>, EvalError> {
        let mut v: Vec<Box<dyn Predictor>> = Vec::new();
        v.extend(load()?);
        v.extend(load()?.and_then(live));
        v.extend(
            baseline::BASELINES
                .iter()
                .filter_map(|name| baseline::by_name(name, cfg)),
        );
        Ok(v)
    };
    // Each as it is, then calibrated (another instance: predictors keep state).
    let (plain, again) = (all()?, all()?);
    let mut out: Vec<Box<dyn Predictor>> = Vec::new();
    for (p, q) in plain.into_iter().zip(again) {
        out.push(p);
        out.push(Box::new(Calibrated::new(q, &cfg.calibration)));
    }
    Ok(out
        .into_iter()
        .map(|p| Entry {
            p,
            acc: Default::default(),
            pending: HashMap::new(),
        })
        .collect())
}

/// Runs the evaluation; the report, and writes the plot when asked.
pub fn run(
    recordings: &[PathBuf],
    cfg: &PredictConfig,
    opts: &EvalOptions,
    runtime: &dyn Runtime,
) -> Result<Report, EvalError> {
    let model = opts.model.as_ref().map(|(o, b)| (b.clone(), o.clone()));
    // A model sets the interval and horizon everything is compared at.
    let (mut cfg, mut interval_ms) = (cfg.clone(), opts.interval_ms);
    if let Some((bytes, origin)) = &model {
        let s = crate::predict::schema::Schema::of_onnx(origin, bytes).map_err(LoadError::from)?;
        cfg.horizon = s.horizon.unwrap_or(cfg.horizon);
        if let (Some(given), Some(model)) = (interval_ms, s.interval_ms)
            && given != model
        {
            return Err(EvalError::ModelInterval {
                given,
                model,
                origin: origin.clone(),
            });
        }
        interval_ms = interval_ms.or(s.interval_ms);
    }
    let mut entries = predictors(&cfg, model.as_ref(), runtime)?;
    // The plot shows the calibrated model, else the calibrated fallback baseline.
    let shown = match &model {
        Some(_) => 1,
        None => entries
            .iter()
            .position(|e| e.p.name() == format!("{}+aci", cfg.fallback))
            .unwrap_or(0),
    };
    let depth = entries.iter().map(|e| e.p.history()).max().unwrap_or(1);
    let horizon = cfg.horizon;
    let mut plot: BTreeMap<WorkloadId, (String, f64, PlotSeries)> = BTreeMap::new();
    let mut last_ms = 0;
    for (i, r) in recordings.iter().enumerate() {
        let recorded = export::recording_interval_ms(r)?;
        let ms = interval_ms.unwrap_or_else(|| cfg.interval_ms(recorded as u64));
        last_ms = ms;
        if recorded == 0 || !ms.is_multiple_of(recorded as u64) {
            return Err(EvalError::Interval {
                path: r.display().to_string(),
                interval_ms: ms,
                recorded,
            });
        }
        // The recording's span, for the time split.
        let (mut first, mut last) = (None, 0u64);
        export::replay::<RecordError>(r, opts.group_by, |s| {
            if let Step::Window(_, w) = s {
                first.get_or_insert(w.node.timestamp_ms);
                last = w.node.timestamp_ms;
            }
            Ok(())
        })?;
        let start = first.unwrap_or(0);
        let split = start + ((last.saturating_sub(start)) as f64 * opts.score_after) as u64;
        let mut f = Featurizer::new(BucketConfig {
            interval_ms: ms,
            depth,
            forget_after: u32::MAX,
        });
        // Each recording replays through fresh predictors, as an agent started for it
        // would run them: a workload seen in an earlier recording (the same executable
        // run another day) starts with no history, so the order of the recordings
        // changes nothing.
        if i > 0 {
            let fresh = predictors(&cfg, model.as_ref(), runtime)?;
            for (e, p) in entries.iter_mut().zip(fresh) {
                e.p = p.p;
            }
        }
        for e in &mut entries {
            e.pending.clear();
        }
        let plotted = opts.plot.is_some();
        export::replay::<RecordError>(r, opts.group_by, |s| {
            if let Step::Window(_, w) = s {
                f.push(w, &mut |b| {
                    let p = plotted.then_some((&mut plot, shown, opts.plot_target));
                    score_batch(&mut entries, b, horizon, split, p)
                });
            }
            Ok(())
        })?;
    }
    let mut report = Report::default();
    for e in &entries {
        for t in Target::ALL {
            report
                .forecast
                .push(e.acc[t as usize].score(e.p.name(), e.p.kind(), target_name(t)));
        }
    }
    if let Some(path) = &opts.plot {
        let name = entries.get(shown).map_or("", |e| e.p.name());
        draw(path, &plot, opts, name)?;
    }
    if report.forecast.iter().all(|s| s.n == 0) {
        tracing::warn!(
            "No forecast was scored: a forecast made at the end of one {ms} ms bucket is \
             scored at the end of the next ones while its workload runs, and these \
             recordings are too short for that (record longer, or score the baselines \
             with a shorter --interval-ms)",
            ms = last_ms
        );
    }
    report.request = requests(recordings, opts, runtime)?;
    Ok(report)
}

/// An executable's input sizes must span this factor (p90 / p10 over its scored
/// requests) for it to count as input-size-dependent (`models/umbra_train/request.py`
/// uses the same rule).
pub const SIZE_SPREAD: f64 = 4.0;

/// Whether a request may be scored: its executable had past runs (the profile has something
/// to say) and its argv named input files.
fn scored(row: &[f64], runs: usize, inputs: usize) -> bool {
    row.get(runs).is_some_and(|v| *v > 0.0) && row.get(inputs).is_some_and(|v| *v > 0.0)
}

/// One scored request: its executable, input bytes, outcomes, and each predictor's bands.
struct Scored {
    key: String,
    input_bytes: f64,
    outcome: [f64; 4],
    profile: [Band; 4],
    model: Option<[Band; 4]>,
    /// The model as the live agent uses it: each outcome handed to the profile where the
    /// model was clearly worse on the executable's runs that ended before this exec.
    guarded: Option<[Band; 4]>,
}

/// A request that ended, waiting for the guard until a later exec (by its end, boot ns).
struct Ended {
    end_ns: u64,
    key: String,
    model: [Band; 4],
    profile: [Band; 4],
    outcome: [f64; 4],
}

/// The per-request predictions scored against what each request used: the profile
/// baseline (the empirical p10/p50/p90 of the executable's past runs, as the feature row
/// carries them) and the request model, each made from what was known at the exec. Scored
/// are the requests of *input-size-dependent* programs: a request of an executable with
/// past runs that named input files, when that executable's input sizes over the
/// recordings span at least [`SIZE_SPREAD`] (p90 / p10) — decided from the inputs alone.
/// The model is scored also as the live agent runs it, `MODEL/profile`: with a [`Guard`]
/// per recording (an agent started for it), scored on every request of an executable with
/// past runs once it ended, and consulted at each exec.
pub fn requests(
    recordings: &[PathBuf],
    opts: &EvalOptions,
    runtime: &dyn Runtime,
) -> Result<Vec<Score>, EvalError> {
    let mut buckets = DEFAULT_HASH_BUCKETS;
    if let Some((origin, bytes)) = &opts.request_model {
        let s = crate::predict::schema::Schema::of_onnx(origin, bytes).map_err(LoadError::from)?;
        buckets = s.hash_buckets.unwrap_or(buckets);
    }
    let featurizer = RequestFeaturizer::new(buckets);
    let names: Vec<&str> = featurizer.names().iter().map(String::as_str).collect();
    let at = |n: &str| names.iter().position(|v| *v == n).unwrap_or(usize::MAX);
    let (runs, inputs) = (at("profile_runs"), at("input_bytes_total"));
    let profile_at: Vec<[usize; 3]> = OUTCOMES
        .iter()
        .map(|t| ["p10", "p50", "p90"].map(|q| at(&format!("profile_{t}_{q}"))))
        .collect();
    let mut model = match &opts.request_model {
        Some((origin, bytes)) => Some(load_request_model(origin, bytes, &names, runtime)?),
        None => None,
    };
    let mut all: Vec<Scored> = Vec::new();
    let mut row = Vec::with_capacity(names.len());
    let mut guard = Guard::new(usize::MAX);
    // Requests still running at the last exec seen (a few: those running side by side).
    let mut ended: Vec<Ended> = Vec::new();
    let mut recording = String::new();
    export::each_request::<RecordError>(recordings, opts.group_by, &featurizer, |r, c, store| {
        if r != recording {
            recording = r.to_string();
            guard = Guard::new(usize::MAX);
            ended.clear();
        }
        row.clear();
        row.extend(c.features.iter().map(|v| *v as f64));
        if row.get(runs).is_none_or(|v| *v <= 0.0) {
            return Ok(());
        }
        let v = |i: usize| row.get(i).copied().unwrap_or(0.0);
        let profile: [Band; 4] = std::array::from_fn(|t| {
            let [p10, p50, p90] = profile_at[t].map(v);
            Band { p10, p50, p90 }
        });
        let mut done: Vec<Ended> = ended.extract_if(.., |e| e.end_ns <= c.exec_ns).collect();
        done.sort_by_key(|e| e.end_ns);
        for e in done {
            guard.scored(&e.key, &e.model, &e.profile, e.outcome);
        }
        let outcome: [f64; 4] = std::array::from_fn(|t| c.outcome.get(t));
        let model = model.as_mut().map(|m| {
            let e = Exec {
                tgid: c.tgid,
                exec_ns: c.exec_ns,
                key: &c.facts.key,
                name: c.name(),
                parent: &c.facts.parent,
                input_bytes: c.facts.input_bytes(),
            };
            m.predict_row(store, &e, &row).bands()
        });
        let guarded = model.map(|m| {
            let to = guard.to_profile(&c.facts.key);
            std::array::from_fn(|t| if to[t] { profile[t] } else { m[t] })
        });
        if let Some(m) = model {
            let duration_ns = (outcome[2].max(0.0) * 1e9) as u64;
            ended.push(Ended {
                end_ns: c.exec_ns.saturating_add(duration_ns),
                key: c.facts.key.clone(),
                model: m,
                profile,
                outcome,
            });
        }
        if !scored(&row, runs, inputs) {
            return Ok(());
        }
        all.push(Scored {
            key: c.facts.key.clone(),
            input_bytes: v(inputs),
            outcome,
            profile,
            model,
            guarded,
        });
        Ok(())
    })?;
    // The executables whose inputs vary in size.
    let mut sizes: HashMap<&str, Vec<f64>> = HashMap::new();
    for s in &all {
        sizes.entry(&s.key).or_default().push(s.input_bytes);
    }
    let varied: std::collections::HashSet<&str> = sizes
        .into_iter()
        .filter_map(|(k, mut v)| {
            let q = crate::predict::profiles::quantiles(&mut v, &[0.1, 0.9]);
            (q[1] >= SIZE_SPREAD * q[0].max(1.0)).then_some(k)
        })
        .collect();
    let mut profile = [Acc::default(); 4];
    let mut learnt = [Acc::default(); 4];
    let mut live = [Acc::default(); 4];
    for s in all.iter().filter(|s| varied.contains(s.key.as_str())) {
        for t in 0..4 {
            profile[t].add(&s.profile[t], s.outcome[t]);
            if let Some(m) = &s.model {
                learnt[t].add(&m[t], s.outcome[t]);
            }
            if let Some(g) = &s.guarded {
                live[t].add(&g[t], s.outcome[t]);
            }
        }
    }
    let mut out = Vec::new();
    if profile[0].n == 0 {
        // No request to score: nothing to say.
        return Ok(out);
    }
    let mut push = |name: &str, kind: PredictorKind, acc: &[Acc; 4]| {
        for (t, a) in OUTCOMES.iter().zip(acc) {
            out.push(a.score(name, kind, t));
        }
    };
    if let Some(m) = &model {
        push(m.name(), PredictorKind::Model, &learnt);
        push(
            &format!("{}/profile", m.name()),
            PredictorKind::Model,
            &live,
        );
    }
    push("profile", PredictorKind::Baseline, &profile);
    Ok(out)
}

/// The plot's data per workload: its name, CPU seconds in all (to pick the busiest), and
/// the points.
type Plot = BTreeMap<WorkloadId, (String, f64, PlotSeries)>;

/// Scores the forecasts whose bucket is `b`, then forecasts from it. With `plot`, the
/// actuals of `target` and the step-1 bands of entry `plot_entry` are kept.
fn score_batch(
    entries: &mut [Entry],
    b: &Batch<'_>,
    horizon: usize,
    split: u64,
    plot: Option<(&mut Plot, usize, Target)>,
) {
    let interval = b.interval_ms as u64;
    let step = |f: &Forecast| {
        let steps = b.now_ms.checked_sub(f.made_ms)? / interval.max(1);
        (steps >= 1 && steps as usize <= horizon && f.made_ms + steps * interval == b.now_ms)
            .then_some(steps as usize - 1)
    };
    if let Some((plot, pe, target)) = plot
        && let Some(e) = entries.get(pe)
    {
        for s in &b.series {
            let Some(newest) = s.buckets.last().filter(|x| x.end_ms == b.now_ms) else {
                continue;
            };
            let p = plot
                .entry(s.workload.clone())
                .or_insert_with(|| (s.name.to_string(), 0.0, Vec::new()));
            p.1 += newest.target(Target::Cpu);
            let band = e
                .pending
                .get(s.workload)
                .and_then(|q| q.iter().find(|f| step(f) == Some(0)))
                .and_then(|f| f.of(target).first().copied());
            if let Some(band) = band {
                p.2.push((b.now_ms, newest.target(target), band));
            }
        }
    }
    for e in entries.iter_mut() {
        for s in &b.series {
            let Some(newest) = s.buckets.last().filter(|x| x.end_ms == b.now_ms) else {
                continue;
            };
            if !newest.present() || b.now_ms <= split {
                continue;
            }
            let Some(q) = e.pending.get(s.workload) else {
                continue;
            };
            for f in q {
                let Some(h) = step(f) else {
                    continue;
                };
                for t in Target::ALL {
                    if let Some(band) = f.of(t).get(h) {
                        e.acc[t as usize].add(band, newest.target(t));
                    }
                }
            }
        }
        let fs = e.p.forecast(b);
        for (s, f) in b.series.iter().zip(fs) {
            let q = e.pending.entry(s.workload.clone()).or_default();
            q.push_back(f);
            while q.len() > horizon {
                q.pop_front();
            }
        }
        if e.pending.len() > b.series.len() {
            e.pending
                .retain(|id, _| b.series.iter().any(|s| s.workload == id));
        }
    }
}

/// The SVG: for the chosen workload, the actual value of the target against the
/// calibrated p10–p90 band and p50 made one bucket before.
fn draw(path: &Path, plot: &Plot, opts: &EvalOptions, predictor: &str) -> Result<(), EvalError> {
    use plotters::prelude::*;
    let chosen = match &opts.plot_workload {
        Some(w) => plot
            .iter()
            .find(|(id, (name, _, _))| id.0 == *w || name == w)
            .or_else(|| {
                plot.iter().find(|(id, (name, _, _))| {
                    id.0.contains(w.as_str()) || name.contains(w.as_str())
                })
            })
            .ok_or_else(|| EvalError::NoWorkload(w.clone()))?,
        None => plot
            .iter()
            .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .ok_or_else(|| EvalError::NoWorkload("(any)".into()))?,
    };
    let (id, (name, _, pts)) = chosen;
    let err = |e: &dyn std::fmt::Display| EvalError::Plot {
        path: path.into(),
        message: e.to_string(),
    };
    let t0 = pts.first().map_or(0, |p| p.0);
    let xs = |ms: u64| (ms - t0) as f64 / 1000.0;
    let x_max = pts.last().map_or(1.0, |p| xs(p.0)).max(1.0);
    let y_max = pts
        .iter()
        .map(|p| p.1.max(p.2.p90))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.05;
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let unit = match opts.plot_target {
        Target::Cpu => "cores",
        Target::Memory => "bytes",
        Target::Io | Target::Net => "bytes/s",
    };
    let title = format!(
        "{} {} ({unit}): actual vs {predictor} p10-p90, one step ahead",
        crate::view::clip(name, 40),
        target_name(opts.plot_target)
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(unit)
        .draw()
        .map_err(|e| err(&e))?;
    let band: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (xs(p.0), p.2.p90))
        .chain(pts.iter().rev().map(|p| (xs(p.0), p.2.p10)))
        .collect();
    chart
        .draw_series(std::iter::once(Polygon::new(band, BLUE.mix(0.2))))
        .map_err(|e| err(&e))?
        .label("p10-p90")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], BLUE.mix(0.2).filled()));
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (xs(p.0), p.2.p50)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    chart
        .draw_series(LineSeries::new(pts.iter().map(|p| (xs(p.0), p.1)), &BLACK))
        .map_err(|e| err(&e))?
        .label("actual")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    tracing::info!(workload = %id.0, path = %path.display(), "Plot written");
    Ok(())
}

/// The report as a table.
pub fn print_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    for (what, rows) in [("forecast", &r.forecast), ("request", &r.request)] {
        if rows.is_empty() {
            continue;
        }
        // The target column as wide as its longest name; the predictor's too, up to 40.
        let w = rows
            .iter()
            .map(|s| s.target.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let pw = rows
            .iter()
            .map(|s| s.predictor.chars().count())
            .max()
            .unwrap_or(9)
            .clamp(9, 40);
        writeln!(
            out,
            "{what:<8} {:<pw$} {:<8} {:<w$} {:>12} {:>12} {:>12} {:>12} {:>8} {:>12} {:>8}",
            "predictor",
            "kind",
            "target",
            "pinball",
            "p10",
            "p50",
            "p90",
            "coverage",
            "mae_p50",
            "n"
        )?;
        for s in rows {
            writeln!(
                out,
                "{what:<8} {:<pw$} {:<8} {:<w$} {:>12} {:>12} {:>12} {:>12} {:>8} {:>12} {:>8}",
                crate::view::clip(&s.predictor, pw),
                s.kind,
                s.target,
                num(s.pinball),
                num(s.pinball_q[0]),
                num(s.pinball_q[1]),
                num(s.pinball_q[2]),
                percent(s.coverage),
                num(s.mae_p50),
                s.n
            )?;
        }
    }
    Ok(())
}

/// A share as a percentage; `—` for none.
fn percent(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{:.1}%", 100.0 * v)
    }
}

/// A number in 12 columns, whatever its scale; `—` for none.
fn num(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::predict::runtime::default_runtime;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    fn opts(model: Option<&str>, plot: Option<PathBuf>) -> EvalOptions {
        EvalOptions {
            interval_ms: None,
            score_after: 0.0,
            model: model.map(|m| {
                let p = fixture(m);
                (p.display().to_string(), std::fs::read(&p).unwrap())
            }),
            plot,
            plot_workload: None,
            plot_target: Target::Cpu,
            group_by: GroupBy::Exe,
            request_model: None,
        }
    }

    #[test]
    fn pinball_is_the_quantile_loss() {
        assert_eq!(pinball(0.9, 10.0, 8.0), 0.9 * 2.0);
        assert!((pinball(0.9, 8.0, 10.0) - 0.1 * 2.0).abs() < 1e-12);
        assert_eq!(pinball(0.5, 3.0, 3.0), 0.0);
        let mut a = Acc::default();
        a.add(
            &Band {
                p10: 1.0,
                p50: 2.0,
                p90: 3.0,
            },
            2.5,
        );
        a.add(
            &Band {
                p10: 1.0,
                p50: 2.0,
                p90: 3.0,
            },
            4.0,
        );
        let s = a.score("x", PredictorKind::Baseline, "cpu");
        assert_eq!(s.coverage, 0.5);
        assert!((s.mae_p50 - 1.25).abs() < 1e-12);
        // p10: (0.1·1.5 + 0.1·3)/2; p50: (0.5·0.5 + 0.5·2)/2; p90: (0.1·0.5 + 0.9·1)/2
        let want = [0.225, 0.625, 0.475];
        for (g, w) in s.pinball_q.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{:?}", s.pinball_q);
        }
        assert!((s.pinball - want.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_recording_too_short_to_score_reports_no_numbers_rather_than_zeros() {
        let cfg = PredictConfig::default();
        let r = run(
            &[fixture("compile.umbra")],
            &cfg,
            &opts(None, None),
            default_runtime().as_ref(),
        )
        .unwrap();
        assert!(!r.forecast.is_empty());
        for s in &r.forecast {
            assert_eq!(s.n, 0, "{s:?}");
            assert!(s.pinball.is_nan() && s.coverage.is_nan() && s.mae_p50.is_nan());
        }
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["forecast"][0]["pinball"].is_null(), "{v}");
        let mut table = Vec::new();
        print_table(&mut table, &r).unwrap();
        let table = String::from_utf8(table).unwrap();
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains('—') && !row.contains("0.0000"), "{row}");
    }

    #[test]
    fn every_baseline_is_scored_for_every_target_and_the_json_has_the_documented_shape() {
        let cfg = PredictConfig::default();
        let r = run(
            &[fixture("compress.umbra"), fixture("batch.umbra")],
            &cfg,
            &opts(None, None),
            default_runtime().as_ref(),
        )
        .unwrap();
        assert_eq!(r.forecast.len(), baseline::BASELINES.len() * 2 * 4);
        assert!(r.request.is_empty());
        for s in &r.forecast {
            assert!(s.n > 20, "{s:?}");
            assert!((0.0..=1.0).contains(&s.coverage));
            assert!(s.pinball.is_finite() && s.pinball >= 0.0);
        }
        let v = serde_json::to_value(&r).unwrap();
        let row = v["forecast"][0].as_object().unwrap();
        let mut keys: Vec<&str> = row.keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "coverage",
                "kind",
                "mae_p50",
                "pinball",
                "predictor",
                "target"
            ]
        );
        assert_eq!(v["forecast"][0]["kind"], "baseline");
        // The names: `cpu`, `rss`, … — resident memory is `rss` in the report.
        let targets: Vec<&str> = v["forecast"].as_array().unwrap()[..4]
            .iter()
            .map(|r| r["target"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["cpu", "rss", "io", "net"]);
        assert_eq!(target_named("rss"), Some(Target::Memory));
        assert_eq!(target_named("memory"), Some(Target::Memory));
        assert_eq!(target_named("ram"), None);
        assert!(v["request"].as_array().unwrap().is_empty());
        // The time split scores fewer buckets.
        let mut o = opts(None, None);
        o.interval_ms = Some(1000);
        o.score_after = 0.5;
        let half = run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap();
        o.score_after = 0.0;
        let whole = run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap();
        assert!(
            half.forecast[0].n < whole.forecast[0].n,
            "{} {}",
            half.forecast[0].n,
            whole.forecast[0].n
        );
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn the_model_is_scored_with_the_baselines_and_the_plot_is_drawn() {
        let d = tempfile::tempdir().unwrap();
        let svg = d.path().join("band.svg");
        let cfg = PredictConfig::default();
        let mut o = opts(Some("onnx/forecast_fixture.onnx"), Some(svg.clone()));
        o.plot_workload = Some("xz".into());
        let r = run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap();
        let names: Vec<&str> = r.forecast.iter().map(|s| s.predictor.as_str()).collect();
        assert_eq!(names[0], "onnx:fixture-1");
        assert_eq!(names[4], "onnx:fixture-1+aci");
        assert_eq!(r.forecast[0].kind, "model");
        // The fixture repeats the last value: its p50 is the `last` baseline's.
        let last = r.forecast.iter().find(|s| s.predictor == "last").unwrap();
        assert!((r.forecast[0].mae_p50 - last.mae_p50).abs() < 1e-3 * (1.0 + last.mae_p50));
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("actual") && text.contains("xz"),
            "{}",
            &text[..300]
        );
        assert!(text.matches("<polyline").count() >= 2 || text.matches("<path").count() >= 2);
        // An unknown workload is an error naming it.
        o.plot_workload = Some("no-such-program".into());
        let e = run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no-such-program"), "{e}");
        // A model the build cannot honour is an error naming the file.
        let o = opts(Some("onnx/forecast_nan.onnx"), None);
        let e = run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("forecast_nan.onnx"), "{e}");
        // Buckets of another length than the model's: refused, as the agent refuses them.
        let mut o = opts(Some("onnx/forecast_fixture.onnx"), None);
        let own = crate::predict::schema::Schema::of_onnx(
            "fixture",
            &std::fs::read(fixture("onnx/forecast_fixture.onnx")).unwrap(),
        )
        .unwrap()
        .interval_ms
        .unwrap();
        o.interval_ms = Some(own * 2);
        let e = run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("forecast_fixture.onnx") && e.contains(&format!("{own} ms")),
            "{e}"
        );
        o.interval_ms = Some(own);
        run(
            &[fixture("compress.umbra")],
            &cfg,
            &o,
            default_runtime().as_ref(),
        )
        .unwrap();
    }
}
