//! `umbra exec [--workload W] -- CMD…`: a process started inside its reserved cgroup
//! before its first instruction, for launchers that want exactness.
//!
//! The running agent owns the subtree (and its journal), so `umbra exec` asks it over a
//! Unix socket (`<allocate state dir>/exec.sock`, root only) for a group with the
//! request's limits — one JSON line each way — then starts the command there:
//! - cgroup v2: `clone3` with `CLONE_INTO_CGROUP` and a descriptor of the group's
//!   directory: the child is born in the group;
//! - cgroup v1: `fork`, and the child writes its own pid (`0`) into each hierarchy's
//!   `cgroup.procs` before `exec`.
//!
//! A request that does not fit the node gets a frozen group: the child starts held and
//! runs when the agent releases it. `umbra exec` waits for the child, passes SIGINT and
//! SIGTERM on to it, and exits with its status. The agent removes the group once it is
//! empty.

use std::{
    ffi::{CString, OsStr},
    io::{BufRead, BufReader, Write},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::cgroups::ExecTarget;

/// The socket's file name in the allocate state directory.
pub const SOCKET: &str = "exec.sock";
/// Version of the request and reply.
pub const VERSION: u32 = 1;
/// `clone3` flag: the child starts in the cgroup given by `clone_args.cgroup` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What `umbra exec` asks the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub version: u32,
    /// The executable's absolute path.
    pub exe: String,
    /// The workload to reserve under (its id or name); default: the executable's.
    pub workload: Option<String>,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchReply {
    pub ok: bool,
    pub error: Option<String>,
    /// The group, below the hierarchy root.
    pub group: String,
    pub target: Option<ExecTarget>,
    /// The request's limits, for people (`cpu.max 0.50 cores`, …).
    pub limits: Vec<String>,
    /// The group is frozen: the child waits until the agent releases it.
    pub held: bool,
}

impl LaunchReply {
    pub fn refused(error: String) -> LaunchReply {
        LaunchReply {
            ok: false,
            error: Some(error),
            group: String::new(),
            target: None,
            limits: Vec::new(),
            held: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "no Umbra agent answers at {path}: {source}; start one with `umbra run --enforce` (as root)"
    )]
    NoAgent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {path} did not answer properly: {what}")]
    Protocol { path: PathBuf, what: String },
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("{cmd}: command not found in PATH")]
    NotFound { cmd: String },
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `umbra exec` did.
#[derive(Clone, Debug)]
pub struct Launched {
    pub reply: LaunchReply,
    pub pid: u32,
    /// The child's exit status as a shell shows it (128 + signal when killed).
    pub status: i32,
    /// Asking the agent for the group, and starting the child inside it.
    pub reserve: Duration,
    pub spawn: Duration,
}

/// `cmd` as `execvp` would find it: a path with a `/` as is, else the first executable
/// file of that name in `PATH`.
pub fn resolve(cmd: &OsStr) -> Result<PathBuf, LaunchError> {
    let p = Path::new(cmd);
    if cmd.as_bytes().contains(&b'/') {
        return std::fs::canonicalize(p).map_err(|source| LaunchError::Os {
            what: format!("{}", p.display()),
            source,
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let f = dir.join(p);
        if let Ok(m) = std::fs::metadata(&f)
            && m.is_file()
            && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        {
            return std::fs::canonicalize(&f).map_err(|source| LaunchError::Os {
                what: format!("{}", f.display()),
                source,
            });
        }
    }
    Err(LaunchError::NotFound {
        cmd: cmd.to_string_lossy().into_owned(),
    })
}

/// Asks the agent at `socket` for a group for `exe`.
pub fn reserve(
    socket: &Path,
    exe: &Path,
    workload: Option<&str>,
) -> Result<LaunchReply, LaunchError> {
    let mut s = UnixStream::connect(socket).map_err(|source| LaunchError::NoAgent {
        path: socket.to_path_buf(),
        source,
    })?;
    let proto = |what: String| LaunchError::Protocol {
        path: socket.to_path_buf(),
        what,
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = LaunchRequest {
        version: VERSION,
        exe: exe.to_string_lossy().into_owned(),
        workload: workload.map(String::from),
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| proto(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(s, 1 << 16))
        .read_line(&mut answer)
        .map_err(|e| proto(e.to_string()))?;
    let reply: LaunchReply =
        serde_json::from_str(&answer).map_err(|e| proto(format!("{e}: {answer:?}")))?;
    if !reply.ok {
        return Err(LaunchError::Refused(reply.error.unwrap_or_default()));
    }
    Ok(reply)
}

/// Everything the child needs, made before it exists (after `fork`/`clone3` in a
/// multi-threaded process only async-signal-safe calls are allowed: no allocation).
struct Prepared {
    path: CString,
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    procs: Vec<CString>,
}

fn cstring(b: &[u8], what: &str) -> Result<CString, LaunchError> {
    CString::new(b).map_err(|_| LaunchError::Os {
        what: format!("{what} holds a NUL byte"),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

fn prepare(
    exe: &Path,
    args: &[std::ffi::OsString],
    procs: &[PathBuf],
) -> Result<Prepared, LaunchError> {
    let path = cstring(exe.as_os_str().as_bytes(), "the command's path")?;
    let args: Vec<CString> = args
        .iter()
        .map(|a| cstring(a.as_bytes(), "an argument"))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let procs = procs
        .iter()
        .map(|p| cstring(p.as_os_str().as_bytes(), "a cgroup path"))
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        path,
        _args: args,
        argv,
        procs,
    })
}

/// In the child: into each `cgroup.procs` (v1), then `exec`. Never returns.
///
/// # Safety
/// Called only in a freshly forked child; uses async-signal-safe calls only.
unsafe fn child(p: &Prepared) -> ! {
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    unsafe {
        for f in &p.procs {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            let ok = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            if fd >= 0 {
                libc::close(fd);
            }
            if !ok {
                let msg = b"umbra exec: cannot enter the reserved cgroup\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(126);
            }
        }
        libc::execve(p.path.as_ptr(), p.argv.as_ptr(), environ);
        let msg = b"umbra exec: cannot execute the command\n";
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Starts `exe` with `args` (argv[0] first) at `target`; returns the child's pid.
pub fn spawn(
    target: &ExecTarget,
    exe: &Path,
    args: &[std::ffi::OsString],
) -> Result<u32, LaunchError> {
    match target {
        ExecTarget::Clone3 { dir } => {
            let p = prepare(exe, args, &[])?;
            let d = std::fs::File::open(dir).map_err(|source| LaunchError::Os {
                what: format!("open {}", dir.display()),
                source,
            })?;
            // SAFETY: clone_args is plain data; zero is a valid value for every field.
            let mut ca: libc::clone_args = unsafe { std::mem::zeroed() };
            ca.flags = CLONE_INTO_CGROUP;
            ca.exit_signal = libc::SIGCHLD as u64;
            ca.cgroup = d.as_raw_fd() as u64;
            // SAFETY: clone3 without CLONE_VM: the child is a copy of this process and
            // runs only `child`, which allocates nothing before exec.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &mut ca as *mut libc::clone_args,
                    std::mem::size_of::<libc::clone_args>(),
                )
            };
            match pid {
                0 => unsafe { child(&p) },
                p if p > 0 => Ok(p as u32),
                _ => Err(LaunchError::Os {
                    what: format!(
                        "clone3 into {} (needs Linux ≥ 5.7 and cgroup v2)",
                        dir.display()
                    ),
                    source: std::io::Error::last_os_error(),
                }),
            }
        }
        ExecTarget::WriteOwnPid { procs } => {
            let p = prepare(exe, args, procs)?;
            // SAFETY: the child runs only `child`, which allocates nothing before exec.
            match unsafe { libc::fork() } {
                0 => unsafe { child(&p) },
                pid if pid > 0 => Ok(pid as u32),
                _ => Err(LaunchError::Os {
                    what: "fork".into(),
                    source: std::io::Error::last_os_error(),
                }),
            }
        }
    }
}

/// Waits for `pid`; its status as a shell shows it.
pub fn wait(pid: u32) -> Result<i32, LaunchError> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if r == pid as i32 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(LaunchError::Os {
                what: format!("waiting for process {pid}"),
                source: e,
            });
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    })
}

/// The whole of `umbra exec`: reserve, start, wait. `stop` is polled while waiting: when
/// it returns true (a signal to `umbra exec`), the child gets SIGTERM.
pub fn launch(
    socket: &Path,
    workload: Option<&str>,
    cmd: &[std::ffi::OsString],
    stop: &dyn Fn() -> bool,
) -> Result<Launched, LaunchError> {
    let first = cmd
        .first()
        .ok_or_else(|| LaunchError::NotFound { cmd: String::new() })?;
    let exe = resolve(first)?;
    let t0 = Instant::now();
    let reply = reserve(socket, &exe, workload)?;
    let reserve_took = t0.elapsed();
    let target = reply.target.clone().ok_or_else(|| LaunchError::Protocol {
        path: socket.to_path_buf(),
        what: "no target in the reply".into(),
    })?;
    let t1 = Instant::now();
    let pid = spawn(&target, &exe, cmd)?;
    let spawn_took = t1.elapsed();
    // Wait on a thread, passing a stop on to the child.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait(pid));
    });
    let mut signalled = false;
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => break r?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if !signalled && stop() {
                    signalled = true;
                    // SAFETY: our own child, not yet reaped.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(LaunchError::Os {
                    what: format!("waiting for process {pid}"),
                    source: std::io::Error::other("the waiting thread ended"),
                });
            }
        }
    };
    Ok(Launched {
        reply,
        pid,
        status,
        reserve: reserve_took,
        spawn: spawn_took,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_resolve_like_execvp() {
        let sh = resolve(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute(), "{}", sh.display());
        assert!(matches!(
            resolve(OsStr::new("no-such-command-umbra")),
            Err(LaunchError::NotFound { .. })
        ));
    }

    #[test]
    fn without_an_agent_the_error_says_how_to_start_one() {
        let d = tempfile::tempdir().unwrap();
        let e = reserve(&d.path().join(SOCKET), Path::new("/bin/true"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exec.sock") && e.contains("umbra run --enforce"),
            "{e}"
        );
    }

    #[test]
    fn a_child_started_with_write_own_pid_runs_and_its_status_comes_back() {
        // No cgroup: an empty list of procs files is a plain fork + exec.
        let t = ExecTarget::WriteOwnPid { procs: Vec::new() };
        let sh = resolve(OsStr::new("sh")).unwrap();
        let pid = spawn(&t, &sh, &["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        assert_eq!(wait(pid).unwrap(), 7);
        // A procs file that cannot be written: the child says so and exits 126.
        let t = ExecTarget::WriteOwnPid {
            procs: vec!["/nonexistent/cgroup.procs".into()],
        };
        let pid = spawn(&t, &sh, &["sh".into()]).unwrap();
        assert_eq!(wait(pid).unwrap(), 126);
    }
}
