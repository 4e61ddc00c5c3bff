//! Running commands, finding the workspace, printing steps.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Puts cargo's bin directory (bpf-linker) on PATH for every child, and links static
/// aarch64 binaries with the `rust-lld` rustup ships and compiles their C with clang.
pub fn init_env() {
    // C code in dependencies (ring, under rustls) for the static musl builds: Debian's
    // clang 22 cross-compiles it (installed for bpf-linker anyway); no cross gcc needed.
    for (var, value) in [
        ("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld"),
        ("CC_aarch64_unknown_linux_musl", "clang-22"),
        ("AR_aarch64_unknown_linux_musl", "llvm-ar-22"),
        ("CC_x86_64_unknown_linux_musl", "clang-22"),
        ("AR_x86_64_unknown_linux_musl", "llvm-ar-22"),
    ] {
        if env::var_os(var).is_none() {
            // SAFETY: single-threaded at this point (called first thing in main).
            unsafe { env::set_var(var, value) };
        }
    }
    let bin = cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
    if !paths.contains(&bin) {
        paths.insert(0, bin);
        if let Ok(p) = env::join_paths(paths) {
            // SAFETY: single-threaded at this point (called first thing in main).
            unsafe { env::set_var("PATH", p) };
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a step's heading with the time since the first one (where `cargo xtask test`
/// spends its minutes).
pub fn step(what: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let t = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    eprintln!("\n==> [{:02}:{:02}] {what}", t / 60, t % 60);
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or `None` if it cannot start or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new("cargo").args(args).current_dir(root()))
}

/// `cargo args` with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

pub fn cargo_in(dir: &str, args: &[&str]) -> Result<()> {
    run(Command::new("cargo")
        .args(args)
        .current_dir(root().join(dir)))
}

/// Runs `bin args` as root (through sudo when not root already).
pub fn run_as_root(bin: &Path, args: &[String]) -> Result<()> {
    if is_root() {
        run(Command::new(bin).args(args))
    } else {
        run(Command::new("sudo").arg("-E").arg(bin).args(args))
    }
}

/// A mosquitto on 127.0.0.1:1883 for `cargo xtask run`, unless something listens there
/// already (a broker the device runs). Stopped when the guard drops.
pub struct LocalBroker(std::process::Child);

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn local_broker() -> Result<Option<LocalBroker>> {
    if std::net::TcpStream::connect(("127.0.0.1", 1883)).is_ok() {
        return Ok(None);
    }
    let conf = target_dir().join("mosquitto-local.conf");
    std::fs::create_dir_all(target_dir())?;
    std::fs::write(
        &conf,
        "# Written by `cargo xtask run`: a broker on loopback only.\nuser root\nlistener 1883 127.0.0.1\nallow_anonymous true\n",
    )?;
    step("mosquitto on 127.0.0.1:1883 (no broker given)");
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .spawn()
        .context("cannot start mosquitto")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", 1883)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(Some(LocalBroker(child)))
}
