//! Image locks: vlab against vlab and against a running QEMU.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use block::image::{self, ImageError, OpenOptions};
use common::*;

/// The tests in this file run one at a time: a test that spawns QEMU forks,
/// and until the child execs it holds duplicates of every open file
/// description, OFD locks included — a lock the other test just dropped
/// can outlive its `drop` for that instant. (Real users see the same with
/// any forking process; it is how OFD locks work.)
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const RO: OpenOptions = OpenOptions {
    read_only: true,
    lock: true,
    format: None,
};

#[test]
fn a_second_vlab_writer_is_refused_readers_share_a_master() {
    let _serial = serial();
    let dir = scratch("locks-vlab");
    let p = dir.join("disk.qcow2");
    image::create_qcow2(&p, 1 << 20, None).unwrap();
    let w = image::open(&p, OpenOptions::default()).unwrap();
    let e = image::open(&p, OpenOptions::default())
        .err()
        .expect("second writer must be refused");
    let msg = e.to_string();
    assert!(matches!(e, ImageError::Lock(_)), "{msg}");
    assert!(
        msg.contains("disk.qcow2") && msg.contains("in use") && !msg.contains('\n'),
        "{msg}"
    );
    drop(w);
    // Several clones open their master read-only at the same time, and the
    // master cannot then be opened for writing.
    let (c1, c2) = (dir.join("c1.qcow2"), dir.join("c2.qcow2"));
    image::clone_image(&p, &c1).unwrap();
    image::clone_image(&p, &c2).unwrap();
    let a = image::open(&c1, OpenOptions::default()).unwrap();
    let b = image::open(&c2, OpenOptions::default()).unwrap();
    let r = image::open(&p, RO).unwrap();
    let e = image::open(&p, OpenOptions::default())
        .err()
        .expect("master in use");
    assert!(e.to_string().contains("disk.qcow2"), "{e}");
    drop((a, b, r));
    image::open(&p, OpenOptions::default()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// QEMU holding a disk (no guest runs: -S, -machine none).
struct Qemu(std::process::Child);

impl Qemu {
    fn start(img: &std::path::Path, read_only: bool) -> Qemu {
        let ro = if read_only { ",read-only=on" } else { "" };
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-monitor",
                "none",
                "-serial",
                "none",
            ])
            .args([
                "-drive",
                &format!("file={},if=none,format=qcow2,id=d0{ro}", img.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let q = Qemu(child);
        // Wait until QEMU holds its locks: a vlab writer is refused once
        // QEMU (reader or writer) has the image open.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = image::open(img, OpenOptions::default());
            if probe.is_err() {
                break;
            }
            drop(probe);
            assert!(
                Instant::now() < deadline,
                "QEMU never locked {}",
                img.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        q
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemu_and_vlab_conflict_on_writers() {
    let _serial = serial();
    let dir = scratch("locks-qemu");
    let p = dir.join("vm.qcow2");
    image::create_qcow2(&p, 1 << 20, None).unwrap();
    {
        let _qemu = Qemu::start(&p, false);
        let e = image::open(&p, OpenOptions::default())
            .err()
            .expect("vlab must not open a disk QEMU writes");
        let msg = e.to_string();
        assert!(msg.contains("vm.qcow2") && msg.contains("in use"), "{msg}");
        // QEMU's writer does not share "write": not even readers get in.
        assert!(image::open(&p, RO).is_err());
    }
    // QEMU gone: vlab holds the disk; qemu-img (a reader) is refused.
    let w = image::open(&p, OpenOptions::default()).unwrap();
    let out = Command::new("qemu-img")
        .args(["info", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(w);
    // QEMU reading a master read-only and vlab reading it too: allowed;
    // vlab writing it: refused.
    {
        let _qemu = Qemu::start(&p, true);
        image::open(&p, RO).unwrap();
        assert!(image::open(&p, OpenOptions::default()).is_err());
    }
    std::fs::remove_dir_all(dir).unwrap();
}
