//! Builds the kernel programs (`agent-ebpf`) for `bpf{el,eb}-unknown-none` and leaves the
//! objects at `$OUT_DIR/umbra` and `$OUT_DIR/umbra-egress`, which `capture` embeds; and
//! embeds the shipped models (`models/forecast.onnx`, `models/request.onnx`, when they
//! exist) for `predict`.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

/// `$OUT_DIR/shipped_models.rs`: `FORECAST` and `REQUEST`, each `Some(bytes)` when the
/// file exists and the model runtime is built in.
fn shipped_models() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    println!("cargo:rerun-if-changed={}", dir.display());
    let runtime = std::env::var_os("CARGO_FEATURE_ONNX").is_some();
    let mut out = String::new();
    for (name, file) in [("FORECAST", "forecast.onnx"), ("REQUEST", "request.onnx")] {
        let p = dir.join(file);
        println!("cargo:rerun-if-changed={}", p.display());
        if runtime && p.is_file() {
            let p = p.canonicalize().context("models/")?;
            writeln!(
                out,
                "pub const {name}: Option<&[u8]> = Some(include_bytes!({:?}));",
                p.display().to_string()
            )?;
        } else {
            writeln!(out, "pub const {name}: Option<&[u8]> = None;")?;
        }
    }
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    std::fs::write(Path::new(&out_dir).join("shipped_models.rs"), out)?;
    Ok(())
}

/// The kernel programs, built as aya-build builds them (nightly, `build-std=core`, BTF,
/// `bpf_target_arch`) but in one target directory per architecture,
/// `<target>/bpf/<arch>`, shared by every build of this crate: aya-build keeps its target
/// directory under `OUT_DIR`, which differs per profile and feature set, so each of them
/// built `core` and the programs again from nothing (about a minute, six times in
/// `cargo xtask test`).
fn kernel_programs(target_dir: &Path, root: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed={}", root.display());
    let env = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let target = match env("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    let mut arch = env("CARGO_CFG_TARGET_ARCH")?;
    if arch.starts_with("riscv64") {
        arch = "riscv64".into();
    }
    let dir = target_dir.join("bpf").join(&arch);
    // CARGO_ENCODED_RUSTFLAGS: the flags separated by 0x1f.
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "umbra-ebpf",
        "--bins",
    ])
    // The `bpf` profile (the workspace's Cargo.toml), not `release`: the edge binary's
    // size settings stay out of the kernel programs.
    .args([
        "--profile",
        "bpf",
        "--target",
        target,
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&dir)
    .current_dir(root)
    .env("CARGO_ENCODED_RUSTFLAGS", flags)
    // The outer build's compiler and wrappers are not the kernel programs' (nightly).
    .env_remove("RUSTC")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    // Its stdout would be read by cargo as this script's instructions.
    .stdout(Stdio::null());
    let st = cmd.status().with_context(|| {
        format!("cannot start {cmd:?} (is rustup installed? `cargo xtask install`)")
    })?;
    if !st.success() {
        bail!("building the kernel programs failed ({st}): {cmd:?}");
    }
    let objcopy = objcopy();
    for bin in ["umbra", "umbra-egress"] {
        let from = dir.join(target).join("bpf").join(bin);
        let to = out_dir.join(bin);
        match objcopy {
            Some(tool) => strip_debug(tool, &from, &to)?,
            None => {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
    }
    Ok(())
}

/// An `llvm-objcopy` that runs, or `None` (said as a build warning): without it the kernel
/// programs are embedded with their DWARF.
fn objcopy() -> Option<&'static str> {
    // LLVM 22 comes with bpf-linker's build (`cargo xtask install`); any other one strips
    // DWARF the same way.
    let tool = ["/usr/lib/llvm-22/bin/llvm-objcopy", "llvm-objcopy"]
        .into_iter()
        .find(|t| {
            Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if tool.is_none() {
        println!(
            "cargo:warning=llvm-objcopy not found: the kernel programs are embedded with \
             their DWARF (about 0.9 MB more; `cargo xtask install` installs LLVM)"
        );
    }
    tool
}

/// Copies a kernel object without its DWARF (`llvm-objcopy --strip-debug`): the loader
/// reads its BTF and BTF.ext, which stay, and never the DWARF they were made from —
/// four fifths of the file, which the agent embeds.
fn strip_debug(tool: &str, from: &Path, to: &Path) -> anyhow::Result<()> {
    let st = Command::new(tool)
        .arg("--strip-debug")
        .arg(from)
        .arg(to)
        .status()
        .with_context(|| format!("cannot start {tool}"))?;
    if !st.success() {
        bail!("{tool} --strip-debug {} failed ({st})", from.display());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    shipped_models()?;
    let cargo_metadata::Metadata {
        packages,
        target_directory,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "umbra-ebpf")
        .ok_or_else(|| anyhow!("umbra-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    kernel_programs(target_directory.as_std_path(), root.as_std_path())
}
