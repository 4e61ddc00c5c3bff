//! Umbra's egress limiter: one `cgroup_skb` program and its maps, in their own object so
//! that the agent loads it only where allocation limits egress (and capture's maps are
//! not made twice).
#![no_std]
#![no_main]

#[path = "probes/egress.rs"]
mod egress;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
