//! Lifecycle: signals stop every vCPU thread cleanly; on a TTY the escape
//! key quits, Ctrl-C reaches the guest, and the terminal is restored.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

/// Start vlab with piped stdin on `test=echo`, wait for the guest to be
/// ready, send `sig`, and check the exit code and message.
fn stop_with_signal(sig: libc::c_int, cpus: &str, name: &str) {
    require_kvm();
    let mut child = Command::new(vlab_bin())
        .args(["run", "--cpus", cpus, "--cmdline", "test=echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("echo ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "vlab ended early");
    }
    // SAFETY-free: kill(2) on our own child.
    assert_eq!(
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let o = wait_with_timeout(child, T, &["signal test"]);
    assert_eq!(o.status.code(), Some(251), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("stopped by {name}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sigint_stops_the_vm_with_the_interrupted_code() {
    stop_with_signal(libc::SIGINT, "1", "SIGINT");
}

#[test]
fn sigterm_stops_every_vcpu_thread_including_waiting_aps() {
    // With 4 vCPUs and a test that never starts the APs, three vCPU
    // threads sit in KVM_RUN waiting for SIPI: the kick must reach them.
    stop_with_signal(libc::SIGTERM, "4", "SIGTERM");
}

struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
}

fn openpty() -> Pty {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given ints; the other
    // pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty failed");
    // SAFETY: both descriptors were just returned by openpty and are owned
    // by nobody else.
    unsafe {
        Pty {
            master: std::fs::File::from_raw_fd(m),
            slave: OwnedFd::from_raw_fd(s),
        }
    }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data, filled by tcgetattr on a valid fd.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t
    }
}

/// Read from the pty master until `needle` appears or time runs out.
fn read_until(master: &mut std::fs::File, seen: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(seen)
        );
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn on_a_tty_ctrl_c_goes_to_the_guest_and_ctrl_a_x_quits_restoring_the_terminal() {
    require_kvm();
    let mut pty = openpty();
    let before = termios(&pty.slave);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "pty starts cooked");
    let child = Command::new(vlab_bin())
        .args(["run", "--cmdline", "test=echo"])
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut pty.master, &mut seen, "echo ready");
    // Raw mode: no line buffering, Ctrl-C is a byte for the guest.
    pty.master.write_all(b"ab\x03c").unwrap();
    read_until(&mut pty.master, &mut seen, "AB\x03C");
    let during = termios(&pty.slave);
    assert_eq!(during.c_lflag & (libc::ICANON | libc::ISIG), 0, "raw mode");
    pty.master.write_all(b"\x01x").unwrap();
    let o = wait_with_timeout(child, T, &["pty test"]);
    assert_eq!(o.status.code(), Some(251), "{}", stderr(&o));
    assert!(stderr(&o).contains("escape key"), "{}", stderr(&o));
    let after = termios(&pty.slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    assert_eq!(after.c_oflag, before.c_oflag, "output modes restored");
}

#[test]
fn console_log_gets_the_serial_output() {
    let log = std::env::temp_dir().join(format!("vlab-console-{}.log", std::process::id()));
    let o = run_vlab(
        &[
            "run",
            "--console-log",
            log.to_str().unwrap(),
            "--cmdline",
            "test=exit code=0",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("vlab-guest: vlab guest kernel"), "{text}");
    assert_eq!(text, stdout(&o));
    let _ = std::fs::remove_file(log);
}
