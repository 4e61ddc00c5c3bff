//! `exceptions/page_fault_user` (x86 only): user page faults per process. Optional:
//! userspace attaches it where the tracepoint exists and reports faults as unavailable
//! elsewhere.

use agent_common::prog::PAGE_FAULT_USER as PROG;
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::util::{add, current_key, proc_entry};

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn page_fault_user(_ctx: TracePointContext) -> u32 {
    if let Some(p) = proc_entry(PROG, current_key()) {
        add(&mut p.page_faults, 1);
    }
    0
}
