//! kill -9 during a write storm: every write acknowledged by a flush is in
//! the image afterwards, and `qemu-img check` finds no corruption (leaked
//! clusters at most). The writer is this test binary itself, re-run as a
//! child with `VLAB_STORM_CHILD` set.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use block::image::{self, OpenOptions};
use common::*;

const SLOT: u64 = 8192;
const SIZE: u64 = 256 << 20;

/// Write number `i`: its own slot, a length that varies so some writes are
/// partial clusters and some fill new ones.
fn op(i: u64) -> (u64, Vec<u8>) {
    let len = 512 * (1 + (i * 7) % 16) as usize;
    (i * SLOT, pattern(i + 1, len))
}

fn child(path: &str) {
    let mut img = image::open(std::path::Path::new(path), OpenOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..SIZE / SLOT {
        let (off, d) = op(i);
        img.write_at(off, &d).unwrap();
        if i % 3 == 2 {
            img.flush().unwrap();
            writeln!(out, "flushed {i}").unwrap();
            out.flush().unwrap();
        }
    }
    writeln!(out, "done").unwrap();
}

#[test]
fn kill_9_during_a_write_storm_keeps_flushed_writes() {
    if let Ok(path) = std::env::var("VLAB_STORM_CHILD") {
        child(&path);
        return;
    }
    let dir = scratch("storm");
    let p = dir.join("storm.qcow2");
    image::create_qcow2(&p, SIZE, None).unwrap();
    for round in 0..3 {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_during_a_write_storm_keeps_flushed_writes",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VLAB_STORM_CHILD", &p)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        let start = Instant::now();
        let kill_after = Duration::from_millis(300 + 400 * round);
        let mut last = None;
        while start.elapsed() < kill_after {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(n) = l.strip_prefix("flushed ") {
                        last = n.parse::<u64>().ok();
                    }
                }
                _ => break,
            }
        }
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        let last = last.expect("the child flushed nothing before it was killed");
        // Every write covered by an acknowledged flush is there.
        let mut img = image::open(&p, OpenOptions::default()).unwrap();
        for i in 0..=last {
            let (off, d) = op(i);
            let mut back = vec![0u8; d.len()];
            img.read_at(off, &mut back).unwrap();
            assert!(
                back == d,
                "round {round}: flushed write {i} (of {last}) lost"
            );
        }
        drop(img);
        let out = Command::new("qemu-img")
            .args(["check", p.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // 0: clean; 3: leaked clusters only.
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "round {round}: {text}"
        );
        assert!(!text.contains("ERROR"), "{text}");
        let r = image::check(&p).unwrap().unwrap();
        assert_eq!(r.corruptions, 0, "{:?}", r.messages);
    }
    std::fs::remove_dir_all(dir).unwrap();
}
