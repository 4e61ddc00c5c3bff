//! Umbra's kernel programs.
//!
//! Tracepoints (classic and BTF) and a task iterator only, so the object loads on kernels
//! without kprobes or fentry. Each tick userspace runs the task iterator
//! (`probes/task_iter.rs`), which reads every thread's own accounting; events stay events:
//! exec, fork and exit go through a ring buffer ([`maps::EVENTS`]), block, network and
//! connection counters aggregate in bounded hash maps keyed by process
//! ([`maps::PROC_STATS`]). Kernels without the iterator get the per-event hooks instead
//! (scheduler, memory, faults, syscalls), which the detail level also attaches. Every
//! failure to record something is counted in [`maps::DROPS`].
//! Field offsets of classic tracepoints and kernel structures come from userspace
//! (tracefs formats and BTF) through the read-only global [`maps::CONFIG`].
#![no_std]
#![no_main]
// Atomic adds on map values: the BPF target has no `core::sync::atomic` types.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod maps;
mod probes;
mod util;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
