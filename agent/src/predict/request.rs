//! Per-request features and outcomes (`models/CONTRACT.md`, kind "request"). A *request* is
//! one exec'd image: from a `sched_process_exec` until the process exits or execs again.
//!
//! - [`RequestFeaturizer::features`] turns what is known at an exec ([`ExecFacts`]: the
//!   executable's key, argv, the sizes of the input files argv names, parent, cgroup, uid),
//!   the executable's [`Profile`] and the node's load into the contract's feature row.
//! - [`RequestTracker`] follows requests through the capture stream (exec events, then
//!   ticks) and yields each [`Completed`] request: its facts, the feature row made when it
//!   started and its [`Outcome`].
//!
//! The live agent, `umbra export --format requests` and `umbra eval` all go through these
//! two, so a model is trained on exactly the rows it will be given.
//!
//! ```text
//! let mut tracker = RequestTracker::new(RequestFeaturizer::new(hash_buckets));
//! tracker.event(&lifecycle, &profiles);             // on each exec/exit event
//! for done in tracker.tick(&tick, &window, &profiles) {  // on each tick
//!     profiles.record(&done.facts.key, …, done.run())?;  // learn from it
//! }
//! ```

use std::sync::Arc;

use super::profiles::{OUTCOMES, Outcome, Profile, ProfileStore, Run, quantiles};
use crate::{
    FastMap,
    aggregate::{NodePoint, Window, exe_key},
    capture::{Argv, InputFile, Lifecycle, LifecycleKind, ProcessSample, Tick},
};

/// The argv hash buckets of the shipped request model (the schema carries its own).
pub const DEFAULT_HASH_BUCKETS: usize = 32;
/// One-hot buckets of the parent's executable name and of the cgroup path.
pub const PARENT_BUCKETS: usize = 8;
pub const CGROUP_BUCKETS: usize = 8;
/// argv tokens longer than this are one token, `@long`.
pub const LONG_TOKEN: usize = 64;
/// Requests followed at once; beyond it the oldest are let go (and counted).
pub const MAX_OPEN: usize = 65_536;
const MIB: f64 = (1u64 << 20) as f64;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(0xcbf2_9ce4_8422_2325, bytes.iter().copied())
}

/// FNV-1a continued from `h` over `bytes`.
fn fnv1a64_more(mut h: u64, bytes: impl Iterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The argv token of an input file as hashed: `@file:` and the file's name without its
/// ASCII digits (`/data/logs-2026-12.gz` → `@file:logs--.gz`) — the kind of input, not
/// the instance.
fn input_token_hash(tok: &str) -> u64 {
    let name = tok.rsplit('/').next().unwrap_or(tok);
    fnv1a64_more(
        fnv1a64(b"@file:"),
        name.bytes().filter(|b| !b.is_ascii_digit()),
    )
}

/// What is known of a request when its exec happens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecFacts {
    /// The executable's key (`exe:sha256:…`): the profile the request belongs to.
    pub key: String,
    /// Path of the executable, for people.
    pub exe: String,
    /// argv, argv\[0\] first.
    pub argv: Vec<String>,
    /// Regular files named in argv that existed at the exec: (index in argv, size in bytes).
    pub inputs: Vec<(usize, u64)>,
    /// The parent's executable file name.
    pub parent: String,
    /// The cgroup v2 path.
    pub cgroup: String,
    pub uid: Option<u32>,
}

impl ExecFacts {
    /// Total bytes of the input files.
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|&(_, b)| b).sum()
    }
}

/// The node's load in the last interval before an exec.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeLoad {
    /// Busy CPU: cores busy / CPUs.
    pub cpu_busy: f64,
    /// Available memory / total.
    pub mem_available: f64,
}

impl NodeLoad {
    pub fn of(n: &NodePoint) -> NodeLoad {
        let interval_ns = n.interval_ms as f64 * 1e6 * n.cpus.max(1) as f64;
        NodeLoad {
            cpu_busy: if interval_ns > 0.0 {
                (n.cpu_busy_ns as f64 / interval_ns).clamp(0.0, 1.0)
            } else {
                0.0
            },
            mem_available: if n.mem_total_bytes > 0 {
                (n.mem_available_bytes as f64 / n.mem_total_bytes as f64).clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }
}

/// The contract's per-request feature vocabulary, in the order of a row.
#[derive(Clone, Debug)]
pub struct RequestFeaturizer {
    hash_buckets: usize,
    names: Vec<String>,
}

impl RequestFeaturizer {
    pub fn new(hash_buckets: usize) -> RequestFeaturizer {
        let hash_buckets = hash_buckets.max(1);
        let mut names = vec!["profile_runs".to_string()];
        for t in OUTCOMES {
            for p in [10, 50, 90] {
                names.push(format!("profile_{t}_p{p}"));
            }
        }
        for p in [10, 50, 90] {
            names.push(format!("profile_input_bytes_p{p}"));
        }
        for t in OUTCOMES {
            names.push(format!("profile_{t}_per_mib_p50"));
        }
        for n in [
            "input_files",
            "input_bytes_total",
            "input_bytes_max",
            "argv_count",
        ] {
            names.push(n.into());
        }
        names.extend((0..hash_buckets).map(|k| format!("argv_hash_{k}")));
        names.extend((0..PARENT_BUCKETS).map(|k| format!("parent_hash_{k}")));
        names.extend((0..CGROUP_BUCKETS).map(|k| format!("cgroup_hash_{k}")));
        for n in ["uid_root", "node_cpu_busy", "node_mem_available"] {
            names.push(n.into());
        }
        RequestFeaturizer {
            hash_buckets,
            names,
        }
    }

    /// Feature names, in row order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn hash_buckets(&self) -> usize {
        self.hash_buckets
    }

    /// The feature row of an exec: `profile` is its key's past (None: never seen), `node`
    /// the load before it.
    pub fn features(
        &self,
        exec: &ExecFacts,
        profile: Option<&Profile>,
        node: NodeLoad,
    ) -> Vec<f32> {
        let mut row = Vec::with_capacity(self.names.len());
        self.features_into(exec, profile, node, &mut row);
        row
    }

    /// [`features`](Self::features) into `row` (cleared first).
    pub fn features_into(
        &self,
        exec: &ExecFacts,
        profile: Option<&Profile>,
        node: NodeLoad,
        row: &mut Vec<f32>,
    ) {
        row.clear();
        let levels = [0.1, 0.5, 0.9];
        let empty = Profile::default();
        let p = profile.unwrap_or(&empty);
        row.push(p.runs.len() as f32);
        for i in 0..OUTCOMES.len() {
            row.extend(p.quantiles(i, &levels).into_iter().map(|v| v as f32));
        }
        let mut inputs: Vec<f64> = p.runs.iter().map(|r| r.input_bytes as f64).collect();
        row.extend(
            quantiles(&mut inputs, &levels)
                .into_iter()
                .map(|v| v as f32),
        );
        let mut per_mib = Vec::with_capacity(p.runs.len());
        for i in 0..OUTCOMES.len() {
            per_mib.clear();
            per_mib.extend(
                p.runs
                    .iter()
                    .filter(|r| r.input_bytes > 0 && r.measured(i))
                    .map(|r| r.outcome[i] as f64 / (r.input_bytes as f64 / MIB)),
            );
            row.push(quantiles(&mut per_mib, &[0.5])[0] as f32);
        }
        let total = exec.input_bytes();
        let max = exec.inputs.iter().map(|&(_, b)| b).max().unwrap_or(0);
        row.push(exec.inputs.len() as f32);
        row.push(total as f32);
        row.push(max as f32);
        let args = exec.argv.get(1..).unwrap_or(&[]);
        row.push(args.len() as f32);
        let at = row.len();
        row.resize(at + self.hash_buckets, 0.0);
        for (i, tok) in args.iter().enumerate() {
            let named_file = exec.inputs.iter().any(|&(k, _)| k == i + 1);
            let h = if named_file {
                input_token_hash(tok)
            } else if tok.len() > LONG_TOKEN {
                fnv1a64(b"@long")
            } else {
                fnv1a64(tok.as_bytes())
            };
            row[at + (h % self.hash_buckets as u64) as usize] += 1.0;
        }
        one_hot(row, &exec.parent, PARENT_BUCKETS);
        one_hot(row, &exec.cgroup, CGROUP_BUCKETS);
        row.push(if exec.uid == Some(0) { 1.0 } else { 0.0 });
        row.push(node.cpu_busy as f32);
        row.push(node.mem_available as f32);
        debug_assert_eq!(row.len(), self.names.len());
    }
}

fn one_hot(row: &mut Vec<f32>, s: &str, n: usize) {
    let k = (fnv1a64(s.as_bytes()) % n as u64) as usize;
    row.extend((0..n).map(|i| if i == k { 1.0 } else { 0.0 }));
}

/// A request that ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    pub tgid: u32,
    /// Boot-clock ns of the exec.
    pub exec_ns: u64,
    /// Wall clock at the end, ms since the Unix epoch.
    pub ended_ms: u64,
    pub facts: ExecFacts,
    /// The feature row made when the request started.
    pub features: Vec<f32>,
    pub outcome: Outcome,
}

impl Completed {
    /// The run to keep in the profile store.
    pub fn run(&self) -> Run {
        Run::new(&self.outcome, self.facts.input_bytes(), self.ended_ms)
    }

    /// The executable's file name.
    pub fn name(&self) -> &str {
        file_name(&self.facts.exe)
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What names a process for people: its executable's file name, or its command name
/// (which may hold a `/`) when the executable is unknown.
fn proc_name(s: &ProcessSample) -> &str {
    match &s.exe {
        Some(p) => file_name(p),
        None => &s.comm,
    }
}

/// Counters of a process that outcomes are measured from.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    cpu_ns: u64,
    io_bytes: u64,
}

impl Counters {
    fn of(s: &ProcessSample) -> Counters {
        Counters {
            cpu_ns: s.counters.cpu_ns,
            io_bytes: s.counters.read_bytes.saturating_add(s.counters.write_bytes),
        }
    }
}

struct Open {
    exec_ns: u64,
    seq: u64,
    facts: ExecFacts,
    /// Made at the exec when the key was known, else at the first sample.
    features: Option<Vec<f32>>,
    base: Counters,
    last: Counters,
    peak_rss: u64,
    /// Ticks in a row without a sample of the process.
    unseen: u8,
}

/// Every this many ticks, processes gone from the ticks are let go.
const PRUNE_EVERY_TICKS: u64 = 8;

/// Ticks without a sample after which an open request is let go (its process vanished
/// without a final sample: a capture drop).
const UNSEEN_TICKS: u8 = 3;

/// Counts of what the tracker could not follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerDrops {
    /// Requests let go because more than [`MAX_OPEN`] were open.
    pub overflow: u64,
    /// Requests whose process vanished from the ticks without a final sample.
    pub vanished: u64,
}

/// Follows requests from exec to end: exec events open them, the ticks' samples measure
/// them, a final sample (exit) or another exec of the same process ends them.
pub struct RequestTracker {
    featurizer: RequestFeaturizer,
    open: FastMap<u32, Open>,
    /// Every live process's sample at the last tick it was in (shared: replaced only when
    /// the process changed), and that tick; entries of earlier ticks are let go every
    /// few ticks, and never used.
    seen: FastMap<u32, (Arc<ProcessSample>, u64)>,
    ticks: u64,
    /// cgroup id → path, from the samples.
    cgroups: FastMap<u64, String>,
    node: NodeLoad,
    last_wall_ms: u64,
    seq: u64,
    pub drops: TrackerDrops,
}

impl RequestTracker {
    pub fn new(featurizer: RequestFeaturizer) -> RequestTracker {
        RequestTracker {
            featurizer,
            open: FastMap::default(),
            seen: FastMap::default(),
            ticks: 0,
            cgroups: FastMap::default(),
            node: NodeLoad::default(),
            last_wall_ms: 0,
            seq: 0,
            drops: TrackerDrops::default(),
        }
    }

    pub fn featurizer(&self) -> &RequestFeaturizer {
        &self.featurizer
    }

    /// What is known of `tgid`'s open request (its exec's facts).
    pub fn facts(&self, tgid: u32) -> Option<&ExecFacts> {
        self.open.get(&tgid).map(|o| &o.facts)
    }

    /// The feature row of `tgid`'s open request into `row`, as a model is given it: the
    /// row made at its exec, or — the exec event did not carry the executable's key — one
    /// made now for `key` from `profiles`. False when `tgid` has no open request.
    pub fn row_into(
        &self,
        tgid: u32,
        key: &str,
        profiles: &ProfileStore,
        row: &mut Vec<f32>,
    ) -> bool {
        let Some(o) = self.open.get(&tgid) else {
            return false;
        };
        match &o.features {
            Some(f) => {
                row.clear();
                row.extend_from_slice(f);
            }
            None => {
                let facts = ExecFacts {
                    key: key.to_string(),
                    ..o.facts.clone()
                };
                self.featurizer
                    .features_into(&facts, profiles.get(key), self.node, row);
            }
        }
        true
    }

    /// Requests open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The facts of an exec event as far as the event tells them (its arguments and the
    /// input files they named, from format 3 on). The key is left empty when the event
    /// does not carry the executable's fingerprint (it comes with the process's first
    /// sample).
    pub fn facts_of(
        &self,
        e: &Lifecycle,
        filename: &str,
        argv: &Argv,
        inputs: &[InputFile],
    ) -> ExecFacts {
        let parent = e
            .ppid
            .and_then(|p| self.live(p))
            .map(|s| proc_name(s).to_string())
            .unwrap_or_default();
        ExecFacts {
            key: String::new(),
            exe: filename.to_string(),
            argv: argv.lossy(),
            inputs: inputs
                .iter()
                .map(|f| (usize::from(f.arg), f.size))
                .collect(),
            parent,
            cgroup: self.cgroups.get(&e.cgroup_id).cloned().unwrap_or_default(),
            uid: None,
        }
    }

    /// An exec or exit event. An exec ends the process's open request (if any) and opens
    /// a new one; its features are made now if its key is known.
    pub fn event(&mut self, e: &Lifecycle, profiles: &ProfileStore) -> Option<Completed> {
        let LifecycleKind::Exec {
            filename,
            argv,
            inputs,
        } = &e.kind
        else {
            return None;
        };
        let facts = self.facts_of(e, filename, argv, inputs);
        let tgid = if e.tgid != 0 { e.tgid } else { e.pid };
        self.exec(tgid, e.timestamp_ns, facts, profiles)
    }

    /// Opens a request of `tgid` at `exec_ns` with `facts`; returns the process's
    /// previous request, ended by this exec.
    pub fn exec(
        &mut self,
        tgid: u32,
        exec_ns: u64,
        facts: ExecFacts,
        profiles: &ProfileStore,
    ) -> Option<Completed> {
        let ended = self
            .open
            .remove(&tgid)
            .and_then(|o| finish(tgid, o, exec_ns, self.last_wall_ms));
        if self.open.len() >= MAX_OPEN
            && let Some(&oldest) = self.open.iter().min_by_key(|(_, o)| o.seq).map(|(k, _)| k)
        {
            self.open.remove(&oldest);
            self.drops.overflow += 1;
        }
        let base = self.live(tgid).map(Counters::of).unwrap_or_default();
        let features = (!facts.key.is_empty()).then(|| {
            self.featurizer
                .features(&facts, profiles.get(&facts.key), self.node)
        });
        self.seq += 1;
        self.open.insert(
            tgid,
            Open {
                exec_ns,
                seq: self.seq,
                facts,
                features,
                base,
                last: base,
                peak_rss: 0,
                unseen: 0,
            },
        );
        ended
    }

    /// The sample of a process that was in the last tick.
    fn live(&self, tgid: u32) -> Option<&ProcessSample> {
        self.seen
            .get(&tgid)
            .filter(|(_, t)| *t == self.ticks)
            .map(|(s, _)| &**s)
    }

    /// A tick and its window: measures open requests, ends those whose process exited.
    /// Returns the requests completed, in the order they ended.
    pub fn tick(&mut self, t: &Tick, w: &Window, profiles: &ProfileStore) -> Vec<Completed> {
        let mut done = Vec::new();
        self.ticks += 1;
        let tick = self.ticks;
        // A process gone from the ticks without a final sample cannot be measured.
        for o in self.open.values_mut() {
            o.unseen = o.unseen.saturating_add(1);
        }
        for s in &t.samples {
            if let Some(path) = &s.cgroup {
                self.cgroups
                    .entry(s.cgroup_id)
                    .or_insert_with(|| path.to_string());
            }
            let c = Counters::of(s);
            if let Some(o) = self.open.get_mut(&s.tgid) {
                o.unseen = 0;
                o.last = c;
                o.peak_rss = o.peak_rss.max(s.memory.rss());
                if o.facts.key.is_empty() {
                    o.facts.key = exe_key(s).0.0;
                }
                if o.features.is_none() {
                    o.features = Some(self.featurizer.features(
                        &o.facts,
                        profiles.get(&o.facts.key),
                        self.node,
                    ));
                }
                if let Some(x) = s.exit
                    && let Some(o) = self.open.remove(&s.tgid)
                    && let Some(c) = finish(s.tgid, o, x.timestamp_ns, t.wall_ms)
                {
                    done.push(c);
                }
            }
            if s.exit.is_some() {
                self.seen.remove(&s.tgid);
            } else {
                match self.seen.get_mut(&s.tgid) {
                    Some(e) => {
                        if !Arc::ptr_eq(&e.0, s) {
                            e.0 = s.clone();
                        }
                        e.1 = tick;
                    }
                    None => {
                        self.seen.insert(s.tgid, (s.clone(), tick));
                    }
                }
            }
        }
        // Live processes are those of this tick; the others' entries are let go every
        // few ticks (each look touches every process's).
        if tick.is_multiple_of(PRUNE_EVERY_TICKS) {
            self.seen.retain(|_, e| e.1 == tick);
        }
        let before = self.open.len();
        self.open.retain(|_, o| o.unseen < UNSEEN_TICKS);
        self.drops.vanished += (before - self.open.len()) as u64;
        self.node = NodeLoad::of(&w.node);
        self.last_wall_ms = t.wall_ms;
        done
    }
}

/// The completed request of `o`, ended at `end_ns`; None if it was never sampled (no key,
/// no measure).
fn finish(tgid: u32, o: Open, end_ns: u64, ended_ms: u64) -> Option<Completed> {
    let features = o.features?;
    let secs = |ns: u64| ns as f64 / 1e9;
    Some(Completed {
        tgid,
        exec_ns: o.exec_ns,
        ended_ms,
        outcome: Outcome {
            cpu_seconds: secs(o.last.cpu_ns.saturating_sub(o.base.cpu_ns)),
            peak_rss_bytes: o.peak_rss as f64,
            duration_seconds: secs(end_ns.saturating_sub(o.exec_ns)),
            io_bytes: o.last.io_bytes.saturating_sub(o.base.io_bytes) as f64,
        },
        facts: o.facts,
        features,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn profile(runs: &[([f32; 4], u64)]) -> Profile {
        Profile {
            runs: runs
                .iter()
                .map(|&(outcome, input_bytes)| Run {
                    outcome,
                    input_bytes,
                    ended_ms: 1,
                    used: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn get(f: &RequestFeaturizer, row: &[f32], name: &str) -> f32 {
        row[f.names().iter().position(|n| n == name).unwrap()]
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn a_row_has_the_contract_vocabulary_in_order() {
        let f = RequestFeaturizer::new(16);
        let n = f.names();
        assert_eq!(n[0], "profile_runs");
        assert_eq!(n[1], "profile_cpu_seconds_p10");
        assert_eq!(n[12], "profile_io_bytes_p90");
        assert_eq!(n[13], "profile_input_bytes_p10");
        assert_eq!(n[16], "profile_cpu_seconds_per_mib_p50");
        assert_eq!(
            n[20..24],
            [
                "input_files",
                "input_bytes_total",
                "input_bytes_max",
                "argv_count"
            ]
        );
        assert_eq!(n[24], "argv_hash_0");
        assert_eq!(n[24 + 16], "parent_hash_0");
        assert_eq!(n[24 + 16 + 8], "cgroup_hash_0");
        assert_eq!(
            n[n.len() - 3..],
            ["uid_root", "node_cpu_busy", "node_mem_available"]
        );
        let row = f.features(&ExecFacts::default(), None, NodeLoad::default());
        assert_eq!(row.len(), n.len());
    }

    #[test]
    fn profile_features_are_quantiles_of_past_runs_and_their_cost_per_mib() {
        let f = RequestFeaturizer::new(8);
        let mib = 1u64 << 20;
        // cpu 1, 2, 3, 4 s over inputs of 1, 2, 0, 8 MiB; a fifth run's peak RSS was not
        // measured (one page), and counts for the other outcomes only.
        let p = profile(&[
            ([1.0, 10e6, 1.0, 0.0], mib),
            ([2.0, 20e6, 2.0, 0.0], 2 * mib),
            ([3.0, 30e6, 3.0, 0.0], 0),
            ([4.0, 40e6, 4.0, 0.0], 8 * mib),
            ([2.5, 4096.0, 2.5, 0.0], 0),
        ]);
        let row = f.features(&ExecFacts::default(), Some(&p), NodeLoad::default());
        assert_eq!(get(&f, &row, "profile_runs"), 5.0);
        // numpy.quantile([1, 2, 2.5, 3, 4], [0.1, 0.5, 0.9]) = [1.4, 2.5, 3.6]
        assert!((get(&f, &row, "profile_cpu_seconds_p10") - 1.4).abs() < 1e-6);
        assert!((get(&f, &row, "profile_cpu_seconds_p50") - 2.5).abs() < 1e-6);
        // numpy.quantile([10e6, 20e6, 30e6, 40e6], [0.1, 0.9]) = [13e6, 37e6]
        assert!((get(&f, &row, "profile_peak_rss_bytes_p10") - 13e6).abs() < 1.0);
        assert!((get(&f, &row, "profile_peak_rss_bytes_p90") - 37e6).abs() < 4.0);
        assert_eq!(get(&f, &row, "profile_input_bytes_p50"), mib as f32);
        // per MiB over runs with inputs: 1, 1, 0.5 → median 1.
        assert_eq!(get(&f, &row, "profile_cpu_seconds_per_mib_p50"), 1.0);
        assert_eq!(get(&f, &row, "profile_peak_rss_bytes_per_mib_p50"), 10e6);
        assert_eq!(get(&f, &row, "profile_io_bytes_per_mib_p50"), 0.0);
        // Never seen: zeros.
        let row = f.features(&ExecFacts::default(), None, NodeLoad::default());
        assert!(row[..20].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn argv_tokens_are_hashed_with_input_files_and_long_tokens_normalised() {
        let f = RequestFeaturizer::new(1024);
        let long = "x".repeat(65);
        let exec = ExecFacts {
            argv: vec![
                "/usr/bin/xz".into(),
                "-3".into(),
                "/data/in-1".into(),
                "/data/in-2".into(),
                long,
                "-3".into(),
            ],
            inputs: vec![(2, 100), (3, 300)],
            parent: "bash".into(),
            cgroup: "/system.slice/x.service".into(),
            uid: Some(0),
            ..Default::default()
        };
        let row = f.features(
            &exec,
            None,
            NodeLoad {
                cpu_busy: 0.25,
                mem_available: 0.5,
            },
        );
        let bucket = |tok: &[u8]| format!("argv_hash_{}", fnv1a64(tok) % 1024);
        assert_eq!(get(&f, &row, &bucket(b"-3")), 2.0);
        // Both inputs are of one kind: "in-" without the digits.
        assert_eq!(get(&f, &row, &bucket(b"@file:in-")), 2.0);
        assert_eq!(get(&f, &row, &bucket(b"@long")), 1.0);
        let hashed: f32 = row[24..24 + 1024].iter().sum();
        assert_eq!(hashed, 5.0, "argv[0] is not a token");
        assert_eq!(get(&f, &row, "argv_count"), 5.0);
        assert_eq!(get(&f, &row, "input_files"), 2.0);
        assert_eq!(get(&f, &row, "input_bytes_total"), 400.0);
        assert_eq!(get(&f, &row, "input_bytes_max"), 300.0);
        assert_eq!(
            get(&f, &row, &format!("parent_hash_{}", fnv1a64(b"bash") % 8)),
            1.0
        );
        let parent: f32 = (0..8)
            .map(|k| get(&f, &row, &format!("parent_hash_{k}")))
            .sum();
        assert_eq!(parent, 1.0);
        assert_eq!(get(&f, &row, "uid_root"), 1.0);
        assert_eq!(get(&f, &row, "node_cpu_busy"), 0.25);
        assert_eq!(get(&f, &row, "node_mem_available"), 0.5);
    }

    fn live_sample(tgid: u32, exe: &str, cpu_ns: u64) -> Arc<ProcessSample> {
        Arc::new(ProcessSample {
            tgid,
            start_ns: 1,
            ppid: Some(1),
            cgroup_id: 0,
            comm: "comm".into(),
            exe: Some(exe.into()),
            exe_hash: None,
            cgroup: None,
            app: None,
            counters: Arc::new(crate::capture::ProcCounters {
                cpu_ns,
                ..Default::default()
            }),
            memory: Default::default(),
            exit: None,
        })
    }

    fn tick_of(n: u64, samples: Vec<Arc<ProcessSample>>) -> Tick {
        Tick {
            timestamp_ns: n * 1_000_000_000,
            wall_ms: n * 1000,
            samples,
            drops: Default::default(),
            node: Default::default(),
            pressure: vec![],
        }
    }

    /// A request whose process leaves the ticks without a final sample is let go after
    /// three ticks without it, not before; an exec's parent is named from a process of
    /// the last tick only, whatever the tracker still holds of earlier ones.
    #[test]
    fn requests_and_parents_are_of_processes_in_the_ticks() {
        use crate::{
            aggregate::{Aggregator, GroupBy},
            capture::{Argv, Lifecycle, LifecycleKind},
        };
        let store = ProfileStore::in_memory(16);
        let mut agg = Aggregator::new(GroupBy::Exe, 1000);
        let mut tr = RequestTracker::new(RequestFeaturizer::new(DEFAULT_HASH_BUCKETS));
        let mut step = |tr: &mut RequestTracker, n: u64, samples: Vec<Arc<ProcessSample>>| {
            let t = tick_of(n, samples);
            let w = agg.tick(&t);
            tr.tick(&t, &w, &store);
        };
        let parent = live_sample(10, "/usr/bin/make", 5);
        let child = live_sample(20, "/usr/bin/cc", 7);
        step(&mut tr, 1, vec![parent.clone(), child.clone()]);
        let exec = Lifecycle {
            kind: LifecycleKind::Exec {
                filename: "/usr/bin/ld".into(),
                argv: Argv::default(),
                inputs: vec![],
            },
            pid: 30,
            tgid: 30,
            ppid: Some(10),
            timestamp_ns: 1_500_000_000,
            cgroup_id: 0,
            comm: "ld".into(),
        };
        let facts = |tr: &RequestTracker| tr.facts_of(&exec, "/usr/bin/ld", &Argv::default(), &[]);
        assert_eq!(facts(&tr).parent, "make");
        tr.exec(20, 1_500_000_000, facts(&tr), &store);
        assert_eq!(tr.open(), 1);
        step(&mut tr, 2, vec![child]);
        // The parent is gone from that tick (its entry not let go yet): not named.
        assert_eq!(facts(&tr).parent, "");
        // The request's process is gone from the next ones.
        step(&mut tr, 3, vec![]);
        step(&mut tr, 4, vec![]);
        assert_eq!(
            (tr.open(), tr.drops.vanished),
            (1, 0),
            "two ticks without it"
        );
        step(&mut tr, 5, vec![]);
        assert_eq!(
            (tr.open(), tr.drops.vanished),
            (0, 1),
            "three ticks without it"
        );
        // Back in the ticks (a process that was missing is live again).
        step(&mut tr, 6, vec![parent]);
        assert_eq!(facts(&tr).parent, "make");
    }
}
