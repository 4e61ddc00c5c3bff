//! Syscall numbers of the architecture this agent was built for, for the `sys_exit`
//! program's read/write classification, and the socket send/receive syscalls it counts as
//! network bytes on kernels without the `sock` length tracepoints; and the same for 32-bit
//! tasks on a 64-bit kernel, whose syscalls are numbered by their own table (i386 on
//! x86_64, arm on aarch64). Accepted connections are counted from the listener's side in
//! `sock`, not from syscalls. The i386 `socketcall` multiplexer is not classified.

use agent_common::SyscallNrs;

#[cfg(target_arch = "x86_64")]
pub const NRS: SyscallNrs = SyscallNrs {
    // read, pread64, readv, preadv, preadv2
    read: [0, 17, 19, 295, 327],
    // write, pwrite64, writev, pwritev, pwritev2
    write: [1, 18, 20, 296, 328],
    accept: [-1; 2],
    send: [-1; 2],
    recv: [-1; 2],
};
/// sendto, sendmsg.
#[cfg(target_arch = "x86_64")]
pub const SEND: [i64; 2] = [44, 46];
/// recvfrom, recvmsg.
#[cfg(target_arch = "x86_64")]
pub const RECV: [i64; 2] = [45, 47];
/// i386 (`arch/x86/entry/syscalls/syscall_32.tbl`).
#[cfg(target_arch = "x86_64")]
pub const COMPAT_NRS: SyscallNrs = SyscallNrs {
    read: [3, 180, 145, 333, 378],
    write: [4, 181, 146, 334, 379],
    accept: [-1; 2],
    send: [-1; 2],
    recv: [-1; 2],
};
#[cfg(target_arch = "x86_64")]
pub const COMPAT_SEND: [i64; 2] = [369, 370];
#[cfg(target_arch = "x86_64")]
pub const COMPAT_RECV: [i64; 2] = [371, 372];

#[cfg(target_arch = "aarch64")]
pub const NRS: SyscallNrs = SyscallNrs {
    read: [63, 67, 65, 69, 286],
    write: [64, 68, 66, 70, 287],
    accept: [-1; 2],
    send: [-1; 2],
    recv: [-1; 2],
};
#[cfg(target_arch = "aarch64")]
pub const SEND: [i64; 2] = [206, 211];
#[cfg(target_arch = "aarch64")]
pub const RECV: [i64; 2] = [207, 212];
/// arm EABI (`arch/arm/tools/syscall.tbl`).
#[cfg(target_arch = "aarch64")]
pub const COMPAT_NRS: SyscallNrs = SyscallNrs {
    read: [3, 180, 145, 361, 392],
    write: [4, 181, 146, 362, 393],
    accept: [-1; 2],
    send: [-1; 2],
    recv: [-1; 2],
};
#[cfg(target_arch = "aarch64")]
pub const COMPAT_SEND: [i64; 2] = [290, 296];
#[cfg(target_arch = "aarch64")]
pub const COMPAT_RECV: [i64; 2] = [292, 297];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("Umbra knows the syscall numbers of x86_64 and aarch64 only");
