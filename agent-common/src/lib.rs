//! Types shared by Umbra's kernel programs (`agent-ebpf`) and its userspace agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and has no implicit padding, so the kernel
//! and userspace agree on its layout byte for byte; a `const` assertion pins each size.
//! The `user` feature adds `aya::Pod` so userspace can read them out of maps.
#![no_std]

use core::mem::size_of;

/// Length of a task's `comm`, as in the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Bytes of an exec'd file name carried in a lifecycle event (longer names are cut).
pub const FILENAME_LEN: usize = 256;
/// Bytes of an exec'd image's arguments carried in an exec event (longer ones are cut).
pub const ARGV_LEN: usize = 512;
/// Buckets of a log2 latency histogram: bucket `i` counts values in `[2^i, 2^(i+1))` ns,
/// bucket 0 also counts 0; the last bucket also counts everything larger.
pub const HIST_BUCKETS: usize = 32;

/// Members of `kmem/rss_stat`, as in the kernel's `enum { MM_FILEPAGES, MM_ANONPAGES,
/// MM_SWAPENTS, MM_SHMEMPAGES }`.
pub const RSS_MEMBERS: usize = 4;
pub const RSS_FILE: usize = 0;
pub const RSS_ANON: usize = 1;
pub const RSS_SWAP: usize = 2;
pub const RSS_SHMEM: usize = 3;

/// A process: its tgid and when it started (`start_boottime` of its thread-group leader,
/// boot-clock ns, read through BTF; 0 without BTF). The key of `PROC_STATS`: a reused tgid
/// is another key, so two processes never share counters and userspace deletes an entry
/// by its exact key, never by tgid alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub tgid: u32,
    pub _pad: u32,
    pub start_ns: u64,
}
const _: () = assert!(size_of::<ProcKey>() == 16);

/// Per-process (thread group) counters of events, the value of the `PROC_STATS` map keyed
/// by [`ProcKey`]. On the task-iterator path only the event-driven ones are used (execs,
/// block, network, connections, retransmits) and, at the detail level, run-queue
/// histograms and syscalls; on the hooks path all of them.
///
/// Counters only grow; userspace turns them into per-interval deltas. `rss` holds the
/// latest value per member in bytes, `rss_seen` has bit `i` set once member `i` was reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// cgroup v2 id of the process: set when first seen and at exec, followed through
    /// `cgroup/cgroup_attach_task` when the process is moved.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns` when the kernel first saw the process; tells a reused tgid apart.
    pub first_seen_ns: u64,
    pub cpu_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub runq_wait_ns: u64,
    pub runq_waits: u64,
    pub rss: [i64; RSS_MEMBERS],
    pub rss_seen: u64,
    pub page_faults: u64,
    pub syscalls: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_calls: u64,
    pub write_calls: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub block_ios: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_calls: u64,
    pub net_rx_calls: u64,
    pub conn_opened: u64,
    pub conn_accepted: u64,
    pub conn_closed: u64,
    pub retransmits: u64,
    /// Images exec'd by the process (production input: processes started).
    pub execs: u64,
    pub runq_hist: [u32; HIST_BUCKETS],
    pub block_hist: [u32; HIST_BUCKETS],
}
const _: () = assert!(size_of::<ProcStats>() == 8 * 30 + 4 * HIST_BUCKETS * 2);

/// Per-thread scheduler state (`THREADS`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// When the thread became runnable (woken or preempted); 0 while it runs or sleeps.
    pub wait_since: u64,
    /// Its `sum_exec_runtime` when last switched out ([`RUNTIME_UNKNOWN`]: not yet known).
    pub last_runtime: u64,
}
const _: () = assert!(size_of::<ThreadState>() == 16);
/// [`ThreadState::last_runtime`] of a thread first seen after it had run already.
pub const RUNTIME_UNKNOWN: u64 = u64::MAX;

/// What the scheduler hook knows about the task on one CPU (`CPU_STATE`, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// When `tid` was switched in on this CPU.
    pub since: u64,
    /// How long `tid` waited in the run queue before that; added to its process (whose
    /// tgid is known only while it runs) when it is switched out.
    pub pending_wait: u64,
    pub tid: u32,
    /// The process of `tid` (tgid 0: not known in the kernel, a classic tracepoint without
    /// the next task's BTF; userspace asks /proc, every time).
    pub owner_tgid: u32,
    pub owner_start_ns: u64,
    /// `since` of the last slice this CPU ended and added to its process, and the process's
    /// `cpu_ns` just after that add: a reader that saw the slice running before it read
    /// `PROC_STATS` tells from these whether the value it read holds the slice already.
    pub out_since: u64,
    pub out_total: u64,
    /// Switches this CPU has seen (wrapping): a reader that read the slot before and after
    /// `PROC_STATS` knows from it whether `out_*` still describe the slice it saw running.
    pub switches: u64,
}
const _: () = assert!(size_of::<CpuState>() == 56);

/// Kinds of [`LifecycleEvent`].
/// The lifecycle programs wake the ring buffer's reader at most this often (besides when
/// a batch has built up, or an exec is to be placed at once); the reader drains again this
/// long after a wakeup, until a drain finds nothing. Idle, nothing wakes it.
pub const RING_WAKE_EVERY_NS: u64 = 50_000_000;

pub const EVENT_EXEC: u32 = 1;
pub const EVENT_FORK: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
/// A process's last task is freed (`sched_process_free` of its leader): its final counters,
/// now exact (the dying tasks' last slices were accounted at their final switch). An
/// [`ExitEvent`]; not a lifecycle event of its own.
pub const EVENT_FREE: u32 = 4;

/// [`LifecycleEvent::flags`]: the exiting thread was the last of its process.
pub const FLAG_GROUP_DEAD: u32 = 1;
/// The fork created a thread, not a process.
pub const FLAG_THREAD: u32 = 2;
/// `tgid`/`ppid`/`exit_code` could not be read (no BTF offsets); userspace resolves them.
pub const FLAG_PARTIAL: u32 = 4;
/// An exit whose `ExitEvent::total` holds the process's final counters.
pub const FLAG_TOTAL: u32 = 32;
/// Whether the exiting thread's process is known to be dead is not known (old kernel, no BTF).
pub const FLAG_GROUP_UNKNOWN: u32 = 8;
/// An exec whose arguments could not be read in the kernel (no BTF offsets, or the read
/// failed): userspace reads `/proc/<pid>/cmdline` instead.
pub const FLAG_NO_ARGV: u32 = 16;

/// Exec, fork and exit events, sent through the `EVENTS` ring buffer.
///
/// exec: `pid`/`tgid` of the new image, `ppid` its parent's tgid, `filename` the path.
/// fork: `pid`/`tgid` of the child, `ppid` the parent's tgid.
/// exit: `pid`/`tgid` of the exiting thread, `exit_code` as `wait(2)` reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LifecycleEvent {
    pub kind: u32,
    pub flags: u32,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub exit_code: i32,
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    /// Start of the process (`ProcKey::start_ns`): of the exec'ing or exiting one, of the
    /// forked child.
    pub start_ns: u64,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
}
const _: () = assert!(size_of::<LifecycleEvent>() == 48 + COMM_LEN + FILENAME_LEN);

/// The end of a process: the [`LifecycleEvent`] and, with [`FLAG_TOTAL`], its final
/// counters read from its tasks in `sched_process_exit` (the exiting thread, a zombie
/// leader, and the totals of the threads that went before, from `signal_struct`): what
/// the task iterator can no longer see.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub base: LifecycleEvent,
    pub total: TaskRecord,
}
const _: () =
    assert!(size_of::<ExitEvent>() == size_of::<LifecycleEvent>() + size_of::<TaskRecord>());

/// [`TaskRecord::ioac`] members.
pub const IOAC_RCHAR: usize = 0;
pub const IOAC_WCHAR: usize = 1;
pub const IOAC_SYSCR: usize = 2;
pub const IOAC_SYSCW: usize = 3;
pub const IOAC_READ_BYTES: usize = 4;
pub const IOAC_WRITE_BYTES: usize = 5;

/// [`TaskRecord::flags`]: the totals of a process's exited threads (`signal_struct`),
/// written once per process, with its leader.
pub const REC_SIGNAL: u32 = 1;
/// A kernel thread.
pub const REC_KTHREAD: u32 = 2;
/// `rss` is the process's memory (the task has a memory map).
pub const REC_MM: u32 = 4;
/// The thread's process is a 32-bit one on a 64-bit kernel.
pub const REC_COMPAT: u32 = 8;
/// With [`REC_SIGNAL`]: its `runtime_ns` is the whole process's — its exited threads' and
/// every live thread's, read at once between two equal sequences of the process's
/// `stats_lock` (as `thread_group_cputime` does) — and the threads' own records' runtime
/// is not added to it. A thread that ends while a walk is between its leader and it is
/// then counted once, not never (nor twice, when it came before its leader).
pub const REC_GROUP: u32 = 32;
/// A thread the iterator wrote in full before and that has not run since: only the first
/// [`TASK_MARK_BYTES`] of the record (`tid`, `tgid`, `flags`) are written, and its
/// counters — and, for a leader, its process's exited threads — are as in the full record
/// userspace last read for that tid.
pub const REC_SAME: u32 = 16;
/// Bytes of a [`REC_SAME`] record.
pub const TASK_MARK_BYTES: usize = 16;
/// A thread is written in full at least once in this many walks of the task iterator,
/// whether it ran or not (what can change without it running: its memory map's RSS, under
/// reclaim). Each walk refreshes a different share of the threads (`tid + walk`).
pub const ITER_REFRESH_WALKS: u64 = 8;
/// `ITER_CTL` slots: walks of the iterator so far (the kernel counts them), and the
/// generation of what userspace holds (userspace raises it when it lost a full record:
/// every thread is written in full at the next walk).
pub const ITER_CTL_WALK: u32 = 0;
pub const ITER_CTL_GEN: u32 = 1;
/// `ITER_CTL` slots the kernel keeps: whether a walk is under way (its first task was
/// visited), and the boot-clock time it began. A process started after that had no walk
/// report any of its time.
pub const ITER_CTL_IN_WALK: u32 = 2;
pub const ITER_CTL_WALK_START: u32 = 3;
/// `ITER_CTL`'s slots.
pub const ITER_CTL_SLOTS: u32 = 4;

/// One thread as the task iterator reads it each tick, from the kernel's own per-task
/// accounting (no per-event hook): its scheduler runtime, context switches, run-queue
/// wait (`sched_info`), page faults, I/O accounting (`ioac`) and its memory map's RSS
/// counters; or, with [`REC_SIGNAL`], the same totals of the process's exited threads.
/// Userspace sums them per [`ProcKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskRecord {
    pub tid: u32,
    pub tgid: u32,
    pub flags: u32,
    pub _pad: u32,
    /// `start_boottime` of the thread-group leader.
    pub start_ns: u64,
    /// cgroup v2 id of the task (0: not known).
    pub cgroup_id: u64,
    pub runtime_ns: u64,
    pub nvcsw: u64,
    pub nivcsw: u64,
    /// `sched_info.run_delay` and `pcount`: time waited in the run queue, and slices run.
    pub run_delay_ns: u64,
    pub pcount: u64,
    pub min_flt: u64,
    pub maj_flt: u64,
    /// `ioac`, by `IOAC_*`: bytes and calls of read- and write-family syscalls, and bytes
    /// the task caused to be read from or written to storage.
    pub ioac: [u64; 6],
    /// RSS counters of the memory map, pages, by `RSS_*` member.
    pub rss_pages: [i64; RSS_MEMBERS],
}
const _: () = assert!(size_of::<TaskRecord>() == 16 + 8 * 15 + 8 * RSS_MEMBERS);

/// An exec: the [`LifecycleEvent`] and the new image's arguments, read from
/// `current->mm->arg_start..arg_end` (the strings the kernel copied in, each followed by
/// NUL, as `/proc/<pid>/cmdline` shows them). Sent through `EVENTS` like the others; its
/// `base.kind` is [`EVENT_EXEC`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub base: LifecycleEvent,
    /// Bytes of `argv` that hold arguments.
    pub argv_len: u32,
    /// Bytes the arguments take in all: more than `argv_len` when they were cut.
    pub argv_total: u32,
    pub argv: [u8; ARGV_LEN],
}
const _: () = assert!(size_of::<ExecEvent>() == size_of::<LifecycleEvent>() + 8 + ARGV_LEN);

/// Key of the `EXITED` map: a process that is gone, by tgid and first sight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExitedKey {
    pub tgid: u32,
    pub _pad: u32,
    pub first_seen_ns: u64,
}
const _: () = assert!(size_of::<ExitedKey>() == 16);

/// A pending block request, keyed by [`BlockKey`] from queue to completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockPending {
    pub queued_ns: u64,
    pub owner: ProcKey,
}
const _: () = assert!(size_of::<BlockPending>() == 24);

/// A listening TCP port in a network namespace (`LISTENERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// Inode number of the network namespace (0 without BTF).
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<ListenKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub sector: u64,
    pub dev: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<BlockKey>() == 16);

/// Where each drop counter lives in the `DROPS` per-CPU array. Every failure to record
/// something is counted in exactly one slot; userspace sums the CPUs and reports them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// `PROC_STATS` was full: a new process could not be tracked.
    ProcMapFull = 0,
    /// `THREADS` was full: a thread's on-CPU time or run-queue wait was lost.
    ThreadMapFull = 1,
    /// The `EVENTS` ring buffer had no room: an exec/fork/exit event was lost.
    RingBufFull = 2,
    /// A tracepoint field could not be read; for the task iterator, a thread missing from
    /// one walk (its record could not be delivered).
    ReadFailed = 3,
    /// `BLOCK_PENDING` could not take a request: its latency was lost (bytes still counted).
    BlockPendingFull = 4,
    /// A socket event (close, retransmit) for a socket whose owner was never seen.
    SockOwnerUnknown = 5,
    /// A memory-map owner could not be recorded: an rss_stat from another context was lost.
    MmOwnerFull = 6,
    /// `EXITED` was full: the final counters of a process whose pid was reused were lost.
    ExitedMapFull = 7,
    /// An event of a process whose counters were already final (a socket closed after
    /// the process's final sample, a late block completion): its count was lost.
    ProcGone = 8,
    /// The kernel skipped the program because another BPF program was running on the CPU
    /// (`recursion_misses` of the program's info, read by userspace; Linux ≥ 5.12).
    RecursionMiss = 9,
    /// An event whose owner was never seen (a block request or a memory map from before
    /// the agent attached): not attributed to any process.
    OwnerUnknown = 10,
    /// A context switch the kernel did not report: the task a CPU switched out was not the
    /// one its slot last saw switched in (some kernels leave a task's switches untraced).
    /// The slice that followed the unreported switch is invisible while it runs: its CPU
    /// time comes at its next reported switch-out (with BTF, exact but late; without,
    /// lost).
    SwitchUnreported = 11,
}
pub const DROP_KINDS: usize = 12;

impl Drop {
    pub const ALL: [Drop; DROP_KINDS] = [
        Drop::ProcMapFull,
        Drop::ThreadMapFull,
        Drop::RingBufFull,
        Drop::ReadFailed,
        Drop::BlockPendingFull,
        Drop::SockOwnerUnknown,
        Drop::MmOwnerFull,
        Drop::ExitedMapFull,
        Drop::ProcGone,
        Drop::RecursionMiss,
        Drop::OwnerUnknown,
        Drop::SwitchUnreported,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Drop::ProcMapFull => "proc_map_full",
            Drop::ThreadMapFull => "thread_map_full",
            Drop::RingBufFull => "ringbuf_full",
            Drop::ReadFailed => "read_failed",
            Drop::BlockPendingFull => "block_pending_full",
            Drop::SockOwnerUnknown => "sock_owner_unknown",
            Drop::MmOwnerFull => "mm_owner_full",
            Drop::ExitedMapFull => "exited_map_full",
            Drop::ProcGone => "proc_gone",
            Drop::RecursionMiss => "recursion_miss",
            Drop::OwnerUnknown => "owner_unknown",
            Drop::SwitchUnreported => "switch_unreported",
        }
    }
}

/// The kernel programs, one id per hook (dual BTF/classic attachments share an id); drop
/// counters are kept per program and kind. Userspace's `Hook::ALL` follows this order.
pub mod prog {
    pub const SCHED_SWITCH: u32 = 0;
    pub const SCHED_WAKEUP: u32 = 1;
    pub const SCHED_WAKEUP_NEW: u32 = 2;
    pub const SCHED_PROCESS_EXEC: u32 = 3;
    pub const SCHED_PROCESS_FORK: u32 = 4;
    pub const SCHED_PROCESS_EXIT: u32 = 5;
    pub const RSS_STAT: u32 = 6;
    pub const PAGE_FAULT_USER: u32 = 7;
    pub const SYS_EXIT: u32 = 8;
    pub const BLOCK_BIO_QUEUE: u32 = 9;
    pub const BLOCK_RQ_COMPLETE: u32 = 10;
    pub const SOCK_SEND_LENGTH: u32 = 11;
    pub const SOCK_RECV_LENGTH: u32 = 12;
    pub const INET_SOCK_SET_STATE: u32 = 13;
    pub const TCP_RETRANSMIT_SKB: u32 = 14;
    pub const CGROUP_ATTACH_TASK: u32 = 15;
    /// The task iterator (`iter/task`), run once a tick.
    pub const TASK_ITER: u32 = 16;
    pub const SCHED_PROCESS_FREE: u32 = 17;
    pub const COUNT: usize = 18;
    /// Names, by id: the hooks' tracepoint names.
    pub const NAMES: [&str; COUNT] = [
        "sched_switch",
        "sched_wakeup",
        "sched_wakeup_new",
        "sched_process_exec",
        "sched_process_fork",
        "sched_process_exit",
        "rss_stat",
        "page_fault_user",
        "sys_exit",
        "block_bio_queue",
        "block_rq_complete",
        "sock_send_length",
        "sock_recv_length",
        "inet_sock_set_state",
        "tcp_retransmit_skb",
        "cgroup_attach_task",
        "task_iter",
        "sched_process_free",
    ];
}

/// Slots of the `DROPS` per-CPU array: one per (program, drop kind).
pub const DROP_SLOTS: usize = prog::COUNT * DROP_KINDS;

/// The `DROPS` table of one CPU: a counter per (program, kind), read in one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropTable(pub [u64; DROP_SLOTS]);
const _: () = assert!(size_of::<DropTable>() == 8 * DROP_SLOTS);

/// The `DROPS` slot of a drop of `kind` in program `prog`.
#[inline(always)]
pub const fn drop_slot(prog: u32, kind: Drop) -> u32 {
    prog * DROP_KINDS as u32 + kind as u32
}

/// Offsets of the tracepoint fields the programs read, resolved at start-up from
/// `/sys/kernel/tracing/events/<group>/<name>/format`, so one object runs on kernels whose
/// tracepoint layouts differ. An offset of [`ABSENT`] means the field does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpOffsets {
    pub switch_prev_pid: u32,
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    pub wakeup_pid: u32,
    pub exec_filename: u32,
    pub fork_child_pid: u32,
    pub exit_group_dead: u32,
    pub rss_mm_id: u32,
    pub rss_curr: u32,
    pub rss_member: u32,
    pub rss_size: u32,
    pub sys_exit_id: u32,
    pub sys_exit_ret: u32,
    pub bio_dev: u32,
    pub bio_sector: u32,
    pub bio_nr_sector: u32,
    pub bio_rwbs: u32,
    pub rq_done_dev: u32,
    pub rq_done_sector: u32,
    pub sock_len_sk: u32,
    pub sock_len_family: u32,
    pub sock_len_ret: u32,
    pub set_state_sk: u32,
    pub set_state_old: u32,
    pub set_state_new: u32,
    pub set_state_protocol: u32,
    pub retrans_sk: u32,
    pub cgroup_attach_root: u32,
    pub cgroup_attach_id: u32,
    pub cgroup_attach_pid: u32,
    pub set_state_sport: u32,
    pub set_state_family: u32,
}
const _: () = assert!(size_of::<TpOffsets>() == 32 * 4);
pub const ABSENT: u32 = u32::MAX;

/// Offsets into kernel structures, from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
/// `valid == 0` when the kernel has no BTF: the programs then skip what needs them and
/// mark their events [`FLAG_PARTIAL`]. Members a kernel lacks are [`ABSENT`] (their
/// measurements are then not read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub valid: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    /// `task_struct.se.sum_exec_runtime`: the scheduler's own on-CPU total of a thread.
    pub task_runtime: u32,
    /// `task_struct.mm`, and `mm_struct.arg_start`/`arg_end` (where the arguments are).
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub task_group_leader: u32,
    /// `start_boottime` (`real_start_time` before Linux 5.5).
    pub task_start: u32,
    pub task_flags: u32,
    pub task_nvcsw: u32,
    pub task_nivcsw: u32,
    pub task_min_flt: u32,
    pub task_maj_flt: u32,
    /// `sched_info.run_delay` and `sched_info.pcount` (CONFIG_SCHED_INFO).
    pub task_run_delay: u32,
    pub task_pcount: u32,
    /// `task_struct.ioac` and `signal_struct.ioac` (CONFIG_TASK_XACCT), and the members of
    /// `struct task_io_accounting` in the order of [`TaskRecord`]: rchar, wchar, syscr,
    /// syscw, read_bytes, write_bytes.
    pub task_ioac: u32,
    pub sig_ioac: u32,
    pub ioac: [u32; 6],
    /// `signal_struct`: the totals of exited threads.
    pub sig_runtime: u32,
    pub sig_nvcsw: u32,
    pub sig_nivcsw: u32,
    pub sig_min_flt: u32,
    pub sig_maj_flt: u32,
    /// `mm_struct.rss_stat`: element `i`'s counter is at `mm_rss + i * rss_stride +
    /// rss_count` (an `atomic_long_t` array before Linux 6.2, `percpu_counter`s since).
    pub mm_rss: u32,
    pub rss_stride: u32,
    pub rss_count: u32,
    /// `task_struct.cgroups` → `css_set.dfl_cgrp` → `cgroup.kn` → `kernfs_node.id`.
    pub task_cgroups: u32,
    pub css_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `task_struct.bio_list`: non-NULL while a stacked block driver submits below itself.
    pub task_bio_list: u32,
    /// `sock.__sk_common.skc_net` and `net.ns.inum`: a socket's network namespace.
    pub sock_net: u32,
    pub net_inum: u32,
    /// Where a task's 32-bit (compat) mode shows: `thread_info.status & TS_COMPAT` (x86),
    /// `thread_info.flags & (1 << TIF_32BIT)` (arm64); the mask is in `compat_mask`.
    pub task_compat: u32,
    pub compat_mask: u32,
    /// A process's live threads and the lock its exited threads' totals are folded in
    /// under: `signal_struct.thread_head` (a list of `task_struct.thread_node`),
    /// `signal_struct.nr_threads`, and the sequence of `signal_struct.stats_lock` (a
    /// `seqlock_t`), which a thread's exit holds while it adds its counters to the signal's
    /// and leaves the list.
    pub sig_thread_head: u32,
    pub task_thread_node: u32,
    pub sig_nr_threads: u32,
    pub sig_stats_seq: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 50 * 4);

impl TaskOffsets {
    /// Nothing known.
    pub const EMPTY: TaskOffsets = TaskOffsets {
        valid: 0,
        task_pid: ABSENT,
        task_tgid: ABSENT,
        task_real_parent: ABSENT,
        task_exit_code: ABSENT,
        task_signal: ABSENT,
        signal_live: ABSENT,
        task_runtime: ABSENT,
        task_mm: ABSENT,
        mm_arg_start: ABSENT,
        mm_arg_end: ABSENT,
        task_group_leader: ABSENT,
        task_start: ABSENT,
        task_flags: ABSENT,
        task_nvcsw: ABSENT,
        task_nivcsw: ABSENT,
        task_min_flt: ABSENT,
        task_maj_flt: ABSENT,
        task_run_delay: ABSENT,
        task_pcount: ABSENT,
        task_ioac: ABSENT,
        sig_ioac: ABSENT,
        ioac: [ABSENT; 6],
        sig_runtime: ABSENT,
        sig_nvcsw: ABSENT,
        sig_nivcsw: ABSENT,
        sig_min_flt: ABSENT,
        sig_maj_flt: ABSENT,
        mm_rss: ABSENT,
        rss_stride: 0,
        rss_count: 0,
        task_cgroups: ABSENT,
        css_dfl_cgrp: ABSENT,
        cgroup_kn: ABSENT,
        kn_id: ABSENT,
        task_bio_list: ABSENT,
        sock_net: ABSENT,
        net_inum: ABSENT,
        task_compat: ABSENT,
        compat_mask: 0,
        sig_thread_head: ABSENT,
        task_thread_node: ABSENT,
        sig_nr_threads: ABSENT,
        sig_stats_seq: ABSENT,
        _pad: 0,
    };
}

/// Syscall numbers of this architecture that the `sys_exit` program classifies.
/// Unused slots hold -1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallNrs {
    pub read: [i64; 5],
    pub write: [i64; 5],
    pub accept: [i64; 2],
    /// sendto, sendmsg: counted as network bytes only where the kernel lacks
    /// `sock/sock_send_length` (before Linux 6.3); -1 otherwise.
    pub send: [i64; 2],
    /// recvfrom, recvmsg: likewise, for `sock/sock_recv_length`.
    pub recv: [i64; 2],
}
const _: () = assert!(size_of::<SyscallNrs>() == 16 * 8);

impl SyscallNrs {
    /// No syscall classified.
    pub const NONE: SyscallNrs = SyscallNrs {
        read: [-1; 5],
        write: [-1; 5],
        accept: [-1; 2],
        send: [-1; 2],
        recv: [-1; 2],
    };
}

/// The task iterator's print of what can change without a thread's record saying so,
/// folded into one word: `se.sum_exec_runtime` (any run moves it), `start_boottime` (a
/// reused tid is another thread) and, for a leader, `signal->sum_sched_runtime` (a thread
/// of its process was reaped) or, where it is read, its whole process's runtime (any
/// thread of it ran or was reaped: [`REC_GROUP`]). (A move to another cgroup,
/// `task->cgroups`, is compared apart: the verifier lets a program compare a pointer, not
/// compute with it.) Each step
/// (xor a value, multiply by an odd constant, xor-shift) is a bijection of the word, so a
/// change of any one value always changes the print; a change of several at once leaves
/// it the same with a chance of 2⁻⁶⁴, and the thread's refresh (every
/// [`ITER_REFRESH_WALKS`] walks) writes it in full regardless.
#[inline(always)]
pub fn seen_print(runtime: u64, start: u64, sig_runtime: u64) -> u64 {
    #[inline(always)]
    fn step(h: u64, v: u64, k: u64) -> u64 {
        let h = (h ^ v).wrapping_mul(k);
        h ^ (h >> 32)
    }
    let h = step(0, runtime, 0x9e37_79b9_7f4a_7c15);
    let h = step(h, start, 0xbf58_476d_1ce4_e5b9);
    step(h, sig_runtime, 0x94d0_49bb_1331_11eb)
}

/// Everything userspace tells the programs before they load, as one read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub tp: TpOffsets,
    pub task: TaskOffsets,
    pub syscalls: SyscallNrs,
    /// The same for 32-bit tasks on a 64-bit kernel (their own syscall table).
    pub compat_syscalls: SyscallNrs,
    /// Page size, bytes (RSS counters are in pages).
    pub page_size: u64,
    /// `CONFIG_*` bits.
    pub flags: u64,
    /// The task iterator's slot of a thread in `ITER_SEEN`: `tid & iter_seen_mask` (the
    /// map's size less one, a power of two).
    pub iter_seen_mask: u64,
}

/// [`KernelConfig::flags`]: wake the ring buffer's reader at every exec event (the
/// allocate stage places requests as they start), not only once a batch has built up.
pub const CONFIG_WAKE_ON_EXEC: u64 = 1;
const _: () = assert!(size_of::<KernelConfig>() == 32 * 4 + 50 * 4 + 2 * 16 * 8 + 8 + 8 + 8);

impl KernelConfig {
    /// A configuration with every field absent; the programs then record nothing that
    /// needs a field. Userspace fills it in from tracefs and BTF before loading.
    pub const EMPTY: KernelConfig = KernelConfig {
        tp: TpOffsets {
            switch_prev_pid: ABSENT,
            switch_prev_state: ABSENT,
            switch_next_pid: ABSENT,
            wakeup_pid: ABSENT,
            exec_filename: ABSENT,
            fork_child_pid: ABSENT,
            exit_group_dead: ABSENT,
            rss_mm_id: ABSENT,
            rss_curr: ABSENT,
            rss_member: ABSENT,
            rss_size: ABSENT,
            sys_exit_id: ABSENT,
            sys_exit_ret: ABSENT,
            bio_dev: ABSENT,
            bio_sector: ABSENT,
            bio_nr_sector: ABSENT,
            bio_rwbs: ABSENT,
            rq_done_dev: ABSENT,
            rq_done_sector: ABSENT,
            sock_len_sk: ABSENT,
            sock_len_family: ABSENT,
            sock_len_ret: ABSENT,
            set_state_sk: ABSENT,
            set_state_old: ABSENT,
            set_state_new: ABSENT,
            set_state_protocol: ABSENT,
            retrans_sk: ABSENT,
            cgroup_attach_root: ABSENT,
            cgroup_attach_id: ABSENT,
            cgroup_attach_pid: ABSENT,
            set_state_sport: ABSENT,
            set_state_family: ABSENT,
        },
        task: TaskOffsets::EMPTY,
        syscalls: SyscallNrs::NONE,
        compat_syscalls: SyscallNrs::NONE,
        page_size: 4096,
        flags: 0,
        iter_seen_mask: 0,
    };
}

/// Log2 bucket of a latency in nanoseconds.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    let b = if ns == 0 {
        0
    } else {
        63 - ns.leading_zeros() as usize
    };
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// The egress token bucket of one managed cgroup (`cgroup_skb` egress program, separate
/// object `umbra-egress`). Userspace writes `rate` and `burst` (and resets the rest when
/// it creates the entry); the program refills `tokens` by the time since `last_ns` and
/// takes each packet's length from it; a packet finding too few tokens is dropped with a
/// congestion notification (TCP backs off instead of timing out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressBucket {
    /// Bytes per second allowed.
    pub rate: u64,
    /// Most tokens held, bytes.
    pub burst: u64,
    /// Tokens now, bytes (signed: concurrent CPUs may overdraw a little).
    pub tokens: i64,
    /// Boot-clock ns of the last refill.
    pub last_ns: u64,
    /// Bytes passed and dropped, and packets dropped, since the entry was made.
    pub passed_bytes: u64,
    pub dropped_bytes: u64,
    pub dropped_packets: u64,
}
const _: () = assert!(size_of::<EgressBucket>() == 7 * 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, have no padding (asserted above) and
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for ProcStats {}
    unsafe impl aya::Pod for CpuState {}
    unsafe impl aya::Pod for ThreadState {}
    unsafe impl aya::Pod for LifecycleEvent {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for ExitEvent {}
    unsafe impl aya::Pod for TaskRecord {}
    unsafe impl aya::Pod for ProcKey {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for BlockKey {}
    unsafe impl aya::Pod for ExitedKey {}
    unsafe impl aya::Pod for DropTable {}
    unsafe impl aya::Pod for BlockPending {}
    unsafe impl aya::Pod for KernelConfig {}
    unsafe impl aya::Pod for EgressBucket {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn a_change_of_any_one_value_changes_the_seen_print() {
        let base = [123_456_789u64, 987_654_321_000, 42];
        let p = |v: [u64; 3]| seen_print(v[0], v[1], v[2]);
        let mut prints = std::collections::HashSet::new();
        for i in 0..3 {
            for d in [1u64, 2, 1 << 20, 1 << 40, u64::MAX] {
                let mut v = base;
                v[i] = v[i].wrapping_add(d);
                assert_ne!(p(v), p(base), "value {i} moved by {d}");
                prints.insert(p(v));
            }
        }
        assert_eq!(prints.len(), 15, "distinct changes give distinct prints");
        // A runtime that moves by one nanosecond at a time never repeats a print.
        let seq: std::collections::HashSet<u64> = (0..10_000u64)
            .map(|r| seen_print(r, base[1], base[2]))
            .collect();
        assert_eq!(seq.len(), 10_000);
    }

    #[test]
    fn buckets_are_log2_and_clamped() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 0);
        assert_eq!(hist_bucket(2), 1);
        assert_eq!(hist_bucket(3), 1);
        assert_eq!(hist_bucket(1024), 10);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn drop_slots_are_dense() {
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
    }
}
