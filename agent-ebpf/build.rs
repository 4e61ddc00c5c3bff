//! Rebuild the kernel programs when the `bpf-linker` binary changes: it is an undeclared
//! build dependency (cargo has no way to declare a host tool).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not on PATH ({e}); run `cargo xtask install`"),
    }
}
