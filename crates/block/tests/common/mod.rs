//! Helpers shared by the image integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlab-img-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run a tool; panic with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img check` must report no errors and no leaks.
pub fn qemu_check_clean(p: &Path) {
    let out = run("qemu-img", &["check", p.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No errors were found"), "{text}");
}

/// The guest-visible bytes of an image, as qemu-img sees them.
pub fn qemu_contents(p: &Path) -> Vec<u8> {
    let raw = p.with_extension("converted.raw");
    let _ = std::fs::remove_file(&raw);
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            p.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let d = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    d
}

/// Deterministic bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
