//! Maps and the read-only configuration global. Sizes here are defaults: userspace
//! resizes the hash maps from its config before loading.

use agent_common::{
    BlockKey, BlockPending, CpuState, DropTable, ExitedKey, ITER_CTL_SLOTS, KernelConfig,
    ListenKey, ProcKey, ProcStats, TaskRecord, ThreadState,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// Field offsets and syscall numbers, written by userspace before load (`set_global`).
#[unsafe(no_mangle)]
pub static CONFIG: KernelConfig = KernelConfig::EMPTY;

/// Without BTF only: final counters of processes whose tgid was reused before userspace
/// collected them (a fork that finds its new tgid still in `PROC_STATS` moves the old
/// entry here). With BTF a reused tgid is another [`ProcKey`].
#[map]
pub static EXITED: HashMap<ExitedKey, ProcStats> = HashMap::with_max_entries(1024, 0);

/// Final counters of processes whose free event found the ring buffer full (a fork
/// storm outrunning userspace): kept here until userspace's next tick takes them, so a
/// short process's CPU time is not lost with its event.
#[map]
pub static FREED: HashMap<ProcKey, TaskRecord> = HashMap::with_max_entries(2048, 0);

/// The summed final counters of freed processes that neither the ring buffer nor `FREED`
/// had room for and that no walk of the task iterator saw (started after the last walk
/// began: none of their time was reported), per CPU and never reset: userspace takes each
/// tick's growth as one process of its own ("exits not held"), so their CPU time still
/// adds up with the node's though it lost its owner.
#[map]
pub static UNHELD: PerCpuArray<TaskRecord> = PerCpuArray::with_max_entries(1, 0);

/// The I/O accounting (`ioac`, by `IOAC_*`) of each process's exited threads, added by
/// each thread as it exits and removed when the process is freed. Not `signal->ioac`: the
/// kernel adds to that the I/O of every child the process reaps (`wait_task_zombie`), so
/// a shell's reads would count its children's again.
#[map]
pub static EXITED_IO: HashMap<ProcKey, [u64; 6]> = HashMap::with_max_entries(4096, 0);

/// Where a record for `FREED` is put together: a record and its copy do not fit the
/// stack that Linux 5.10's verifier allows with the helpers' calls.
#[map]
pub static FREED_SCRATCH: PerCpuArray<TaskRecord> = PerCpuArray::with_max_entries(1, 0);

/// Per-process counters keyed by process. A plain hash (not LRU) so that a full map is a
/// counted drop rather than a silent eviction; userspace deletes the entries of processes
/// it has finished, by key.
#[map]
pub static PROC_STATS: HashMap<ProcKey, ProcStats> = HashMap::with_max_entries(8192, 0);

/// The start of the process that holds a tgid now, for hooks that know only a pid
/// (`cgroup_attach_task` without BTF).
#[map]
pub static START_OF: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// Per-thread state, keyed by tid: when it became runnable, and its scheduler runtime at
/// its last switch-out. Entries are removed when the thread dies.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(32768, 0);

/// What the task iterator last wrote in full of each thread, in the slot `tid &
/// CONFIG.iter_seen_mask` (userspace sizes it, a power of two, twice the threads it is
/// configured for): the values that tell whether the thread ran since (or was moved, or
/// its process lost threads). An array, not a hash map: the walk visits threads in tid
/// order, so its slots are read in order, without hashing and without a cache miss per
/// thread for a bucket and an element. Two live threads in one slot take it in turn and
/// are written in full each time; a slot is cleared when its thread exits and when it is
/// freed.
#[map]
pub static ITER_SEEN: Array<IterSeen> = Array::with_max_entries(65536, 0);

/// The task iterator's walk count, userspace's generation, and the current walk's start
/// (`ITER_CTL_*`).
#[map]
pub static ITER_CTL: Array<u64> = Array::with_max_entries(ITER_CTL_SLOTS, 0);

/// An [`ITER_SEEN`] slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IterSeen {
    /// The thread the slot is for; 0: none.
    pub tid: u32,
    /// `ITER_CTL[ITER_CTL_GEN]` when written (its low bits).
    pub generation: u32,
    /// [`agent_common::seen_print`] of the thread's values when written.
    pub print: u64,
    /// `task->cgroups` when written: a move to another cgroup changes it.
    pub cgroups: u64,
}

/// The [`ITER_SEEN`] slot of `tid`.
#[inline(always)]
pub fn seen_slot(tid: u32) -> Option<*mut IterSeen> {
    // SAFETY: a read-only global, set by userspace before load.
    let mask = unsafe { core::ptr::read_volatile(&raw const CONFIG.iter_seen_mask) };
    ITER_SEEN.get_ptr_mut((tid as u64 & mask) as u32)
}

/// Clears `tid`'s [`ITER_SEEN`] slot (its thread exits or is freed): a thread that later
/// holds the tid, or the zombie the iterator may still visit, is written in full.
#[inline(always)]
pub fn forget_seen(tid: u32) {
    if let Some(s) = seen_slot(tid) {
        // SAFETY: the map's slot; a write racing the iterator's at worst leaves a slot
        // whose print no later thread of this tid matches.
        unsafe {
            if (*s).tid == tid {
                (*s).tid = 0;
            }
        }
    }
}

/// The task on each CPU: since when, and its last run-queue wait.
#[map]
pub static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Exec, fork and exit events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// When a lifecycle program last woke the reader of `EVENTS` (`bpf_ktime_get_ns`).
#[map]
pub static LAST_WAKE: Array<u64> = Array::with_max_entries(1, 0);

/// Drop counters, one slot per (program, [`agent_common::Drop`]): see `drop_slot`.
#[map]
pub static DROPS: PerCpuArray<DropTable> = PerCpuArray::with_max_entries(1, 0);

/// An all-zero `ProcStats`, the source of new `PROC_STATS` entries (too big for the stack).
#[map]
pub static ZERO_STATS: PerCpuArray<ProcStats> = PerCpuArray::with_max_entries(1, 0);

/// Block requests between queue and completion. LRU: requests merged into another one
/// never complete under their own key, and their stale entries must age out.
#[map]
pub static BLOCK_PENDING: LruHashMap<BlockKey, BlockPending> =
    LruHashMap::with_max_entries(16384, 0);

/// Owner of a socket, learnt in process context (a send or receive, a connect) or, for a
/// socket accepted by a listener, from the listener's owner; used where the kernel
/// reports a socket from softirq (close, retransmit).
#[map]
pub static SOCK_OWNER: LruHashMap<u64, ProcKey> = LruHashMap::with_max_entries(16384, 0);

/// Owner of each listening TCP port, by network namespace: who accepts the connections
/// that arrive there.
#[map]
pub static LISTENERS: LruHashMap<ListenKey, ProcKey> = LruHashMap::with_max_entries(4096, 0);

/// Owner of an `mm` by `rss_stat`'s hashed mm id, for updates made from another
/// task's context (reclaim, exit).
#[map]
pub static MM_OWNER: LruHashMap<u32, ProcKey> = LruHashMap::with_max_entries(8192, 0);
