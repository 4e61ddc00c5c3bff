//! Syscall numbers of the architecture this agent was built for, for the `sys_exit`
//! program's read/write/accept classification.

use agent_common::SyscallNrs;

#[cfg(target_arch = "x86_64")]
pub const NRS: SyscallNrs = SyscallNrs {
    // read, pread64, readv, preadv, preadv2
    read: [0, 17, 19, 295, 327],
    // write, pwrite64, writev, pwritev, pwritev2
    write: [1, 18, 20, 296, 328],
    // accept, accept4
    accept: [43, 288],
};

#[cfg(target_arch = "aarch64")]
pub const NRS: SyscallNrs = SyscallNrs {
    read: [63, 67, 65, 69, 286],
    write: [64, 68, 66, 70, 287],
    accept: [202, 242],
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("Umbra knows the syscall numbers of x86_64 and aarch64 only");
