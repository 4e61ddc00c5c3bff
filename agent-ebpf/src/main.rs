//! Umbra's kernel programs.
//!
//! Tracepoints only (classic and BTF), so the object loads on kernels without kprobes
//! or fentry. Per-process counters aggregate in bounded hash maps keyed by tgid
//! ([`maps::PROC_STATS`]); exec, fork and exit go through a ring buffer
//! ([`maps::EVENTS`]); every failure to record something is counted in [`maps::DROPS`].
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
