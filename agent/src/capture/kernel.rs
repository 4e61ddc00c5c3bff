//! The live kernel source: loads the embedded object, probes and attaches what this
//! kernel offers — the task iterator for per-process counters where it can, today's
//! per-event hooks where it cannot — and reads maps, the iterator and the ring buffer into
//! plain values (the per-tick composition is in `sampler`).

use std::{
    collections::VecDeque,
    fmt,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use agent_common::{
    ABSENT, DROP_KINDS, Drop, EVENT_EXEC, EVENT_EXIT, EVENT_FREE, ExecEvent, ExitEvent, ExitedKey,
    FLAG_GROUP_DEAD, FLAG_GROUP_UNKNOWN, FLAG_TOTAL, ITER_CTL_GEN, KernelConfig, LifecycleEvent,
    ProcKey, ProcStats, REC_MM, RING_WAKE_EVERY_NS, TaskRecord, prog,
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, TracePoint},
};
use serde::{Deserialize, Serialize};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, info, warn};

use super::{
    CaptureError, CaptureItem, Source, bpf, btf,
    identity::{self, Identity},
    iter::HeldRecords,
    procfs,
    sampler::{ProcInfo, memory_of},
    syscalls,
    tracefs::{self, Tracefs},
    types::{Argv, ArgvSource, DropCounts, Exit, Lifecycle, LifecycleKind},
};
use crate::{FastMap, config::CaptureConfig};

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/umbra"));

/// Where per-process counters come from (`capture.counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counters {
    /// The task iterator where the kernel has it (Linux ≥ 5.8 with BTF), else the hooks.
    /// The default: nothing runs per context switch, fault or syscall, and every process
    /// is seen, running or not.
    #[default]
    Auto,
    /// The task iterator, or an error naming why it cannot run.
    Iterator,
    /// Per-event hooks (scheduler, memory, faults, syscalls), as on kernels without the
    /// iterator.
    Hooks,
}

/// What the agent runs on: the counters' path chosen at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterPath {
    Iterator,
    Hooks,
}

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
    TaskIter,
    SchedProcessFree,
}

impl Hook {
    pub const ALL: [Hook; prog::COUNT] = [
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
        Hook::TaskIter,
        Hook::SchedProcessFree,
    ];

    /// (tracefs category, tracepoint name); the name is also the config name of the hook.
    /// The task iterator is `iter/task`.
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
            Hook::TaskIter => ("iter", "task"),
            Hook::SchedProcessFree => ("sched", "sched_process_free"),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Hook::TaskIter => "task_iter",
            h => h.tracepoint().1,
        }
    }

    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The program id (`agent_common::prog`), the index of its drop counters.
    pub fn id(self) -> usize {
        Hook::ALL.iter().position(|h| *h == self).unwrap_or(0)
    }

    /// The agent refuses to start without these: no lifecycle otherwise (and, on the
    /// hooks path, no CPU accounting without `sched_switch`).
    pub const fn required(self) -> bool {
        matches!(
            self,
            Hook::SchedSwitch | Hook::SchedProcessExec | Hook::SchedProcessExit
        )
    }

    /// Hooks of the iterator path only (exact final counters of an ended process).
    const fn iterator_only(self) -> bool {
        matches!(self, Hook::SchedProcessFree)
    }

    /// Hooks whose measurements the task iterator reads from the kernel's own
    /// accounting instead: off on the iterator path.
    const fn replaced_by_iterator(self) -> bool {
        matches!(
            self,
            Hook::RssStat | Hook::PageFaultUser | Hook::CgroupAttachTask
        )
    }

    /// Per-event hooks of the detail level (run-queue histograms, syscall counts): off
    /// on the iterator path unless `capture.detail` is on.
    const fn detail(self) -> bool {
        matches!(
            self,
            Hook::SchedSwitch | Hook::SchedWakeup | Hook::SchedWakeupNew | Hook::SysExit
        )
    }

    /// Name of the BTF-tracepoint program, where there is one.
    const fn btf_program(self) -> Option<&'static str> {
        match self {
            Hook::SchedSwitch => Some("sched_switch_btf"),
            Hook::SchedWakeup => Some("sched_wakeup_btf"),
            Hook::SchedWakeupNew => Some("sched_wakeup_new_btf"),
            Hook::SchedProcessFork => Some("sched_process_fork_btf"),
            Hook::SchedProcessFree => Some("sched_process_free_btf"),
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
            Hook::SchedProcessExit
            | Hook::PageFaultUser
            | Hook::TaskIter
            | Hook::SchedProcessFree => vec![],
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
                ("sport", o.set_state_sport),
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
    /// The task iterator, run once a tick.
    Iterator,
    /// Left off by configuration (`capture.disable`).
    Disabled,
    /// Not on this kernel; `raw_syscalls/sys_exit` measures it instead (network bytes from
    /// the send and receive syscalls, before Linux 6.3).
    SyscallFallback,
    /// Off: the task iterator reads what it measured from the kernel's own accounting.
    ByIterator,
    /// Off: a per-event hook of the detail level (`capture.detail`, on in `umbra trace`).
    DetailOff,
    /// Not on this kernel (or not used); the reason says what is missing.
    Unavailable(String),
}

/// What the start-up probe found, for logs, `umbra trace` and status messages.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    pub kernel: String,
    pub btf: bool,
    /// Where per-process counters come from, and, on the hooks path, why.
    pub counters: CounterPath,
    pub hooks_reason: Option<String>,
    pub detail: bool,
    pub hooks: Vec<(Hook, HookStatus)>,
}

impl AttachReport {
    pub fn status(&self, hook: Hook) -> Option<&HookStatus> {
        self.hooks.iter().find(|(h, _)| *h == hook).map(|(_, s)| s)
    }

    pub fn attached(&self, hook: Hook) -> bool {
        matches!(
            self.status(hook),
            Some(HookStatus::BtfTracepoint | HookStatus::Tracepoint | HookStatus::Iterator)
        )
    }
}

/// The name of the process that stands for the exits nothing could hold (`UNHELD`).
pub const UNHELD_NAME: &str = "(exits not held)";

/// `op` of `dst`'s and `src`'s counters, field by field (the ids, start and cgroup of
/// `dst` stay).
fn fold_counters(dst: &mut TaskRecord, src: &TaskRecord, op: fn(u64, u64) -> u64) {
    let TaskRecord {
        tid: _,
        tgid: _,
        flags: _,
        _pad: _,
        start_ns: _,
        cgroup_id: _,
        runtime_ns,
        nvcsw,
        nivcsw,
        run_delay_ns,
        pcount,
        min_flt,
        maj_flt,
        ioac,
        rss_pages,
    } = src;
    dst.runtime_ns = op(dst.runtime_ns, *runtime_ns);
    dst.nvcsw = op(dst.nvcsw, *nvcsw);
    dst.nivcsw = op(dst.nivcsw, *nivcsw);
    dst.run_delay_ns = op(dst.run_delay_ns, *run_delay_ns);
    dst.pcount = op(dst.pcount, *pcount);
    dst.min_flt = op(dst.min_flt, *min_flt);
    dst.maj_flt = op(dst.maj_flt, *maj_flt);
    for (d, s) in dst.ioac.iter_mut().zip(ioac) {
        *d = op(*d, *s);
    }
    for (d, s) in dst.rss_pages.iter_mut().zip(rss_pages) {
        *d = op(*d as u64, *s as u64) as i64;
    }
}

/// The live kernel source.
pub struct KernelCapture {
    pub(super) ebpf: Ebpf,
    pub(super) stats: HashMap<MapData, ProcKey, ProcStats>,
    pub(super) threads_map: HashMap<MapData, u32, agent_common::ThreadState>,
    pub(super) drops: PerCpuArray<MapData, agent_common::DropTable>,
    pub(super) cpu_state: PerCpuArray<MapData, agent_common::CpuState>,
    pub(super) exited: HashMap<MapData, ExitedKey, ProcStats>,
    /// Final counters whose free event found the ring full.
    freed: HashMap<MapData, ProcKey, TaskRecord>,
    /// Per CPU, the summed final counters of freed processes nothing could hold, and
    /// their sum as taken last.
    unheld: PerCpuArray<MapData, TaskRecord>,
    unheld_taken: TaskRecord,
    /// Exited threads' I/O per process: the kernel removes an entry when its process is
    /// freed; without that hook, userspace does when it has finished the process.
    pub(super) exited_io: HashMap<MapData, ProcKey, [u64; 6]>,
    /// Final counters from `FREED` of processes started after the last walk.
    freed_later: Vec<(ProcKey, TaskRecord)>,
    ring: RingBuf<MapData>,
    ring_fd: Option<AsyncFd<OwnedFd>>,
    /// The task iterator's link (iterator path): each tick reads a new run of it.
    pub(super) iter_link: Option<OwnedFd>,
    /// The kernel log, when no runtime polls it: flushed at each sample.
    pub(super) logger: Option<KernelLog>,
    pub(super) report: AttachReport,
    pub(super) page_size: u64,
    /// Whether `BPF_MAP_LOOKUP_BATCH` works here (Linux ≥ 5.6).
    pub(super) batch: bool,
    /// What is known of each tracked process, boxed: the table stays small enough to
    /// probe and scan by key without touching every process's ~1 KB each tick.
    pub(super) procs: FastMap<ProcKey, Box<ProcInfo>>,
    /// Processes told to have ended with their final counters (`ProcInfo::total`), which
    /// the sampler reports even when the kernel shows them no more; let go once their
    /// `procs` entry is.
    pub(super) ended: Vec<ProcKey>,
    /// What events told of processes whose start they did not carry (a classic fork
    /// tracepoint), by tgid, until the process's key is known.
    pub(super) unkeyed: FastMap<u32, (ProcInfo, u64)>,
    /// Processes already reported finished, and the tick they were: anything seen of them
    /// later (a zombie the iterator still visits, an entry a late event re-made) is not a
    /// new process.
    pub(super) finished: FastMap<ProcKey, u64>,
    /// Threads seen by the iterator: their process and last run-queue totals, kept so the
    /// wait of a thread that exits is not lost from its process's total.
    pub(super) threads: FastMap<u32, super::sampler::ThreadSeen>,
    pub(super) identity: Identity,
    pub(super) recent_exits: VecDeque<(u32, Exit)>,
    pending: VecDeque<CaptureItem>,
    pub(super) unclaimed: Vec<Lifecycle>,
    interval: Duration,
    ticker: Option<tokio::time::Interval>,
    /// The next drain of the ring buffer without a wakeup: armed by a wakeup and by every
    /// drain that found events, so events the programs sent without waking the reader
    /// (they wake it at most every [`RING_WAKE_EVERY_NS`]) wait at most that long; idle,
    /// nothing is armed and the thread sleeps until the tick.
    follow_up: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) ticks: u64,
    /// Fault injection for tests: run once between reading the maps and acting on them.
    pub(super) after_read: Option<Box<dyn FnOnce() + Send>>,
    /// Fault injection for tests: run once between reading `PROC_STATS` and the CPUs'
    /// running slices (hooks path).
    pub(super) after_stats: Option<Box<dyn FnOnce() + Send>>,
    pub(super) iter_buf: Vec<u8>,
    /// A walk's records, and their sums per process: kept from tick to tick (with their
    /// capacity), as is the buffer of `PROC_STATS` batches.
    pub(super) iter_records: Vec<TaskRecord>,
    pub(super) totals: FastMap<ProcKey, super::sampler::Totals>,
    stats_buf: bpf::BatchBuf<ProcKey, ProcStats>,
    /// The iterator's last full record of each thread, for its marks.
    iter_held: HeldRecords,
    /// `ITER_CTL`: userspace's generation of what it holds (`ITER_CTL_GEN`).
    iter_ctl: Array<MapData, u64>,
    iter_gen: u64,
    /// Marks of the iterator that had no record here, so far.
    iter_lost: u64,
    /// Whether `sched_process_free` is attached (exact final counters).
    pub(super) free_hook: bool,
}

/// Events drained by `sample` and not taken are bounded (sync callers may never take them).
pub(super) const MAX_UNCLAIMED: usize = 65536;
/// Exits remembered for processes retired through `EXITED` (pid reuse without BTF).
const RECENT_EXITS: usize = 4096;

impl KernelCapture {
    /// Loads and attaches everything, as configured.
    pub fn load(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        raise_memlock();
        let tracefs = Tracefs::new(tracefs::root()?);
        let mut kc = KernelConfig::EMPTY;
        kc.tp = tracefs.offsets();
        kc.syscalls = syscalls::NRS;
        kc.compat_syscalls = syscalls::COMPAT_NRS;
        kc.page_size = page_size();
        let seen_slots = iter_seen_slots(cfg.max_threads);
        kc.iter_seen_mask = u64::from(seen_slots - 1);
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
            kc.compat_syscalls.send = syscalls::COMPAT_SEND;
        }
        if fallback(Hook::SockRecvLength) {
            kc.syscalls.recv = syscalls::RECV;
            kc.compat_syscalls.recv = syscalls::COMPAT_RECV;
        }
        let net_from_syscalls = kc.syscalls.send[0] >= 0 || kc.syscalls.recv[0] >= 0;
        let btf_path = Path::new(btf::VMLINUX_BTF);
        // Task offsets serve the classic tracepoints too (exact CPU time, exit codes,
        // parents, process keys) and the task iterator; BTF tracepoints and the iterator
        // additionally need the parsed BTF.
        let task = if btf_path.exists() {
            match btf::kernel_task_offsets() {
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
        let parsed_btf = if task.is_some() {
            match sys_btf() {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!(error = %e, "Kernel BTF unusable; classic tracepoints and hooks only");
                    None
                }
            }
        } else {
            None
        };
        let tp_btf = parsed_btf.as_ref().filter(|_| cfg.btf_tracepoints);

        let mut loader = EbpfLoader::new();
        loader
            .btf(parsed_btf.as_ref())
            .override_global("CONFIG", &kc, true)
            .map_max_entries("PROC_STATS", cfg.max_processes)
            .map_max_entries("START_OF", cfg.max_processes)
            .map_max_entries("THREADS", cfg.max_threads)
            .map_max_entries("ITER_SEEN", seen_slots)
            .map_max_entries("EVENTS", cfg.ring_buffer_bytes())
            .map_max_entries("BLOCK_PENDING", cfg.max_block_requests)
            .map_max_entries("SOCK_OWNER", cfg.max_sockets)
            .map_max_entries("LISTENERS", (cfg.max_sockets / 4).max(256))
            .map_max_entries("MM_OWNER", cfg.max_processes)
            .map_max_entries("EXITED", (cfg.max_processes / 8).max(256))
            .map_max_entries("FREED", (cfg.max_processes / 4).max(512))
            .map_max_entries("EXITED_IO", (cfg.max_processes / 2).max(512));
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| CaptureError::Load { source })?;
        let logger = init_kernel_log(&mut ebpf);

        // The counters' path: the task iterator where it loads, unless told otherwise.
        let (iter_link, iter_status, hooks_reason) = match cfg.counters {
            Counters::Hooks => (
                None,
                HookStatus::Unavailable("capture.counters = \"hooks\"".into()),
                Some("capture.counters = \"hooks\"".to_string()),
            ),
            wanted => {
                let why_not = if simulated(Hook::TaskIter) {
                    Err("the task iterator does not exist on this kernel (simulated)".to_string())
                } else {
                    attach_iter(&mut ebpf, parsed_btf.as_ref(), &kc)
                };
                match why_not {
                    Ok(link) => (Some(link), HookStatus::Iterator, None),
                    Err(why) if wanted == Counters::Iterator => {
                        return Err(CaptureError::NoIterator { why });
                    }
                    Err(why) => {
                        warn!(why = %why, "Task iterator unavailable; per-event hooks count instead");
                        (None, HookStatus::Unavailable(why.clone()), Some(why))
                    }
                }
            }
        };
        let on_iter = iter_link.is_some();
        let path = if on_iter {
            CounterPath::Iterator
        } else {
            CounterPath::Hooks
        };

        let mut hooks = Vec::new();
        for hook in Hook::ALL {
            let status = if hook == Hook::TaskIter {
                iter_status.clone()
            } else if disabled(hook) {
                HookStatus::Disabled
            } else if !on_iter && hook.iterator_only() {
                HookStatus::Unavailable("used with the task iterator only".into())
            } else if hook.iterator_only() && parsed_btf.is_none() {
                HookStatus::Unavailable("a BTF tracepoint: needs the kernel's BTF".into())
            } else if on_iter && hook.replaced_by_iterator() {
                HookStatus::ByIterator
            } else if on_iter
                && hook.detail()
                && !cfg.detail
                && !(hook == Hook::SysExit && net_from_syscalls)
            {
                HookStatus::DetailOff
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
                let btf = if hook.iterator_only() {
                    parsed_btf.as_ref()
                } else {
                    tp_btf
                };
                attach(&mut ebpf, &tracefs, &kc, btf, hook)?
            };
            let required = hook.required() && !(on_iter && hook == Hook::SchedSwitch);
            match &status {
                HookStatus::Unavailable(why) if required => {
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
        let free_hook = hooks
            .iter()
            .any(|(h, s)| *h == Hook::SchedProcessFree && *s == HookStatus::BtfTracepoint);
        let report = AttachReport {
            kernel: kernel_release(),
            btf: tp_btf.is_some(),
            counters: path,
            hooks_reason,
            detail: cfg.detail,
            hooks,
        };
        info!(
            kernel = %report.kernel,
            btf = report.btf,
            counters = ?report.counters,
            detail = report.detail,
            attached = report.hooks.iter().filter(|(h, _)| report.attached(*h)).count(),
            "Kernel capture attached"
        );

        macro_rules! map {
            ($kind:ident, $name:literal) => {
                $kind::try_from(take(&mut ebpf, $name)?).map_err(|source| CaptureError::Map {
                    name: $name,
                    source,
                })?
            };
        }
        let stats = map!(HashMap, "PROC_STATS");
        let threads_map = map!(HashMap, "THREADS");
        let exited = map!(HashMap, "EXITED");
        let freed = map!(HashMap, "FREED");
        let unheld = map!(PerCpuArray, "UNHELD");
        let exited_io = map!(HashMap, "EXITED_IO");
        let cpu_state = map!(PerCpuArray, "CPU_STATE");
        let drops = map!(PerCpuArray, "DROPS");
        let ring = map!(RingBuf, "EVENTS");
        let mut iter_ctl: Array<MapData, u64> = map!(Array, "ITER_CTL");
        // The iterator's trial run at attach wrote records nobody read: a new generation
        // makes the first walk write every thread in full.
        let iter_gen = 1;
        iter_ctl
            .set(ITER_CTL_GEN, iter_gen, 0)
            .map_err(|source| CaptureError::Map {
                name: "ITER_CTL",
                source,
            })?;
        Ok(KernelCapture {
            ebpf,
            stats,
            threads_map,
            drops,
            cpu_state,
            exited,
            freed,
            unheld,
            unheld_taken: TaskRecord::default(),
            exited_io,
            freed_later: Vec::new(),
            ring,
            ring_fd: None,
            iter_link,
            logger,
            report,
            page_size: kc.page_size,
            batch: true,
            procs: FastMap::default(),
            ended: Vec::new(),
            unkeyed: FastMap::default(),
            finished: FastMap::default(),
            threads: FastMap::default(),
            identity: Identity::new(),
            recent_exits: VecDeque::new(),
            pending: VecDeque::new(),
            unclaimed: Vec::new(),
            interval: cfg.interval(),
            ticker: None,
            follow_up: None,
            ticks: 0,
            after_read: None,
            after_stats: None,
            iter_buf: Vec::new(),
            iter_records: Vec::new(),
            totals: FastMap::default(),
            stats_buf: bpf::BatchBuf::new(512),
            iter_held: HeldRecords::default(),
            iter_ctl,
            iter_gen,
            iter_lost: 0,
            free_hook,
        })
    }

    /// Fault injection, for tests: `f` runs once, in the next [`sample`](Self::sample),
    /// right after the kernel's maps were read (to race a pid reuse with the read).
    #[doc(hidden)]
    pub fn after_map_read(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.after_read = Some(f);
    }

    /// Fault injection, for tests: `f` runs once, in the next [`sample`](Self::sample) on
    /// the hooks path, after the per-process counters were read and before the slices
    /// running on the CPUs are (to end a slice in between).
    #[doc(hidden)]
    pub fn after_stats_read(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.after_stats = Some(f);
    }

    pub fn report(&self) -> &AttachReport {
        &self.report
    }

    /// Entries userspace keeps about processes and threads (bounded: they are let go
    /// when their processes end).
    pub fn tracked(&self) -> usize {
        self.procs.len() + self.unkeyed.len() + self.finished.len() + self.threads.len()
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
    /// each process; how many records it read. Never blocks.
    pub fn drain_events(&mut self, out: &mut Vec<Lifecycle>) -> usize {
        let mut raw = Vec::new();
        let mut freed = Vec::new();
        while let Some(item) = self.ring.next() {
            let kind = item
                .get(..4)
                .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]));
            if kind == Some(EVENT_EXEC) && item.len() >= std::mem::size_of::<ExecEvent>() {
                // SAFETY: the kernel wrote a whole ExecEvent (size and kind checked);
                // read_unaligned copes with the ring's 8-byte alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExecEvent>()) };
                raw.push((Lifecycle::from_exec(&ev), ev.base, None));
            } else if kind == Some(EVENT_FREE) && item.len() >= std::mem::size_of::<ExitEvent>() {
                // SAFETY: as below, for an ExitEvent.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExitEvent>()) };
                freed.push((ev.base.tgid, ev.base.start_ns, ev.total));
            } else if kind == Some(EVENT_EXIT) && item.len() >= std::mem::size_of::<ExitEvent>() {
                // SAFETY: as above, for an ExitEvent.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExitEvent>()) };
                let total = (ev.base.flags & FLAG_TOTAL != 0).then_some(ev.total);
                raw.push((Lifecycle::from_kernel(&ev.base), ev.base, total));
            } else if item.len() >= std::mem::size_of::<LifecycleEvent>() {
                // SAFETY: as above, for a LifecycleEvent.
                let ev =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LifecycleEvent>()) };
                raw.push((Lifecycle::from_kernel(&ev), ev, None));
            }
        }
        let n = raw.len() + freed.len();
        for (ev, base, total) in raw {
            if let Some(mut ev) = ev {
                self.note(&mut ev, &base, total);
                out.push(ev);
            }
        }
        for (tgid, start, total) in freed {
            self.note_freed(tgid, start, total);
        }
        n
    }

    /// Drains the ring buffer into `pending`; how many records it read.
    fn drain_pending(&mut self) -> usize {
        let mut events = Vec::new();
        let n = self.drain_events(&mut events);
        self.pending
            .extend(events.into_iter().map(CaptureItem::Event));
        n
    }

    /// A process's last task is freed, with its final counters.
    fn note_freed(&mut self, tgid: u32, start: u64, total: TaskRecord) {
        let info = self.info_of(tgid, start);
        info.total = Some(total);
        info.freed = true;
        self.note_ended(tgid, start);
    }

    /// A process whose final counters came: reported by the sampler until it is done.
    fn note_ended(&mut self, tgid: u32, start: u64) {
        self.ended.push(ProcKey {
            tgid,
            _pad: 0,
            start_ns: start,
        });
    }

    /// Takes the final counters the kernel kept in `FREED` (their free event found the
    /// ring full), as if their events had come; those of processes started after
    /// `walked_at` (boot clock), which the tick's walk did not see and whose time is the
    /// next interval's, at the next call.
    pub(super) fn take_freed(&mut self, walked_at: u64) {
        for (key, total) in std::mem::take(&mut self.freed_later) {
            self.note_freed(key.tgid, key.start_ns, total);
        }
        let keys: Vec<ProcKey> = self.freed.keys().filter_map(Result::ok).collect();
        for key in keys {
            if let Ok(total) = self.freed.get(&key, 0) {
                if key.start_ns > walked_at {
                    self.freed_later.push((key, total));
                } else {
                    self.note_freed(key.tgid, key.start_ns, total);
                }
            }
            let _ = self.freed.remove(&key);
        }
    }

    /// What `UNHELD` grew by since the last tick (the freed processes that neither the
    /// ring buffer nor `FREED` had room for, a storm's), as one process that ended now:
    /// their owners are lost (each counted as a drop), their CPU time is not.
    pub(super) fn take_unheld(&mut self) {
        // The hooks' counters are their own (`PROC_STATS`), not the final ones.
        if self.report.counters != CounterPath::Iterator {
            return;
        }
        let Ok(per_cpu) = self.unheld.get(&0, 0) else {
            return;
        };
        let mut sum = TaskRecord::default();
        for r in per_cpu.iter() {
            fold_counters(&mut sum, r, u64::wrapping_add);
        }
        let mut grown = sum;
        fold_counters(&mut grown, &self.unheld_taken, u64::wrapping_sub);
        if grown == TaskRecord::default() {
            return;
        }
        self.unheld_taken = sum;
        // Their memory maps are gone.
        grown.rss_pages = [0; agent_common::RSS_MEMBERS];
        // A key no process has (tgid 0 is the idle task's), new each tick.
        let start = procfs::boot_ns().max(1);
        grown.tgid = 0;
        grown.start_ns = start;
        let info = self.info_of(0, start);
        info.looked_up = true;
        info.comm = UNHELD_NAME.into();
        info.exe = Some(UNHELD_NAME.into());
        info.exe_hash = Some(None);
        info.app = Some(None);
        self.note_freed(0, start, grown);
    }

    /// What userspace knows of the process an event with `start` (0: not carried) is of.
    fn info_of(&mut self, tgid: u32, start: u64) -> &mut ProcInfo {
        if start == 0 && self.report.btf_offsets() {
            let tick = self.ticks;
            return &mut self
                .unkeyed
                .entry(tgid)
                .or_insert_with(|| (ProcInfo::default(), tick))
                .0;
        }
        let key = ProcKey {
            tgid,
            _pad: 0,
            start_ns: start,
        };
        let info = self.procs.entry(key).or_default();
        info.start_ns = start;
        info
    }

    fn note(&mut self, ev: &mut Lifecycle, raw: &LifecycleEvent, total: Option<TaskRecord>) {
        let start = raw.start_ns;
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
                let view = identity::ProcView::of(ev.tgid);
                *inputs = identity::input_files(argv, &view);
                let exe =
                    procfs::exe_bytes(ev.tgid).unwrap_or_else(|| filename.as_bytes().to_vec());
                let app = self.identity.app_key(&exe, argv, &view);
                let (comm, ppid, filename) = (ev.comm.clone(), ev.ppid, filename.clone());
                let info = self.info_of(ev.tgid, start);
                info.comm = comm.into();
                info.exe = Some(filename.into());
                info.exe_hash = None;
                info.app = Some(app.map(Arc::new));
                if ppid.is_some() {
                    info.ppid = ppid;
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
                let inherited = ev.ppid.and_then(|p| {
                    self.procs
                        .iter()
                        .filter(|(k, i)| k.tgid == p && i.exit.is_none())
                        .max_by_key(|(k, _)| k.start_ns)
                        .and_then(|(_, i)| i.app.clone())
                });
                let (comm, ppid) = (ev.comm.clone(), ev.ppid);
                let info = self.info_of(ev.tgid, start);
                info.ppid = ppid;
                if info.comm.is_empty() {
                    info.comm = comm.into();
                }
                if info.app.is_none() {
                    info.app = inherited;
                }
            }
            LifecycleKind::Exit { code } => {
                if raw.flags & (FLAG_GROUP_DEAD | FLAG_GROUP_UNKNOWN) != 0 {
                    let exit = Exit {
                        code: *code,
                        timestamp_ns: ev.timestamp_ns,
                    };
                    let comm = ev.comm.clone();
                    let page = self.page_size;
                    let info = self.info_of(ev.tgid, start);
                    if info.comm.is_empty() {
                        info.comm = comm.into();
                    }
                    info.exit = Some(exit);
                    // Where the exit tracepoint comes before the memory map is let go
                    // (Linux 6.16+), its final sample holds what the process had at exit,
                    // not what the last walk saw (nothing, for one that lived less than
                    // an interval).
                    if let Some(t) = total.filter(|t| t.flags & REC_MM != 0) {
                        info.memory = memory_of(&t.rss_pages, page);
                        info.memory_at_exit = true;
                    }
                    if total.is_some() {
                        info.total = total;
                        self.note_ended(ev.tgid, start);
                    }
                    if self.recent_exits.len() >= RECENT_EXITS {
                        self.recent_exits.pop_front();
                    }
                    self.recent_exits.push_back((ev.tgid, exit));
                }
            }
        }
    }

    /// The exit seen for `tgid` after `start_ns`, among recent exits.
    pub(super) fn recent_exit(&self, tgid: u32, start_ns: u64) -> Option<Exit> {
        self.recent_exits
            .iter()
            .rev()
            .find(|(t, e)| *t == tgid && e.timestamp_ns >= start_ns)
            .map(|(_, e)| *e)
    }

    /// Lifecycle events that `sample` drained from the ring buffer (they happened before
    /// that tick). The sync API's callers take them here.
    pub fn take_events(&mut self) -> Vec<Lifecycle> {
        std::mem::take(&mut self.unclaimed)
    }

    /// Reads one run of the task iterator into `self.iter_buf`, decoded into `records`: a
    /// [`TaskRecord`] per thread, and one for each process's exited threads.
    pub(super) fn read_iter(&mut self, records: &mut Vec<TaskRecord>) -> Result<(), CaptureError> {
        use std::io::Read;
        let Some(link) = &self.iter_link else {
            return Ok(());
        };
        let fd = bpf::iter_create(link.as_fd()).map_err(|e| CaptureError::Iter {
            what: "creating a run of the task iterator",
            source: e,
        })?;
        let mut file = std::fs::File::from(fd);
        self.iter_buf.clear();
        if let Err(e) = file.read_to_end(&mut self.iter_buf) {
            // The kernel remembered threads as written that this side never read: the
            // marks of the next walk would stand for records older than theirs.
            self.iter_full_walk();
            return Err(CaptureError::Iter {
                what: "reading the task iterator",
                source: e,
            });
        }
        records.reserve(self.iter_held.len());
        let lost = self.iter_held.decode(&self.iter_buf, records);
        if lost > 0 {
            // Threads marked unchanged since a record this side never read: missing this
            // tick (counted), written in full at the next.
            debug!(
                lost,
                "Task iterator marks without a record; next walk in full"
            );
            self.iter_lost += lost as u64;
            self.iter_full_walk();
        }
        Ok(())
    }

    /// Asks the task iterator to write every thread in full at its next walk.
    fn iter_full_walk(&mut self) {
        self.iter_gen += 1;
        if let Err(e) = self.iter_ctl.set(ITER_CTL_GEN, self.iter_gen, 0) {
            warn!(error = %e, "Could not ask the task iterator for a full walk");
        }
    }

    /// Every entry of `PROC_STATS`: in batches where the kernel can (a consistent walk),
    /// else key by key.
    pub(super) fn read_stats(&mut self) -> Vec<(ProcKey, ProcStats)> {
        use aya::maps::IterableMap;
        if self.batch {
            let mut out = Vec::new();
            match bpf::lookup_batch(self.stats.map().fd().as_fd(), &mut self.stats_buf, &mut out) {
                Ok(()) => return out,
                Err(e) => {
                    debug!(error = %e, "BPF_MAP_LOOKUP_BATCH unavailable; reading key by key");
                    self.batch = false;
                }
            }
        }
        self.stats.iter().filter_map(Result::ok).collect()
    }

    /// Drop counters per program and kind, summed over CPUs (one map lookup), with each
    /// program's recursion misses (runs the kernel skipped).
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
        for (name, p) in self.ebpf.programs() {
            let Some(hook) = Hook::from_name(name.trim_end_matches("_btf")) else {
                continue;
            };
            if let Ok(fd) = p.fd()
                && let Ok(s) = bpf::prog_stats(fd.as_fd())
            {
                d.0[hook.id()][Drop::RecursionMiss as usize] += s.recursion_misses;
            }
        }
        // Threads the iterator marked unchanged since a record this side never read: each
        // missing from its tick.
        d.0[prog::TASK_ITER as usize][Drop::ReadFailed as usize] += self.iter_lost;
        Ok(d)
    }
}

impl AttachReport {
    /// Whether the kernel's task offsets were known (BTF), so events carry process starts.
    fn btf_offsets(&self) -> bool {
        self.counters == CounterPath::Iterator || self.btf
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
            }
            let (Some(fd), Some(ticker)) = (self.ring_fd.as_ref(), self.ticker.as_mut()) else {
                continue;
            };
            let follow_up = self.follow_up.as_mut();
            // Whether to drain again in a while: after every wakeup (events sent without
            // one rely on the last), and after a drain that found events.
            let again = tokio::select! {
                _ = ticker.tick() => {
                    let tick = self.sample()?;
                    let events = self.take_events();
                    self.pending.extend(events.into_iter().map(CaptureItem::Event));
                    self.pending.push_back(CaptureItem::Tick(Box::new(tick)));
                    false
                }
                guard = fd.readable() => {
                    let mut guard = guard?;
                    guard.clear_ready();
                    self.drain_pending();
                    self.follow_up = None;
                    true
                }
                _ = async {
                    match follow_up {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.follow_up = None;
                    self.drain_pending() > 0
                }
            };
            if again && self.follow_up.is_none() {
                self.follow_up = Some(Box::pin(tokio::time::sleep(Duration::from_nanos(
                    RING_WAKE_EVERY_NS,
                ))));
            }
        }
    }
}

/// The kernel's BTF as aya reads it. Not kept (it was, once per process): parsed, it is
/// about 10 MB that nothing needs once the programs are loaded and attached.
fn sys_btf() -> Result<Btf, String> {
    Btf::from_sys_fs().map_err(|e| e.to_string())
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name).ok_or(CaptureError::MissingMap { name })
}

/// Slots of the task iterator's `ITER_SEEN` array for `max_threads` threads: a power of
/// two (a thread's slot is its tid masked) at least twice as many, so that few live
/// threads share one (those that do are written in full at every walk); at most 2²² (96
/// MiB of kernel memory at 24 bytes a slot; 1.5 MiB for the default 32,768 threads).
fn iter_seen_slots(max_threads: u32) -> u32 {
    max_threads
        .saturating_mul(2)
        .clamp(64, 1 << 22)
        .next_power_of_two()
}

/// Loads the task iterator and makes its link; the error says why it cannot run here.
fn attach_iter(ebpf: &mut Ebpf, btf: Option<&Btf>, kc: &KernelConfig) -> Result<OwnedFd, String> {
    let Some(btf) = btf else {
        return Err("the task iterator needs the kernel's BTF (/sys/kernel/btf/vmlinux)".into());
    };
    let t = &kc.task;
    for (name, off) in [
        ("task_struct.se.sum_exec_runtime", t.task_runtime),
        ("task_struct.group_leader", t.task_group_leader),
        ("task_struct.start_boottime", t.task_start),
        ("task_struct.nvcsw", t.task_nvcsw),
        ("signal_struct.sum_sched_runtime", t.sig_runtime),
    ] {
        if t.valid == 0 || off == ABSENT {
            return Err(format!("the kernel's BTF has no {name}"));
        }
    }
    let prog: &mut Iter = ebpf
        .program_mut("task_iter")
        .ok_or("the task iterator is missing from the object")?
        .try_into()
        .map_err(|e| format!("not an iterator program: {e}"))?;
    prog.load("task", btf)
        .map_err(|e| format!("loading iter/task failed (Linux ≥ 5.8 with BTF): {e}"))?;
    let fd = prog.fd().map_err(|e| e.to_string())?;
    let link = bpf::iter_link(fd.as_fd())
        .map_err(|e| format!("creating the iter/task link failed: {e}"))?;
    // One run now: a kernel that loads the program but cannot run it is found here.
    bpf::iter_create(link.as_fd()).map_err(|e| format!("running iter/task failed: {e}"))?;
    Ok(link)
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
            Err(e) if hook.iterator_only() => {
                return Ok(HookStatus::Unavailable(format!(
                    "BTF tracepoint {category}/{name} refused: {e}"
                )));
            }
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
pub(super) type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

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

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
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
            assert_eq!(h.id(), i);
        }
    }
}
