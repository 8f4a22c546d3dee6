//! Builds vlab's own guest kernel (`guest/`, a separate no_std workspace)
//! with the host's gnu target and embeds the ELF in the `vlab` binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guest = manifest_dir.join("../../guest");
    let guest = guest.canonicalize().unwrap_or(guest);
    for p in ["src", "Cargo.toml", "build.rs", "link.ld"] {
        println!("cargo:rerun-if-changed={}", guest.join(p).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&out)
        .current_dir(&guest);
    // The outer build's flags and wrappers (clippy, coverage, sanitizers,
    // fuzzing instrumentation) must not leak into the bare-metal guest.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the guest kernel");
    assert!(
        status.success(),
        "building the guest kernel (guest/) failed"
    );
    let elf = out.join("release/vlab-guest");
    println!("cargo:rustc-env=VLAB_GUEST_ELF={}", elf.display());
}
