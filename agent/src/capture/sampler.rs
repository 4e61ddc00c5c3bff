//! One tick of the live capture: every process's counters, composed from what this
//! kernel offers — the task iterator's per-thread accounting summed per process, plus the
//! event counters of `PROC_STATS` (iterator path), or `PROC_STATS` alone (hooks path) —
//! and the final sample of each process that ended.
//!
//! A process is a [`ProcKey`] (tgid and start): a reused tgid is another process.
//! Userspace deletes a `PROC_STATS` entry only by its key, after it has reported that
//! process finished; whatever shows up of a finished process later (a zombie still in
//! the task list, an entry re-made by a late event) is never a new process.

use std::sync::Arc;

use agent_common::{
    CpuState, ExitedKey, IOAC_RCHAR, IOAC_SYSCR, IOAC_SYSCW, IOAC_WCHAR, ProcKey, ProcStats,
    REC_GROUP, REC_MM, REC_SAME, REC_SIGNAL, RSS_ANON, RSS_FILE, RSS_MEMBERS, RSS_SHMEM, RSS_SWAP,
    RUNTIME_UNKNOWN, TaskRecord, hist_bucket,
};
use tracing::{debug, warn};

use super::{
    CaptureError,
    kernel::{CounterPath, KernelCapture, MAX_UNCLAIMED},
    procfs,
    types::{AppKey, Argv, ArgvSource, Exit, Histogram, Memory, ProcCounters, ProcessSample, Tick},
};
use crate::FastMap;

/// Exits younger than this are finalised at a later tick: the dying thread's last
/// switch-out (its final CPU slice, on the hooks path) and a socket's close at exit land
/// just after the exit tracepoint.
const EXIT_SETTLE_NS: u64 = 20_000_000;
/// How long an ended process's final counters are awaited from the free of its last task.
const FREE_WAIT_NS: u64 = 2_000_000_000;
/// Ticks a process may be missing from the kernel's view before it is taken as gone
/// (its exit event lost).
const MISSING_TICKS: u32 = 2;
/// Ticks a finished process is remembered.
const FINISHED_TICKS: u64 = 32;
/// At most this many finished processes are remembered (a fork storm finishes thousands a
/// tick); the oldest are let go first, never one the task iterator still visits.
const MAX_FINISHED: usize = 8192;
/// Every this many ticks, processes whose exit was never seen are checked in /proc.
const GC_EVERY_TICKS: u64 = 30;
/// Every this many ticks, what events told of processes never seen is looked over.
const PRUNE_EVERY_TICKS: u64 = 8;
/// Reads of one process's entry, between two reads of the CPU slots, to tell whether a
/// slice that ended while `PROC_STATS` was read is in it.
const REREAD_TRIES: u32 = 4;

/// What userspace knows of a tracked process beyond its counters.
#[derive(Clone, Debug, Default)]
#[repr(C, align(64))]
pub struct ProcInfo {
    // Read every tick for every process, first (`repr(C)` keeps this order, `align` starts
    // it on a cache line): the three lines a process that did not change costs.
    /// Whether /proc was asked about this process (first sight).
    pub looked_up: bool,
    /// Whether the process's last task was freed (`total` is final).
    pub freed: bool,
    /// Ticks in a row the process was not in the kernel's view.
    pub missing: u32,
    pub ppid: Option<u32>,
    pub cgroup_id: u64,
    /// The counters reported last: the next are never lower (a thread's totals move into
    /// its process's `signal_struct` as it exits; a read between can see them twice).
    pub last: Arc<ProcCounters>,
    /// Its sample of the last tick: given again while nothing of it changes.
    pub sample: Option<Arc<ProcessSample>>,
    pub comm: Arc<str>,
    pub exe: Option<Arc<str>>,
    /// Hash of `exe`, once computed (`Some(None)`: could not be read).
    pub exe_hash: Option<Option<Arc<str>>>,
    /// What an interpreter runs, once known (`Some(None)`: not an interpreter, or no
    /// named program).
    pub app: Option<Option<Arc<AppKey>>>,
    pub memory: Memory,
    pub exit: Option<Exit>,
    // The rest: read when a process changes, starts or ends.
    /// The key's start (0: not known yet).
    pub start_ns: u64,
    /// RSS from /proc for members the kernel has not reported since attach (hooks path).
    pub seed: Option<Memory>,
    /// Whether `memory` is what the process held at its exit (its exit event's, Linux
    /// 6.16+): final, not to be replaced by what the kernel reports as its memory map is
    /// torn down (the hooks path's `rss_stat` counts down to 0).
    pub memory_at_exit: bool,
    /// The final counters the exit event carried (iterator path), then those of the free
    /// of its last task (exact).
    pub total: Option<TaskRecord>,
    /// Run-queue wait and slices of threads that are gone (`sched_info` is not kept in
    /// `signal_struct`).
    pub retired_delay: u64,
    pub retired_slices: u64,
    /// A run-queue histogram made of each interval's mean wait (iterator path without the
    /// detail level, which alone sees each wait).
    pub runq_hist: Histogram,
    /// When the kernel first saw it (no BTF: what tells it from a reused tgid).
    pub first_seen: u64,
    /// The tick an event first told of it.
    pub noted: u64,
}

// The fields read every tick fit in three cache lines.
const _: () = assert!(std::mem::offset_of!(ProcInfo, start_ns) <= 3 * 64);

/// A thread the iterator saw: its process and run-queue totals.
#[derive(Clone, Copy, Debug)]
pub struct ThreadSeen {
    key: ProcKey,
    run_delay: u64,
    slices: u64,
    tick: u64,
}

/// A process's sums over its threads (and exited threads) from one run of the iterator.
#[derive(Default)]
pub(super) struct Totals {
    rec: TaskRecord,
    rss: Option<[i64; RSS_MEMBERS]>,
    cgroup_id: u64,
    has_leader: bool,
    /// Whether any of its records was written in full this walk (else every one is a
    /// held record: the process did not run, and its counters are as reported last).
    fresh: bool,
    /// Its threads' runtime, record by record, and the whole process's, read at once
    /// ([`REC_GROUP`]): the latter, when the walk had it, is `rec.runtime_ns`.
    threads_runtime: u64,
    group_runtime: Option<u64>,
}

impl Totals {
    fn add(&mut self, r: &TaskRecord) {
        self.fresh |= r.flags & REC_SAME == 0;
        if r.flags & REC_GROUP != 0 {
            self.group_runtime = Some(r.runtime_ns);
        } else {
            self.threads_runtime += r.runtime_ns;
        }
        let t = &mut self.rec;
        t.runtime_ns = self.group_runtime.unwrap_or(self.threads_runtime);
        t.nvcsw += r.nvcsw;
        t.nivcsw += r.nivcsw;
        t.run_delay_ns += r.run_delay_ns;
        t.pcount += r.pcount;
        t.min_flt += r.min_flt;
        t.maj_flt += r.maj_flt;
        for (a, b) in t.ioac.iter_mut().zip(r.ioac) {
            *a += b;
        }
        if r.flags & REC_SIGNAL != 0 {
            return;
        }
        let leader = r.tid == r.tgid;
        self.has_leader |= leader;
        if r.flags & REC_MM != 0 && (self.rss.is_none() || leader) {
            self.rss = Some(r.rss_pages);
        }
        if r.cgroup_id != 0 && (self.cgroup_id == 0 || leader) {
            self.cgroup_id = r.cgroup_id;
        }
    }
}

impl KernelCapture {
    /// Reads every process's counters: live ones, and the final sample of those that
    /// ended (their kernel entries are then removed, by key).
    pub fn sample(&mut self) -> Result<Tick, CaptureError> {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        // Events still in the ring belong before this tick: they are kept for
        // `take_events` (and come out of `next` ahead of the tick).
        let mut events = std::mem::take(&mut self.unclaimed);
        self.drain_events(&mut events);
        if events.len() > MAX_UNCLAIMED {
            let extra = events.len() - MAX_UNCLAIMED;
            events.drain(..extra);
            warn!(
                dropped = extra,
                "Lifecycle events never taken; oldest dropped"
            );
        }
        self.unclaimed = events;
        let now = procfs::boot_ns();
        self.identity.new_tick();
        let wall_ms = procfs::wall_ms();
        self.ticks += 1;
        let tick = self.ticks;
        let gc = tick.is_multiple_of(GC_EVERY_TICKS);
        // Node counters, the task iterator and the kernel maps are read together, before
        // the slower work below (names, hashes), so they describe the same instant.
        let node = procfs::node_stats();
        let walked_at = procfs::boot_ns();
        let on_iter = self.report.counters == CounterPath::Iterator;
        self.take_unheld();
        let mut records = std::mem::take(&mut self.iter_records);
        records.clear();
        if on_iter {
            self.read_iter(&mut records)?;
        }
        let slots = if on_iter {
            Vec::new()
        } else {
            self.cpu_slots()
        };
        let mut stats: FastMap<ProcKey, ProcStats> = self.read_stats().into_iter().collect();
        let inflight = if on_iter {
            FastMap::default()
        } else {
            if let Some(f) = self.after_stats.take() {
                f();
            }
            self.inflight(&slots, &mut stats)
        };
        // After the walk: a process freed since is in it, with what it had used by then
        // (its final counters count next tick); one born since waits for the next tick.
        self.take_freed(walked_at);
        if let Some(f) = self.after_read.take() {
            f();
        }
        // Processes whose tgid was reused before we collected them (no BTF only).
        let retired: Vec<(ExitedKey, ProcStats)> =
            self.exited.iter().filter_map(Result::ok).collect();

        if std::env::var_os("UMBRA_DEBUG_SAMPLER").is_some() {
            for (k, i) in &self.procs {
                if i.exit.is_some() {
                    eprintln!(
                        "dbg proc {k:?} exit {:?} freed {} total {} looked {}",
                        i.exit,
                        i.freed,
                        i.total.is_some(),
                        i.looked_up
                    );
                }
            }
        }
        let mut totals = std::mem::take(&mut self.totals);
        totals.clear();
        totals.reserve(records.len());
        for r in &records {
            let key = ProcKey {
                tgid: r.tgid,
                _pad: 0,
                start_ns: r.start_ns,
            };
            totals.entry(key).or_default().add(r);
            if r.flags & REC_SIGNAL == 0 {
                self.seen_thread(r.tid, key, r.run_delay_ns, r.pcount, tick);
            }
        }
        self.retire_threads(tick);

        // Every process to report: alive in the iterator, with counters in the map, or
        // ended with its final counters in its exit event.
        let mut keys: Vec<ProcKey> = totals.keys().copied().collect();
        keys.extend(stats.keys().filter(|k| !totals.contains_key(k)));
        keys.extend(self.ended.iter().filter(|k| {
            self.procs.get(k).is_some_and(|i| i.total.is_some())
                && !totals.contains_key(k)
                && !stats.contains_key(k)
        }));
        keys.sort_unstable();
        keys.dedup();

        let mut samples = Vec::with_capacity(keys.len() + retired.len());
        // Samples are made in key order, which is theirs but for processes without BTF
        // (their start is set from the map below) and those retired without it.
        let in_order = retired.is_empty() && keys.iter().all(|k| k.start_ns != 0);
        let mut done: Vec<ProcKey> = Vec::new();
        for (i, &key) in keys.iter().enumerate() {
            if self.finished.contains_key(&key) {
                // Reported finished already: a zombie the iterator still visits, or an
                // entry a late event re-made (its counts came too late).
                if stats.contains_key(&key) {
                    let _ = self.stats.remove(&key);
                }
                continue;
            }
            let t = totals.get(&key);
            let st = stats.get(&key);
            self.first_sight(key);
            let Some(info) = self.procs.get_mut(&key) else {
                continue;
            };
            let alive = t.is_some() || (!on_iter && st.is_some());
            info.missing = if t.is_some() || (!on_iter && st.is_some()) {
                0
            } else {
                info.missing + 1
            };
            // Every so often, whether a process the kernel did not show alive this tick
            // still is (an exit event the ring buffer could not take): on the iterator
            // path, one the iterator visited is (a /proc read per process spared).
            if gc
                && info.exit.is_none()
                && !(on_iter && alive)
                && !procfs::alive_key(key.tgid, key.start_ns)
            {
                info.exit = Some(Exit {
                    code: None,
                    timestamp_ns: now,
                });
            }
            if info.freed && info.exit.is_none() {
                // Freed, its exit event lost (the ring buffer had no room).
                info.exit = Some(Exit {
                    code: None,
                    timestamp_ns: now,
                });
            }
            if on_iter && info.exit.is_none() && !alive && info.missing >= MISSING_TICKS {
                // Gone without an exit event (one the ring buffer could not take).
                info.exit = Some(Exit {
                    code: None,
                    timestamp_ns: now,
                });
            }
            let counters =
                if on_iter && !self.report.detail && st.is_none() && t.is_some_and(|t| !t.fresh) {
                    // Nothing of it ran nor changed since the last walk: what `compose`
                    // would give (counters never go back), without composing it. Debug
                    // builds (every test of the suite) check that it is.
                    #[cfg(debug_assertions)]
                    {
                        let mut probe = ProcInfo::clone(info);
                        let c = compose(on_iter, false, t, None, 0, &mut probe);
                        debug_assert_eq!(c, info.last, "tgid {}: a held process changed", key.tgid);
                    }
                    info.last.clone()
                } else {
                    compose(
                        on_iter,
                        self.report.detail,
                        t,
                        st,
                        inflight.get(&key).copied().unwrap_or(0),
                        info,
                    )
                };
            if let Some(t) = t {
                if let Some(rss) = t.rss
                    && !info.memory_at_exit
                {
                    info.memory = memory_of(&rss, self.page_size);
                }
                if t.cgroup_id != 0 {
                    info.cgroup_id = t.cgroup_id;
                }
            } else if !on_iter
                && !info.memory_at_exit
                && let Some(st) = st
            {
                info.memory = Memory::from_kernel(st);
                seed_memory(&mut info.memory, st, info.seed);
            }
            if let Some(st) = st
                && (info.cgroup_id == 0 || !on_iter)
            {
                info.cgroup_id = st.cgroup_id;
                if info.first_seen == 0 {
                    info.first_seen = st.first_seen_ns;
                }
            }
            // A later start of its tgid (keys are in (tgid, start) order): an ended process
            // whose tgid another one holds now is certainly gone, whatever its exit's
            // settling time.
            let reused = keys.get(i + 1).is_some_and(|n| n.tgid == key.tgid);
            // On the iterator path the final counters are exact once the process's last
            // task is freed (it is reaped and its final switch accounted), which follows
            // the exit shortly; a process nobody reaps is finished with what was seen.
            let freed = !on_iter || info.freed || !self.free_hook;
            let exit = info.exit.filter(|e| {
                reused
                    || (e.timestamp_ns + EXIT_SETTLE_NS <= now
                        && (freed || e.timestamp_ns + FREE_WAIT_NS <= now))
            });
            if exit.is_some() {
                done.push(key);
            }
            if exit.is_none()
                && key.start_ns != 0
                && let Some(prev) = &info.sample
                && let Some(cgroup) = self.identity.known_cgroup_path(info.cgroup_id)
                && unchanged(prev, info, &counters, cgroup)
            {
                // Debug builds (every test of the suite) check that it is the sample
                // that would be made.
                debug_assert_eq!(
                    **prev,
                    sample_of(key, info, counters, Some(cgroup.clone()), None),
                    "tgid {}: a shared sample changed",
                    key.tgid
                );
                samples.push(prev.clone());
                continue;
            }
            let cgroup = self.identity.cgroup_path(info.cgroup_id);
            let mut s = sample_of(key, info, counters, cgroup, exit);
            if key.start_ns == 0 {
                // No BTF: the process is told apart from an earlier holder of its tgid by
                // when the kernel first saw it.
                s.start_ns = st.map_or(info.first_seen, |st| st.first_seen_ns);
            }
            let s = Arc::new(s);
            info.sample = exit.is_none().then(|| s.clone());
            samples.push(s);
        }
        // Without BTF: processes whose tgid was reused before we collected them.
        for (key, st) in retired {
            let _ = self.exited.remove(&key);
            let pkey = ProcKey {
                tgid: key.tgid,
                _pad: 0,
                start_ns: 0,
            };
            let mut info = match self.procs.get(&pkey) {
                Some(i) if i.last.cpu_ns <= st.cpu_ns => {
                    *self.procs.remove(&pkey).unwrap_or_default()
                }
                _ => ProcInfo::default(),
            };
            let exit = info
                .exit
                .or_else(|| self.recent_exit(key.tgid, key.first_seen_ns))
                .unwrap_or(Exit {
                    code: None,
                    timestamp_ns: now,
                });
            let counters = ProcCounters::from_kernel(&st);
            info.memory = Memory::from_kernel(&st);
            let cgroup = self.identity.cgroup_path(st.cgroup_id);
            info.cgroup_id = st.cgroup_id;
            let mut s = sample_of(pkey, &info, Arc::new(counters), cgroup, Some(exit));
            s.start_ns = st.first_seen_ns;
            samples.push(Arc::new(s));
        }
        for key in done {
            // Gone from the kernel map first, by its key, then from what we know.
            if stats.contains_key(&key)
                && let Err(e) = self.stats.remove(&key)
            {
                debug!(tgid = key.tgid, error = %e, "Finished process already removed");
            }
            if !self.free_hook {
                let _ = self.exited_io.remove(&key);
            }
            self.procs.remove(&key);
            self.finished.insert(key, tick);
        }
        // Finished processes are remembered for a while; events never tied to a process
        // (a fork whose child never showed up) likewise.
        self.finished
            .retain(|k, t| tick - *t < FINISHED_TICKS || totals.contains_key(k));
        bound_finished(&mut self.finished, |k| totals.contains_key(k));
        self.unkeyed.retain(|_, (_, t)| tick - *t < FINISHED_TICKS);
        // What events told of processes never seen is let go after a while (looked for
        // every few ticks: each look touches every process's state).
        if tick.is_multiple_of(PRUNE_EVERY_TICKS) {
            self.procs
                .retain(|_, i| i.looked_up || tick - i.noted < FINISHED_TICKS);
        }
        let procs = &self.procs;
        self.ended.retain(|k| procs.contains_key(k));
        self.ended.sort_unstable();
        self.ended.dedup();
        if gc && !on_iter {
            self.gc_threads();
        }
        if !in_order {
            samples.sort_by_key(|s| (s.tgid, s.start_ns));
        }
        debug_assert!(samples.is_sorted_by_key(|s| (s.tgid, s.start_ns)));
        self.iter_records = records;
        self.totals = totals;
        let pressure = self
            .identity
            .pressure(samples.iter().filter_map(|s| s.cgroup.as_deref()));
        Ok(Tick {
            timestamp_ns: now,
            wall_ms,
            samples,
            drops: self.drop_counts()?,
            node,
            pressure,
        })
    }

    /// Fills in what a process seen for the first time is: names, executable, parent and
    /// program from what events told (under its key, or by tgid when they did not carry
    /// its start), else from /proc.
    fn first_sight(&mut self, key: ProcKey) {
        let known = self.procs.get(&key).is_some_and(|i| i.looked_up);
        if known {
            return;
        }
        let mut info = self.procs.remove(&key).unwrap_or_default();
        if let Some((from_events, _)) = self.unkeyed.remove(&key.tgid) {
            merge(&mut info, from_events, key.start_ns);
            if info.total.is_some() {
                self.ended.push(key);
            }
        }
        let tgid = key.tgid;
        info.start_ns = key.start_ns;
        info.looked_up = true;
        if info.comm.is_empty() {
            info.comm = procfs::comm(tgid).unwrap_or_default().into();
        }
        if info.exe.is_none() {
            info.exe = procfs::exe(tgid).map(Into::into);
        }
        if info.ppid.is_none() {
            info.ppid = procfs::ppid(tgid);
        }
        if self.report.counters == CounterPath::Hooks {
            info.seed = procfs::memory(tgid);
        }
        if info.app.is_none() {
            // First seen without an exec (started before the agent, or forked): its
            // arguments as /proc shows them.
            info.app = Some(procfs::cmdline(tgid).and_then(|raw| {
                let argv = Argv::from_raw(&raw, raw.len() as u32, ArgvSource::Proc);
                let exe = procfs::exe_bytes(tgid)?;
                let view = super::identity::ProcView::of(tgid);
                self.identity.app_key(&exe, &argv, &view).map(Arc::new)
            }));
        }
        if info.exe_hash.is_none() && info.exe.is_some() {
            info.exe_hash = Some(
                self.identity
                    .exe_hash(tgid, info.exe.as_deref())
                    .map(Into::into),
            );
        }
        self.procs.insert(key, info);
    }

    fn seen_thread(&mut self, tid: u32, key: ProcKey, run_delay: u64, slices: u64, tick: u64) {
        let now = ThreadSeen {
            key,
            run_delay,
            slices,
            tick,
        };
        if let Some(old) = self.threads.insert(tid, now)
            && (old.key != key || run_delay < old.run_delay)
        {
            // Another thread holds the tid now: the old one is gone.
            if let Some(i) = self.procs.get_mut(&old.key) {
                i.retired_delay += old.run_delay;
                i.retired_slices += old.slices;
            }
        }
    }

    /// Threads not seen this tick are gone: their run-queue totals stay with their process.
    fn retire_threads(&mut self, tick: u64) {
        let procs = &mut self.procs;
        self.threads.retain(|_, t| {
            if t.tick == tick {
                return true;
            }
            if let Some(i) = procs.get_mut(&t.key) {
                i.retired_delay += t.run_delay;
                i.retired_slices += t.slices;
            }
            false
        });
    }

    /// What each CPU's scheduler slot holds now (hooks path).
    fn cpu_slots(&self) -> Vec<CpuState> {
        self.cpu_state
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().copied().collect())
            .unwrap_or_default()
    }

    /// On-CPU time of the slices running while `stats` was read, by process (hooks path):
    /// the kernel adds a slice at switch-out, and a task running for seconds would show its
    /// CPU time in lumps. `before` are the CPUs' slots read just before `stats`; each slot
    /// is read again now. A slice still running counts up to now. A slice that ended
    /// meanwhile was added to its process before or after `stats` read that entry: the
    /// slot's `out_total` (the process's `cpu_ns` just after the add) tells which, and by
    /// how much, so the slice is never counted twice nor missed. When the CPU switched more
    /// than once meanwhile, `out_*` describe a later slice: that process's entry is read
    /// again between two reads of the slots (a window of one lookup), its `stats` replaced.
    /// The process comes from the kernel where it knew it, else from /proc — asked every
    /// time, never cached, so a reused tid is never another's.
    fn inflight(
        &mut self,
        before: &[CpuState],
        stats: &mut FastMap<ProcKey, ProcStats>,
    ) -> FastMap<ProcKey, u64> {
        let after = self.cpu_slots();
        let now = procfs::mono_ns();
        let (mut out, unsure) =
            self.running_slices(before, &after, now, |k| stats.get(k).map(|s| s.cpu_ns));
        for key in unsure {
            // Two switches within one lookup are unheard of; a few tries, then as read.
            for attempt in 1..=REREAD_TRIES {
                let before = self.cpu_slots();
                let entry = self.stats.get(&key, 0).ok();
                let after = self.cpu_slots();
                let now = procfs::mono_ns();
                let cpu = entry.map(|e| e.cpu_ns);
                let (mine, again) = self
                    .running_slices(&before, &after, now, |k| if *k == key { cpu } else { None });
                if !again.contains(&key) || attempt == REREAD_TRIES {
                    out.insert(key, mine.get(&key).copied().unwrap_or(0));
                    if let Some(e) = entry {
                        stats.insert(key, e);
                    }
                    break;
                }
            }
        }
        out
    }

    /// The time of the slices in `before` that `read` (a process's `cpu_ns` as read between
    /// `before` and `after`) does not hold yet, by process; and the processes for which
    /// that cannot be told (their CPU switched more than once in between).
    fn running_slices(
        &self,
        before: &[CpuState],
        after: &[CpuState],
        now: u64,
        read: impl Fn(&ProcKey) -> Option<u64>,
    ) -> (FastMap<ProcKey, u64>, Vec<ProcKey>) {
        let mut out = FastMap::default();
        let mut unsure = Vec::new();
        let mut running = Vec::new();
        for (cpu, (st, later)) in before.iter().zip(after).enumerate() {
            if st.tid == 0 || st.since == 0 || st.since >= now {
                continue;
            }
            let Some(key) = self.slot_owner(st) else {
                continue;
            };
            match slice_in_read(st, later, read(&key)) {
                Slice::InRead => {}
                Slice::Running => running.push((cpu, key, self.slice_so_far(st, now))),
                // The scheduler's own account of the slice; the thread's runtime at its last
                // switch-out, which `slice_so_far` reads, is already the end of this slice.
                Slice::EndedAfterRead(ns) => {
                    *out.entry(key).or_insert(0) += ended(st, ns, now);
                }
                Slice::Unsure => {
                    if !unsure.contains(&key) {
                        unsure.push(key);
                    }
                }
            }
        }
        if !running.is_empty() {
            // A slice that ended after `after` was read, before `slice_so_far` read its
            // thread's runtime, was measured from its own end (~0): the slots read again
            // tell, and its process's entry says how long it was — or, when the CPU has
            // switched more than once since, its entry is read again (as for `Unsure`).
            let again = self.cpu_slots();
            for (cpu, key, so_far) in running {
                let ns = match again.get(cpu) {
                    Some(a) => settled(&before[cpu], a, read(&key), so_far, now),
                    None => Some(so_far),
                };
                match ns {
                    Some(ns) => *out.entry(key).or_insert(0) += ns,
                    None if !unsure.contains(&key) => unsure.push(key),
                    None => {}
                }
            }
        }
        (out, unsure)
    }

    /// On-CPU time of the slice a CPU slot holds, up to `now`: the time since its thread was
    /// switched in, but no more than the scheduler has counted for that thread since its
    /// last switch-out. In a VM the clock runs on while the hypervisor holds the vCPU, and
    /// the scheduler does not count that time as the task's (the slice's final account, at
    /// switch-out, is the scheduler's; a wall-clock estimate above it would stay, counters
    /// never going back). A thread that switched out since reads ~0 here: `running_slices`
    /// reads the slots again and takes the slice's own account instead (see [`settled`]).
    fn slice_so_far(&self, st: &CpuState, now: u64) -> u64 {
        let wall = now - st.since;
        let last = match self.threads_map.get(&st.tid, 0) {
            Ok(t) if t.last_runtime != RUNTIME_UNKNOWN => t.last_runtime,
            _ => return wall,
        };
        procfs::runtime_ns(st.tid).map_or(wall, |r| wall.min(r.saturating_sub(last)))
    }

    /// The process of the thread a CPU slot holds: from the kernel where it knew it, else
    /// from /proc (asked every time, never cached).
    fn slot_owner(&self, st: &CpuState) -> Option<ProcKey> {
        if st.owner_tgid != 0 {
            return Some(ProcKey {
                tgid: st.owner_tgid,
                _pad: 0,
                start_ns: st.owner_start_ns,
            });
        }
        let tgid = procfs::tgid_of(st.tid)?;
        // The live process of that tgid: the latest start among those tracked.
        Some(
            match self
                .procs
                .keys()
                .filter(|k| k.tgid == tgid)
                .max_by_key(|k| k.start_ns)
            {
                Some(k) => *k,
                None => ProcKey {
                    tgid,
                    _pad: 0,
                    start_ns: procfs::start_ns(tgid).unwrap_or(0),
                },
            },
        )
    }

    /// Removes thread entries of threads that are gone without a final switch seen.
    fn gc_threads(&mut self) {
        let dead: Vec<u32> = self
            .threads_map
            .keys()
            .filter_map(Result::ok)
            .filter(|tid| !procfs::alive(*tid))
            .collect();
        for tid in dead {
            let _ = self.threads_map.remove(&tid);
        }
    }
}

/// Lets the oldest finished processes go until at most [`MAX_FINISHED`] are left, or only
/// those `visible` (zombies the task iterator still visits: forgotten, they would come
/// back as new processes with their whole lifetime's counters).
fn bound_finished(finished: &mut FastMap<ProcKey, u64>, visible: impl Fn(&ProcKey) -> bool) {
    let Some(mut excess) = finished.len().checked_sub(MAX_FINISHED).filter(|e| *e > 0) else {
        return;
    };
    let mut ticks: Vec<u64> = finished
        .iter()
        .filter(|(k, _)| !visible(k))
        .map(|(_, t)| *t)
        .collect();
    if ticks.is_empty() {
        return;
    }
    let n = excess.min(ticks.len()) - 1;
    let (_, cutoff, _) = ticks.select_nth_unstable(n);
    let cutoff = *cutoff;
    // Older than the cutoff tick: fewer than `excess`, all go; then some of the cutoff's.
    finished.retain(|k, t| {
        let go = *t < cutoff && !visible(k);
        excess -= usize::from(go);
        !go
    });
    finished.retain(|k, t| {
        let go = excess > 0 && *t == cutoff && !visible(k);
        excess -= usize::from(go);
        !go
    });
}

/// Where the slice a CPU was running in `before` (read just before `PROC_STATS`) stands
/// against its process's `cpu_ns` as read there (`read`; none: no entry), given the CPU's
/// slot `after` the read (see `KernelCapture::inflight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slice {
    /// Ended, and in the value read (or no entry to hold it, nor to add it to).
    InRead,
    /// Still running: its time so far is not in the value read.
    Running,
    /// Ended after the read, which it brought up by this much (the scheduler's runtime of
    /// the slice, and whatever the process's other threads added meanwhile).
    EndedAfterRead(u64),
    /// The CPU switched more than once, and `out_*` describe a later slice.
    Unsure,
}

fn slice_in_read(before: &CpuState, after: &CpuState, read: Option<u64>) -> Slice {
    match after.switches.wrapping_sub(before.switches) {
        0 => Slice::Running,
        // Ended, and added to its process's entry if it had one (`out_*` are its).
        1 => match read {
            Some(r) if after.out_since == before.since && r < after.out_total => {
                Slice::EndedAfterRead(after.out_total - r)
            }
            _ => Slice::InRead,
        },
        _ => Slice::Unsure,
    }
}

/// A slice seen running in `before` and `after` the read, measured `so_far` since: the
/// scheduler's account of it if it ended once meanwhile (`again`: the slot read after the
/// measure), else `so_far`; none when the CPU switched more than once meanwhile — the
/// slice ended after the read, by how much is not in the slot any more, and `so_far`
/// measured the thread's next slice (a thread preempted and back within the measure: the
/// ended slice would count only next tick, a lump).
fn settled(
    before: &CpuState,
    again: &CpuState,
    read: Option<u64>,
    so_far: u64,
    now: u64,
) -> Option<u64> {
    match slice_in_read(before, again, read) {
        Slice::EndedAfterRead(ns) => Some(ended(before, ns, now)),
        Slice::Unsure => None,
        Slice::Running | Slice::InRead => Some(so_far),
    }
}

/// A slice that ended after the read, by its process's account (`ns`): no longer than the
/// time since it began (`ns` also holds what the process's other threads added meanwhile).
fn ended(st: &CpuState, ns: u64, now: u64) -> u64 {
    ns.min(now.saturating_sub(st.since))
}

/// `info` takes what events told of a process (`from`) where it knows nothing yet.
fn merge(info: &mut ProcInfo, from: ProcInfo, start: u64) {
    if info.comm.is_empty() {
        info.comm = from.comm;
    }
    if info.exe.is_none() {
        info.exe = from.exe;
        info.exe_hash = from.exe_hash;
    }
    if info.ppid.is_none() {
        info.ppid = from.ppid;
    }
    if info.app.is_none() {
        info.app = from.app;
    }
    if info.exit.is_none() {
        info.exit = from.exit.filter(|e| e.timestamp_ns >= start);
        info.total = from.total;
    }
}

/// A process's counters this tick. Iterator path: the kernel's per-task accounting summed
/// over its threads (or its exit event's final counters), with the event counters of
/// `PROC_STATS`; hooks path: `PROC_STATS`, with the slice running now. Never lower than
/// what was reported last.
fn compose(
    on_iter: bool,
    detail: bool,
    t: Option<&Totals>,
    st: Option<&ProcStats>,
    inflight: u64,
    info: &mut ProcInfo,
) -> Arc<ProcCounters> {
    let mut c = st.map(ProcCounters::from_kernel).unwrap_or_default();
    if on_iter {
        match t.map(|t| &t.rec).or(info.total.as_ref()) {
            Some(r) => {
                c.cpu_ns = r.runtime_ns;
                c.voluntary_switches = r.nvcsw;
                c.involuntary_switches = r.nivcsw;
                c.runq_wait_ns = r.run_delay_ns + info.retired_delay;
                c.runq_waits = r.pcount + info.retired_slices;
                c.page_faults = r.min_flt + r.maj_flt;
                c.read_bytes = r.ioac[IOAC_RCHAR];
                c.write_bytes = r.ioac[IOAC_WCHAR];
                c.read_calls = r.ioac[IOAC_SYSCR];
                c.write_calls = r.ioac[IOAC_SYSCW];
            }
            // Not in this run of the iterator (started after it): as reported last.
            None => {
                let l = &info.last;
                c.cpu_ns = l.cpu_ns;
                c.voluntary_switches = l.voluntary_switches;
                c.involuntary_switches = l.involuntary_switches;
                c.runq_wait_ns = l.runq_wait_ns;
                c.runq_waits = l.runq_waits;
                c.page_faults = l.page_faults;
                c.read_bytes = l.read_bytes;
                c.write_bytes = l.write_bytes;
                c.read_calls = l.read_calls;
                c.write_calls = l.write_calls;
            }
        }
        if !detail {
            // Without the detail level, syscalls are the read and write families.
            c.syscalls = c.read_calls + c.write_calls;
        }
    } else {
        c.cpu_ns += inflight;
    }
    c.raise_to(&info.last);
    if on_iter && !detail {
        // Each interval's slices, in the bucket of the interval's mean wait.
        let slices = c.runq_waits - info.last.runq_waits;
        let wait = c.runq_wait_ns - info.last.runq_wait_ns;
        if let Some(mean) = wait.checked_div(slices) {
            let b = hist_bucket(mean);
            info.runq_hist[b] = info.runq_hist[b].wrapping_add(slices as u32);
        }
        c.runq_hist = info.runq_hist;
    }
    // A process read again without having changed (every thread is read in full every
    // few walks): the same counters, shared, so the sample can be too.
    if c == *info.last {
        return info.last.clone();
    }
    let c = Arc::new(c);
    info.last = c.clone();
    c
}

pub(super) fn memory_of(rss: &[i64; RSS_MEMBERS], page: u64) -> Memory {
    let b = |i: usize| rss[i].max(0) as u64 * page;
    Memory {
        file: b(RSS_FILE),
        anon: b(RSS_ANON),
        shmem: b(RSS_SHMEM),
        swap: b(RSS_SWAP),
    }
}

/// RSS members the kernel has not reported since attach come from /proc (hooks path).
fn seed_memory(m: &mut Memory, st: &ProcStats, seed: Option<Memory>) {
    let Some(seed) = seed else { return };
    let seen = |bit: usize| st.rss_seen & (1 << bit) != 0;
    if !seen(RSS_FILE) {
        m.file = seed.file;
    }
    if !seen(RSS_ANON) {
        m.anon = seed.anon;
    }
    if !seen(RSS_SHMEM) {
        m.shmem = seed.shmem;
    }
    if !seen(RSS_SWAP) {
        m.swap = seed.swap;
    }
}

/// Whether `prev`, a live process's last sample, is what it is now: the same counters
/// (shared while nothing changed), memory, cgroup, parent and names (compared by address:
/// a name that changed is another allocation).
fn unchanged(
    prev: &ProcessSample,
    info: &ProcInfo,
    counters: &Arc<ProcCounters>,
    cgroup: &Arc<str>,
) -> bool {
    fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
    Arc::ptr_eq(&prev.counters, counters)
        && prev.memory == info.memory
        && prev.cgroup_id == info.cgroup_id
        && prev.ppid == info.ppid
        && same(prev.cgroup.as_ref(), Some(cgroup))
        && Arc::ptr_eq(&prev.comm, &info.comm)
        && same(prev.exe.as_ref(), info.exe.as_ref())
        && same(
            prev.exe_hash.as_ref(),
            info.exe_hash.as_ref().and_then(Option::as_ref),
        )
        && same(
            prev.app.as_ref(),
            info.app.as_ref().and_then(Option::as_ref),
        )
}

fn sample_of(
    key: ProcKey,
    info: &ProcInfo,
    counters: Arc<ProcCounters>,
    cgroup: Option<Arc<str>>,
    exit: Option<Exit>,
) -> ProcessSample {
    ProcessSample {
        tgid: key.tgid,
        start_ns: key.start_ns,
        ppid: info.ppid,
        cgroup_id: info.cgroup_id,
        comm: info.comm.clone(),
        exe: info.exe.clone(),
        exe_hash: info.exe_hash.clone().flatten(),
        cgroup,
        app: info.app.clone().flatten(),
        counters,
        memory: info.memory,
        exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tid: u32, since: u64, out_since: u64, out_total: u64, switches: u64) -> CpuState {
        CpuState {
            since,
            tid,
            owner_tgid: tid,
            out_since,
            out_total,
            switches,
            ..CpuState::default()
        }
    }

    #[test]
    fn a_whole_process_runtime_stands_for_its_threads_in_any_order() {
        let rec = |tid: u32, flags: u32, runtime_ns: u64, nvcsw: u64| TaskRecord {
            tid,
            tgid: 10,
            flags,
            runtime_ns,
            nvcsw,
            ..TaskRecord::default()
        };
        let leader = rec(10, 0, 30, 1);
        let group = rec(10, REC_SIGNAL | REC_GROUP, 100, 2);
        let thread = rec(11, 0, 50, 4);
        // A thread the walk reached before its leader (a wrapped tid), and after.
        for order in [[thread, leader, group], [leader, group, thread]] {
            let mut t = Totals::default();
            for r in &order {
                t.add(r);
            }
            assert_eq!(t.rec.runtime_ns, 100);
            // The other counters are still the records' sum.
            assert_eq!(t.rec.nvcsw, 7);
        }
        // Without the whole process's runtime: the records' sum.
        let mut t = Totals::default();
        for r in [leader, rec(10, REC_SIGNAL, 20, 2), thread] {
            t.add(&r);
        }
        assert_eq!(t.rec.runtime_ns, 100);
        let mut t = Totals::default();
        t.add(&leader);
        assert_eq!(t.rec.runtime_ns, 30);
    }

    #[test]
    fn finished_processes_are_bounded_oldest_first_and_visible_ones_stay() {
        let key = |tgid: u32| ProcKey {
            tgid,
            _pad: 0,
            start_ns: 1,
        };
        let mut finished: FastMap<ProcKey, u64> = (0..MAX_FINISHED as u32 + 100)
            .map(|i| (key(i), u64::from(i / 10)))
            .collect();
        // tgid 3 is oldest but still visited by the iterator.
        bound_finished(&mut finished, |k| k.tgid == 3);
        assert_eq!(finished.len(), MAX_FINISHED);
        assert!(finished.contains_key(&key(3)));
        assert!(!finished.contains_key(&key(4)));
        assert!(finished.contains_key(&key(MAX_FINISHED as u32 + 99)));
        // Oldest first: all of ticks 0..=9 but the visible one, and one of tick 10.
        assert_eq!(finished.values().filter(|t| **t < 10).count(), 1);
        // Under the bound nothing goes.
        let before = finished.clone();
        bound_finished(&mut finished, |_| false);
        assert_eq!(finished, before);
    }

    #[test]
    fn a_slice_still_running_is_not_in_the_map() {
        let s = slot(7, 100, 40, 900, 3);
        assert_eq!(slice_in_read(&s, &s, Some(5_000)), Slice::Running);
    }

    #[test]
    fn a_slice_that_ended_during_the_read_is_counted_once() {
        let before = slot(7, 100, 40, 900, 3);
        // The slice ended at 350 and brought its process to 1,250 ns.
        let after = slot(9, 350, 100, 1_250, 4);
        // Read after the add: the map holds the slice.
        assert_eq!(slice_in_read(&before, &after, Some(1_250)), Slice::InRead);
        assert_eq!(slice_in_read(&before, &after, Some(1_400)), Slice::InRead);
        // Read before the add: it does not, and the add says how long it ran (the thread's
        // runtime at switch-out already counts it as past).
        assert_eq!(
            slice_in_read(&before, &after, Some(1_000)),
            Slice::EndedAfterRead(250)
        );
        // No entry to hold it: nothing to add it to either.
        assert_eq!(slice_in_read(&before, &after, None), Slice::InRead);
        // The switch counter wraps.
        let (b, a) = (slot(7, 100, 40, 900, u64::MAX), slot(9, 350, 100, 1_250, 0));
        assert_eq!(
            slice_in_read(&b, &a, Some(1_000)),
            Slice::EndedAfterRead(250)
        );
    }

    #[test]
    fn a_slice_that_ends_while_it_is_measured_counts_in_full() {
        let before = slot(7, 100, 40, 900, 3);
        // Still running when read again: as measured.
        assert_eq!(settled(&before, &before, Some(1_000), 180, 300), Some(180));
        // Ended once since (at 350, its process at 1,250): measured from its end it read
        // ~0; the scheduler's account is 250, no more than the time since it began.
        let again = slot(9, 350, 100, 1_250, 4);
        assert_eq!(settled(&before, &again, Some(1_000), 0, 400), Some(250));
        assert_eq!(settled(&before, &again, Some(1_000), 0, 300), Some(200));
        // Switched twice (7 preempted at 350 and back at 500): the slice's account is no
        // longer in the slot, and the 20 measured are of the next slice — not told here
        // (the caller reads the process's entry again), never 20 for a slice of 250.
        let twice = slot(7, 500, 420, 2_000, 5);
        assert_eq!(settled(&before, &twice, Some(1_000), 20, 520), None);
    }

    #[test]
    fn a_cpu_that_switched_again_during_the_read_cannot_tell() {
        // The slice of 7 ended (its add unseen: `out_*` are of the next one), and 7 runs
        // again: whether the value read holds the first slice is not known here.
        let before = slot(7, 100, 40, 900, 3);
        let after = slot(7, 500, 420, 2_000, 5);
        assert_eq!(slice_in_read(&before, &after, Some(1_000)), Slice::Unsure);
        assert_eq!(slice_in_read(&before, &after, Some(2_500)), Slice::Unsure);
    }
}
