//! The live kernel source: loads the embedded object, attaches every hook (BTF tracepoint
//! where the kernel offers one, classic tracepoint otherwise), and reads maps and the ring
//! buffer into plain values.

use std::{
    collections::{HashMap as StdHashMap, VecDeque},
    fmt,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{
    ABSENT, DROP_KINDS, ExecEvent, ExitedKey, FLAG_GROUP_DEAD, FLAG_GROUP_UNKNOWN, KernelConfig,
    LifecycleEvent, ProcStats,
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use serde::Serialize;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, info, warn};

use super::{
    CaptureError, CaptureItem, Source, btf,
    identity::{self, Identity},
    procfs, syscalls,
    tracefs::{self, Tracefs},
    types::{
        AppKey, Argv, ArgvSource, DropCounts, Exit, Lifecycle, LifecycleKind, Memory, ProcCounters,
        ProcessSample, Tick,
    },
};
use crate::config::CaptureConfig;

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/umbra"));

/// A kernel hook: what it measures, where it attaches, whether the agent can run without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    SchedSwitch,
    SchedWakeup,
    SchedWakeupNew,
    SchedProcessExec,
    SchedProcessFork,
    SchedProcessExit,
    RssStat,
    PageFaultUser,
    SysExit,
    BlockBioQueue,
    BlockRqComplete,
    SockSendLength,
    SockRecvLength,
    InetSockSetState,
    TcpRetransmitSkb,
    CgroupAttachTask,
}

impl Hook {
    pub const ALL: [Hook; 16] = [
        Hook::SchedSwitch,
        Hook::SchedWakeup,
        Hook::SchedWakeupNew,
        Hook::SchedProcessExec,
        Hook::SchedProcessFork,
        Hook::SchedProcessExit,
        Hook::RssStat,
        Hook::PageFaultUser,
        Hook::SysExit,
        Hook::BlockBioQueue,
        Hook::BlockRqComplete,
        Hook::SockSendLength,
        Hook::SockRecvLength,
        Hook::InetSockSetState,
        Hook::TcpRetransmitSkb,
        Hook::CgroupAttachTask,
    ];

    /// (tracefs category, tracepoint name); the name is also the config name of the hook.
    pub const fn tracepoint(self) -> (&'static str, &'static str) {
        match self {
            Hook::SchedSwitch => ("sched", "sched_switch"),
            Hook::SchedWakeup => ("sched", "sched_wakeup"),
            Hook::SchedWakeupNew => ("sched", "sched_wakeup_new"),
            Hook::SchedProcessExec => ("sched", "sched_process_exec"),
            Hook::SchedProcessFork => ("sched", "sched_process_fork"),
            Hook::SchedProcessExit => ("sched", "sched_process_exit"),
            Hook::RssStat => ("kmem", "rss_stat"),
            Hook::PageFaultUser => ("exceptions", "page_fault_user"),
            Hook::SysExit => ("raw_syscalls", "sys_exit"),
            Hook::BlockBioQueue => ("block", "block_bio_queue"),
            Hook::BlockRqComplete => ("block", "block_rq_complete"),
            Hook::SockSendLength => ("sock", "sock_send_length"),
            Hook::SockRecvLength => ("sock", "sock_recv_length"),
            Hook::InetSockSetState => ("sock", "inet_sock_set_state"),
            Hook::TcpRetransmitSkb => ("tcp", "tcp_retransmit_skb"),
            Hook::CgroupAttachTask => ("cgroup", "cgroup_attach_task"),
        }
    }

    pub const fn name(self) -> &'static str {
        self.tracepoint().1
    }

    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The agent refuses to start without these: no CPU accounting or lifecycle otherwise.
    pub const fn required(self) -> bool {
        matches!(
            self,
            Hook::SchedSwitch | Hook::SchedProcessExec | Hook::SchedProcessExit
        )
    }

    /// Name of the BTF-tracepoint program, where there is one.
    const fn btf_program(self) -> Option<&'static str> {
        match self {
            Hook::SchedSwitch => Some("sched_switch_btf"),
            Hook::SchedWakeup => Some("sched_wakeup_btf"),
            Hook::SchedWakeupNew => Some("sched_wakeup_new_btf"),
            Hook::SchedProcessFork => Some("sched_process_fork_btf"),
            _ => None,
        }
    }

    /// Fields of the classic tracepoint the program needs (all must resolve).
    fn fields(self, o: &agent_common::TpOffsets) -> Vec<(&'static str, u32)> {
        match self {
            Hook::SchedSwitch => vec![
                ("prev_state", o.switch_prev_state),
                ("next_pid", o.switch_next_pid),
            ],
            Hook::SchedWakeup | Hook::SchedWakeupNew => vec![("pid", o.wakeup_pid)],
            Hook::SchedProcessExec => vec![("filename", o.exec_filename)],
            Hook::SchedProcessFork => vec![("child_pid", o.fork_child_pid)],
            Hook::SchedProcessExit | Hook::PageFaultUser => vec![],
            Hook::RssStat => vec![
                ("mm_id", o.rss_mm_id),
                ("curr", o.rss_curr),
                ("member", o.rss_member),
                ("size", o.rss_size),
            ],
            Hook::SysExit => vec![("id", o.sys_exit_id), ("ret", o.sys_exit_ret)],
            Hook::BlockBioQueue => vec![
                ("dev", o.bio_dev),
                ("sector", o.bio_sector),
                ("nr_sector", o.bio_nr_sector),
                ("rwbs", o.bio_rwbs),
            ],
            Hook::BlockRqComplete => vec![("dev", o.rq_done_dev), ("sector", o.rq_done_sector)],
            Hook::SockSendLength | Hook::SockRecvLength => vec![
                ("sk", o.sock_len_sk),
                ("family", o.sock_len_family),
                ("ret", o.sock_len_ret),
            ],
            Hook::InetSockSetState => vec![
                ("skaddr", o.set_state_sk),
                ("oldstate", o.set_state_old),
                ("newstate", o.set_state_new),
                ("protocol", o.set_state_protocol),
            ],
            Hook::TcpRetransmitSkb => vec![("skaddr", o.retrans_sk)],
            Hook::CgroupAttachTask => vec![
                ("dst_root", o.cgroup_attach_root),
                ("dst_id", o.cgroup_attach_id),
                ("pid", o.cgroup_attach_pid),
            ],
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, n) = self.tracepoint();
        write!(f, "{c}/{n}")
    }
}

/// How a hook ended up attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum HookStatus {
    BtfTracepoint,
    Tracepoint,
    /// Left off by configuration (`capture.disable`).
    Disabled,
    /// Not on this kernel; `raw_syscalls/sys_exit` measures it instead (network bytes from
    /// the send and receive syscalls, before Linux 6.3).
    SyscallFallback,
    /// Not on this kernel; the reason says what is missing.
    Unavailable(String),
}

/// What the start-up probe found, for logs, `umbra trace` and status messages.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    pub kernel: String,
    pub btf: bool,
    pub hooks: Vec<(Hook, HookStatus)>,
}

impl AttachReport {
    pub fn status(&self, hook: Hook) -> Option<&HookStatus> {
        self.hooks.iter().find(|(h, _)| *h == hook).map(|(_, s)| s)
    }

    pub fn attached(&self, hook: Hook) -> bool {
        matches!(
            self.status(hook),
            Some(HookStatus::BtfTracepoint | HookStatus::Tracepoint)
        )
    }
}

/// What userspace knows of a tracked process beyond its counters.
#[derive(Clone, Debug, Default)]
struct ProcInfo {
    start_ns: u64,
    comm: String,
    exe: Option<String>,
    ppid: Option<u32>,
    /// RSS from /proc for members the kernel has not reported since attach.
    seed: Option<Memory>,
    exit: Option<Exit>,
    /// Hash of `exe`, once computed (`Some(None)`: could not be read).
    exe_hash: Option<Option<String>>,
    /// What an interpreter runs, once known (`Some(None)`: not an interpreter, or no
    /// named program).
    app: Option<Option<AppKey>>,
}

/// The live kernel source.
pub struct KernelCapture {
    ebpf: Ebpf,
    stats: HashMap<MapData, u32, ProcStats>,
    threads: HashMap<MapData, u32, agent_common::ThreadState>,
    drops: PerCpuArray<MapData, agent_common::DropTable>,
    cpu_state: PerCpuArray<MapData, agent_common::CpuState>,
    /// tid → tgid of threads seen running at a tick.
    tgid_of: StdHashMap<u32, u32>,
    ring: RingBuf<MapData>,
    ring_fd: Option<AsyncFd<OwnedFd>>,
    /// The kernel log, when no runtime polls it: flushed at each sample.
    logger: Option<KernelLog>,
    report: AttachReport,
    procs: StdHashMap<u32, ProcInfo>,
    identity: Identity,
    exited: HashMap<MapData, ExitedKey, ProcStats>,
    recent_exits: VecDeque<(u32, Exit)>,
    pending: VecDeque<CaptureItem>,
    unclaimed: Vec<Lifecycle>,
    interval: Duration,
    ticker: Option<tokio::time::Interval>,
    /// Drains the ring buffer between wakeups (the programs wake the reader only when a
    /// batch has built up).
    drainer: Option<tokio::time::Interval>,
    ticks: u64,
    /// Fault injection for tests: run once between reading the maps and acting on them.
    after_read: Option<Box<dyn FnOnce() + Send>>,
}

/// Exits younger than this are finalised at the next tick: the dying thread's last
/// switch-out (its final CPU slice) lands just after the exit tracepoint.
const EXIT_SETTLE_NS: u64 = 20_000_000;
/// Events drained by `sample` and not taken are bounded (sync callers may never take them).
const MAX_UNCLAIMED: usize = 65536;
/// Exits remembered for processes retired through `EXITED` (pid reuse).
const RECENT_EXITS: usize = 4096;
/// How often the ring buffer is drained without a wakeup.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Every this many ticks, processes whose exit was never seen are checked in /proc.
const GC_EVERY_TICKS: u64 = 30;

impl KernelCapture {
    /// Loads and attaches everything, as configured.
    pub fn load(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        raise_memlock();
        let tracefs = Tracefs::new(tracefs::root()?);
        let mut kc = KernelConfig::EMPTY;
        kc.tp = tracefs.offsets();
        kc.syscalls = syscalls::NRS;
        if cfg.wake_on_exec {
            kc.flags |= agent_common::CONFIG_WAKE_ON_EXEC;
        }
        let simulated = |h: Hook| cfg.simulate_missing.iter().any(|t| *t == h.to_string());
        let disabled = |h: Hook| cfg.disable.iter().any(|d| d == h.name());
        // Network bytes without the sock length tracepoints (Linux < 6.3): from the send
        // and receive syscalls, counted by sys_exit.
        let fallback = |h: Hook| {
            let (category, name) = h.tracepoint();
            !disabled(h)
                && !disabled(Hook::SysExit)
                && (simulated(h) || !tracefs.exists(category, name))
        };
        if fallback(Hook::SockSendLength) {
            kc.syscalls.send = syscalls::SEND;
        }
        if fallback(Hook::SockRecvLength) {
            kc.syscalls.recv = syscalls::RECV;
        }
        let btf_path = Path::new(btf::VMLINUX_BTF);
        // Task offsets serve the classic tracepoints too (exact CPU time, exit codes,
        // parents); BTF tracepoints additionally need the parsed BTF.
        let task = if btf_path.exists() {
            match btf::task_offsets(btf_path) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(error = %e, "Kernel BTF unusable; task fields come from /proc");
                    None
                }
            }
        } else {
            warn!(
                path = btf::VMLINUX_BTF,
                "No kernel BTF; task fields come from /proc"
            );
            None
        };
        if let Some(t) = task {
            kc.task = t;
        }
        let kernel_btf = if cfg.btf_tracepoints && task.is_some() {
            match Btf::from_sys_fs() {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!(error = %e, "Kernel BTF unusable; using classic tracepoints only");
                    None
                }
            }
        } else {
            None
        };

        let mut loader = EbpfLoader::new();
        loader
            .btf(kernel_btf.as_ref())
            .override_global("CONFIG", &kc, true)
            .map_max_entries("PROC_STATS", cfg.max_processes)
            .map_max_entries("THREADS", cfg.max_threads)
            .map_max_entries("EVENTS", cfg.ring_buffer_bytes())
            .map_max_entries("BLOCK_PENDING", cfg.max_block_requests)
            .map_max_entries("SOCK_OWNER", cfg.max_sockets)
            .map_max_entries("MM_OWNER", cfg.max_processes)
            .map_max_entries("EXITED", (cfg.max_processes / 8).max(256));
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| CaptureError::Load { source })?;
        let logger = init_kernel_log(&mut ebpf);

        let mut hooks = Vec::new();
        for hook in Hook::ALL {
            let status = if disabled(hook) {
                HookStatus::Disabled
            } else if ((hook == Hook::SockSendLength && kc.syscalls.send[0] >= 0)
                || (hook == Hook::SockRecvLength && kc.syscalls.recv[0] >= 0))
                // (sys_exit comes first in Hook::ALL.)
                && hooks.iter().any(|(h, s): &(Hook, HookStatus)| {
                    *h == Hook::SysExit && *s == HookStatus::Tracepoint
                })
            {
                HookStatus::SyscallFallback
            } else if simulated(hook) {
                HookStatus::Unavailable(format!(
                    "tracepoint {hook} does not exist on this kernel (simulated)"
                ))
            } else {
                attach(&mut ebpf, &tracefs, &kc, kernel_btf.as_ref(), hook)?
            };
            match &status {
                HookStatus::Unavailable(why) if hook.required() => {
                    let (category, name) = hook.tracepoint();
                    debug!(%hook, why, "Required hook unavailable");
                    return Err(CaptureError::MissingTracepoint {
                        category: category.into(),
                        name: name.into(),
                    });
                }
                HookStatus::Unavailable(why) => {
                    warn!(%hook, why = %why, "Hook unavailable; its measurements are not reported")
                }
                HookStatus::SyscallFallback => {
                    warn!(%hook, "Hook not on this kernel; measured from syscalls instead")
                }
                s => debug!(%hook, status = ?s, "Hook"),
            }
            hooks.push((hook, status));
        }
        let report = AttachReport {
            kernel: kernel_release(),
            btf: kernel_btf.is_some(),
            hooks,
        };
        info!(
            kernel = %report.kernel,
            btf = report.btf,
            attached = report.hooks.iter().filter(|(h, _)| report.attached(*h)).count(),
            "Kernel capture attached"
        );

        let stats = HashMap::try_from(take(&mut ebpf, "PROC_STATS")?).map_err(|source| {
            CaptureError::Map {
                name: "PROC_STATS",
                source,
            }
        })?;
        let threads =
            HashMap::try_from(take(&mut ebpf, "THREADS")?).map_err(|source| CaptureError::Map {
                name: "THREADS",
                source,
            })?;
        let exited =
            HashMap::try_from(take(&mut ebpf, "EXITED")?).map_err(|source| CaptureError::Map {
                name: "EXITED",
                source,
            })?;
        let cpu_state = PerCpuArray::try_from(take(&mut ebpf, "CPU_STATE")?).map_err(|source| {
            CaptureError::Map {
                name: "CPU_STATE",
                source,
            }
        })?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, "DROPS")?).map_err(|source| {
            CaptureError::Map {
                name: "DROPS",
                source,
            }
        })?;
        let ring =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| CaptureError::Map {
                name: "EVENTS",
                source,
            })?;
        Ok(KernelCapture {
            ebpf,
            stats,
            threads,
            drops,
            ring,
            ring_fd: None,
            logger,
            report,
            procs: StdHashMap::new(),
            cpu_state,
            tgid_of: StdHashMap::new(),
            identity: Identity::new(),
            exited,
            recent_exits: VecDeque::new(),
            pending: VecDeque::new(),
            unclaimed: Vec::new(),
            interval: cfg.interval(),
            ticker: None,
            drainer: None,
            ticks: 0,
            after_read: None,
        })
    }

    /// Fault injection, for tests: `f` runs once, in the next [`sample`](Self::sample),
    /// right after the kernel's maps were read (to race a pid reuse with the read).
    #[doc(hidden)]
    pub fn after_map_read(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.after_read = Some(f);
    }

    pub fn report(&self) -> &AttachReport {
        &self.report
    }

    /// The loaded programs, for run-time statistics (`kernel.bpf_stats_enabled`).
    pub fn programs(&self) -> impl Iterator<Item = (&str, &aya::programs::Program)> {
        self.ebpf.programs()
    }

    /// Runs and run time of each loaded program, where the kernel counts them
    /// ([`enable_program_stats`], or `sysctl kernel.bpf_stats_enabled=1`); zeros otherwise.
    /// Named by hook: the BTF and the classic program of a hook (one of them attached)
    /// are summed.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut by_hook: std::collections::BTreeMap<&str, ProgramStats> = Default::default();
        for (name, p) in self.programs() {
            let Ok(info) = p.info() else { continue };
            let hook = name.strip_suffix("_btf").unwrap_or(name);
            let s = by_hook.entry(hook).or_insert_with(|| ProgramStats {
                name: hook.to_string(),
                ..Default::default()
            });
            s.runs += info.run_count();
            s.run_ns += info.run_time().as_nanos() as u64;
        }
        by_hook.into_values().collect()
    }
}

/// Run-time statistics of one kernel program, since it was loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// Has the kernel count runs and run time of BPF programs while the returned descriptor
/// is open (`BPF_ENABLE_STATS`, Linux ≥ 5.8, needs CAP_SYS_ADMIN).
pub fn enable_program_stats() -> Result<std::os::fd::OwnedFd, CaptureError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| CaptureError::Io(std::io::Error::other(e.to_string())))
}

impl KernelCapture {
    /// Moves every event waiting in the ring buffer into `out`, updating what is known of
    /// each process. Never blocks.
    pub fn drain_events(&mut self, out: &mut Vec<Lifecycle>) -> usize {
        let mut raw = Vec::new();
        while let Some(item) = self.ring.next() {
            let exec = item.len() >= std::mem::size_of::<ExecEvent>()
                && item.get(..4) == Some(&agent_common::EVENT_EXEC.to_ne_bytes()[..]);
            if exec {
                // SAFETY: the kernel wrote a whole ExecEvent (size and kind checked);
                // read_unaligned copes with the ring's 8-byte alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExecEvent>()) };
                raw.push((Lifecycle::from_exec(&ev), ev.base.flags));
            } else if item.len() >= std::mem::size_of::<LifecycleEvent>() {
                // SAFETY: as above, for a LifecycleEvent.
                let ev =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LifecycleEvent>()) };
                raw.push((Lifecycle::from_kernel(&ev), ev.flags));
            }
        }
        let n = raw.len();
        for (ev, flags) in raw {
            if let Some(mut ev) = ev {
                self.note(&mut ev, flags);
                out.push(ev);
            }
        }
        n
    }

    fn note(&mut self, ev: &mut Lifecycle, flags: u32) {
        match &mut ev.kind {
            LifecycleKind::Exec {
                filename,
                argv,
                inputs,
            } => {
                if argv.is_empty()
                    && let Some(raw) = procfs::cmdline(ev.tgid)
                {
                    // The kernel could not read them: what /proc shows now (racy).
                    *argv = Argv::from_raw(&raw, raw.len() as u32, ArgvSource::Proc);
                }
                let cwd = PathBuf::from(format!("/proc/{}/cwd", ev.tgid));
                *inputs = identity::input_files(argv, &cwd);
                let exe =
                    procfs::exe_bytes(ev.tgid).unwrap_or_else(|| filename.as_bytes().to_vec());
                let app = self.identity.app_key(&exe, argv, &cwd);
                let info = self.procs.entry(ev.tgid).or_default();
                info.comm.clone_from(&ev.comm);
                info.exe = Some(filename.clone());
                info.exe_hash = None;
                info.app = Some(app);
                if ev.ppid.is_some() {
                    info.ppid = ev.ppid;
                }
            }
            LifecycleKind::Fork => {
                if ev.tgid == 0 {
                    // No BTF: was it a thread or a process?
                    match procfs::tgid_of(ev.pid) {
                        Some(t) => ev.tgid = t,
                        None => ev.tgid = ev.pid,
                    }
                }
                // A forked child runs its parent's program until it execs.
                let inherited = ev
                    .ppid
                    .and_then(|p| self.procs.get(&p))
                    .and_then(|p| p.app.clone());
                let info = self.procs.entry(ev.tgid).or_default();
                info.ppid = ev.ppid;
                if info.comm.is_empty() {
                    info.comm.clone_from(&ev.comm);
                }
                if info.app.is_none() {
                    info.app = inherited;
                }
            }
            LifecycleKind::Exit { code } => {
                if flags & (FLAG_GROUP_DEAD | FLAG_GROUP_UNKNOWN) != 0 {
                    let info = self.procs.entry(ev.tgid).or_default();
                    if info.comm.is_empty() {
                        info.comm.clone_from(&ev.comm);
                    }
                    let exit = Exit {
                        code: *code,
                        timestamp_ns: ev.timestamp_ns,
                    };
                    info.exit = Some(exit);
                    if self.recent_exits.len() >= RECENT_EXITS {
                        self.recent_exits.pop_front();
                    }
                    self.recent_exits.push_back((ev.tgid, exit));
                }
            }
        }
    }

    /// Reads every process's counters: live ones, and the final sample of those that
    /// exited (their kernel entries are then removed).
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
        let gc = self.ticks.is_multiple_of(GC_EVERY_TICKS);
        // Node counters, running slices and the kernel maps are read together, before the
        // slower work below (names, hashes), so they describe the same instant.
        let node = procfs::node_stats();
        let inflight = self.inflight();
        let mut entries: Vec<(u32, ProcStats)> = self.stats.iter().filter_map(Result::ok).collect();
        if let Some(f) = self.after_read.take() {
            f();
        }
        // The kernel adds a slice at switch-out; a task running for seconds would show its
        // CPU time in lumps. Count the slice in progress now, so each interval gets its own.
        for (tgid, st) in entries.iter_mut() {
            if let Some(ns) = inflight.get(tgid) {
                st.cpu_ns += ns;
            }
        }
        let mut samples = Vec::with_capacity(entries.len());
        let mut finished = Vec::new();
        // Processes whose tgid was reused before we collected them: final samples.
        let retired: Vec<(ExitedKey, ProcStats)> =
            self.exited.iter().filter_map(Result::ok).collect();
        for (key, st) in retired {
            let _ = self.exited.remove(&key);
            let info = match self.procs.get(&key.tgid) {
                Some(i) if i.start_ns == key.first_seen_ns => {
                    self.procs.remove(&key.tgid).unwrap_or_default()
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
            let mut info = info;
            let cgroup = self.identity.cgroup_path(st.cgroup_id);
            hash_exe(&mut self.identity, key.tgid, &mut info);
            samples.push(build_sample(key.tgid, &st, &info, cgroup, Some(exit)));
        }
        for (tgid, st) in entries {
            let info = self.procs.entry(tgid).or_default();
            if info.start_ns != st.first_seen_ns {
                // A process seen for the first time. What events told us before its counters
                // appeared (start_ns 0) is its own; what an older process left is not.
                let known = std::mem::take(info);
                let known = if known.start_ns == 0 {
                    known
                } else {
                    ProcInfo::default()
                };
                let exit = known.exit.filter(|e| e.timestamp_ns >= st.first_seen_ns);
                *info = ProcInfo {
                    start_ns: st.first_seen_ns,
                    comm: if known.comm.is_empty() {
                        procfs::comm(tgid).unwrap_or_default()
                    } else {
                        known.comm
                    },
                    exe: known.exe.or_else(|| procfs::exe(tgid)),
                    ppid: known.ppid.or_else(|| procfs::ppid(tgid)),
                    seed: if st.rss_seen == 0b1111 {
                        None
                    } else {
                        procfs::memory(tgid)
                    },
                    exit,
                    exe_hash: None,
                    app: known.app,
                };
            }
            if info.app.is_none() {
                // First seen without an exec (started before the agent, or forked): its
                // arguments as /proc shows them.
                info.app = Some(procfs::cmdline(tgid).and_then(|raw| {
                    let argv = Argv::from_raw(&raw, raw.len() as u32, ArgvSource::Proc);
                    let exe = procfs::exe_bytes(tgid)?;
                    let cwd = PathBuf::from(format!("/proc/{tgid}/cwd"));
                    self.identity.app_key(&exe, &argv, &cwd)
                }));
            }
            hash_exe(&mut self.identity, tgid, info);
            if gc && info.exit.is_none() && !procfs::alive(tgid) {
                info.exit = Some(Exit {
                    code: None,
                    timestamp_ns: now,
                });
            }
            let exit = info.exit.filter(|e| e.timestamp_ns + EXIT_SETTLE_NS <= now);
            if exit.is_some() {
                finished.push(tgid);
            }
            let cgroup = self.identity.cgroup_path(st.cgroup_id);
            samples.push(build_sample(tgid, &st, info, cgroup, exit));
        }
        for tgid in finished {
            // Gone from the kernel map first, then from what we know.
            if let Err(e) = self.stats.remove(&tgid) {
                debug!(tgid, error = %e, "Exited process already removed");
            }
            self.procs.remove(&tgid);
        }
        // Exits of processes that never reached the stats map (or already left it).
        self.procs.retain(|_, i| {
            i.start_ns != 0
                || i.exit
                    .is_none_or(|e| e.timestamp_ns + 10 * EXIT_SETTLE_NS > now)
        });
        if gc {
            self.gc_threads();
        }
        samples.sort_by_key(|s| s.tgid);
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

    /// The exit seen for `tgid` after `start_ns`, among recent exits.
    fn recent_exit(&self, tgid: u32, start_ns: u64) -> Option<Exit> {
        self.recent_exits
            .iter()
            .rev()
            .find(|(t, e)| *t == tgid && e.timestamp_ns >= start_ns)
            .map(|(_, e)| *e)
    }

    /// On-CPU time of the slices running right now, by tgid.
    fn inflight(&mut self) -> StdHashMap<u32, u64> {
        let mut out = StdHashMap::new();
        let Ok(per_cpu) = self.cpu_state.get(&0, 0) else {
            return out;
        };
        let now = procfs::mono_ns();
        if self.tgid_of.len() > 65536 {
            self.tgid_of.clear();
        }
        for st in per_cpu.iter() {
            if st.tid == 0 || st.since == 0 || st.since >= now {
                continue;
            }
            let tgid = match self.tgid_of.get(&st.tid) {
                Some(t) => *t,
                None => match procfs::tgid_of(st.tid) {
                    Some(t) => {
                        self.tgid_of.insert(st.tid, t);
                        t
                    }
                    None => continue,
                },
            };
            *out.entry(tgid).or_insert(0) += now - st.since;
        }
        out
    }

    /// Lifecycle events that `sample` drained from the ring buffer (they happened before
    /// that tick). The sync API's callers take them here.
    pub fn take_events(&mut self) -> Vec<Lifecycle> {
        std::mem::take(&mut self.unclaimed)
    }

    /// Removes thread entries of threads that are gone without a final switch seen.
    fn gc_threads(&mut self) {
        let dead: Vec<u32> = self
            .threads
            .keys()
            .filter_map(Result::ok)
            .filter(|tid| !procfs::alive(*tid))
            .collect();
        for tid in dead {
            let _ = self.threads.remove(&tid);
        }
    }

    /// Drop counters per program and kind, summed over CPUs (one map lookup).
    pub fn drop_counts(&self) -> Result<DropCounts, CaptureError> {
        let per_cpu = self.drops.get(&0, 0).map_err(|source| CaptureError::Map {
            name: "DROPS",
            source,
        })?;
        let mut d = DropCounts::default();
        for table in per_cpu.iter() {
            for (p, kinds) in d.0.iter_mut().enumerate() {
                for (k, slot) in kinds.iter_mut().enumerate() {
                    *slot += table.0[p * DROP_KINDS + k];
                }
            }
        }
        Ok(d)
    }
}

impl Source for KernelCapture {
    async fn next(&mut self) -> Result<Option<CaptureItem>, CaptureError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            if self.ring_fd.is_none() {
                let fd = self.ring.as_fd().try_clone_to_owned()?;
                // SAFETY: `fd` is an owned duplicate, open for as long as the AsyncFd holds it.
                let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.ring_fd = Some(fd);
            }
            if self.ticker.is_none() {
                let mut t = tokio::time::interval(self.interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t.tick().await;
                self.ticker = Some(t);
                let mut d = tokio::time::interval(DRAIN_EVERY);
                d.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                self.drainer = Some(d);
            }
            let (Some(fd), Some(ticker), Some(drainer)) = (
                self.ring_fd.as_ref(),
                self.ticker.as_mut(),
                self.drainer.as_mut(),
            ) else {
                continue;
            };
            tokio::select! {
                _ = ticker.tick() => {
                    let tick = self.sample()?;
                    let events = self.take_events();
                    self.pending.extend(events.into_iter().map(CaptureItem::Event));
                    self.pending.push_back(CaptureItem::Tick(Box::new(tick)));
                }
                guard = fd.readable() => {
                    let mut guard = guard?;
                    guard.clear_ready();
                    let mut events = Vec::new();
                    self.drain_events(&mut events);
                    self.pending.extend(events.into_iter().map(CaptureItem::Event));
                }
                _ = drainer.tick() => {
                    let mut events = Vec::new();
                    self.drain_events(&mut events);
                    self.pending.extend(events.into_iter().map(CaptureItem::Event));
                }
            }
        }
    }
}

/// A process's sample from its kernel counters and what userspace knows of it.
fn hash_exe(identity: &mut Identity, tgid: u32, info: &mut ProcInfo) {
    if info.exe_hash.is_none() && info.exe.is_some() {
        info.exe_hash = Some(identity.exe_hash(tgid, info.exe.as_deref()));
    }
}

fn build_sample(
    tgid: u32,
    st: &ProcStats,
    info: &ProcInfo,
    cgroup: Option<String>,
    exit: Option<Exit>,
) -> ProcessSample {
    let mut memory = Memory::from_kernel(st);
    if let Some(seed) = info.seed {
        let seen = |bit: usize| st.rss_seen & (1 << bit) != 0;
        if !seen(agent_common::RSS_FILE) {
            memory.file = seed.file;
        }
        if !seen(agent_common::RSS_ANON) {
            memory.anon = seed.anon;
        }
        if !seen(agent_common::RSS_SHMEM) {
            memory.shmem = seed.shmem;
        }
        if !seen(agent_common::RSS_SWAP) {
            memory.swap = seed.swap;
        }
    }
    ProcessSample {
        tgid,
        start_ns: st.first_seen_ns,
        ppid: info.ppid,
        cgroup_id: st.cgroup_id,
        comm: info.comm.clone(),
        exe: info.exe.clone(),
        exe_hash: info.exe_hash.clone().flatten(),
        cgroup,
        app: info.app.clone().flatten(),
        counters: ProcCounters::from_kernel(st),
        memory,
        exit,
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name).ok_or(CaptureError::MissingMap { name })
}

/// Attaches one hook: the BTF tracepoint if possible, the classic one otherwise.
fn attach(
    ebpf: &mut Ebpf,
    tracefs: &Tracefs,
    kc: &KernelConfig,
    btf: Option<&Btf>,
    hook: Hook,
) -> Result<HookStatus, CaptureError> {
    let (category, name) = hook.tracepoint();
    if let (Some(prog), Some(btf)) = (hook.btf_program(), btf) {
        match attach_btf(ebpf, prog, name, btf) {
            Ok(()) => return Ok(HookStatus::BtfTracepoint),
            Err(e) => debug!(%hook, error = %e, "BTF tracepoint refused; trying the classic one"),
        }
    }
    if !tracefs.exists(category, name) {
        return Ok(HookStatus::Unavailable(format!(
            "tracepoint {category}/{name} does not exist on this kernel"
        )));
    }
    let missing: Vec<&str> = hook
        .fields(&kc.tp)
        .into_iter()
        .filter(|(_, off)| *off == ABSENT)
        .map(|(f, _)| f)
        .collect();
    if !missing.is_empty() {
        return Ok(HookStatus::Unavailable(format!(
            "tracepoint {category}/{name} lacks field(s) {} on this kernel",
            missing.join(", ")
        )));
    }
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| CaptureError::Attach {
            hook: hook.to_string(),
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| CaptureError::Attach {
            hook: hook.to_string(),
            source,
        })?;
    let res = prog
        .load()
        .and_then(|()| prog.attach(category, name).map(drop));
    match res {
        Ok(()) => Ok(HookStatus::Tracepoint),
        Err(e) if !hook.required() => Ok(HookStatus::Unavailable(format!(
            "attaching {category}/{name} failed: {e}"
        ))),
        Err(source) => Err(CaptureError::Attach {
            hook: hook.to_string(),
            source,
        }),
    }
}

fn attach_btf(
    ebpf: &mut Ebpf,
    prog: &str,
    func: &str,
    btf: &Btf,
) -> Result<(), aya::programs::ProgramError> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or(aya::programs::ProgramError::NotLoaded)?
        .try_into()?;
    p.load(func, btf)?;
    if let Err(e) = p.attach() {
        let _ = p.unload();
        return Err(e);
    }
    Ok(())
}

/// aya-log's reader of the programs' log ring buffer, emitting through `log` (bridged to
/// `tracing` by the subscriber).
type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Kernel log lines from the programs (rare paths only) go to `tracing`: polled by a task
/// when there is a runtime, else returned to be flushed at each sample.
fn init_kernel_log(ebpf: &mut Ebpf) -> Option<KernelLog> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            debug!(error = %e, "Kernel log unavailable");
            return None;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Some(logger);
    };
    let _guard = handle.enter();
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd holds it.
    match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(mut fd) => {
            handle.spawn(async move {
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
            None
        }
        Err(e) => {
            debug!(error = %e, "Kernel log not polled");
            None
        }
    }
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; ≥ 5.11 use the memory cgroup.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!(
            error = %std::io::Error::last_os_error(),
            "Cannot raise RLIMIT_MEMLOCK (harmless on Linux ≥ 5.11)"
        );
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl fmt::Debug for KernelCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelCapture")
            .field("report", &self.report)
            .field("ring_fd", &self.ring.as_raw_fd())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_follow_the_kernel_program_ids() {
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(agent_common::prog::NAMES[i], h.name());
        }
    }
}
