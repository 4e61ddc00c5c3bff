//! The profile store: per executable key, its last ≤ 64 completed runs (requests), so a
//! new exec of a known executable gets a prediction from its past. Bounded (keys beyond
//! `max_keys` go least recently used first), versioned, and crash-safe on disk:
//!
//! - `profiles.bin`: a snapshot. `UMBRAPRF` (8 bytes), format version (u16 LE), reserved
//!   (u16), payload length (u32 LE), CRC32 of the payload (u32 LE), then the postcard
//!   payload ([`Snapshot`]). Written to a temporary file, synced, renamed over the old one.
//! - `profiles.journal`: runs completed since the snapshot: `UMBRAPRJ` (8 bytes), format
//!   version (u16 LE), reserved (u16), then a frame per run,
//!   `[length u32 LE][CRC32 u32 LE][postcard JournalEntry]`, appended as it completes. A
//!   torn tail (a crash mid-write) is cut at the last whole frame and counted.
//!
//! Version 2 keeps with each run what it used of the prediction made at its exec
//! ([`Run::used`]: its executable's record, which decides its next requests' tier), so
//! the record survives restarts as the runs do. Version 1 files (no `used`; a journal of
//! frames without the header) are read, and the store is rewritten as version 2 when
//! opened.
//!
//! A snapshot that does not decode is an error naming the file and what is wrong; the
//! agent moves it aside (`profiles.bin.corrupt`) and starts empty, so nothing is
//! overwritten.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    LEVELS,
    framed::{Format, Unframed, write_whole},
};

pub const MAGIC: &[u8; 8] = b"UMBRAPRF";
/// The format version this build writes, and the newest it reads (every earlier one too).
pub const VERSION: u16 = 2;
/// The journal's header: its magic, then the version (u16 LE) and two reserved bytes.
pub const JOURNAL_MAGIC: &[u8; 8] = b"UMBRAPRJ";
const JOURNAL_HEADER: usize = 12;
/// Completed runs kept per key.
pub const RUNS_KEPT: usize = 64;
const FORMAT: Format = Format {
    magic: MAGIC,
    version: VERSION,
};
const MAX_FRAME: u32 = 1 << 16;

/// What a request (one exec'd image until it exits or execs again) used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: f64,
    pub duration_seconds: f64,
    pub io_bytes: f64,
}

/// A peak RSS below this (bytes) is no measurement — every exec'd program maps more — but
/// a run no sample saw with its memory: one shorter than an interval on a kernel before
/// 6.16, whose exit tracepoint comes after the memory map is gone. Such runs count for
/// every outcome but peak RSS. Training uses the same bound (`MEASURED_RSS` in
/// models/umbra_train/request.py); change both together.
pub const MEASURED_RSS: f32 = 65_536.0;

/// Index of peak RSS in [`OUTCOMES`].
pub const PEAK_RSS: usize = 1;

/// The four outcomes in the contract's order.
pub const OUTCOMES: [&str; 4] = [
    "cpu_seconds",
    "peak_rss_bytes",
    "duration_seconds",
    "io_bytes",
];

impl Outcome {
    pub fn get(&self, i: usize) -> f64 {
        match i {
            0 => self.cpu_seconds,
            1 => self.peak_rss_bytes,
            2 => self.duration_seconds,
            _ => self.io_bytes,
        }
    }

    pub fn from_array(v: [f64; 4]) -> Outcome {
        Outcome {
            cpu_seconds: v[0],
            peak_rss_bytes: v[1],
            duration_seconds: v[2],
            io_bytes: v[3],
        }
    }
}

/// One completed run, as kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// cpu seconds, peak RSS bytes, duration seconds, I/O bytes.
    pub outcome: [f32; 4],
    /// Bytes of the input files named in argv.
    pub input_bytes: u64,
    /// Wall clock at the end, ms since the Unix epoch.
    pub ended_ms: u64,
    /// What it used of the prediction made at its exec — CPU seconds and peak RSS, each
    /// over the prediction's p90 (`per_request::used`) — when one was made.
    pub used: Option<[f32; 2]>,
}

impl Run {
    /// Whether this run measured outcome `i` (see [`MEASURED_RSS`]).
    pub fn measured(&self, i: usize) -> bool {
        i != PEAK_RSS || self.outcome[i] >= MEASURED_RSS
    }

    pub fn new(o: &Outcome, input_bytes: u64, ended_ms: u64) -> Run {
        let f = |v: f64| {
            if v.is_finite() {
                v.max(0.0) as f32
            } else {
                0.0
            }
        };
        Run {
            outcome: [
                f(o.cpu_seconds),
                f(o.peak_rss_bytes),
                f(o.duration_seconds),
                f(o.io_bytes),
            ],
            input_bytes,
            ended_ms,
            used: None,
        }
    }
}

/// Version 1's shapes, read and converted.
mod v1 {
    use std::collections::VecDeque;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Run {
        outcome: [f32; 4],
        input_bytes: u64,
        ended_ms: u64,
    }

    impl From<Run> for super::Run {
        fn from(r: Run) -> super::Run {
            super::Run {
                outcome: r.outcome,
                input_bytes: r.input_bytes,
                ended_ms: r.ended_ms,
                used: None,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct Profile {
        name: String,
        parent: String,
        runs: VecDeque<Run>,
        total_runs: u64,
        last_ms: u64,
    }

    #[derive(Deserialize)]
    pub struct Snapshot {
        profiles: Vec<(String, Profile)>,
    }

    impl From<Snapshot> for super::Snapshot {
        fn from(s: Snapshot) -> super::Snapshot {
            let profiles = s.profiles.into_iter().map(|(k, p)| {
                let p = super::Profile {
                    name: p.name,
                    parent: p.parent,
                    runs: p.runs.into_iter().map(Into::into).collect(),
                    total_runs: p.total_runs,
                    last_ms: p.last_ms,
                };
                (k, p)
            });
            super::Snapshot {
                profiles: profiles.collect(),
            }
        }
    }

    #[derive(Deserialize)]
    pub struct JournalEntry {
        key: String,
        name: String,
        parent: String,
        run: Run,
    }

    impl From<JournalEntry> for super::JournalEntry {
        fn from(e: JournalEntry) -> super::JournalEntry {
            super::JournalEntry {
                key: e.key,
                name: e.name,
                parent: e.parent,
                run: e.run.into(),
            }
        }
    }
}

/// One executable's past.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The executable's file name (or script's), for people and for similar executables.
    pub name: String,
    /// The parent's executable file name at the last run.
    pub parent: String,
    /// The last runs, oldest first (at most [`RUNS_KEPT`]).
    pub runs: VecDeque<Run>,
    /// Runs completed in all (also those no longer kept).
    pub total_runs: u64,
    pub last_ms: u64,
}

impl Profile {
    /// Quantiles of outcome `i` (index in [`OUTCOMES`]) at `levels`, numpy's linear
    /// interpolation, over the runs that measured it; zeros without any.
    pub fn quantiles(&self, i: usize, levels: &[f64]) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.measured(i))
            .map(|r| r.outcome[i] as f64)
            .collect();
        quantiles(&mut v, levels)
    }

    /// p10/p50/p90 of the input bytes its runs' argv named.
    pub fn input_bands(&self) -> [f64; 3] {
        let mut inputs: Vec<f64> = self.runs.iter().map(|r| r.input_bytes as f64).collect();
        let q = quantiles(&mut inputs, &LEVELS);
        [q[0], q[1], q[2]]
    }

    /// p10/p50/p90 of every outcome, `[outcome][level]`.
    pub fn bands(&self) -> [[f64; 3]; 4] {
        let mut out = [[0.0; 3]; 4];
        for (i, o) in out.iter_mut().enumerate() {
            let q = self.quantiles(i, &LEVELS);
            o.copy_from_slice(&q);
        }
        out
    }
}

/// Quantiles of `v` at `levels` (each in 0..=1) with numpy's default (linear)
/// interpolation; zeros when `v` is empty. Sorts `v`.
pub fn quantiles(v: &mut [f64], levels: &[f64]) -> Vec<f64> {
    if v.is_empty() {
        return vec![0.0; levels.len()];
    }
    v.sort_unstable_by(f64::total_cmp);
    levels
        .iter()
        .map(|q| {
            let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        })
        .collect()
}

/// The snapshot's payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub profiles: Vec<(String, Profile)>,
}

/// One journal frame: a run of `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub key: String,
    pub name: String,
    pub parent: String,
    pub run: Run,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "profile store {path} is damaged: {what}; it is kept aside as {path}.corrupt and the store starts empty"
    )]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "profile store {path} is format version {found}; this build reads version {VERSION}: run a newer umbra, or move the file away to start empty"
    )]
    NewerVersion { path: PathBuf, found: u16 },
}

/// What opening the store found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub keys: usize,
    pub journal_runs: u64,
    /// Bytes of a torn journal tail that were cut.
    pub journal_cut_bytes: u64,
}

/// Decodes a snapshot file's bytes; `path` names it in errors.
pub fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Snapshot, ProfileError> {
    let corrupt = |what: String| ProfileError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let (version, payload) = match FORMAT.unframe(bytes) {
        Ok(v) => v,
        Err(Unframed::Newer(found)) => {
            return Err(ProfileError::NewerVersion {
                path: path.to_path_buf(),
                found,
            });
        }
        Err(Unframed::Corrupt(what)) => return Err(corrupt(what)),
    };
    let undecoded = |e: postcard::Error| corrupt(format!("payload does not decode: {e}"));
    let snap: Snapshot = if version == 1 {
        postcard::from_bytes::<v1::Snapshot>(payload)
            .map_err(undecoded)?
            .into()
    } else {
        postcard::from_bytes(payload).map_err(undecoded)?
    };
    if let Some((k, p)) = snap.profiles.iter().find(|(_, p)| p.runs.len() > RUNS_KEPT) {
        return Err(corrupt(format!(
            "key {k} holds {} runs (at most {RUNS_KEPT})",
            p.runs.len()
        )));
    }
    Ok(snap)
}

/// A snapshot as file bytes.
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    FORMAT.frame(&postcard::to_stdvec(s).unwrap_or_default())
}

/// A journal's bytes as read: its entries, where the last whole frame ends, and its
/// format version (0: a header cut short, or none at all in an empty file).
#[derive(Debug, Default, PartialEq)]
pub struct Journal {
    pub entries: Vec<JournalEntry>,
    pub good: usize,
    pub version: u16,
}

/// The journal's header.
fn journal_header() -> [u8; JOURNAL_HEADER] {
    let mut h = [0u8; JOURNAL_HEADER];
    h[..8].copy_from_slice(JOURNAL_MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Decodes a journal's bytes: version 1's frames (no header) or a later version's header
/// and frames; a version newer than this build's is an error naming it.
pub fn decode_journal(path: &Path, bytes: &[u8]) -> Result<Journal, ProfileError> {
    let header = bytes.len().min(JOURNAL_HEADER);
    if bytes.is_empty() || bytes[..header.min(8)] != JOURNAL_MAGIC[..header.min(8)] {
        // Version 1: frames from the first byte (a frame's length never reads as the
        // magic: it is far above the largest frame).
        let (entries, good) = decode_frames::<v1::JournalEntry>(bytes, 0);
        let version = if bytes.is_empty() { 0 } else { 1 };
        return Ok(Journal {
            entries,
            good,
            version,
        });
    }
    if bytes.len() < JOURNAL_HEADER {
        // A header cut short (a crash as the journal started over): nothing after it.
        return Ok(Journal::default());
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version > VERSION {
        return Err(ProfileError::NewerVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let (entries, good) = decode_frames::<JournalEntry>(bytes, JOURNAL_HEADER);
    Ok(Journal {
        entries,
        good,
        version,
    })
}

/// The whole frames of `T` in `bytes` from `at`, and where the last one ends.
fn decode_frames<T: Into<JournalEntry> + serde::de::DeserializeOwned>(
    bytes: &[u8],
    mut at: usize,
) -> (Vec<JournalEntry>, usize) {
    let mut out = Vec::new();
    while bytes.len() >= at + 8 {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let want = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let end = at + 8 + len as usize;
        if len > MAX_FRAME || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + 8..end];
        if crc32fast::hash(payload) != want {
            break;
        }
        match postcard::from_bytes::<T>(payload) {
            Ok(e) => out.push(e.into()),
            Err(_) => break,
        }
        at = end;
    }
    (out, at)
}

fn journal_frame(e: &JournalEntry) -> Vec<u8> {
    let payload = postcard::to_stdvec(e).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The store: in memory, and (when opened on a directory) on disk.
pub struct ProfileStore {
    max_keys: usize,
    profiles: HashMap<String, Profile>,
    dir: Option<PathBuf>,
    journal: Option<File>,
    /// Runs journaled since the last snapshot.
    pub unsaved: u64,
    /// Keys with runs not yet published ([`ProfileStore::take_changed`]).
    changed: BTreeSet<String>,
}

impl ProfileStore {
    /// A store without a file (`umbra export`, `umbra eval`, tests).
    pub fn in_memory(max_keys: usize) -> ProfileStore {
        ProfileStore {
            max_keys: max_keys.max(1),
            profiles: HashMap::new(),
            dir: None,
            journal: None,
            unsaved: 0,
            changed: BTreeSet::new(),
        }
    }

    pub fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join("profiles.bin")
    }

    pub fn journal_path(dir: &Path) -> PathBuf {
        dir.join("profiles.journal")
    }

    /// Opens (or creates) the store in `dir`: the snapshot, then the journal's runs on top.
    /// A damaged snapshot is moved aside and reported in the error; call again to start
    /// empty.
    pub fn open(dir: &Path, max_keys: usize) -> Result<(ProfileStore, Loaded), ProfileError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ProfileError::Io {
                path: path.clone(),
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let snap_path = Self::snapshot_path(dir);
        let mut store = ProfileStore::in_memory(max_keys);
        match fs::read(&snap_path) {
            Ok(bytes) => match decode_snapshot(&snap_path, &bytes) {
                Ok(s) => store.profiles = s.profiles.into_iter().collect(),
                Err(e @ ProfileError::Corrupt { .. }) => {
                    let aside = snap_path.with_extension("bin.corrupt");
                    fs::rename(&snap_path, &aside).map_err(io(&snap_path))?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&snap_path)(e)),
        }
        let jpath = Self::journal_path(dir);
        let mut loaded = Loaded::default();
        let mut version = 0;
        match fs::read(&jpath) {
            Ok(bytes) => {
                let j = decode_journal(&jpath, &bytes)?;
                version = j.version;
                let good = j.good;
                loaded.journal_runs = j.entries.len() as u64;
                loaded.journal_cut_bytes = (bytes.len() - good) as u64;
                for e in j.entries {
                    store.insert(&e.key, &e.name, &e.parent, e.run);
                }
                if good < bytes.len() && version == VERSION {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&jpath)
                        .map_err(io(&jpath))?;
                    f.set_len(good as u64).map_err(io(&jpath))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&jpath)(e)),
        }
        store.unsaved = loaded.journal_runs;
        store.journal = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&jpath)
                .map_err(io(&jpath))?,
        );
        store.dir = Some(dir.to_path_buf());
        store.evict();
        // Published once after each start (a hub may not have them).
        store.changed = store.profiles.keys().cloned().collect();
        if version != VERSION {
            // A new store, or an earlier version's: written as this one's (the snapshot
            // holds every run, the journal starts over with its header).
            store.save()?;
        }
        loaded.keys = store.profiles.len();
        Ok((store, loaded))
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Profile> {
        self.profiles.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Profile)> {
        self.profiles.iter()
    }

    fn insert(&mut self, key: &str, name: &str, parent: &str, run: Run) {
        let p = self.profiles.entry(key.to_string()).or_default();
        name.clone_into(&mut p.name);
        parent.clone_into(&mut p.parent);
        if p.runs.len() >= RUNS_KEPT {
            p.runs.pop_front();
        }
        p.runs.push_back(run);
        p.total_runs += 1;
        p.last_ms = p.last_ms.max(run.ended_ms);
        self.changed.insert(key.to_string());
    }

    /// Up to `max` profiles with runs since they were last taken (each kept one is, once
    /// after the store opens), and how many more there are.
    pub fn take_changed(&mut self, max: usize) -> (Vec<(String, Profile)>, usize) {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(k) = self.changed.pop_first() else {
                break;
            };
            if let Some(p) = self.profiles.get(&k) {
                out.push((k, p.clone()));
            }
        }
        (out, self.changed.len())
    }

    /// Lets go of the least recently used keys beyond `max_keys`.
    fn evict(&mut self) {
        let over = self.profiles.len().saturating_sub(self.max_keys);
        let ages = self.profiles.iter().map(|(k, p)| (p.last_ms, k.clone()));
        for k in crate::oldest(ages, over) {
            self.profiles.remove(&k);
            self.changed.remove(&k);
        }
    }

    /// A completed run of `key`: kept in memory and appended to the journal.
    pub fn record(
        &mut self,
        key: &str,
        name: &str,
        parent: &str,
        run: Run,
    ) -> Result<(), ProfileError> {
        self.insert(key, name, parent, run);
        if self.profiles.len() > self.max_keys {
            // Evict in bulk (a tenth), not once per new key.
            let keep = self.max_keys;
            self.max_keys = keep - keep / 10;
            self.evict();
            self.max_keys = keep;
        }
        let Some(j) = &mut self.journal else {
            return Ok(());
        };
        self.unsaved += 1;
        let frame = journal_frame(&JournalEntry {
            key: key.into(),
            name: name.into(),
            parent: parent.into(),
            run,
        });
        j.write_all(&frame).map_err(|source| ProfileError::Io {
            path: self
                .dir
                .as_deref()
                .map(Self::journal_path)
                .unwrap_or_default(),
            source,
        })
    }

    /// Everything, as a snapshot (sorted by key).
    pub fn snapshot(&self) -> Snapshot {
        let mut profiles: Vec<(String, Profile)> = self
            .profiles
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        profiles.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot { profiles }
    }

    /// Writes the snapshot (temporary file, sync, rename) and empties the journal.
    pub fn save(&mut self) -> Result<(), ProfileError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        write_whole(
            &Self::snapshot_path(&dir),
            &encode_snapshot(&self.snapshot()),
        )
        .map_err(|(path, source)| ProfileError::Io { path, source })?;
        // The snapshot holds every journaled run now: the journal starts over.
        if let Some(j) = &mut self.journal {
            let io = |source| ProfileError::Io {
                path: Self::journal_path(&dir),
                source,
            };
            j.set_len(0).map_err(io)?;
            // Appended: at the start of the emptied file.
            j.write_all(&journal_header()).map_err(io)?;
        }
        self.unsaved = 0;
        Ok(())
    }
}

impl ProfileStore {
    /// The store in `dir` as it is on disk, read without changing anything (for
    /// `umbra profiles`): the snapshot and the journal's whole frames.
    pub fn read(dir: &Path) -> Result<ProfileStore, ProfileError> {
        let mut store = ProfileStore::in_memory(usize::MAX);
        let snap_path = Self::snapshot_path(dir);
        match fs::read(&snap_path) {
            Ok(bytes) => {
                store.profiles = decode_snapshot(&snap_path, &bytes)?
                    .profiles
                    .into_iter()
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProfileError::Io {
                    path: snap_path,
                    source,
                });
            }
        }
        let jpath = Self::journal_path(dir);
        match fs::read(&jpath) {
            Ok(bytes) => {
                for e in decode_journal(&jpath, &bytes)?.entries {
                    store.insert(&e.key, &e.name, &e.parent, e.run);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProfileError::Io {
                    path: jpath,
                    source,
                });
            }
        }
        Ok(store)
    }
}

/// One profile as `umbra profiles --json` prints it.
#[derive(Serialize)]
struct Listed<'a> {
    key: &'a str,
    name: &'a str,
    parent: &'a str,
    runs: usize,
    total_runs: u64,
    last_ms: u64,
    /// p10, p50, p90 of each outcome over the kept runs.
    cpu_seconds: [f64; 3],
    peak_rss_bytes: [f64; 3],
    duration_seconds: [f64; 3],
    io_bytes: [f64; 3],
    input_bytes: [f64; 3],
}

/// `umbra profiles [--json]`: the store under `<state_dir>/profiles`, busiest first.
pub fn print(state_dir: &Path, json: bool, out: &mut impl Write) -> Result<(), ProfileError> {
    let dir = state_dir.join("profiles");
    let store = ProfileStore::read(&dir)?;
    let mut all: Vec<(&String, &Profile)> = store.iter().collect();
    all.sort_by(|a, b| b.1.total_runs.cmp(&a.1.total_runs).then(a.0.cmp(b.0)));
    let io = |source| ProfileError::Io {
        path: dir.clone(),
        source,
    };
    if !json {
        writeln!(
            out,
            "{:<24} {:>6} {:>8} {:>26} {:>26} {:>26} {:>26}",
            "executable",
            "runs",
            "total",
            "cpu s p10/p50/p90",
            "peak RSS MiB p10/p50/p90",
            "duration s p10/p50/p90",
            "I/O MiB p10/p50/p90"
        )
        .map_err(io)?;
    }
    for (key, p) in all {
        let b = p.bands();
        let iq = p.input_bands();
        if json {
            let l = Listed {
                key,
                name: &p.name,
                parent: &p.parent,
                runs: p.runs.len(),
                total_runs: p.total_runs,
                last_ms: p.last_ms,
                cpu_seconds: b[0],
                peak_rss_bytes: b[1],
                duration_seconds: b[2],
                io_bytes: b[3],
                input_bytes: [iq[0], iq[1], iq[2]],
            };
            serde_json::to_writer(&mut *out, &l).map_err(|e| io(std::io::Error::other(e)))?;
            writeln!(out).map_err(io)?;
        } else {
            let three = |v: [f64; 3], scale: f64| {
                format!(
                    "{:.2}/{:.2}/{:.2}",
                    v[0] / scale,
                    v[1] / scale,
                    v[2] / scale
                )
            };
            let mib = 1048576.0;
            writeln!(
                out,
                "{:<24} {:>6} {:>8} {:>26} {:>26} {:>26} {:>26}",
                crate::view::clip(if p.name.is_empty() { key } else { &p.name }, 24),
                p.runs.len(),
                p.total_runs,
                three(b[0], 1.0),
                three(b[1], mib),
                three(b[2], 1.0),
                three(b[3], mib),
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn umbra_profiles_lists_the_store_without_changing_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("profiles");
        let (mut s, _) = ProfileStore::open(&dir, 100).unwrap();
        for i in 0..5 {
            s.record("exe:sha256:aa", "xz", "sh", run(i as f32, i))
                .unwrap();
        }
        s.save().unwrap();
        s.record("exe:sha256:bb", "gzip", "sh", run(1.0, 9))
            .unwrap();
        drop(s);
        let before = fs::read(ProfileStore::journal_path(&dir)).unwrap();
        let mut out = Vec::new();
        print(d.path(), true, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["name"], "xz");
        assert_eq!(lines[0]["runs"], 5);
        assert_eq!(lines[0]["cpu_seconds"][1], 2.0);
        assert_eq!(lines[1]["name"], "gzip");
        assert_eq!(fs::read(ProfileStore::journal_path(&dir)).unwrap(), before);
        let mut table = Vec::new();
        print(d.path(), false, &mut table).unwrap();
        let t = String::from_utf8(table).unwrap();
        assert!(t.contains("xz") && t.contains("0.40/2.00/3.60"), "{t}");
        // A damaged snapshot is an error naming it (and is left where it is).
        let sp = ProfileStore::snapshot_path(&dir);
        fs::write(&sp, b"UMBRAPRF garbage").unwrap();
        let e = print(d.path(), true, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("profiles.bin"), "{e}");
        assert!(sp.exists());
    }

    fn run(cpu: f32, ms: u64) -> Run {
        Run {
            outcome: [cpu, 1e6, cpu * 2.0, 100.0],
            input_bytes: 10,
            ended_ms: ms,
            used: None,
        }
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0.1, 0.5, 0.9]) == [1.3, 2.5, 3.7]
        let q = quantiles(&mut [4.0, 1.0, 3.0, 2.0], &LEVELS);
        for (a, b) in q.iter().zip([1.3, 2.5, 3.7]) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        assert_eq!(quantiles(&mut [], &LEVELS), vec![0.0; 3]);
        assert_eq!(quantiles(&mut [7.0], &LEVELS), vec![7.0; 3]);
    }

    #[test]
    fn a_key_keeps_its_last_64_runs_and_keys_are_bounded() {
        let mut s = ProfileStore::in_memory(10);
        for i in 0..100u64 {
            s.record("exe:a", "a", "sh", run(i as f32, i)).unwrap();
        }
        let p = s.get("exe:a").unwrap();
        assert_eq!(p.runs.len(), RUNS_KEPT);
        assert_eq!(p.total_runs, 100);
        assert_eq!(p.runs.front().unwrap().outcome[0], 36.0);
        for k in 0..30u64 {
            s.record(&format!("exe:k{k}"), "k", "sh", run(1.0, 1000 + k))
                .unwrap();
            assert!(s.len() <= 10);
        }
        // The newest keys stay, the oldest went first.
        assert!(s.get("exe:k29").is_some());
        assert!(s.get("exe:a").is_none());
    }

    #[test]
    fn runs_survive_a_restart_through_the_journal_and_the_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, l) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(l, Loaded::default());
        s.record("exe:a", "a", "sh", run(1.0, 1)).unwrap();
        s.record("exe:a", "a", "sh", run(2.0, 2)).unwrap();
        drop(s); // a crash: no save
        let (mut s, l) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(l.journal_runs, 2);
        assert_eq!(s.get("exe:a").unwrap().runs.len(), 2);
        s.save().unwrap();
        assert_eq!(
            fs::read(ProfileStore::journal_path(d.path())).unwrap(),
            journal_header(),
            "the journal starts over"
        );
        s.record("exe:b", "b", "sh", run(3.0, 3)).unwrap();
        drop(s);
        let (s, l) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(l.journal_runs, 1);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("exe:a").unwrap().quantiles(0, &[0.5]), vec![1.5]);
    }

    /// `tests/fixtures/profiles-v1`: a store the previous release wrote (five runs of one
    /// executable in the snapshot, three of another in the journal).
    #[test]
    fn a_store_of_the_previous_version_is_read_and_rewritten_as_this_one() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/profiles-v1");
        let d = tempfile::tempdir().unwrap();
        for f in ["profiles.bin", "profiles.journal"] {
            fs::copy(fixture.join(f), d.path().join(f)).unwrap();
        }
        let check = |s: &ProfileStore| {
            assert_eq!(s.len(), 2);
            let xz = s.get("exe:sha256:aa").unwrap();
            assert_eq!(
                (xz.name.as_str(), xz.runs.len(), xz.total_runs),
                ("xz", 5, 5)
            );
            assert_eq!(xz.quantiles(0, &[0.5]), vec![3.0]);
            assert_eq!(xz.runs[0].input_bytes, 1 << 20);
            let gz = s.get("exe:sha256:bb").unwrap();
            assert_eq!((gz.parent.as_str(), gz.runs.len()), ("make", 3));
            assert_eq!(gz.runs[2].ended_ms, 1_796_000_001_002);
            assert!(
                s.iter()
                    .all(|(_, p)| p.runs.iter().all(|r| r.used.is_none()))
            );
        };
        let (s, l) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(l.journal_runs, 3);
        check(&s);
        drop(s);
        let snap = fs::read(ProfileStore::snapshot_path(d.path())).unwrap();
        assert_eq!(u16::from_le_bytes([snap[8], snap[9]]), VERSION);
        let journal = fs::read(ProfileStore::journal_path(d.path())).unwrap();
        assert_eq!(journal, journal_header(), "rewritten as this version");
        let (s, l) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(l.journal_runs, 0);
        check(&s);
        check(&ProfileStore::read(&fixture).unwrap());
    }

    #[test]
    fn a_runs_record_is_kept_and_a_newer_journal_is_named() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = ProfileStore::open(d.path(), 100).unwrap();
        let mut r = run(1.0, 1);
        r.used = Some([0.5, f32::INFINITY]);
        s.record("exe:a", "a", "sh", r).unwrap();
        drop(s);
        let (mut s, _) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(
            s.get("exe:a").unwrap().runs[0].used,
            Some([0.5, f32::INFINITY])
        );
        s.save().unwrap();
        let (s, _) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(
            s.get("exe:a").unwrap().runs[0].used,
            Some([0.5, f32::INFINITY])
        );
        drop(s);
        let jp = ProfileStore::journal_path(d.path());
        let mut newer = journal_header();
        newer[8] = 9;
        fs::write(&jp, newer).unwrap();
        let e = ProfileStore::open(d.path(), 100).err().unwrap().to_string();
        assert!(
            e.contains("profiles.journal") && e.contains("version 9"),
            "{e}"
        );
        assert_eq!(fs::read(&jp).unwrap(), newer, "left as it was");
    }

    /// What the fleet is sent: each profile with runs since it was last taken, every kept
    /// one once after the store opens, in bounded batches.
    #[test]
    fn profiles_with_new_runs_are_taken_once_and_all_after_a_start() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(s.take_changed(10).0.len(), 0);
        for (k, ms) in [("exe:a", 1), ("exe:b", 2), ("exe:a", 3)] {
            s.record(k, "p", "sh", run(1.0, ms)).unwrap();
        }
        let (first, more) = s.take_changed(1);
        assert_eq!(
            (first[0].0.as_str(), first[0].1.runs.len(), more),
            ("exe:a", 2, 1)
        );
        let (rest, more) = s.take_changed(10);
        assert_eq!((rest.len(), rest[0].0.as_str(), more), (1, "exe:b", 0));
        assert!(s.take_changed(10).0.is_empty(), "taken once");
        s.record("exe:b", "p", "sh", run(2.0, 4)).unwrap();
        let keys = |v: Vec<(String, Profile)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(s.take_changed(10).0), vec!["exe:b"]);
        drop(s);
        let (mut s, _) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(keys(s.take_changed(10).0), vec!["exe:a", "exe:b"]);
    }

    #[test]
    fn a_torn_journal_tail_is_cut_and_what_came_before_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = ProfileStore::open(d.path(), 100).unwrap();
        for i in 0..3 {
            s.record("exe:a", "a", "sh", run(i as f32, i)).unwrap();
        }
        drop(s);
        let jp = ProfileStore::journal_path(d.path());
        let len = fs::metadata(&jp).unwrap().len();
        let f = OpenOptions::new().write(true).open(&jp).unwrap();
        f.set_len(len - 3).unwrap();
        let (s, l) = ProfileStore::open(d.path(), 100).unwrap();
        assert_eq!(l.journal_runs, 2);
        assert!(l.journal_cut_bytes > 0);
        assert_eq!(s.get("exe:a").unwrap().runs.len(), 2);
        assert_eq!(
            fs::metadata(&jp).unwrap().len(),
            len - l.journal_cut_bytes - 3
        );
    }

    #[test]
    fn a_corrupt_snapshot_is_named_kept_aside_and_the_store_starts_empty() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = ProfileStore::open(d.path(), 100).unwrap();
        s.record("exe:a", "a", "sh", run(1.0, 1)).unwrap();
        s.save().unwrap();
        drop(s);
        let sp = ProfileStore::snapshot_path(d.path());
        let mut bytes = fs::read(&sp).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&sp, &bytes).unwrap();
        let e = ProfileStore::open(d.path(), 100).err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("profiles.bin") && msg.contains("checksum"),
            "{msg}"
        );
        assert!(d.path().join("profiles.bin.corrupt").exists());
        let (s, _) = ProfileStore::open(d.path(), 100).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn bad_snapshots_are_errors_not_panics() {
        let p = Path::new("profiles.bin");
        let good = encode_snapshot(&Snapshot {
            profiles: vec![("exe:a".into(), Profile::default())],
        });
        assert!(decode_snapshot(p, &good).is_ok());
        for cut in 0..good.len() {
            assert!(decode_snapshot(p, &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = good.clone();
        newer[8] = 9;
        assert!(matches!(
            decode_snapshot(p, &newer),
            Err(ProfileError::NewerVersion { found: 9, .. })
        ));
        assert!(
            decode_snapshot(
                p,
                b"UMBRAPRF\x01\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"
            )
            .is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(0u8..=255, 0..256)) {
            let _ = decode_snapshot(Path::new("x"), &bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode_snapshot(Path::new("x"), &framed);
            if let Ok(j) = decode_journal(Path::new("x"), &bytes) {
                proptest::prop_assert!(j.good <= bytes.len());
            }
            let mut headed = journal_header().to_vec();
            headed.extend_from_slice(&bytes);
            let j = decode_journal(Path::new("x"), &headed).unwrap();
            proptest::prop_assert!(j.good >= JOURNAL_HEADER && j.good <= headed.len());
        }
    }
}
