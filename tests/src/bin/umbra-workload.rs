//! Child processes doing known work for the privileged tests.
//!
//! Protocol: the workload prints `ready` (plus facts such as a port) on stdout, then
//! waits for SIGUSR1 before it works, so the test can snapshot it first. Workloads whose
//! result is read while they live print `done` and wait for a second SIGUSR1; the others
//! exit straight after the work with `_exit`, doing no other I/O.
#![allow(clippy::unwrap_used)]

use std::{
    env,
    ffi::CString,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn main() {
    block_usr1();
    // Arguments after the first four may be any bytes (`exec`): only these are text.
    let args: Vec<String> = env::args_os()
        .skip(1)
        .take(4)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap();
    match arg(0).as_str() {
        // spin MS [CPU]: busy until it has had MS ms of CPU time after `go`; pinned to CPU
        // if given, then MS ms of wall time (two spinners share the CPU).
        "spin" => {
            let pinned = arg(2).parse::<usize>().ok();
            if let Some(cpu) = pinned {
                pin(cpu);
            }
            ready("");
            wait_go();
            let d = Duration::from_millis(num(1));
            if pinned.is_some() {
                spin(d)
            } else {
                spin_cpu(d)
            }
            done_then_exit();
        }
        // touch MIB: allocate and write every page of MIB MiB.
        // touch MB [worker]: touch MB of fresh memory; with `worker`, a second thread does
        // it and says `done` while the first sleeps.
        "touch" => {
            ready("");
            wait_go();
            let len = (num(1) as usize) << 20;
            if arg(2) == "worker" {
                std::thread::spawn(move || {
                    touch(len);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "done").unwrap();
                    out.flush().unwrap();
                    drop(out);
                    loop {
                        std::thread::park();
                    }
                });
                wait_go();
                exit_now();
            }
            touch(len);
            done_then_exit();
        }
        // io PATH BYTES MODE: write BYTES to PATH and read them back (MODE: plain, fsync every
        // 4 MiB and at the end, or direct).
        "io" => io(&arg(1), num(2) as usize, &arg(3)),
        // recv BYTES HOLD: accept one TCP connection on loopback (a 64 KiB receive buffer),
        // read all but the last HOLD of its BYTES, say done; at the second signal read the
        // rest to EOF and exit, which closes the connection.
        "recv" => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            set_buffer(&l, libc::SO_RCVBUF, 64 << 10);
            ready(&l.local_addr().unwrap().port().to_string());
            wait_go();
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut left = num(1).saturating_sub(num(2)) as usize;
            while left > 0 {
                let n = s.read(&mut buf[..left.min(1 << 16)]).unwrap();
                assert!(n > 0, "the sender closed early");
                left -= n;
            }
            say_done();
            wait_go();
            while s.read(&mut buf).unwrap() > 0 {}
            exit_now();
        }
        // send PORT BYTES [SNDBUF]: connect to loopback PORT (with a send buffer of SNDBUF
        // bytes if given, beyond the system's limit: the test runs as root), send BYTES,
        // close, exit. What the receiver has not taken yet is still in the send buffer,
        // behind the FIN, when it exits.
        "send" => {
            ready("");
            wait_go();
            let mut s = TcpStream::connect(("127.0.0.1", num(1) as u16)).unwrap();
            if !arg(3).is_empty() {
                set_buffer(&s, libc::SO_SNDBUFFORCE, num(3) as i32);
            }
            let buf = vec![7u8; 1 << 16];
            let mut left = num(2) as usize;
            while left > 0 {
                let n = left.min(buf.len());
                s.write_all(&buf[..n]).unwrap();
                left -= n;
            }
            drop(s);
            exit_now();
        }
        // exec N PATH [ARGS...]: run PATH N times, one after another, with ARGS (any
        // bytes).
        "exec" => {
            ready("");
            wait_go();
            let path = arg(2);
            let rest: Vec<std::ffi::OsString> = env::args_os().skip(4).collect();
            for _ in 0..num(1) {
                let st = std::process::Command::new(&path)
                    .args(&rest)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            exit_now();
        }
        // thread-exits MS: one thread busy until it has had MS ms of CPU time, then ended
        // and joined; the process, its leader idle, lives on until the second signal.
        "thread-exits" => {
            ready("");
            wait_go();
            let ms = num(1);
            std::thread::spawn(move || spin_thread_cpu(Duration::from_millis(ms)))
                .join()
                .unwrap();
            done_then_exit();
        }
        // thread-churn SECS MS: for SECS seconds, one thread after another, each busy until
        // it has had MS ms of CPU time, then ended and joined (the leader idle meanwhile).
        "thread-churn" => {
            ready("");
            wait_go();
            let (secs, ms) = (num(1), num(2));
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                std::thread::spawn(move || spin_thread_cpu(Duration::from_millis(ms)))
                    .join()
                    .unwrap();
            }
            done_then_exit();
        }
        // threads N MS: N threads, each busy until it has had MS ms of CPU time (unpinned:
        // on every CPU there is), then blocked, alive, until the second signal.
        "threads" => {
            ready("");
            wait_go();
            let ms = num(2);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let release = std::sync::Arc::new(std::sync::Barrier::new(num(1) as usize + 1));
            let handles: Vec<_> = (0..num(1))
                .map(|_| {
                    let (tx, release) = (tx.clone(), release.clone());
                    std::thread::spawn(move || {
                        spin_thread_cpu(Duration::from_millis(ms));
                        tx.send(()).unwrap();
                        release.wait();
                    })
                })
                .collect();
            for _ in 0..num(1) {
                rx.recv().unwrap();
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "done").unwrap();
            out.flush().unwrap();
            drop(out);
            wait_go();
            release.wait();
            for h in handles {
                h.join().unwrap();
            }
            exit_now();
        }
        // storm SECS PATH COUNTFILE: for SECS seconds, start PATH again and again (8 at a
        // time, posix_spawn), then write how many were started to COUNTFILE.
        "storm" => {
            ready("");
            wait_go();
            let path = CString::new(arg(2)).unwrap();
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            let end = Instant::now() + Duration::from_secs(num(1));
            let (mut started, mut running) = (0u64, 0);
            while Instant::now() < end {
                while running < 8 {
                    let mut pid = 0;
                    // SAFETY: valid NUL-terminated argv and envp; no file actions or attributes.
                    let r = unsafe {
                        libc::posix_spawn(
                            &mut pid,
                            path.as_ptr(),
                            std::ptr::null(),
                            std::ptr::null(),
                            argv.as_ptr() as *const *mut libc::c_char,
                            envp.as_ptr() as *const *mut libc::c_char,
                        )
                    };
                    assert_eq!(r, 0, "posix_spawn");
                    started += 1;
                    running += 1;
                }
                // SAFETY: reaping our own children.
                unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
                running -= 1;
            }
            while running > 0 {
                // SAFETY: as above.
                unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
                running -= 1;
            }
            // SAFETY: a zeroed rusage is valid; RUSAGE_CHILDREN covers the reaped children.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
            let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
            let children_ns = ns(ru.ru_utime) + ns(ru.ru_stime);
            // SAFETY: as above; RUSAGE_SELF is this process.
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
            let self_ns = ns(ru.ru_utime) + ns(ru.ru_stime);
            std::fs::write(arg(3), format!("{started} {children_ns} {self_ns}")).unwrap();
            exit_now();
        }
        // reap PATH: a child reads all of PATH and exits; this process reaps it, says
        // `done` and waits.
        "reap" => {
            ready("");
            wait_go();
            // SAFETY: this process has one thread; the child only reads a file and exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                let mut f = std::fs::File::open(arg(1)).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                while f.read(&mut buf).unwrap() > 0 {}
                exit_now();
            }
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            done_then_exit();
        }
        // exec-thread PATH: a thread other than the main one execs PATH (the process keeps
        // its pid; the other threads are gone).
        "exec-thread" => {
            ready("");
            wait_go();
            let path = CString::new(arg(1)).unwrap();
            let t = std::thread::spawn(move || {
                let argv = [path.as_ptr(), std::ptr::null()];
                // SAFETY: a NUL-terminated argv of valid C strings; on success nothing returns.
                unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
                panic!("execv failed");
            });
            let _ = t.join();
            std::process::exit(3);
        }
        other => {
            eprintln!("umbra-workload: unknown workload {other:?}");
            std::process::exit(2);
        }
    }
}

/// Base pages whatever the kernel's transparent huge page mode (Debian's kernels default
/// to `always`), so touching N pages is N page faults.
/// A fresh anonymous mapping of `len` bytes, untouched and advised against huge pages
/// before its first fault: every page then faults once on its first write. (A heap
/// allocation writes its header first, and that write can fault in a whole huge page where
/// the kernel's default is `always`.)
fn fresh_small_pages(len: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap of {len} bytes failed");
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    p.cast()
}

fn ready(info: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {info}").unwrap();
    out.flush().unwrap();
}

/// Writes to every page of `len` bytes of fresh memory.
fn touch(len: usize) {
    let p = fresh_small_pages(len);
    for i in (0..len).step_by(4096) {
        // SAFETY: inside the mapping `fresh_small_pages` made, which stays mapped until exit.
        unsafe { p.add(i).write_volatile(1) };
    }
}

fn say_done() {
    let mut out = std::io::stdout().lock();
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
}

fn done_then_exit() {
    say_done();
    wait_go();
    exit_now();
}

/// Sets a socket's buffer size option (`SO_RCVBUF`, `SO_SNDBUFFORCE`).
fn set_buffer(sock: &impl std::os::fd::AsRawFd, opt: libc::c_int, bytes: i32) {
    // SAFETY: an int option on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

fn exit_now() -> ! {
    // SAFETY: ends the process without flushing or unwinding: no I/O after the work.
    unsafe { libc::_exit(0) }
}

fn block_usr1() {
    // SAFETY: plain libc signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_go() {
    // SAFETY: as above; sigwait blocks until SIGUSR1 is pending.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Burns CPU until the process has used `d` more of it (however busy the machine is).
/// Counted from here, not from the process's start: starting up can cost tens of ms of
/// CPU under emulation, which a caller measuring from `go` does not see.
fn spin_cpu(d: Duration) {
    let end = cpu_time() + d;
    let mut x = 0u64;
    while cpu_time() < end {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// Burns CPU until the calling thread has used `d` of it.
fn spin_thread_cpu(d: Duration) {
    let mut x = 0u64;
    while thread_cpu_time() < d {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn spin(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Raw syscalls only, so the process's read/write bytes are exactly the work's.
fn io(path: &str, bytes: usize, mode: &str) {
    const CHUNK: usize = 1 << 20;
    let direct = mode == "direct";
    // O_DIRECT needs an aligned buffer: over-allocate and align.
    let mut backing = vec![0x5au8; CHUNK + 4096];
    let off = backing.as_ptr().align_offset(4096);
    let buf = &mut backing[off..off + CHUNK];
    let cpath = CString::new(path).unwrap();
    let flags =
        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | if direct { libc::O_DIRECT } else { 0 };
    ready("");
    wait_go();
    // SAFETY: plain syscalls on a buffer we own.
    unsafe {
        let fd = libc::open(cpath.as_ptr(), flags, 0o600);
        assert!(fd >= 0, "open {path}");
        let mut left = bytes;
        let mut unsynced = 0;
        while left > 0 {
            let n = libc::write(fd, buf.as_ptr().cast(), left.min(CHUNK));
            assert!(n > 0);
            left -= n as usize;
            unsynced += n as usize;
            // Synced every 4 MiB, so that little is left for the kernel's flusher thread:
            // dirty data past its background threshold (10% of available memory: a small
            // guest's can be below 16 MiB) is written back by it, not by this fsync.
            if mode == "fsync" && unsynced >= 4 * CHUNK {
                libc::fsync(fd);
                unsynced = 0;
            }
        }
        if mode == "fsync" || direct {
            libc::fsync(fd);
        }
        libc::lseek(fd, 0, libc::SEEK_SET);
        let mut got = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), CHUNK);
            assert!(n >= 0);
            if n == 0 {
                break;
            }
            got += n as usize;
        }
        assert_eq!(got, bytes);
        libc::close(fd);
    }
    exit_now();
}
