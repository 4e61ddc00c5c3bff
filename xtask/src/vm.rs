//! `cargo xtask vm-test`: the privileged tests on other kernels and on arm64, in QEMU.
//!
//! One test source, many kernels. For each kernel:
//! 1. the Debian `linux-image-*` package is fetched with `apt-get download` through an
//!    isolated apt configuration (`target/vm/apt/<suite>-<arch>/`: its own sources, lists
//!    and cache, no dpkg status), and extracted with `dpkg-deb -x` into
//!    `target/vm/kernels/<package>/`; nothing touches the host's kernel or apt state, and
//!    a cached run fetches nothing;
//! 2. the agent and the privileged test binaries are built as static musl binaries and
//!    packed with busybox, the virtio disk's modules and `vm-init.sh` into an initramfs;
//! 3. the kernel boots under TCG (`-accel tcg,thread=single`: multi-threaded TCG hung in
//!    RCU stalls, see TOOLCHAIN.md) with a fresh ext4 virtio disk for block I/O, inside an
//!    outer timeout;
//! 4. the console is parsed: `/init` prints one marker line per test (`UMBRA-VM-START`,
//!    `UMBRA-VM-END <rc>`) and `UMBRA-VM-DONE` before it powers off. A failed test, a
//!    hang, a panic or a missing marker fails the run, naming the kernel and the test and
//!    printing the console's tail.
//!
//! `UMBRA_VM_BREAK=panic|hang|no-marker` breaks the guest on purpose (every test panics;
//! the first test never finishes; `/init` exits before the tests, so the kernel panics),
//! to see those reports.
//! `UMBRA_VM_QEMU_ARGS` adds QEMU arguments (for experiments).

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{install, util};

/// The guest's `/init`.
const INIT: &str = include_str!("vm-init.sh");
/// Host packages: QEMU for both architectures, busybox for x86_64 guests (and `depmod`
/// for the kernels' module trees), cpio for the initramfs, mkfs.ext4 for the disk.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "cpio",
    "e2fsprogs",
    "xz-utils",
    "zstd",
];
/// The guest's disk (sparse): block I/O tests write up to 64 MiB at a time.
const DISK_BYTES: u64 = 1 << 30;
/// Guest memory: the RSS test touches 256 MiB; the initramfs lives in RAM too.
const GUEST_MIB: u32 = 1536;
/// Lines of console shown with a failure.
const TAIL: usize = 40;
/// The accuracy tests that `cargo xtask test` runs again on the per-event hooks (the path
/// of kernels without the task iterator) in the x86_64 guests, after every test on the
/// default path (the iterator; the host runs all of them on both paths). The shadow test's
/// comparison with `/proc/stat` runs on the hooks in the guests either way (see it).
pub const FALLBACK_ACCURACY: &[&str] = &[
    "cpu_time_of_a_spinner_matches_schedstat",
    "run_queue_wait_matches_schedstat",
    "pinned_spinners_wait_in_the_run_queue",
    "rss_of_touched_memory_matches_vmrss",
    "syscall_io_bytes_are_exact",
    "threads_spinning_on_every_cpu_add_up",
    "an_ended_threads_cpu_stays_with_its_process",
    "a_thread_that_never_switches_out_is_counted_every_interval",
    "a_pid_reused_while_the_maps_are_read_is_counted_once",
    "a_reused_pid_never_merges_two_processes",
    "exec_from_a_non_leader_thread_is_one_process",
    "block_io_of_",
];
/// The arm64 smoke tests in `cargo xtask test`: programs load and attach, an exec is seen,
/// a spinner's CPU time is counted, cgroup v2 works.
pub const ARM64_SMOKE: &[&str] = &[
    "cpu_time_of_a_spinner_matches_schedstat",
    "a_thousand_execs_all_arrive_without_drops",
    "trace_exec_json_shows_a_true_run",
    "a_group_under_the_agent_subtree",
];
/// Modules the virtio disk needs, where the kernel builds them as modules.
const DISK_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name of the architecture.
    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The QEMU command line up to the kernel: TCG, one host thread (see the module docs).
    fn qemu(self) -> Command {
        let mut c = match self {
            Arch::X86_64 => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-cpu", "max"]);
                c
            }
            Arch::Aarch64 => {
                let mut c = Command::new("qemu-system-aarch64");
                // Pointer authentication emulated the cheap way (QEMU's own algorithm).
                c.args(["-M", "virt", "-cpu", "max,pauth-impdef=on"]);
                c
            }
        };
        c.args(["-accel", "tcg,thread=single"])
            .args(["-m", &GUEST_MIB.to_string()])
            .args(["-nographic", "-no-reboot", "-nic", "none"]);
        c
    }

    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    fn default_kernels(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["5.10", "6.1", "6.12"],
            Arch::Aarch64 => &["6.12"],
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// A kernel: 5.10, 6.1 or 6.12 (Debian's newest cloud image of that line) or any Debian
    /// linux-image package name; repeatable. Default: 5.10, 6.1 and 6.12 (x86_64), 6.12 (aarch64).
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Guest architecture.
    #[arg(long, value_enum, default_value = "x86_64")]
    pub arch: Arch,
    /// Run only the tests whose name contains this; repeatable (any matches).
    #[arg(long = "filter")]
    pub filters: Vec<String>,
    /// Then run the tests whose name contains this again on the per-event hooks
    /// (`capture.counters = "hooks"`); repeatable.
    #[arg(long = "hooks-filter")]
    pub hooks: Vec<String>,
    /// Outer timeout per guest, seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Guest CPUs. One by default: with single-threaded TCG the vCPUs take turns of 100 ms
    /// and the waiting one loses its timer ticks, so /proc/stat undercounts busy time (the
    /// shadow test's comparison fails); tests that do not compare with /proc/stat run fine
    /// on 2.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Refresh the isolated apt lists first (otherwise they are fetched only when absent or
    /// when a download fails).
    #[arg(long)]
    pub refresh: bool,
}

impl Args {
    pub fn new(arch: Arch, filters: &[&str]) -> Args {
        Args {
            kernels: Vec::new(),
            arch,
            filters: filters.iter().map(|f| f.to_string()).collect(),
            hooks: Vec::new(),
            timeout: 900,
            smp: 1,
            refresh: false,
        }
    }
}

/// Installs QEMU and the rest. In `cargo xtask test` outside CI, a failure here (not
/// root, no network) skips the VM tests with the reason; under CI it fails them.
pub fn install() -> Result<()> {
    install::apt_with(PACKAGES, &["--no-install-recommends"])
}

/// The kernels fetched and the guests' initramfs base built: what a run needs.
pub struct Prepared {
    kernels: Vec<Kernel>,
    base: PathBuf,
    took: Duration,
}

pub fn run(args: &Args) -> Result<()> {
    let p = prepare(args)?;
    run_prepared(args, p)
}

/// Fetches the kernels and builds the static binaries (under `nice`: it can run beside
/// the guests of another architecture without taking their CPU).
pub fn prepare(args: &Args) -> Result<Prepared> {
    let started = Instant::now();
    install()?;
    let vm = util::target_dir().join("vm");
    let names: Vec<String> = if args.kernels.is_empty() {
        args.arch
            .default_kernels()
            .iter()
            .map(|k| k.to_string())
            .collect()
    } else {
        args.kernels.clone()
    };
    util::step(&format!(
        "vm-test: kernels {} ({})",
        names.join(", "),
        args.arch.name()
    ));
    let kernels = names
        .iter()
        .map(|n| Kernel::fetch(&vm, n, args.arch, args.refresh))
        .collect::<Result<Vec<_>>>()?;
    let busybox = busybox(&vm, args.arch, args.refresh)?;
    util::step(&format!("vm-test: build (static, {})", args.arch.name()));
    let bins = build(args.arch)?;
    let base = vm.join(format!("base-{}.cpio", args.arch.name()));
    pack_base(&bins, &busybox, &base)?;
    Ok(Prepared {
        kernels,
        base,
        took: started.elapsed(),
    })
}

/// Boots each prepared kernel and runs the tests in it.
pub fn run_prepared(args: &Args, p: Prepared) -> Result<()> {
    let Prepared {
        kernels,
        base,
        took: prepared,
    } = p;
    let vm = util::target_dir().join("vm");

    let mut summaries = Vec::new();
    let mut facts = Vec::new();
    let mut failures = Vec::new();
    for k in &kernels {
        util::step(&format!("vm-test: {} ({})", k.package, args.arch.name()));
        let v = k.test(&vm, &base, args)?;
        println!("{}\n  {}", v.summary, v.facts);
        summaries.push(v.summary);
        facts.push(v.facts);
        failures.extend(v.failure);
    }
    util::step(&format!(
        "vm-test summary ({}; fetch and build {:.0} s)",
        args.arch.name(),
        prepared.as_secs_f64()
    ));
    for s in &summaries {
        println!("{s}");
    }
    for f in &facts {
        println!("  {f}");
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("\n{f}");
        }
        bail!(
            "vm-test failed on {} of {} kernel(s) ({})",
            failures.len(),
            kernels.len(),
            args.arch.name()
        );
    }
    Ok(())
}

/// A Debian suite, with the sources the isolated apt configuration reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    Bookworm,
    Bullseye,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Bullseye => "bullseye",
        }
    }
}

/// apt-get and apt-cache on a private state directory: own sources, lists and cache, an
/// empty dpkg status, no host configuration parts.
struct Apt {
    dir: PathBuf,
    suite: Suite,
    arch: Arch,
}

impl Apt {
    fn new(vm: &Path, suite: Suite, arch: Arch) -> Apt {
        let dir = vm
            .join("apt")
            .join(format!("{}-{}", suite.name(), arch.debian()));
        Apt { dir, suite, arch }
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let a = self.arch.debian();
        [
            format!("APT::Architecture={a}"),
            format!("APT::Architectures::={a}"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            "Dir::State::status=/dev/null".into(),
            format!("Dir::Etc::SourceList={d}/sources.list"),
            format!("Dir::Etc::SourceParts={d}/sources.list.d"),
            format!("Dir::Etc::Preferences={d}/preferences"),
            format!("Dir::Etc::PreferencesParts={d}/preferences.d"),
            // Downloads land in our own directories: no need for the _apt sandbox user.
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options());
        c
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// Writes the configuration and fetches the package lists when absent (or asked).
    fn lists(&self, refresh: bool) -> Result<()> {
        if self.has_lists() && !refresh {
            return Ok(());
        }
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(self.dir.join(d))?;
        }
        let s = self.suite.name();
        let key = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg";
        fs::write(
            self.dir.join("sources.list"),
            format!(
                "deb [{key}] http://deb.debian.org/debian {s} main\n\
                 deb [{key}] http://deb.debian.org/debian-security {s}-security main\n"
            ),
        )?;
        util::step(&format!(
            "apt-get update ({s}, {}, isolated in {})",
            self.arch.debian(),
            self.dir.display()
        ));
        util::run(self.cmd("apt-get").args(["update", "-qq"]))
    }

    /// Package names starting with `prefix`.
    fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self
            .cmd("apt-cache")
            .args(["pkgnames", prefix])
            .output()
            .context("apt-cache pkgnames")?;
        if !out.status.success() {
            bail!(
                "apt-cache pkgnames {prefix} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Downloads `pkg` into `dir`; returns the `.deb`.
    fn download(&self, pkg: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        util::run(
            self.cmd("apt-get")
                .args(["download", "-qq", pkg])
                .current_dir(dir),
        )?;
        let prefix = format!("{pkg}_");
        fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))
    }
}

/// Kernel lines by their short name: suite and the package name around the ABI number.
fn alias(name: &str, arch: Arch) -> Option<(Suite, String, String)> {
    let a = arch.debian();
    match name {
        "5.10" => Some((
            Suite::Bullseye,
            "linux-image-5.10.0-".into(),
            format!("-cloud-{a}-unsigned"),
        )),
        "6.1" => Some((
            Suite::Bookworm,
            "linux-image-6.1.0-".into(),
            format!("-cloud-{a}-unsigned"),
        )),
        "6.12" => Some((
            Suite::Bookworm,
            "linux-image-6.12.".into(),
            format!("+deb12-cloud-{a}-unsigned"),
        )),
        _ => None,
    }
}

/// The names `prefix<number>suffix`, newest (highest number) first.
fn newest_first(names: &[String], prefix: &str, suffix: &str) -> Vec<String> {
    let mut found: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| {
            let mid = n.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((mid.parse().ok()?, n))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, n)| n.clone()).collect()
}

/// A kernel package, extracted.
struct Kernel {
    package: String,
    arch: Arch,
    dir: PathBuf,
    vmlinuz: PathBuf,
    /// `uname -r` of the kernel (its modules directory).
    release: String,
}

impl Kernel {
    /// Resolves `name` (an alias or a package name) and fetches it unless cached.
    fn fetch(vm: &Path, name: &str, arch: Arch, refresh: bool) -> Result<Kernel> {
        let (candidates, apt) = if let Some((suite, prefix, suffix)) = alias(name, arch) {
            let apt = Apt::new(vm, suite, arch);
            apt.lists(refresh)?;
            let c = newest_first(&apt.names(&prefix)?, &prefix, &suffix);
            if c.is_empty() {
                bail!(
                    "no {prefix}N{suffix} package in Debian {} for {}",
                    suite.name(),
                    arch.debian()
                );
            }
            (c, apt)
        } else {
            if !name.starts_with("linux-image-") || !name.contains(arch.debian()) {
                bail!(
                    "kernel {name:?}: use 5.10, 6.1, 6.12 or a Debian linux-image-* package \
                     name for {} (e.g. linux-image-6.1.0-57-cloud-{}-unsigned)",
                    arch.debian(),
                    arch.debian()
                );
            }
            let mut found = None;
            for suite in [Suite::Bookworm, Suite::Bullseye] {
                let apt = Apt::new(vm, suite, arch);
                if Kernel::cached(vm, name, arch).is_some() {
                    found = Some(apt);
                    break;
                }
                apt.lists(refresh)?;
                if apt.names(name)?.iter().any(|n| n == name) {
                    found = Some(apt);
                    break;
                }
            }
            let apt = found.with_context(|| {
                format!("no package {name} in Debian bookworm or bullseye (see apt-cache search)")
            })?;
            (vec![name.to_string()], apt)
        };
        // The newest that is cached or downloads (the lists may name versions the mirror
        // no longer serves).
        let mut errors = Vec::new();
        for (i, pkg) in candidates.iter().take(8).enumerate() {
            if let Some(k) = Kernel::cached(vm, pkg, arch) {
                return Ok(k);
            }
            util::step(&format!("apt-get download {pkg}"));
            let debs = vm.join("debs");
            let mut got = apt.download(pkg, &debs);
            if got.is_err() && i == 0 && !refresh {
                // Stale lists: fetch them again once, then retry.
                apt.lists(true)?;
                got = apt.download(pkg, &debs);
            }
            match got {
                Ok(deb) => return Kernel::extract(vm, pkg, arch, &deb),
                Err(e) => {
                    eprintln!("note: {pkg} could not be downloaded; trying an older {name}");
                    errors.push(format!("{pkg}: {e:#}"));
                }
            }
        }
        bail!("cannot fetch kernel {name}:\n  {}", errors.join("\n  "))
    }

    fn cached(vm: &Path, package: &str, arch: Arch) -> Option<Kernel> {
        let dir = vm.join("kernels").join(package);
        let vmlinuz = fs::read_dir(dir.join("boot"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })?;
        let release = vmlinuz
            .file_name()?
            .to_str()?
            .strip_prefix("vmlinuz-")?
            .to_string();
        dir.join("lib/modules")
            .join(&release)
            .join("modules.dep")
            .exists()
            .then(|| Kernel {
                package: package.to_string(),
                arch,
                dir,
                vmlinuz,
                release,
            })
    }

    /// `dpkg-deb -x` into a temporary directory, the module index (busybox depmod on the
    /// extracted tree), then renamed into place: the cache never holds half a kernel.
    fn extract(vm: &Path, package: &str, arch: Arch, deb: &Path) -> Result<Kernel> {
        let kernels = vm.join("kernels");
        let tmp = kernels.join(format!(".{package}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
        let modules = tmp.join("lib/modules");
        let release = fs::read_dir(&modules)
            .with_context(|| format!("{} has no lib/modules", deb.display()))?
            .flatten()
            .next()
            .with_context(|| format!("{} has no modules directory", deb.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        util::run(
            Command::new("busybox")
                .args(["depmod", "-b"])
                .arg(&tmp)
                .arg(&release),
        )?;
        let dir = kernels.join(package);
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
        fs::remove_file(deb)?;
        Kernel::cached(vm, package, arch)
            .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))
    }

    /// The modules (files, dependencies first) that `names` need on this kernel; none
    /// where they are built in.
    fn modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let root = self.dir.join("lib/modules").join(&self.release);
        let dep = fs::read_to_string(root.join("modules.dep"))?;
        let graph = module_graph(&dep);
        let mut order = Vec::new();
        for n in names {
            visit(&graph, n, &mut order);
        }
        Ok(order
            .into_iter()
            .filter_map(|n| graph.iter().find(|(m, ..)| *m == n))
            .map(|(_, path, _)| root.join(path))
            .collect())
    }

    /// Boots the kernel with the tests and judges the console.
    fn test(&self, vm: &Path, base: &Path, args: &Args) -> Result<Verdict> {
        let name = self.package.trim_start_matches("linux-image-");
        let work = vm.join("run").join(name);
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        // The kernel's part of the initramfs: its disk modules and /vm.env.
        let extra = work.join("root");
        fs::create_dir_all(extra.join("modules"))?;
        for (i, m) in self.modules(DISK_MODULES)?.iter().enumerate() {
            let stem = m
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split(".ko").next())
                .unwrap_or("module");
            decompress(m, &extra.join(format!("modules/{i:02}-{stem}.ko")))?;
        }
        let brk = std::env::var("UMBRA_VM_BREAK").unwrap_or_default();
        // The tests' counter path (`UMBRA_CAPTURE_COUNTERS`), passed on when set.
        let counters = std::env::var("UMBRA_CAPTURE_COUNTERS").unwrap_or_default();
        fs::write(
            extra.join("vm.env"),
            format!(
                "FILTERS='{}'\nHOOKS='{}'\nBREAK='{brk}'\nCOUNTERS='{counters}'\nPACKAGE='{}'\n",
                args.filters.join(" "),
                args.hooks.join(" "),
                self.package
            ),
        )?;
        let initrd = work.join("initrd.cpio");
        fs::copy(base, &initrd)?;
        append_cpio(&extra, &initrd)?;
        let disk = work.join("disk.img");
        fs::File::create(&disk)?.set_len(DISK_BYTES)?;
        util::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk))?;

        let mut qemu = self.arch.qemu();
        qemu.args(["-smp", &args.smp.to_string()])
            .arg("-kernel")
            .arg(&self.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console={} panic=-1 quiet", self.arch.console()))
            .args([
                "-drive",
                &format!("file={},format=raw,if=none,id=d0", disk.display()),
                "-device",
                "virtio-blk-pci,drive=d0",
            ]);
        if let Ok(extra) = std::env::var("UMBRA_VM_QEMU_ARGS") {
            qemu.args(extra.split_whitespace());
        }
        let log = work.join("console.log");
        let console = boot(qemu, Duration::from_secs(args.timeout), &log, name)?;
        let report = parse(&console.lines);
        let _ = fs::remove_file(&disk);
        let _ = fs::remove_file(&initrd);
        Ok(self.judge(&console, &report, &log))
    }

    fn judge(&self, console: &Console, report: &Report, log: &Path) -> Verdict {
        let count = |o: Outcome| report.tests.iter().filter(|t| t.outcome == o).count();
        let (passed, failed, skipped) = (
            count(Outcome::Passed),
            count(Outcome::Failed),
            count(Outcome::Skipped),
        );
        let release = report.kernel.as_deref().unwrap_or(&self.release);
        let boot = report.booted_at.unwrap_or(console.total);
        let tests = report.done_at.unwrap_or(console.total) - boot;
        let complete = report.done_at.is_some();
        let summary = format!(
            "vm-test {release} {}: {passed} passed, {failed} failed, {skipped} skipped{}; \
             boot {boot:.1} s, tests {tests:.1} s, total {:.1} s",
            self.arch.name(),
            if complete { "" } else { ", INCOMPLETE" },
            console.total
        );
        let facts = format!("{release}: {}", report.facts());
        if failed == 0 && complete && report.list_failures.is_empty() && !report.tests.is_empty() {
            return Verdict {
                summary,
                facts,
                failure: None,
            };
        }
        let mut f = format!(
            "==> vm-test FAILED on {} ({}):",
            self.package,
            self.arch.name()
        );
        for t in report.tests.iter().filter(|t| t.outcome == Outcome::Failed) {
            let _ = write!(
                f,
                "\n--- {}::{} failed; its output ends:\n",
                t.binary, t.name
            );
            for l in tail(&t.output, TAIL) {
                let _ = writeln!(f, "    {l}");
            }
        }
        for (bin, rc) in &report.list_failures {
            let _ = write!(
                f,
                "\n--- test binary {bin} could not list its tests (exit {rc})"
            );
        }
        if !complete {
            let panicked = console.lines.iter().any(|l| l.1.contains("Kernel panic"));
            let why = if console.timed_out {
                format!("timed out after {:.0} s", console.total)
            } else if panicked {
                "the guest kernel panicked".to_string()
            } else {
                format!("QEMU exited ({}) before the guest finished", console.status)
            };
            let at = match (&report.running, report.booted_at) {
                (Some((b, t)), _) => format!("while {b}::{t} was running"),
                (None, Some(_)) => "outside any test (in /init)".to_string(),
                (None, None) => "before /init started (kernel boot)".to_string(),
            };
            let _ = write!(f, "\n--- no UMBRA-VM-DONE marker: {why}, {at}");
        } else if report.tests.is_empty() {
            let _ = write!(f, "\n--- no test ran (filters matched nothing?)");
        }
        let _ = write!(
            f,
            "\n--- console tail ({}, full log {}):\n",
            self.release,
            log.display()
        );
        for l in tail(&console.lines, TAIL) {
            let _ = writeln!(f, "    {}", l.1);
        }
        Verdict {
            summary,
            facts,
            failure: Some(f),
        }
    }
}

/// A kernel's run, judged.
struct Verdict {
    /// One line: tests passed/failed/skipped, boot and test seconds.
    summary: String,
    /// What the kernel offered: cgroup v2 controllers, BTF, PSI, how each hook attached.
    facts: String,
    /// Names the kernel, the failed or unfinished test, and shows the console's tail.
    failure: Option<String>,
}

fn tail<T>(lines: &[T], n: usize) -> &[T] {
    &lines[lines.len().saturating_sub(n)..]
}

/// `modules.dep` as (name, path, dependency names).
fn module_graph(dep: &str) -> Vec<(String, String, Vec<String>)> {
    let name = |p: &str| {
        p.rsplit('/')
            .next()
            .and_then(|f| f.split(".ko").next())
            .unwrap_or(p)
            .replace('-', "_")
    };
    dep.lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            Some((
                name(path),
                path.trim().to_string(),
                deps.split_whitespace().map(name).collect(),
            ))
        })
        .collect()
}

/// Depth-first: dependencies before the module. Built-in modules (absent) are skipped.
fn visit(graph: &[(String, String, Vec<String>)], name: &str, order: &mut Vec<String>) {
    let Some((n, _, deps)) = graph.iter().find(|(m, ..)| m == name) else {
        return;
    };
    if order.contains(n) {
        return;
    }
    for d in deps {
        visit(graph, d, order);
    }
    order.push(n.clone());
}

/// Copies a module, decompressing `.ko.xz` / `.ko.zst` (busybox insmod wants plain ELF).
fn decompress(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    let Some(tool) = tool else {
        fs::copy(from, to)?;
        return Ok(());
    };
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(from)
        .output()
        .with_context(|| format!("{tool} -dc {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    fs::write(to, out.stdout)?;
    Ok(())
}

/// busybox for the guest: the host's static one, or Debian's arm64 busybox-static.
fn busybox(vm: &Path, arch: Arch, refresh: bool) -> Result<PathBuf> {
    if arch == Arch::host() {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    let dir = vm.join(format!("busybox-{}", arch.debian()));
    let bin = dir.join("bin/busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let apt = Apt::new(vm, Suite::Bookworm, arch);
    apt.lists(refresh)?;
    util::step(&format!(
        "apt-get download busybox-static ({})",
        arch.debian()
    ));
    let deb = apt.download("busybox-static", &vm.join("debs"))?;
    let tmp = vm.join(format!(".busybox-{}.partial", arch.debian()));
    let _ = fs::remove_dir_all(&tmp);
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    fs::remove_file(&deb)?;
    Ok(bin)
}

/// The static binaries a guest runs.
struct Binaries {
    umbra: PathBuf,
    workload: PathBuf,
    /// (test target name, executable) of the privileged tests.
    tests: Vec<(String, PathBuf)>,
}

/// Builds the agent, the workload and the privileged tests for `arch` (musl, static).
/// Builds with the `vm` profile (optimised, no LTO: debug code under TCG loads the
/// programs ~4× slower, thin LTO doubles the build).
fn build(arch: Arch) -> Result<Binaries> {
    let triple = install::musl_target(arch.name())?;
    let profile: &[&str] = &["--profile", "vm"];
    let log = util::target_dir()
        .join("vm")
        .join(format!("build-{}.log", arch.name()));
    let _ = fs::remove_file(&log);
    eprintln!("(cargo's output: {})", log.display());
    let mut artifacts = cargo_json(
        &[
            &[
                "build",
                "-p",
                "umbra",
                "--bin",
                "umbra",
                "-p",
                "umbra-tests",
                "--bin",
                "umbra-workload",
                "--no-default-features",
                "--target",
                &triple,
            ],
            profile,
        ]
        .concat(),
        &log,
    )?;
    // Only the privileged tests (tests/privileged/*.rs) run in the guests: build no other.
    let mut privileged: Vec<String> = fs::read_dir(util::root().join("tests/privileged"))?
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    privileged.sort();
    let mut args: Vec<&str> = vec![
        "test",
        "-p",
        "umbra-tests",
        "--no-run",
        "--no-default-features",
        "--target",
        &triple,
    ];
    for t in &privileged {
        args.extend(["--test", t]);
    }
    args.extend(profile);
    artifacts.extend(cargo_json(&args, &log)?);
    let exe = |kind: &str, name: &str| {
        artifacts
            .iter()
            .find(|a| a.kind == kind && a.name == name)
            .map(|a| a.executable.clone())
            .with_context(|| format!("cargo built no {kind} {name} for {triple}"))
    };
    let mut tests: Vec<(String, PathBuf)> = artifacts
        .iter()
        .filter(|a| a.kind == "test" && a.src_path.contains("/privileged/"))
        .map(|a| (a.name.clone(), a.executable.clone()))
        .collect();
    tests.sort();
    tests.dedup();
    if tests.is_empty() {
        bail!("cargo built no privileged test binaries for {triple}");
    }
    Ok(Binaries {
        umbra: exe("bin", "umbra")?,
        workload: exe("bin", "umbra-workload")?,
        tests,
    })
}

struct Artifact {
    kind: String,
    name: String,
    src_path: String,
    executable: PathBuf,
}

/// Runs cargo with JSON messages (diagnostics still rendered on stderr) and returns the
/// executables it built.
///
/// In a target directory of its own (`target/vm/cargo`: it runs beside the host's tests in
/// `cargo xtask test`, whose cargo holds the main one's lock), at nice 19, its messages appended
/// to `log` (shown when it fails).
fn cargo_json(args: &[&str], log: &Path) -> Result<Vec<Artifact>> {
    let target_dir = util::target_dir().join("vm").join("cargo");
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    // The lowest priority: the host's privileged tests beside it compare CPU time with
    // schedstat per interval, and a build that preempts their spinners widens the gaps.
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19", "cargo"])
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(util::root())
        .stdout(Stdio::piped())
        .stderr(file);
    let shown = format!("cargo {}", args.join(" "));
    let out = cmd
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?
        .wait_with_output()?;
    if !out.status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("{}", lines[lines.len().saturating_sub(80)..].join("\n"));
        bail!(
            "{shown} failed: {} (its whole output: {})",
            out.status,
            log.display()
        );
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let kind = v["target"]["kind"][0].as_str().unwrap_or_default();
        let kind = if v["profile"]["test"] == true && kind != "test" {
            "unit"
        } else {
            kind
        };
        found.push(Artifact {
            kind: kind.to_string(),
            name: v["target"]["name"].as_str().unwrap_or_default().to_string(),
            src_path: v["target"]["src_path"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            executable: PathBuf::from(exe),
        });
    }
    Ok(found)
}

/// The architecture's common initramfs: busybox, /init, the agent and the tests.
fn pack_base(bins: &Binaries, busybox: &Path, out: &Path) -> Result<()> {
    let root = out.with_extension("d");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "tests"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    strip(&bins.umbra, &root.join("bin/umbra"))?;
    strip(&bins.workload, &root.join("bin/umbra-workload"))?;
    for (name, exe) in &bins.tests {
        strip(exe, &root.join("tests").join(name))?;
    }
    fs::write(root.join("init"), INIT)?;
    chmod_x(&root.join("init"))?;
    let _ = fs::remove_file(out);
    append_cpio(&root, out)
}

/// Copies a binary without its debug info (the initramfs lives in the guest's RAM).
fn strip(from: &Path, to: &Path) -> Result<()> {
    let llvm_strip = Path::new("/usr/lib/llvm-22/bin/llvm-strip");
    if llvm_strip.exists() {
        util::run(
            Command::new(llvm_strip)
                .arg("--strip-debug")
                .arg(from)
                .arg("-o")
                .arg(to),
        )
    } else {
        fs::copy(from, to)?;
        Ok(())
    }
}

fn chmod_x(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Appends the tree `dir` to the (uncompressed, newc) cpio archive `out`: the kernel
/// unpacks concatenated archives in order.
fn append_cpio(dir: &Path, out: &Path) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    let mut find = Command::new("find")
        .arg(".")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("find")?;
    let list = find.stdout.take().context("find's output")?;
    let st = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(dir)
        .stdin(list)
        .stdout(file)
        .status()
        .context("cpio")?;
    find.wait()?;
    if !st.success() {
        bail!("cpio of {} failed: {st}", dir.display());
    }
    Ok(())
}

/// What a guest printed, with the time (s since QEMU started) each line arrived.
struct Console {
    lines: Vec<(f64, String)>,
    total: f64,
    timed_out: bool,
    status: String,
}

/// Runs QEMU until it exits or `timeout` passes, keeping the console (and writing it to
/// `log`); prints each test's result as it arrives.
fn boot(mut qemu: Command, timeout: Duration, log: &Path, label: &str) -> Result<Console> {
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start QEMU")?;
    let (tx, rx) = mpsc::channel::<(f64, String)>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = printable(&String::from_utf8_lossy(&buf));
                if tx.send((start.elapsed().as_secs_f64(), line)).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let mut file = fs::File::create(log)?;
    let mut lines = Vec::new();
    let deadline = start + timeout;
    let mut timed_out = false;
    let mut test_started = 0.0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, line)) => {
                let _ = writeln!(file, "[{t:8.2}] {line}");
                if let Some(m) = marker(&line) {
                    progress(label, m, t, &mut test_started);
                }
                lines.push((t, line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    Ok(Console {
        lines,
        total: start.elapsed().as_secs_f64(),
        timed_out,
        status: status.to_string(),
    })
}

/// A console line without terminal escapes (the firmware clears the screen) and control
/// characters.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // CSI: parameters up to a final byte in @..~; other escapes are two characters.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for p in chars.by_ref() {
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// One line of progress per finished test.
fn progress(label: &str, m: &str, t: f64, started: &mut f64) {
    let f: Vec<&str> = m.split_whitespace().collect();
    match f.as_slice() {
        ["BOOTED", ..] => eprintln!("  [{label}] booted at {t:.1} s"),
        ["START", ..] => *started = t,
        ["END", bin, name, rc] => eprintln!(
            "  [{label}] {bin}::{name} {} ({:.1} s)",
            if *rc == "0" { "ok" } else { "FAILED" },
            t - *started
        ),
        _ => {}
    }
}

/// The marker in a console line (kernel messages may share the line).
fn marker(line: &str) -> Option<&str> {
    line.find("UMBRA-VM-")
        .map(|i| &line[i + "UMBRA-VM-".len()..])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug, PartialEq)]
struct TestResult {
    binary: String,
    name: String,
    outcome: Outcome,
    secs: f64,
    output: Vec<String>,
}

/// What the console says.
#[derive(Debug, Default, PartialEq)]
struct Report {
    kernel: Option<String>,
    booted_at: Option<f64>,
    done_at: Option<f64>,
    tests: Vec<TestResult>,
    /// A test that started and never ended.
    running: Option<(String, String)>,
    list_failures: Vec<(String, String)>,
    /// `UMBRA-VM-FACT` and `UMBRA-VM-HOOK` lines.
    facts: Vec<String>,
}

impl Report {
    /// The guest's facts in one line, hooks grouped by how they attached.
    fn facts(&self) -> String {
        let mut out = Vec::new();
        let mut hooks: Vec<(String, Vec<String>)> = Vec::new();
        for f in &self.facts {
            if let Some(rest) = f.strip_prefix("FACT ") {
                out.push(rest.to_string());
            } else if let Some(rest) = f.strip_prefix("HOOK ") {
                let (hook, status) = rest.split_once(' ').unwrap_or((rest, "?"));
                let kind = status.split('(').next().unwrap_or(status).to_string();
                match hooks.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, hs)) => hs.push(hook.to_string()),
                    None => hooks.push((kind, vec![hook.to_string()])),
                }
            }
        }
        for (kind, hs) in hooks {
            out.push(format!("{kind} {}: {}", hs.len(), hs.join(",")));
        }
        out.join("; ")
    }
}

fn parse(lines: &[(f64, String)]) -> Report {
    let mut r = Report::default();
    let mut output = Vec::new();
    let mut started = 0.0;
    for (t, line) in lines {
        let Some(m) = marker(line) else {
            if r.running.is_some() {
                output.push(line.clone());
            }
            continue;
        };
        let f: Vec<&str> = m.split_whitespace().collect();
        match f.as_slice() {
            ["BOOTED", rest @ ..] => {
                r.booted_at = Some(*t);
                r.kernel = rest
                    .iter()
                    .find_map(|kv| kv.strip_prefix("kernel="))
                    .map(str::to_string);
            }
            ["FACT", ..] | ["HOOK", ..] => r.facts.push(m.to_string()),
            ["START", bin, name] => {
                r.running = Some((bin.to_string(), name.to_string()));
                output.clear();
                started = *t;
            }
            ["END", bin, name, rc] => {
                // Skipped by the test itself, or `#[ignore]`d (libtest ran nothing).
                let ignored = format!("test {name} ... ignored");
                let skipped = output
                    .iter()
                    .any(|l| l.contains("skipped: ") || l.trim_start().starts_with(&ignored));
                r.tests.push(TestResult {
                    binary: bin.to_string(),
                    name: name.to_string(),
                    outcome: match (*rc, skipped) {
                        ("0", false) => Outcome::Passed,
                        ("0", true) => Outcome::Skipped,
                        _ => Outcome::Failed,
                    },
                    secs: t - started,
                    output: std::mem::take(&mut output),
                });
                r.running = None;
            }
            ["LIST-FAILED", bin, rc] => r.list_failures.push((bin.to_string(), rc.to_string())),
            ["DONE", ..] => r.done_at = Some(*t),
            _ => {}
        }
    }
    if let Some(last) = r.running.as_ref() {
        r.tests
            .retain(|t| (&t.binary, &t.name) != (&last.0, &last.1));
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn console(text: &str) -> Vec<(f64, String)> {
        text.lines()
            .enumerate()
            .map(|(i, l)| (i as f64, l.to_string()))
            .collect()
    }

    const GOOD: &str = "\
[    0.000000] Linux version 6.1.0-57-cloud-amd64
UMBRA-VM-BOOTED kernel=6.1.0-57-cloud-amd64 arch=x86_64 uptime=1.20
UMBRA-VM-FACT btf=yes
UMBRA-VM-HOOK sched/sched_switch BtfTracepoint
UMBRA-VM-HOOK exceptions/page_fault_user Unavailable(\"tracepoint missing\")
UMBRA-VM-START capture cpu_time_of_a_spinner_matches_schedstat
cpu: captured 500 ns
UMBRA-VM-END capture cpu_time_of_a_spinner_matches_schedstat 0
UMBRA-VM-START cgroup_v2 a_group
skipped: a_group: no controllers
UMBRA-VM-END cgroup_v2 a_group 0
UMBRA-VM-DONE uptime=20.0
";

    #[test]
    fn a_good_run_counts_passes_and_skips() {
        let r = parse(&console(GOOD));
        assert_eq!(r.kernel.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(r.booted_at, Some(1.0));
        assert_eq!(r.done_at, Some(11.0));
        assert_eq!(
            r.facts(),
            "btf=yes; BtfTracepoint 1: sched/sched_switch; Unavailable 1: exceptions/page_fault_user"
        );
        let outcomes: Vec<Outcome> = r.tests.iter().map(|t| t.outcome).collect();
        assert_eq!(outcomes, [Outcome::Passed, Outcome::Skipped]);
        assert_eq!(r.tests[0].secs, 2.0);
        assert_eq!(r.tests[0].output, ["cpu: captured 500 ns"]);
        assert!(r.running.is_none());
    }

    #[test]
    fn an_ignored_test_is_skipped_not_passed() {
        let text = GOOD.replace(
            "cpu: captured 500 ns",
            "running 1 test\n\
             test cpu_time_of_a_spinner_matches_schedstat ... ignored, slow\n\
             test result: ok. 0 passed; 0 failed; 1 ignored",
        );
        let outcomes: Vec<Outcome> = parse(&console(&text))
            .tests
            .iter()
            .map(|t| t.outcome)
            .collect();
        assert_eq!(outcomes, [Outcome::Skipped, Outcome::Skipped]);
    }

    fn kernel() -> Kernel {
        Kernel {
            package: "linux-image-6.1.0-57-cloud-amd64-unsigned".into(),
            arch: Arch::X86_64,
            dir: PathBuf::new(),
            vmlinuz: PathBuf::new(),
            release: "6.1.0-57-cloud-amd64".into(),
        }
    }

    fn judge(text: &str, timed_out: bool) -> (String, Option<String>) {
        let lines = console(text);
        let total = lines.len() as f64;
        let c = Console {
            lines,
            total,
            timed_out,
            status: "exit status: 0".into(),
        };
        let v = kernel().judge(&c, &parse(&c.lines), Path::new("console.log"));
        (v.summary, v.failure)
    }

    #[test]
    fn a_good_run_summarises_in_one_line() {
        let (summary, failure) = judge(GOOD, false);
        assert_eq!(
            summary,
            "vm-test 6.1.0-57-cloud-amd64 x86_64: 1 passed, 0 failed, 1 skipped; boot 1.0 s, \
             tests 10.0 s, total 12.0 s"
        );
        assert!(failure.is_none(), "{failure:?}");
    }

    #[test]
    fn a_failed_test_is_named_with_its_output() {
        let text = GOOD.replace(
            "cpu: captured 500 ns\nUMBRA-VM-END capture cpu_time_of_a_spinner_matches_schedstat 0",
            "thread 'x' panicked at capture.rs:1: UMBRA_VM_BREAK=panic\n\
             UMBRA-VM-END capture cpu_time_of_a_spinner_matches_schedstat 101",
        );
        let (summary, failure) = judge(&text, false);
        assert!(
            summary.contains("0 passed, 1 failed, 1 skipped"),
            "{summary}"
        );
        let f = failure.expect("a failure");
        assert!(
            f.contains("linux-image-6.1.0-57-cloud-amd64-unsigned"),
            "{f}"
        );
        assert!(
            f.contains("capture::cpu_time_of_a_spinner_matches_schedstat failed"),
            "{f}"
        );
        assert!(f.contains("UMBRA_VM_BREAK=panic"), "{f}");
    }

    #[test]
    fn a_hang_names_the_running_test_and_shows_the_console() {
        let text = GOOD
            .split("UMBRA-VM-END capture")
            .next()
            .unwrap()
            .to_string()
            + "[  101.2] rcu: INFO: rcu_sched self-detected stall on CPU\n";
        let (summary, failure) = judge(&text, true);
        assert!(summary.contains("INCOMPLETE"), "{summary}");
        let f = failure.expect("a failure");
        assert!(f.contains("timed out"), "{f}");
        assert!(
            f.contains("while capture::cpu_time_of_a_spinner_matches_schedstat was running"),
            "{f}"
        );
        assert!(f.contains("rcu_sched self-detected stall"), "{f}");
    }

    #[test]
    fn a_kernel_panic_before_init_is_a_failure() {
        let (_, failure) = judge(
            "[ 0.9] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
            false,
        );
        let f = failure.expect("a failure");
        assert!(f.contains("before /init started"), "{f}");
        assert!(f.contains("Kernel panic"), "{f}");
    }

    #[test]
    fn console_lines_lose_their_escapes() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\n"),
            "SeaBIOS (version 1.16.2)"
        );
    }

    #[test]
    fn kernel_aliases_pick_the_newest_abi() {
        let names: Vec<String> = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-dbg",
            "linux-image-6.1.0-0.deb11.52-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
        ]
        .map(String::from)
        .to_vec();
        let (_, p, s) = alias("6.1", Arch::X86_64).unwrap();
        assert_eq!(
            newest_first(&names, &p, &s),
            [
                "linux-image-6.1.0-57-cloud-amd64-unsigned",
                "linux-image-6.1.0-9-cloud-amd64-unsigned"
            ]
        );
        let (_, p, s) = alias("6.12", Arch::X86_64).unwrap();
        assert_eq!(
            newest_first(&names, &p, &s),
            ["linux-image-6.12.117+deb12-cloud-amd64-unsigned"]
        );
    }

    #[test]
    fn modules_load_dependencies_first_and_skip_builtins() {
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/virtio/virtio.ko:\n";
        let g = module_graph(dep);
        let mut order = Vec::new();
        for n in DISK_MODULES {
            visit(&g, n, &mut order);
        }
        assert_eq!(
            order,
            [
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        let g = module_graph("kernel/drivers/block/virtio_blk.ko.xz:\n");
        let mut order = Vec::new();
        for n in DISK_MODULES {
            visit(&g, n, &mut order);
        }
        assert_eq!(order, ["virtio_blk"]);
    }
}
