//! Builds the kernel programs (`agent-ebpf`) for `bpfel-unknown-none` with aya-build and
//! leaves the object at `$OUT_DIR/umbra`, which `capture` embeds; and embeds the shipped
//! models (`models/forecast.onnx`, `models/request.onnx`, when they exist) for `predict`.
use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

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

fn main() -> anyhow::Result<()> {
    shipped_models()?;
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
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
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
