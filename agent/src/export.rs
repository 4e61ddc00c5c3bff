//! Recordings as rows, for training and for spreadsheets: shadow data points (`csv`,
//! `jsonl`) and the feature rows of `models/CONTRACT.md` (`forecast`, `requests`), computed
//! by the very code the live predict stage runs.

use std::{io::Write, path::Path};

use crate::{
    aggregate::{Aggregator, GroupBy, ShadowPoint, Window},
    capture::{CaptureItem, Lifecycle, Tick},
    predict::{
        Batch, BucketConfig, Featurizer, Target,
        features::{FEATURES, N_FEATURES},
        profiles::{OUTCOMES, ProfileStore},
        request::{Completed, RequestFeaturizer, RequestTracker},
    },
    record::{Reader, RecordError},
};

pub const CSV_HEADER: &str = "timestamp_ms,interval_ms,workload,name,processes,\
execs,conn_accepted,conn_opened,net_rx_bytes,syscalls,\
cpu_ns,cpu_cores,voluntary_switches,involuntary_switches,runq_p50_ns,runq_p99_ns,\
rss_bytes,page_faults,read_bytes,write_bytes,block_read_bytes,block_write_bytes,block_p99_ns,\
net_tx_bytes,profile_net_rx_bytes,retransmits";

/// A text field of a CSV row: quoted, quotes doubled.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// One CSV row; text fields are quoted, absent values are empty.
pub fn csv_row(p: &ShadowPoint) -> String {
    let o = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let q = quote;
    let (i, r) = (&p.input, &p.profile);
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        p.timestamp_ms,
        p.interval_ms,
        q(&p.workload.0),
        q(&p.name),
        p.processes,
        i.execs,
        i.conn_accepted,
        i.conn_opened,
        i.net_rx_bytes,
        i.syscalls,
        r.cpu_ns,
        r.cpu_cores,
        r.voluntary_switches,
        r.involuntary_switches,
        o(r.runq_p50_ns),
        o(r.runq_p99_ns),
        r.rss_bytes,
        r.page_faults,
        r.read_bytes,
        r.write_bytes,
        r.block_read_bytes,
        r.block_write_bytes,
        o(r.block_p99_ns),
        r.net_tx_bytes,
        r.net_rx_bytes,
        r.retransmits,
    )
}

/// What a recording yields, in order: lifecycle events as they were drained, and each
/// tick with the window aggregate made of it.
pub enum Step<'a> {
    Event(&'a Lifecycle),
    Window(&'a Tick, &'a Window),
}

/// Drives a recording through aggregate, synchronously; `each` sees every event and
/// window. A damaged recording delivers every window before the damage, then its error;
/// one cut short (its last frame half-written: the recorder killed, the disk full) ends
/// where its last whole frame does, said once per file in a warning.
pub fn replay<E: From<RecordError>>(
    path: &Path,
    group_by: GroupBy,
    mut each: impl FnMut(Step<'_>) -> Result<(), E>,
) -> Result<u64, E> {
    let reader = Reader::open(path)?;
    let mut agg = Aggregator::new(group_by, reader.header().interval_ms);
    let mut ticks = 0;
    for item in reader {
        let item = match item {
            Ok(item) => item,
            Err(e @ RecordError::Truncated { .. }) => {
                cut_short(path, &e);
                break;
            }
            Err(e) => return Err(e.into()),
        };
        match item {
            CaptureItem::Event(e) => each(Step::Event(&e))?,
            CaptureItem::Tick(t) => {
                let w = agg.tick(&t);
                each(Step::Window(&t, &w))?;
                ticks += 1;
            }
        }
    }
    Ok(ticks)
}

/// Warns, once per file in this process, that a recording was read only up to where it
/// was cut short.
fn cut_short(path: &Path, e: &RecordError) {
    static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.iter().any(|p| p == path) {
        warned.push(path.to_path_buf());
        tracing::warn!("{e}; what they hold is used");
    }
}

/// The interval of a recording, ms, from its header.
pub fn recording_interval_ms(path: &Path) -> Result<u32, RecordError> {
    Ok(Reader::open(path)?.header().interval_ms)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(
        "--interval-ms {interval_ms} is not a multiple of the interval of {path} ({recorded} ms): choose a multiple of {recorded}"
    )]
    Interval {
        path: String,
        interval_ms: u64,
        recorded: u32,
    },
    #[error("writing the export: {0}")]
    Output(#[from] std::io::Error),
}

/// The header of `--format forecast`.
pub fn forecast_header() -> String {
    let mut h = String::from("recording,workload,name,bucket_end_ms");
    for f in FEATURES {
        h.push(',');
        h.push_str(f);
    }
    for t in Target::ALL {
        h.push_str(",y_");
        h.push_str(t.name());
    }
    h
}

/// Rows of one closed bucket: every tracked workload's newest bucket, its features and
/// its targets.
pub fn forecast_rows(out: &mut impl Write, recording: &str, b: &Batch<'_>) -> std::io::Result<()> {
    let rec = quote(recording);
    for s in &b.series {
        let Some(bucket) = s.buckets.last() else {
            continue;
        };
        write!(
            out,
            "{rec},{},{},{}",
            quote(&s.workload.0),
            quote(s.name),
            bucket.end_ms
        )?;
        for v in &bucket.features[..N_FEATURES] {
            write!(out, ",{v}")?;
        }
        for t in Target::ALL {
            write!(out, ",{}", bucket.target(t) as f32)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `umbra export --format forecast`: every recording's feature rows at `interval_ms`,
/// one header. Rows are dense: every bucket from a workload's first one to the recording's
/// end (nothing is forgotten within a recording). Returns the rows written.
pub fn forecast(
    recordings: &[impl AsRef<Path>],
    group_by: GroupBy,
    interval_ms: u64,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    for r in recordings {
        let r = r.as_ref();
        let recorded = recording_interval_ms(r)?;
        if recorded == 0 || interval_ms == 0 || !interval_ms.is_multiple_of(recorded as u64) {
            return Err(ExportError::Interval {
                path: r.display().to_string(),
                interval_ms,
                recorded,
            });
        }
    }
    writeln!(out, "{}", forecast_header())?;
    let mut rows = 0u64;
    for r in recordings {
        let r = r.as_ref();
        let name = r.display().to_string();
        let mut f = Featurizer::new(BucketConfig {
            interval_ms,
            depth: 1,
            forget_after: u32::MAX,
        });
        let mut err: Option<std::io::Error> = None;
        replay(r, group_by, |s| {
            if let Step::Window(_, w) = s {
                f.push(w, &mut |b| {
                    if err.is_none() {
                        rows += b.series.len() as u64;
                        err = forecast_rows(out, &name, b).err();
                    }
                });
            }
            match err.take() {
                Some(e) => Err(ExportError::Output(e)),
                None => Ok(()),
            }
        })?;
    }
    Ok(rows)
}

/// Executables whose runs the export's profile store keeps (far more than a recording holds).
const EXPORT_PROFILE_KEYS: usize = 1 << 20;

/// The header of `--format requests`.
pub fn requests_header(f: &RequestFeaturizer) -> String {
    let mut h = String::from("recording,key,exe,exec_ns");
    for n in f.names() {
        h.push(',');
        h.push_str(n);
    }
    for t in OUTCOMES {
        h.push_str(",y_");
        h.push_str(t);
    }
    h
}

/// One request's row.
pub fn request_row(out: &mut impl Write, recording: &str, c: &Completed) -> std::io::Result<()> {
    write!(
        out,
        "{},{},{},{}",
        quote(recording),
        quote(&c.facts.key),
        quote(&c.facts.exe),
        c.exec_ns
    )?;
    for v in &c.features {
        write!(out, ",{v}")?;
    }
    for i in 0..OUTCOMES.len() {
        write!(out, ",{}", c.outcome.get(i) as f32)?;
    }
    writeln!(out)
}

/// `umbra export --format requests`: one row per completed request of every recording, in
/// the order they completed, with the profile store built up over the recordings in the
/// order given, as the live agent would. Returns the rows written.
pub fn requests(
    recordings: &[impl AsRef<Path>],
    group_by: GroupBy,
    hash_buckets: usize,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let featurizer = RequestFeaturizer::new(hash_buckets);
    writeln!(out, "{}", requests_header(&featurizer))?;
    each_request(recordings, group_by, &featurizer, |name, c, _| {
        request_row(out, name, c).map_err(ExportError::from)
    })
}

/// Every completed request of `recordings`, in the order they completed, given to `each`
/// with its recording's name and the profile store as it was before the request was
/// learned; the store is built up over the recordings in the order given, as the live
/// agent would. `umbra export --format requests` and `umbra eval` both go through it.
/// Returns the requests seen.
pub fn each_request<E: From<RecordError>>(
    recordings: &[impl AsRef<Path>],
    group_by: GroupBy,
    featurizer: &RequestFeaturizer,
    mut each: impl FnMut(&str, &Completed, &ProfileStore) -> Result<(), E>,
) -> Result<u64, E> {
    let mut profiles = ProfileStore::in_memory(EXPORT_PROFILE_KEYS);
    let mut rows = 0u64;
    for r in recordings {
        let r = r.as_ref();
        let name = r.display().to_string();
        let mut tracker = RequestTracker::new(featurizer.clone());
        let mut done: Vec<Completed> = Vec::new();
        replay(r, group_by, |s| {
            match s {
                Step::Event(e) => done.extend(tracker.event(e, &profiles)),
                Step::Window(t, w) => done.extend(tracker.tick(t, w, &profiles)),
            }
            for c in done.drain(..) {
                each(&name, &c, &profiles)?;
                rows += 1;
                // In memory: recording a run cannot fail.
                let _ = profiles.record(&c.facts.key, c.name(), &c.facts.parent, c.run());
            }
            Ok::<(), E>(())
        })?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        aggregate::{ProductionInput, ResourceProfile, WorkloadId},
        predict::request::RequestFeaturizer,
    };

    #[test]
    fn a_row_has_as_many_fields_as_the_header_and_quotes_text() {
        let p = ShadowPoint {
            timestamp_ms: 1,
            interval_ms: 1000,
            workload: WorkloadId("exe:sha256:ab".into()),
            name: "we\"ird,name".into(),
            processes: 2,
            input: ProductionInput::default(),
            profile: ResourceProfile::default(),
        };
        let row = csv_row(&p);
        assert!(row.contains("\"we\"\"ird,name\""));
        let unquoted = row.replace("\"we\"\"ird,name\"", "x");
        assert_eq!(unquoted.split(',').count(), CSV_HEADER.split(',').count());
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    #[test]
    fn forecast_rows_of_a_real_recording_follow_the_contract() {
        let mut out = Vec::new();
        let rows = forecast(&[fixture("compress.umbra")], GroupBy::Exe, 2000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), 4 + N_FEATURES + 4);
        assert_eq!(header[4], "cpu_cores");
        assert_eq!(
            header[header.len() - 4..],
            ["y_cpu", "y_memory", "y_io", "y_net"]
        );
        let body: Vec<&str> = lines.collect();
        assert_eq!(body.len() as u64, rows);
        assert!(rows > 0);
        // Buckets end on multiples of the interval, and each workload's are consecutive.
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        let mut cpu_seen = 0.0f64;
        for l in &body {
            // Quoted fields here hold no commas (paths and sha256 keys).
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), header.len(), "{l}");
            let end: u64 = f[3].parse().unwrap();
            assert_eq!(end % 2000, 0);
            if let Some(prev) = last.insert(f[1].to_string(), end) {
                assert_eq!(end, prev + 2000, "{l}");
            }
            let cpu: f64 = f[4].parse().unwrap();
            let y_cpu: f64 = f[header.len() - 4].parse().unwrap();
            assert_eq!(cpu, y_cpu);
            cpu_seen += cpu;
        }
        assert!(cpu_seen > 0.5, "the compressors used CPU: {cpu_seen}");
        // Dense: every workload's rows run to the recording's last bucket.
        let end = last.values().max().copied().unwrap();
        assert!(last.values().all(|&e| e == end), "{last:?}");
    }

    #[test]
    fn request_rows_of_a_real_recording_follow_the_contract() {
        let mut out = Vec::new();
        // The compression fixture runs gzip and xz; the compile one runs cc again and again.
        let recs = [fixture("compress.umbra"), fixture("compile.umbra")];
        let rows = requests(&recs, GroupBy::Exe, 16, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let f = RequestFeaturizer::new(16);
        assert_eq!(header.len(), 4 + f.names().len() + 4);
        assert_eq!(header[4], "profile_runs");
        assert_eq!(
            header[header.len() - 4..],
            [
                "y_cpu_seconds",
                "y_peak_rss_bytes",
                "y_duration_seconds",
                "y_io_bytes"
            ]
        );
        let body: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(body.len() as u64, rows);
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let named = |exe: &str| {
            body.iter()
                .filter(|r| r[2].trim_matches('"').ends_with(exe))
                .collect::<Vec<_>>()
        };
        // gzip ran once on 60 MB (xz after it, still running when the recording ended, is
        // no completed request): CPU seconds, memory, time and bytes.
        assert!(named("/xz").is_empty());
        let r = named("/gzip");
        assert_eq!(r.len(), 1, "{r:?}");
        let v = |n: &str| r[0][col(n)].parse::<f64>().unwrap();
        assert!(r[0][1].starts_with("\"exe:sha256:"), "{:?}", r[0][1]);
        assert!(v("y_cpu_seconds") > 0.2);
        assert!(v("y_duration_seconds") >= v("y_cpu_seconds") * 0.9);
        assert!(v("y_peak_rss_bytes") > 1e6);
        assert!(v("y_io_bytes") > 50e6, "read 60 MB");
        assert_eq!(v("profile_runs"), 0.0, "the first run");
        // cc1 (the compiler proper) ran many times: later runs see the earlier ones.
        let cc1 = named("/cc1");
        assert!(cc1.len() >= 5, "{}", cc1.len());
        let runs: Vec<f64> = cc1
            .iter()
            .map(|r| r[col("profile_runs")].parse().unwrap())
            .collect();
        assert_eq!(runs[0], 0.0);
        assert!(runs.windows(2).all(|w| w[1] >= w[0]), "{runs:?}");
        assert!(*runs.last().unwrap() >= 4.0, "{runs:?}");
        let last = cc1.last().unwrap();
        assert!(last[col("profile_cpu_seconds_p50")].parse::<f64>().unwrap() > 0.0);
    }

    #[test]
    fn an_interval_that_is_not_a_multiple_is_refused_naming_the_recording() {
        let e = forecast(
            &[fixture("idle.umbra")],
            GroupBy::Exe,
            1500,
            &mut Vec::new(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("idle.umbra") && msg.contains("1500"), "{msg}");
    }

    #[test]
    fn a_recording_cut_short_is_read_up_to_the_cut_and_a_damaged_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("idle.umbra")).unwrap();
        let windows = |p: &Path| replay::<RecordError>(p, GroupBy::Exe, |_| Ok(()));
        let whole = windows(&fixture("idle.umbra")).unwrap();
        let cut = d.path().join("cut.umbra");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let n = windows(&cut).unwrap();
        assert!(n > 0 && n < whole, "{n} of {whole} windows");
        let mut out = Vec::new();
        forecast(&[&cut], GroupBy::Exe, 1000, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().lines().count() > 1);
        // A frame whose bytes changed is damage, not an end: an error naming the file.
        let bad = d.path().join("bad.umbra");
        let mut b = bytes.clone();
        *b.last_mut().unwrap() ^= 0xff;
        std::fs::write(&bad, &b).unwrap();
        let e = forecast(&[&bad], GroupBy::Exe, 1000, &mut Vec::new()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("bad.umbra") && msg.contains("damaged"),
            "{msg}"
        );
    }
}
