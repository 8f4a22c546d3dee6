//! Helpers for tests that run the `vlab` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The vlab binary under test.
pub fn vlab_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vlab")
}

/// The built-in guest kernel ELF, as a file (for `--kernel` tests).
pub fn guest_elf() -> &'static str {
    env!("VLAB_GUEST_ELF")
}

/// Fail loudly if /dev/kvm is unusable: these tests must never skip.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs /dev/kvm and cannot run without it: {e}");
    }
}

/// Run vlab with `args`, stdin closed, killing it after `timeout`.
pub fn run_vlab(args: &[&str], timeout: Duration) -> Output {
    require_kvm();
    let child = Command::new(vlab_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vlab");
    wait_with_timeout(child, timeout, args)
}

/// Wait for a child, killing it (and failing the test) on timeout.
pub fn wait_with_timeout(child: Child, timeout: Duration, what: &[&str]) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for vlab"),
        Err(_) => {
            // SAFETY-free: plain kill of our own child process.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("vlab {what:?} did not finish within {timeout:?}");
        }
    }
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Lines of the guest's output that start with `vlab-guest: PREFIX`,
/// with the common prefix removed.
pub fn guest_lines(out: &str, prefix: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("vlab-guest: "))
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// `key=value` from a line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// Run vlab and timestamp each stdout line as it arrives.
pub fn run_vlab_timed(args: &[&str], timeout: Duration) -> (Vec<(Instant, String)>, i32) {
    require_kvm();
    let mut child = Command::new(vlab_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vlab");
    let out = child.stdout.take().expect("stdout");
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        lines.push((Instant::now(), line));
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vlab {args:?} did not finish within {timeout:?}");
        }
    }
    let status = child.wait().expect("wait");
    (lines, status.code().unwrap_or(-1))
}

/// Write bytes to a fresh temporary file and return its path.
pub fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vlab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(bytes).unwrap();
    p
}
