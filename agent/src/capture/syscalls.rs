//! Syscall numbers of the architecture this agent was built for, for the `sys_exit`
//! program's read/write/accept classification, and the socket send/receive syscalls it
//! counts as network bytes on kernels without the `sock` length tracepoints.

use agent_common::SyscallNrs;

#[cfg(target_arch = "x86_64")]
pub const NRS: SyscallNrs = SyscallNrs {
    // read, pread64, readv, preadv, preadv2
    read: [0, 17, 19, 295, 327],
    // write, pwrite64, writev, pwritev, pwritev2
    write: [1, 18, 20, 296, 328],
    // accept, accept4
    accept: [43, 288],
    send: [-1; 2],
    recv: [-1; 2],
};
/// sendto, sendmsg.
#[cfg(target_arch = "x86_64")]
pub const SEND: [i64; 2] = [44, 46];
/// recvfrom, recvmsg.
#[cfg(target_arch = "x86_64")]
pub const RECV: [i64; 2] = [45, 47];

#[cfg(target_arch = "aarch64")]
pub const NRS: SyscallNrs = SyscallNrs {
    read: [63, 67, 65, 69, 286],
    write: [64, 68, 66, 70, 287],
    accept: [202, 242],
    send: [-1; 2],
    recv: [-1; 2],
};
#[cfg(target_arch = "aarch64")]
pub const SEND: [i64; 2] = [206, 211];
#[cfg(target_arch = "aarch64")]
pub const RECV: [i64; 2] = [207, 212];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("Umbra knows the syscall numbers of x86_64 and aarch64 only");
