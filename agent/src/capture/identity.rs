//! Stable identities for grouping processes into workloads: a SHA-256 fingerprint of a
//! process's executable (the same binary has the same key on every node and after restarts),
//! of the script an interpreter runs (or the module it names), and the
//! path of its cgroup v2 directory. Both are cached, so the cost is one read of each
//! executable file and one walk of the cgroup tree per new cgroup.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use sha2::{Digest, Sha256};

use super::{
    interp::{self, Interpreter, Target},
    types::{AppKey, Argv, InputFile},
};
use crate::FastMap;

/// Executables hashed and cgroups remembered before the caches are cleared.
const CACHE_LIMIT: usize = 4096;

#[derive(Default)]
pub struct Identity {
    /// (dev, inode, size, mtime) → "sha256:<hex>".
    hashes: HashMap<(u64, u64, u64, i64), String>,
    /// cgroup id (inode of its cgroup2 directory) → path below the cgroup2 root.
    cgroups: FastMap<u64, Arc<str>>,
    cgroup_root: Option<PathBuf>,
    /// The cgroup tree is walked at most once per tick.
    walked_this_tick: bool,
}

impl Identity {
    pub fn new() -> Self {
        Identity {
            cgroup_root: cgroup2_root(),
            ..Default::default()
        }
    }

    pub fn new_tick(&mut self) {
        self.walked_this_tick = false;
    }

    /// Hash of the executable of `tgid` (through `/proc/<tgid>/exe`, which works even when
    /// the file was replaced), or of `path` when the process is gone.
    pub fn exe_hash(&mut self, tgid: u32, path: Option<&str>) -> Option<String> {
        let file = File::open(format!("/proc/{tgid}/exe"))
            .ok()
            .or_else(|| path.and_then(|p| File::open(p).ok()))?;
        self.file_hash(file)
    }

    /// The workload key of what an interpreter runs: `exe` is its executable, `argv` its
    /// arguments, `view` the process's paths. `None` when `exe` is no known interpreter,
    /// it runs no named program, or the program is no file — a pipe or a terminal
    /// (`bash <(curl …)`, `python3 /dev/stdin`): nothing names it but its interpreter.
    pub fn app_key(&mut self, exe: &[u8], argv: &Argv, view: &ProcView) -> Option<AppKey> {
        let args: Vec<&[u8]> = argv.args().take(MAX_ARGS).collect();
        let interp = Interpreter::of(exe, args.first().copied().unwrap_or(b""))?;
        match interp::target(interp, args.get(1..).unwrap_or(&[]))? {
            Target::Module(m) => Some(AppKey {
                key: bounded(format!(
                    "module:{}:{}",
                    interp.name(),
                    String::from_utf8_lossy(m)
                )),
                name: bounded(String::from_utf8_lossy(m).into_owned()),
            }),
            Target::Script(path) => {
                let (full, descriptor) = view.resolve(path);
                // Looked at before it is opened: opening a FIFO would wait for a writer.
                match std::fs::metadata(&full) {
                    Ok(m) if !m.is_file() => return None,
                    Err(_) if descriptor => return None,
                    _ => {}
                }
                let file = File::options()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&full)
                    .ok();
                // A descriptor is named after the file it holds open.
                let name = match descriptor {
                    true => std::fs::read_link(&full).ok().map(|t| {
                        let t = t.as_os_str().as_bytes();
                        interp::basename(t.strip_suffix(b" (deleted)").unwrap_or(t)).to_vec()
                    })?,
                    false => interp::basename(path).to_vec(),
                };
                let key = match file.and_then(|f| self.file_hash(f)) {
                    Some(h) => format!("script:{h}"),
                    None if descriptor => return None,
                    // Unreadable: its path stands in, absolute where the cwd is known.
                    None => format!("script:path:{}", view.shown(path).to_string_lossy()),
                };
                Some(AppKey {
                    key: bounded(key),
                    name: bounded(String::from_utf8_lossy(&name).into_owned()),
                })
            }
        }
    }

    /// Fingerprint of an open regular file, cached by (device, inode, size, mtime).
    fn file_hash(&mut self, file: File) -> Option<String> {
        let m = file.metadata().ok()?;
        if !m.is_file() {
            return None;
        }
        let key = (m.dev(), m.ino(), m.size(), m.mtime());
        if let Some(h) = self.hashes.get(&key) {
            return Some(h.clone());
        }
        let h = sha256(file)?;
        if self.hashes.len() >= CACHE_LIMIT {
            self.hashes.clear();
        }
        self.hashes.insert(key, h.clone());
        Some(h)
    }

    /// [`cgroup_path`](Self::cgroup_path) of a cgroup known already.
    pub fn known_cgroup_path(&self, id: u64) -> Option<&Arc<str>> {
        self.cgroups.get(&id)
    }

    /// Path of cgroup `id` below the cgroup2 root ("/" for the root itself).
    pub fn cgroup_path(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(p) = self.cgroups.get(&id) {
            return Some(p.clone());
        }
        if self.walked_this_tick {
            return None;
        }
        self.walked_this_tick = true;
        let root = self.cgroup_root.clone()?;
        if self.cgroups.len() >= CACHE_LIMIT {
            self.cgroups.clear();
        }
        walk(&root, &root, &mut self.cgroups, 0);
        self.cgroups.get(&id).cloned()
    }
}

/// Arguments looked at, at most (for the program and for input files).
const MAX_ARGS: usize = 64;
/// Input files recorded per exec, at most.
pub const MAX_INPUTS: usize = 8;
/// Longest workload key or name made from arguments, bytes.
const MAX_KEY: usize = 256;

/// `s` cut to [`MAX_KEY`] bytes at a character boundary.
fn bounded(mut s: String) -> String {
    if s.len() > MAX_KEY {
        let mut end = MAX_KEY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The paths a process names, as the agent opens them (`/proc/<pid>`): an absolute path
/// below the process's root — its mount namespace and chroot, a container's files and not
/// the host's — a relative one below its working directory, and `/dev/stdin`,
/// `/dev/fd/N`, `/proc/self/fd/N` as its own descriptors: opened by the agent, they would
/// be the agent's. Once the process is gone (its root unreadable), an absolute path is
/// taken as the agent sees it — right for a process of the host, the best guess for a
/// container's — and relative ones and descriptors resolve to nothing.
pub struct ProcView {
    dir: PathBuf,
    /// Whether its root is readable, looked at once, when an absolute path needs it.
    alive: std::cell::OnceCell<bool>,
}

impl ProcView {
    /// Process `tgid`'s view.
    pub fn of(tgid: u32) -> ProcView {
        ProcView::at(PathBuf::from(format!("/proc/{tgid}")))
    }

    /// The view of the process whose `/proc` directory is `dir`.
    pub fn at(dir: PathBuf) -> ProcView {
        ProcView {
            dir,
            alive: std::cell::OnceCell::new(),
        }
    }

    fn alive(&self) -> bool {
        *self
            .alive
            .get_or_init(|| std::fs::read_link(self.dir.join("root")).is_ok())
    }

    /// Where `path` is for the agent, and whether it names one of the process's
    /// descriptors.
    pub fn resolve(&self, path: &[u8]) -> (PathBuf, bool) {
        if let Some(fd) = descriptor(path) {
            return (self.dir.join("fd").join(fd.to_string()), true);
        }
        let p = Path::new(OsStr::from_bytes(path));
        let full = match p.strip_prefix("/") {
            Ok(below) if self.alive() => self.dir.join("root").join(below),
            Ok(_) => p.to_path_buf(),
            Err(_) => self.dir.join("cwd").join(p),
        };
        (full, false)
    }

    /// `path` as the process named it, absolute where its working directory is known.
    fn shown(&self, path: &[u8]) -> PathBuf {
        let p = Path::new(OsStr::from_bytes(path));
        match std::fs::read_link(self.dir.join("cwd")) {
            Ok(cwd) if p.is_relative() => cwd.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// The descriptor a path names in any process: `/dev/stdin` (and stdout, stderr),
/// `/dev/fd/N`, `/proc/self/fd/N`, `/proc/thread-self/fd/N`.
fn descriptor(path: &[u8]) -> Option<u32> {
    match path {
        b"/dev/stdin" => return Some(0),
        b"/dev/stdout" => return Some(1),
        b"/dev/stderr" => return Some(2),
        _ => {}
    }
    let n = [
        &b"/dev/fd/"[..],
        b"/proc/self/fd/",
        b"/proc/thread-self/fd/",
    ]
    .iter()
    .find_map(|pre| path.strip_prefix(*pre))?;
    if n.is_empty() || n.len() > 9 || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// Arguments of an exec that name existing regular files (as the process sees them:
/// [`ProcView`]), with their sizes: the argument itself, or the value of a `--name=value`
/// option. Costs a `stat` per argument that could be a path (at most [`MAX_ARGS`]); at
/// most [`MAX_INPUTS`] are kept.
pub fn input_files(argv: &Argv, view: &ProcView) -> Vec<InputFile> {
    let mut out = Vec::new();
    for (i, a) in argv.args().enumerate().take(MAX_ARGS).skip(1) {
        if out.len() >= MAX_INPUTS {
            break;
        }
        let cand = match a.strip_prefix(b"-") {
            Some(opt) => match opt.iter().position(|&c| c == b'=') {
                Some(eq) => &opt[eq + 1..],
                None => continue,
            },
            None => a,
        };
        if cand.is_empty() || cand.len() > 4096 || cand.contains(&0) {
            continue;
        }
        if let Ok(m) = std::fs::metadata(view.resolve(cand).0)
            && m.is_file()
        {
            out.push(InputFile {
                arg: i as u16,
                size: m.len(),
            });
        }
    }
    out
}

/// Bytes read from each end of an executable for its fingerprint.
const EDGE: u64 = 1 << 20;

/// Cgroups whose pressure is read each tick, at most.
const MAX_PRESSURE_CGROUPS: usize = 256;

impl Identity {
    /// PSI of each cgroup in `paths` (below the cgroup2 root); cgroups without pressure
    /// files (kernel without PSI) are left out.
    pub fn pressure<'a>(&self, paths: impl Iterator<Item = &'a str>) -> Vec<super::CgroupPressure> {
        let Some(root) = &self.cgroup_root else {
            return Vec::new();
        };
        let mut out: Vec<super::CgroupPressure> = Vec::new();
        // Each cgroup once, whether or not it has pressure files (most samples share a few
        // cgroups).
        let mut tried: FastMap<&str, ()> = FastMap::default();
        for path in paths {
            if out.len() >= MAX_PRESSURE_CGROUPS || tried.insert(path, ()).is_some() {
                continue;
            }
            let dir = root.join(path.trim_start_matches('/'));
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .ok()
                    .and_then(|t| some_avg10(&t))
            };
            let p = super::CgroupPressure {
                cgroup: path.to_string(),
                cpu: read("cpu.pressure"),
                memory: read("memory.pressure"),
                io: read("io.pressure"),
            };
            if p.cpu.is_some() || p.memory.is_some() || p.io.is_some() {
                out.push(p);
            }
        }
        out
    }
}

/// `avg10` of the `some` line of a pressure file.
pub fn some_avg10(text: &str) -> Option<f32> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// SHA-256 of the file's size, its first MiB and its last MiB: a content fingerprint
/// that costs at most 2 MiB of reading however large the binary (a whole-file hash of a
/// 100 MB binary would stall the capture loop), and still differs between builds.
fn sha256(mut f: File) -> Option<String> {
    let size = f.metadata().ok()?.len();
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; EDGE as usize];
    let n = read_up_to(&mut f, &mut buf)?;
    h.update(&buf[..n]);
    if size > EDGE {
        f.seek(SeekFrom::Start(size.saturating_sub(EDGE).max(EDGE)))
            .ok()?;
        let n = read_up_to(&mut f, &mut buf)?;
        h.update(&buf[..n]);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    Some(s)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).ok()? {
            0 => break,
            m => n += m,
        }
    }
    Some(n)
}

fn walk(root: &Path, dir: &Path, out: &mut FastMap<u64, Arc<str>>, depth: usize) {
    if depth > 16 {
        return;
    }
    if let Ok(m) = std::fs::metadata(dir) {
        let rel = dir
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.insert(m.ino(), format!("/{rel}").into());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &e.path(), out, depth + 1);
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;
    use crate::capture::ArgvSource;

    fn argv(args: &[&str]) -> Argv {
        let raw: Vec<u8> = args
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect();
        Argv::from_raw(&raw, raw.len() as u32, ArgvSource::Kernel)
    }

    fn script_key(f: &Path) -> String {
        format!("script:{}", sha256(File::open(f).unwrap()).unwrap())
    }

    #[test]
    fn descriptor_paths_name_a_descriptor_of_the_process() {
        for (p, fd) in [
            ("/dev/stdin", Some(0)),
            ("/dev/stderr", Some(2)),
            ("/dev/fd/3", Some(3)),
            ("/proc/self/fd/12", Some(12)),
            ("/proc/thread-self/fd/0", Some(0)),
            ("/dev/fd/", None),
            ("/dev/fd/3x", None),
            ("/dev/fdx/3", None),
            ("/dev/fd/99999999999", None),
            ("dev/fd/3", None),
            ("/proc/1/fd/3", None),
            ("/tmp/job.sh", None),
        ] {
            assert_eq!(descriptor(p.as_bytes()), fd, "{p}");
        }
    }

    /// A process in a container: its root and working directory are not the agent's.
    #[test]
    fn a_processs_paths_are_found_below_its_root_and_working_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::create_dir_all(root.join("work")).unwrap();
        std::fs::write(root.join("app/job.sh"), "echo job\n").unwrap();
        std::fs::write(root.join("work/rel.sh"), "echo relative\n").unwrap();
        let proc = d.path().join("proc");
        std::fs::create_dir(&proc).unwrap();
        std::os::unix::fs::symlink(&root, proc.join("root")).unwrap();
        std::os::unix::fs::symlink(root.join("work"), proc.join("cwd")).unwrap();
        let view = ProcView::at(proc);
        let mut id = Identity::new();

        let k = id
            .app_key(b"/bin/sh", &argv(&["sh", "/app/job.sh"]), &view)
            .unwrap();
        assert_eq!(k.key, script_key(&root.join("app/job.sh")));
        assert_eq!(k.name, "job.sh");
        let k = id
            .app_key(b"/bin/sh", &argv(&["sh", "rel.sh"]), &view)
            .unwrap();
        assert_eq!(k.key, script_key(&root.join("work/rel.sh")));
        let k = id
            .app_key(b"/bin/sh", &argv(&["sh", "/app/gone.sh"]), &view)
            .unwrap();
        assert_eq!(k.key, "script:path:/app/gone.sh");

        let inputs = input_files(
            &argv(&["gzip", "/app/job.sh", "rel.sh", "/etc/hostname"]),
            &view,
        );
        let sizes: Vec<(u16, u64)> = inputs.iter().map(|f| (f.arg, f.size)).collect();
        assert_eq!(sizes, [(1, 9), (2, 14)]);

        // A FIFO is no program, and is not opened: that would wait for a writer.
        let fifo = root.join("app/fifo.sh");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            id.app_key(b"/bin/sh", &argv(&["sh", "/app/fifo.sh"]), &view),
            None
        );
    }

    #[test]
    fn a_program_read_from_a_descriptor_is_its_file_or_else_its_interpreters() {
        let mut id = Identity::new();
        let scripts = [
            ["sh", "/dev/stdin"],
            ["bash", "/dev/fd/0"],
            ["sh", "/proc/self/fd/0"],
        ];
        // From a pipe: nothing names it but the shell.
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let view = ProcView::of(child.id());
        for a in scripts {
            assert_eq!(id.app_key(b"/bin/sh", &argv(&a), &view), None, "{a:?}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // From a file: the file, named after it.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("nightly.sh");
        std::fs::write(&f, "echo nightly\n").unwrap();
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(File::open(&f).unwrap())
            .spawn()
            .unwrap();
        let view = ProcView::of(child.id());
        for a in scripts {
            let k = id.app_key(b"/bin/sh", &argv(&a), &view).unwrap();
            assert_eq!(
                (k.key.as_str(), k.name.as_str()),
                (script_key(&f).as_str(), "nightly.sh")
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: nothing to read.
        assert_eq!(id.app_key(b"/bin/sh", &argv(&scripts[0]), &view), None);
    }

    #[test]
    fn the_same_file_has_the_same_hash_and_it_is_cached() {
        let mut id = Identity::new();
        let me = std::process::id();
        let a = id.exe_hash(me, None).expect("own executable");
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let b = id.exe_hash(u32::MAX, exe.to_str()).expect("by path");
        assert_eq!(a, b);
        assert_eq!(id.hashes.len(), 1);
    }

    #[test]
    fn pressure_lines_parse() {
        let t = "some avg10=4.81 avg60=1.12 avg300=12.90 total=1157292229\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_avg10(t), Some(4.81));
        assert_eq!(some_avg10("garbage"), None);
    }

    #[test]
    fn the_cgroup_root_has_path_slash() {
        let mut id = Identity::new();
        let Some(root) = id.cgroup_root.clone() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let ino = std::fs::metadata(&root).expect("root").ino();
        assert_eq!(id.cgroup_path(ino).as_deref(), Some("/"));
    }
}
