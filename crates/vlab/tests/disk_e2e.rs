//! End-to-end: vlab's guest kernel drives virtio-blk disks (`--disk`):
//! the driver on raw and qcow2 images, clones of a master, data surviving
//! a reboot, read-only disks, the image lock, kill -9 during a write storm,
//! and the HP 97560 timing model seen from the guest compared with the
//! model's own prediction. Needs /dev/kvm (fails loudly without it) and
//! `qemu-img`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use block::image::{self, Format, OpenOptions};
use block::model::{DiskModel, Hdd, HddParams, Request};
use common::*;

/// PRNG, workload generator and sector pattern, shared with the guest
/// (which `mod`s the same file).
#[allow(dead_code)]
mod shared {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../guest/src/blk_shared.rs"
    ));
}

const T: Duration = Duration::from_secs(60);

/// A fresh directory for one test's images.
fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlab-disk-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vlab disk create --format FMT PATH SIZE`.
fn create(path: &Path, fmt: &str, size: &str) {
    let o = run_vlab(&["disk", "create", "--format", fmt, s(path), size], T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `vlab run --disk SPEC... --cmdline CMDLINE`; (exit code, stdout +
/// stderr).
fn run(disks: &[String], cmdline: &str) -> (Option<i32>, String) {
    let mut args = vec!["run".to_string()];
    for d in disks {
        args.push("--disk".into());
        args.push(d.clone());
    }
    args.push("--cmdline".into());
    args.push(cmdline.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_vlab(&args, T);
    let all = format!("stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    (o.status.code(), all)
}

/// `qemu-img check` must find nothing (exit 0).
fn qemu_img_check(path: &Path) {
    let o = Command::new("qemu-img")
        .args(["check", s(path)])
        .output()
        .expect("qemu-img must be installed for these tests");
    assert_eq!(
        o.status.code(),
        Some(0),
        "qemu-img check {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The `blk capacity=...` line must report `sectors` and `serial`, and the
/// run must end with `blk ok`.
fn assert_blk_ok(code: Option<i32>, out: &str, sectors: u64, serial: &str) {
    assert_eq!(code, Some(0), "{out}");
    let cap = guest_lines(out, "blk capacity=");
    assert_eq!(cap.len(), 1, "{out}");
    assert_eq!(
        cap[0],
        format!("blk capacity={sectors} serial={serial}"),
        "{out}"
    );
    let feat = guest_lines(out, "blk features=");
    assert_eq!(feat.len(), 1, "{out}");
    assert_eq!(field(&feat[0], "irq"), Some("msix"), "{out}");
    assert_eq!(field(&feat[0], "blk_size"), Some("512"), "{out}");
    assert!(out.contains("vlab-guest: blk past-end=ioerr"), "{out}");
    assert!(out.contains("vlab-guest: blk ok"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn blk_on_raw_image() {
    let d = tmpdir("raw");
    let img = d.join("disk.raw");
    create(&img, "raw", "32M");
    let spec = format!("path={},format=raw,serial=raw-disk-1", s(&img));
    let (code, out) = run(std::slice::from_ref(&spec), "test=blk");
    assert_blk_ok(code, &out, 32 << 11, "raw-disk-1");
    // The pattern really is in the file, where the guest put it.
    let bytes = std::fs::read(&img).unwrap();
    let seed = 0x5eed;
    for lba in [0u64, 1, 8, (32 << 11) / 2, (32 << 11) - 1] {
        check_sector(&bytes[lba as usize * 512..][..512], seed, lba);
    }
    // hello names the function.
    let (code, out) = run(&[spec], "test=hello");
    assert_eq!(code, Some(0), "{out}");
    let dev = guest_lines(&out, "devices:");
    assert!(
        dev.len() == 1 && dev[0].contains("(virtio-blk)"),
        "virtio-blk missing from the devices line\n{out}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn blk_on_qcow2_image_with_polling() {
    let d = tmpdir("qcow2");
    let img = d.join("disk.qcow2");
    create(&img, "qcow2", "64M");
    let spec = format!("path={},serial=q2", s(&img));
    let (code, out) = run(std::slice::from_ref(&spec), "test=blk");
    assert_blk_ok(code, &out, 64 << 11, "q2");
    // The same without MSI-X (the driver polls the used ring).
    let (code, out) = run(&[spec], "test=blk irq=poll seed=77");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("irq=poll"), "{out}");
    assert!(out.contains("vlab-guest: blk ok"), "{out}");
    qemu_img_check(&img);
    let _ = std::fs::remove_dir_all(d);
}

/// Sector `lba` of the pattern `seed` as bytes.
fn pattern_sector(seed: u64, lba: u64) -> Vec<u8> {
    (0..shared::SECTOR_WORDS)
        .flat_map(|i| shared::pattern_word(seed, lba, i).to_le_bytes())
        .collect()
}

fn check_sector(got: &[u8], seed: u64, lba: u64) {
    assert!(
        got == pattern_sector(seed, lba).as_slice(),
        "sector {lba} does not hold the pattern of seed {seed}"
    );
}

#[test]
fn clone_written_by_the_guest_leaves_the_master_unchanged() {
    let d = tmpdir("clone");
    let master = d.join("master.qcow2");
    let clone = d.join("clone.qcow2");
    create(&master, "qcow2", "64M");
    let m = format!("path={}", s(&master));
    let (code, out) = run(
        std::slice::from_ref(&m),
        "test=blk-write seed=1 sectors=0-63",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("vlab-guest: blk-write done sectors=64 seed=1"),
        "{out}"
    );
    let master_before = std::fs::read(&master).unwrap();

    let o = run_vlab(&["disk", "clone", s(&master), s(&clone)], T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c = format!("path={}", s(&clone));
    // Overwrite half of the master's sectors and some fresh ones (partial
    // clusters: copy-on-write from the master).
    let (code, out) = run(
        std::slice::from_ref(&c),
        "test=blk-write seed=2 sectors=32-95,4000-4007",
    );
    assert_eq!(code, Some(0), "{out}");
    for (cmd, n) in [
        ("test=blk-verify seed=1 sectors=0-31", 32),
        ("test=blk-verify seed=2 sectors=32-95,4000-4007", 72),
    ] {
        let (code, out) = run(std::slice::from_ref(&c), cmd);
        assert_eq!(code, Some(0), "{cmd}\n{out}");
        assert!(out.contains(&format!("blk-verify ok sectors={n}")), "{out}");
    }
    assert!(
        std::fs::read(&master).unwrap() == master_before,
        "the master changed"
    );
    qemu_img_check(&clone);
    qemu_img_check(&master);
    // The master still holds seed 1 everywhere.
    let (code, out) = run(&[m], "test=blk-verify seed=1 sectors=0-63");
    assert_eq!(code, Some(0), "{out}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn data_written_survives_a_reboot() {
    let d = tmpdir("reboot");
    let img = d.join("disk.qcow2");
    create(&img, "qcow2", "128M");
    let spec = format!("path={}", s(&img));
    let sectors = "sectors=0-15,1000-1199,262143";
    let (code, out) = run(
        std::slice::from_ref(&spec),
        &format!("test=blk-write seed=42 {sectors}"),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("blk-write done sectors=217 seed=42"), "{out}");
    let (code, out) = run(
        std::slice::from_ref(&spec),
        &format!("test=blk-verify seed=42 {sectors}"),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("blk-verify ok sectors=217 seed=42"), "{out}");
    // The check is real: another seed does not verify.
    let (code, out) = run(&[spec], "test=blk-verify seed=43 sectors=0-15");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL blk-verify: bad=16 of 16 sectors"),
        "{out}"
    );
    qemu_img_check(&img);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn read_only_disk_rejects_writes() {
    let d = tmpdir("ro");
    let img = d.join("disk.raw");
    create(&img, "raw", "8M");
    let before = std::fs::read(&img).unwrap();
    let (code, out) = run(&[format!("path={},ro", s(&img))], "test=blk ro=1");
    assert_eq!(code, Some(0), "{out}");
    let feat = guest_lines(&out, "blk features=");
    assert_eq!(feat.len(), 1, "{out}");
    assert_eq!(field(&feat[0], "ro"), Some("1"), "{out}");
    assert!(
        out.contains("vlab-guest: blk ro write=ioerr read=ok"),
        "{out}"
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "read-only image changed"
    );
    // The normal test fails on it (its first write gets IOERR).
    let (code, out) = run(&[format!("path={},ro", s(&img))], "test=blk");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL blk: write lba=0 sectors=1: ioerr"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn second_vm_on_the_same_writable_image_is_refused() {
    require_kvm();
    let d = tmpdir("lock");
    let img = d.join("disk.qcow2");
    create(&img, "qcow2", "16M");
    let spec = format!("path={}", s(&img));
    let mut first = Command::new(vlab_bin())
        .args(["run", "--disk", &spec, "--cmdline", "test=echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("echo ready") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "first vlab ended early"
        );
    }
    for (extra, what) in [("", "writer"), (",ro", "reader")] {
        let (code, text) = run(&[format!("{spec}{extra}")], "test=blk");
        assert_eq!(code, Some(254), "second {what}: {text}");
        let err: Vec<&str> = text
            .split("stderr:\n")
            .nth(1)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(err.len(), 1, "one line expected: {text}");
        assert!(
            err[0].contains(s(&img)) && err[0].contains("in use"),
            "{text}"
        );
        assert!(
            !text.contains("vlab-guest:"),
            "the guest must not boot\n{text}"
        );
    }
    // The first VM is unaffected: end it with Ctrl-D.
    first.stdin.as_mut().unwrap().write_all(&[4]).unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let o = wait_with_timeout(first, T, &["first vlab"]);
    assert_eq!(o.status.code(), Some(0), "{rest}{}", stderr(&o));
    assert!(rest.contains("echo done"), "{rest}");
    // Now the image is free again.
    let (code, text) = run(&[spec], "test=blk");
    assert_eq!(code, Some(0), "{text}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn kill_9_during_a_write_storm_keeps_every_flushed_block() {
    require_kvm();
    let d = tmpdir("storm");
    let img = d.join("disk.qcow2");
    create(&img, "qcow2", "64M");
    let (seed, size) = (9u64, 8u64);
    let mut child = Command::new(vlab_bin())
        .args([
            "run",
            "--disk",
            &format!("path={}", s(&img)),
            "--cmdline",
            &format!("test=blk-storm seed={seed} size={size} every=4"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let start = Instant::now();
    let mut upto = 0u64;
    let mut log = String::new();
    for line in out.lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if let Some(v) = line.strip_prefix("vlab-guest: blk flushed upto=") {
            upto = v.trim().parse().unwrap();
        }
        assert!(!line.contains("FAIL"), "{log}");
        if upto >= 48 || start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(upto >= 48, "too few flushes before the timeout\n{log}");
    // Kill mid-stream: writes after the last reported flush are in flight.
    std::thread::sleep(Duration::from_millis(15));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "vlab must die of SIGKILL\n{log}");

    qemu_img_check(&img);
    // On the host: every block reported flushed holds its pattern.
    let mut disk = image::open(
        &img,
        OpenOptions {
            read_only: true,
            lock: true,
            format: Some(Format::Qcow2),
        },
    )
    .unwrap();
    let mut buf = vec![0u8; (upto * size * 512) as usize];
    disk.read_at(0, &mut buf).unwrap();
    for lba in 0..upto * size {
        check_sector(&buf[lba as usize * 512..][..512], seed, lba);
    }
    drop(disk);
    // And in the guest, after a reboot.
    let (code, out) = run(
        &[format!("path={}", s(&img))],
        &format!("test=blk-verify seed={seed} sectors=0-{}", upto * size - 1),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("blk-verify ok sectors={}", upto * size)),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// One `lat` line.
#[derive(Debug)]
struct Lat {
    write: bool,
    lba: u64,
    sectors: u32,
    ns: u64,
}

/// Run `blk-workload` and parse its `lat` lines and summary.
fn workload(img: &Path, model: &str, args: &str, n: usize) -> (Vec<Lat>, String) {
    let (code, out) = run(
        &[format!("path={},format=raw,model={model}", s(img))],
        &format!("test=blk-workload {args} n={n}"),
    );
    assert_eq!(code, Some(0), "{out}");
    let lats: Vec<Lat> = guest_lines(&out, "lat ")
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 6, "{l}");
            assert_eq!(w[1], i.to_string(), "{l}");
            Lat {
                write: w[2] == "W",
                lba: w[3].parse().unwrap(),
                sectors: w[4].parse().unwrap(),
                ns: w[5].parse().unwrap(),
            }
        })
        .collect();
    assert_eq!(lats.len(), n, "{out}");
    let done = guest_lines(&out, "workload done");
    assert_eq!(done.len(), 1, "{out}");
    (lats, done[0].clone())
}

/// Latencies the model predicts for `reqs` served one at a time (qd=1)
/// with `think` ns between a completion and the next submission, for 16
/// starting rotational phases (the guest's phase is unknowable): all
/// 16 x `reqs.len()` of them.
fn model_lats(reqs: &[Lat], think: u64) -> Vec<u64> {
    let phases = 16;
    let mut out = Vec::new();
    for p in 0..phases {
        let mut hdd = Hdd::new(HddParams::hp97560()).unwrap();
        let mut t = p * hdd.rotation_ns() / phases;
        for r in reqs {
            let req = if r.write {
                Request::write(r.lba, r.sectors)
            } else {
                Request::read(r.lba, r.sectors)
            };
            let sv = hdd.service(&req, t);
            out.push(sv.latency_from(t));
            t = sv.done_ns + think;
        }
    }
    out
}

fn mean(v: &[u64]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[(v.len() - 1) / 2]
}

#[test]
fn hp97560_model_seen_from_the_guest_matches_the_model() {
    let d = tmpdir("hdd");
    let img = d.join("disk.raw");
    create(&img, "raw", "1G");
    let span = 1u64 << 21; // sectors in 1 GiB
    let (n_seq, n_rand) = (80, 60);
    let args = |p: &str| format!("pattern={p} qd=1 size=8 seed=7");
    let (seq, seq_sum) = workload(&img, "hdd:hp97560", &args("seq"), n_seq);
    let (rand, rand_sum) = workload(&img, "hdd:hp97560", &args("rand"), n_rand);

    // The guest issued exactly the generator's requests.
    for (pattern, lats) in [(shared::Pattern::Seq, &seq), (shared::Pattern::Rand, &rand)] {
        let mut g = shared::Workload::new(pattern, 7, 8, span, 100);
        for l in lats.iter() {
            let r = g.next_req();
            assert_eq!((r.lba, r.sectors, r.write), (l.lba, l.sectors, l.write));
        }
    }

    let seq_ns: Vec<u64> = seq.iter().map(|l| l.ns).collect();
    let rand_ns: Vec<u64> = rand.iter().map(|l| l.ns).collect();
    // Think time between requests (guest and I/O path): small next to the
    // model's milliseconds.
    let think = 100_000;
    let (seq_model, rand_model) = (model_lats(&seq, think), model_lats(&rand, think));
    let ms = |v: f64| v / 1e6;
    eprintln!(
        "hp97560 qd=1 8-sector reads (ms): seq mean {:.3} median {:.3} (model {:.3} / {:.3}); \
         rand mean {:.3} median {:.3} (model {:.3} / {:.3})\n  seq:  {seq_sum}\n  rand: {rand_sum}",
        ms(mean(&seq_ns)),
        ms(median(&seq_ns) as f64),
        ms(mean(&seq_model)),
        ms(median(&seq_model) as f64),
        ms(mean(&rand_ns)),
        ms(median(&rand_ns) as f64),
        ms(mean(&rand_model)),
        ms(median(&rand_model) as f64),
    );
    assert!(
        mean(&rand_ns) > 4.0 * mean(&seq_ns),
        "random reads must be much slower than sequential ones"
    );
    let err = (mean(&rand_ns) - mean(&rand_model)).abs() / mean(&rand_model);
    assert!(
        err < 0.2,
        "random mean {:.3} ms is {:.0}% off the model's {:.3} ms",
        ms(mean(&rand_ns)),
        err * 100.0,
        ms(mean(&rand_model))
    );
    // Sequential reads are read-ahead buffer hits (overhead + bus time):
    // the throttle never completes one before the model allows, and the
    // guest sees little on top.
    let (sm, gm) = (median(&seq_model), median(&seq_ns));
    assert!(
        gm >= sm * 95 / 100 && gm <= sm + 1_500_000,
        "sequential median {gm} ns vs the model's {sm} ns"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn workload_at_queue_depth_16_without_a_model() {
    let d = tmpdir("qd16");
    let img = d.join("disk.qcow2");
    create(&img, "qcow2", "256M");
    let (code, out) = run(
        &[format!("path={}", s(&img))],
        "test=blk-workload pattern=mixed qd=16 n=1000 size=8 seed=3 lines=0",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(guest_lines(&out, "lat ").is_empty(), "{out}");
    assert!(
        out.contains("vlab-guest: workload pattern=mixed qd=16 n=1000 size=8 seed=3 read_pct=50"),
        "{out}"
    );
    let hist = guest_lines(&out, "workload hist ");
    assert_eq!(hist.len(), 1, "{out}");
    let total: u64 = hist[0]
        .split_whitespace()
        .skip(2)
        .map(|b| b.split_once(':').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 1000, "{out}");
    let done = guest_lines(&out, "workload done");
    assert_eq!(done.len(), 1, "{out}");
    let num = |k: &str| -> u64 {
        field(&done[0], k)
            .unwrap_or_else(|| panic!("{k} missing\n{out}"))
            .parse()
            .unwrap()
    };
    assert_eq!(num("n"), 1000);
    assert_eq!(num("errors"), 0);
    assert_eq!(num("reads") + num("writes"), 1000);
    assert!(num("p50_ns") <= num("p99_ns") && num("iops") > 0, "{out}");
    // Several requests per kick: the queue really was deep.
    assert!(num("kicks") < 1000, "{out}");
    qemu_img_check(&img);
    let _ = std::fs::remove_dir_all(d);
}
