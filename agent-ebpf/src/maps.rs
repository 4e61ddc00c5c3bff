//! Maps and the read-only configuration global. Sizes here are defaults: userspace
//! resizes the hash maps from its config before loading.

use agent_common::{
    BlockKey, BlockPending, CpuState, DropTable, ExitedKey, KernelConfig, ProcStats, ThreadState,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// Field offsets and syscall numbers, written by userspace before load (`set_global`).
#[unsafe(no_mangle)]
pub static CONFIG: KernelConfig = KernelConfig::EMPTY;

/// Final counters of processes whose tgid was reused before userspace collected them:
/// a fork that finds its new tgid still in `PROC_STATS` moves the old entry here, so two
/// processes never share counters.
#[map]
pub static EXITED: HashMap<ExitedKey, ProcStats> = HashMap::with_max_entries(1024, 0);

/// Per-process counters keyed by tgid. A plain hash (not LRU) so that a full map is a
/// counted drop rather than a silent eviction; userspace deletes exited processes.
#[map]
pub static PROC_STATS: HashMap<u32, ProcStats> = HashMap::with_max_entries(8192, 0);

/// Per-thread state, keyed by tid: when it became runnable, and its scheduler runtime at
/// its last switch-out. Entries are removed when the thread dies.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(32768, 0);

/// The task on each CPU: since when, and its last run-queue wait.
#[map]
pub static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Exec, fork and exit events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

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

/// Owner (tgid) of a socket, learnt in process context, used where the kernel reports a
/// socket from softirq (close, retransmit).
#[map]
pub static SOCK_OWNER: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Owner (tgid) of an `mm` by `rss_stat`'s hashed mm id, for updates made from another
/// task's context (reclaim, exit).
#[map]
pub static MM_OWNER: LruHashMap<u32, u32> = LruHashMap::with_max_entries(8192, 0);
