//! Bad input: one line naming the problem and the fix, a non-zero exit,
//! no panic, no backtrace.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// vlab must fail with the usage code and one line containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let o = run_vlab(args, T);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(254), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"));
}

#[test]
fn missing_kernel() {
    fails_with(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        "/nonexistent/vmlinuz",
    );
}

#[test]
fn kernel_is_a_directory() {
    fails_with(&["run", "--kernel", "/tmp"], "is a directory");
}

#[test]
fn empty_kernel() {
    let p = temp_file("empty-kernel", b"");
    fails_with(&["run", "--kernel", p.to_str().unwrap()], "is empty");
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage() {
    let p = temp_file("text-kernel", b"#!/bin/sh\necho not a kernel\n");
    fails_with(
        &["run", "--kernel", p.to_str().unwrap()],
        "neither a 64-bit x86 ELF nor a Linux bzImage",
    );
}

#[test]
fn truncated_kernel() {
    let elf = std::fs::read(guest_elf()).unwrap();
    let p = temp_file("truncated-kernel", &elf[..200.min(elf.len())]);
    fails_with(
        &["run", "--kernel", p.to_str().unwrap()],
        "truncated or corrupt",
    );
}

#[test]
fn truncated_bzimage() {
    let Some(k) = std::fs::read_dir("/boot").ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
    }) else {
        panic!("no /boot/vmlinuz-*: install linux-image-amd64 (.ci/run does)");
    };
    let bytes = std::fs::read(&k).unwrap();
    let p = temp_file("truncated-bzimage", &bytes[..0x1000]);
    fails_with(
        &["run", "--kernel", p.to_str().unwrap()],
        "truncated or corrupt",
    );
}

#[test]
fn initrd_larger_than_guest_ram() {
    let p = std::env::temp_dir().join(format!("vlab-big-initrd-{}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(96 << 20).unwrap(); // sparse
    fails_with(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--memory",
            "64M",
            "--initrd",
            p.to_str().unwrap(),
        ],
        "--memory",
    );
    let _ = std::fs::remove_file(p);
}

#[test]
fn bad_memory_sizes() {
    for m in ["0", "12X", "1K", "99999999999999999999999"] {
        fails_with(&["run", "--memory", m], "memory");
    }
}

#[test]
fn memory_larger_than_the_host() {
    fails_with(&["run", "--memory", "100T"], "memory");
}

#[test]
fn bad_cpu_counts() {
    fails_with(&["run", "--cpus", "0"], "--cpus");
    fails_with(&["run", "--cpus", "33"], "--cpus");
}

#[test]
fn command_line_too_long() {
    let long = "a".repeat(70_000);
    fails_with(&["run", "--cmdline", &long], "Command line is");
}

#[test]
fn unknown_flag() {
    fails_with(&["run", "--frobnicate"], "--frobnicate");
}

#[test]
fn console_log_in_missing_directory() {
    fails_with(
        &["run", "--console-log", "/nonexistent/dir/log.txt"],
        "/nonexistent/dir/log.txt",
    );
}

#[test]
fn no_kvm_access_is_one_line() {
    // Run as an unprivileged user if we are root and `setpriv` exists; a
    // non-root caller without /dev/kvm access gets the same path.
    let uid = unsafe_free_uid();
    if uid != 0 {
        return fails_with(&["run"], "/dev/kvm");
    }
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            vlab_bin(),
            "run",
        ])
        .output()
        .expect("setpriv (util-linux) is needed for this test");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(254), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("/dev/kvm"), "{err}");
}

fn unsafe_free_uid() -> u32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}
