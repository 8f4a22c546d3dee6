//! The disk rows of `vlab bench` (issue 4): virtio-blk throughput against
//! the host and QEMU, timing-model fidelity, and the cost of clones.
//!
//! - Throughput: the guest kernel's `blk-workload` (4 KiB random reads at
//!   queue depth 16; sequential reads and writes of 64 KiB requests at
//!   queue depth 16, 1 MiB in flight) on a fully written raw and qcow2
//!   image, booted in-process through `vmm::vm::Vm`. Peers: a host loop of
//!   the same pattern over the same file (4 KiB `pread`s at random 4 KiB
//!   offsets, 1 MiB `pread`s/`pwrite`s in order), and QEMU q35 running the
//!   same guest ELF with the image on `virtio-blk-pci`. Everything goes
//!   through the host page cache, as vlab's device does (no `O_DIRECT`).
//! - Fidelity: `blk-workload pattern=rand` at queue depth 1 and 4 on a disk
//!   with `model=hdd:hp97560,stats=FILE`; the records are summarised as
//!   `vlab disk stats` does ([`crate::disk_stats`]): p50 of
//!   |observed − modelled| / modelled and the Ruemmler–Wilkes demerit.
//! - Clones: 20 `block::image::clone_image` calls on a 1 GiB qcow2 master
//!   with every cluster allocated, against 20 `qemu-img create -f qcow2 -b
//!   master -F qcow2` (and 20 `vlab disk clone` children, process against
//!   process).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use block::image::{self, Format, OpenOptions};
use block::model::stats::{demerit_percent, percentile};
use vmm::control::StopReason;
use vmm::disk::DiskSpec;
use vmm::vm::{KernelSource, MachineOptions, Vm};

use super::stats::{Row, Target, Unit, VLAB_ONLY};
use super::{time_child, Capture, Qemu, MEM_BYTES};
use crate::guest::{GUEST_ELF, GUEST_NAME};

/// The fidelity targets: p50 error and demerit, % of modelled.
const FIDELITY_TARGET: f64 = 2.0;
/// Clones per clone run.
const CLONES: usize = 20;
/// The timing model of the fidelity rows.
const MODEL: &str = "hdd:hp97560";
/// Guest queue depth for the throughput rows (the guest driver's maximum).
const QD: u32 = 16;
/// Sectors per guest request: 4 KiB random, 64 KiB sequential (the guest
/// driver's largest request).
const RAND_SECTORS: u64 = 8;
const SEQ_SECTORS: u64 = 128;
const MIB: u64 = 1 << 20;

/// How much work each figure does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Bytes of each throughput image (the sequential runs cover it all).
    pub image: u64,
    /// Guest 4 KiB random reads per run.
    pub rand_n: u64,
    /// Host 4 KiB random reads per run.
    pub host_rand_n: u64,
    /// Requests per fidelity run (each queue depth).
    pub fid_n: u64,
    /// The clone master's virtual size.
    pub master: u64,
    /// Measured disk runs (each one of every figure).
    pub runs: u32,
    /// Run QEMU (each boot costs seconds on kvm_pvm).
    pub qemu: bool,
}

impl Sizes {
    /// Full or `--quick` sizes; at most `runs` runs (5 by default: every
    /// QEMU run is a whole boot).
    pub fn new(runs: u32, quick: bool) -> Sizes {
        if quick {
            Sizes {
                image: 4 * MIB,
                rand_n: 200,
                host_rand_n: 2000,
                fid_n: 8,
                master: 16 * MIB,
                runs: 1,
                qemu: false,
            }
        } else {
            Sizes {
                image: 128 * MIB,
                rand_n: 2000,
                host_rand_n: 50_000,
                fid_n: 100,
                master: 1 << 30,
                runs: runs.min(5),
                qemu: true,
            }
        }
    }
}

/// The images, in a temporary directory removed on drop.
pub struct Images {
    dir: PathBuf,
    raw: PathBuf,
    qcow2: PathBuf,
    /// Raw, the size of the images: where the host loop writes for the
    /// qcow2 rows (raw bytes written over a qcow2 file would corrupt it).
    scratch: PathBuf,
    master: PathBuf,
    qemu_img: PathBuf,
    /// The error of the first `qemu-img` that failed (its column is n/a).
    qemu_img_failed: Option<String>,
    /// The error of the first QEMU disk boot that failed.
    qemu_failed: Option<String>,
    sizes: Sizes,
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn io_err<'a>(what: &str, p: &'a Path) -> impl Fn(std::io::Error) -> String + 'a {
    let what = what.to_string();
    move |e| format!("cannot {what} {}: {e}", p.display())
}

fn img_err(e: image::ImageError) -> String {
    e.to_string()
}

/// Fill `path` with `size` bytes of non-zero data, 1 MiB at a time; with
/// `sync`, wait until it is on disk (so that writeback does not disturb
/// the measurements).
fn fill_raw(path: &Path, size: u64, sync: bool) -> Result<(), String> {
    let f = File::create(path).map_err(io_err("create", path))?;
    let buf: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    for off in (0..size).step_by(MIB as usize) {
        f.write_all_at(&buf, off).map_err(io_err("write", path))?;
    }
    if sync {
        f.sync_all().map_err(io_err("sync", path))?;
    }
    Ok(())
}

impl Images {
    /// Create and fill the images: raw and qcow2 throughput images with
    /// every byte written, the scratch file, and the clone master (qcow2,
    /// every byte written, so every cluster is allocated).
    pub fn new(sizes: Sizes, qemu: &Path) -> Result<Images, String> {
        let dir = std::env::temp_dir().join(format!("vlab-bench-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let qemu_img = qemu
            .parent()
            .map(|d| d.join("qemu-img"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("qemu-img"));
        let imgs = Images {
            raw: dir.join("disk.raw"),
            qcow2: dir.join("disk.qcow2"),
            scratch: dir.join("scratch.raw"),
            master: dir.join("master.qcow2"),
            dir,
            qemu_img,
            qemu_img_failed: None,
            qemu_failed: None,
            sizes,
        };
        // --quick (no QEMU) skips the syncs.
        let sync = sizes.qemu;
        fill_raw(&imgs.raw, sizes.image, sync)?;
        fill_raw(&imgs.scratch, sizes.image, sync)?;
        image::create_qcow2(&imgs.qcow2, sizes.image, None).map_err(img_err)?;
        let opts = OpenOptions {
            format: Some(Format::Qcow2),
            ..OpenOptions::default()
        };
        {
            let mut q = image::open(&imgs.qcow2, opts).map_err(img_err)?;
            let buf: Vec<u8> = (0..MIB).map(|i| (i % 241) as u8 + 1).collect();
            for off in (0..sizes.image).step_by(MIB as usize) {
                q.write_at(off, &buf).map_err(img_err)?;
            }
            q.flush().map_err(img_err)?;
        }
        image::create_qcow2(&imgs.master, sizes.master, None).map_err(img_err)?;
        {
            // Every byte, 8 MiB per write: qcow2 syncs once per allocating
            // write, so one byte per cluster would cost a sync per cluster.
            let mut m = image::open(&imgs.master, opts).map_err(img_err)?;
            let buf = vec![0x5au8; 8 << 20];
            for off in (0..sizes.master).step_by(buf.len()) {
                let len = buf.len().min((sizes.master - off) as usize);
                m.write_at(off, &buf[..len]).map_err(img_err)?;
            }
            m.flush().map_err(img_err)?;
        }
        trim_heap();
        Ok(imgs)
    }

    fn image(&self, fmt: Format) -> &Path {
        match fmt {
            Format::Raw => &self.raw,
            Format::Qcow2 => &self.qcow2,
        }
    }
}

/// One throughput figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    RandRead,
    SeqRead,
    SeqWrite,
}

const TESTS: [Test; 3] = [Test::RandRead, Test::SeqRead, Test::SeqWrite];
const FORMATS: [Format; 2] = [Format::Raw, Format::Qcow2];

impl Test {
    fn cmdline(self, s: &Sizes) -> String {
        let (pattern, n, size, read_pct) = match self {
            Test::RandRead => ("rand", s.rand_n, RAND_SECTORS, 100),
            Test::SeqRead => ("seq", s.image / 512 / SEQ_SECTORS, SEQ_SECTORS, 100),
            Test::SeqWrite => ("seq", s.image / 512 / SEQ_SECTORS, SEQ_SECTORS, 0),
        };
        format!(
            "test=blk-workload pattern={pattern} qd={QD} n={n} size={size} seed=7 \
             read_pct={read_pct} lines=0"
        )
    }
    /// The row's figure from the guest's `workload done` fields.
    fn figure(self, done: &Done) -> f64 {
        match self {
            Test::RandRead => done.iops,
            Test::SeqRead | Test::SeqWrite => done.mbps,
        }
    }
    fn unit(self) -> Unit {
        match self {
            Test::RandRead => Unit::PerSec,
            Test::SeqRead | Test::SeqWrite => Unit::MBps,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Test::RandRead => "4 KiB random read IOPS",
            Test::SeqRead => "sequential read MB/s (1 MiB)",
            Test::SeqWrite => "sequential write MB/s (1 MiB)",
        }
    }
}

/// The guest's `workload done` line.
struct Done {
    n: u64,
    iops: f64,
    mbps: f64,
    errors: u64,
}

fn parse_done(out: &str) -> Option<Done> {
    let rest = out
        .lines()
        .find_map(|l| l.split_once("vlab-guest: workload done ").map(|(_, r)| r))?;
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|t| t.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(Done {
        n: field("n")? as u64,
        iops: field("iops")?,
        mbps: field("mbps")?,
        errors: field("errors")? as u64,
    })
}

/// Boot the built-in guest in-process with one disk; it must exit 0.
fn vlab_boot(disk: DiskSpec, cmdline: &str) -> Result<String, String> {
    let opts = MachineOptions {
        pci_devices: Vec::new(),
        disks: vec![disk],
        cpus: 1,
        mem_size: MEM_BYTES,
        irqchip: true,
        register_pages: true,
    };
    let cap = Capture::default();
    let mut vm = Vm::new(&opts, Box::new(cap.clone())).map_err(|e| e.to_string())?;
    vm.boot(&KernelSource::Bytes(GUEST_ELF, GUEST_NAME), None, cmdline)
        .map_err(|e| e.to_string())?;
    let running = vm.start().map_err(|e| e.to_string())?;
    let reason = running.wait();
    let out = cap.text();
    if reason != StopReason::GuestExit(0) {
        return Err(format!(
            "vlab `{cmdline}` (disk) stopped with {reason:?}; output:\n{out}"
        ));
    }
    Ok(out)
}

fn spec(path: &Path, fmt: Format) -> DiskSpec {
    DiskSpec {
        path: path.to_path_buf(),
        read_only: false,
        format: Some(fmt),
        model: None,
        serial: None,
        stats: None,
    }
}

/// Check a `workload done` line: all `n` requests, no errors.
fn check_done(out: &str, cmdline: &str, who: &str) -> Result<Done, String> {
    let d = parse_done(out)
        .ok_or_else(|| format!("{who} `{cmdline}`: no `workload done` line in:\n{out}"))?;
    let want = cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("n="))
        .and_then(|v| v.parse::<u64>().ok());
    if Some(d.n) != want || d.errors != 0 {
        return Err(format!(
            "{who} `{cmdline}`: {} requests, {} errors in:\n{out}",
            d.n, d.errors
        ));
    }
    Ok(d)
}

/// QEMU q35 running the guest with the image on virtio-blk-pci.
fn qemu_command(q: &Qemu, elf: &Path, img: &Path, fmt: Format, cmdline: &str) -> Command {
    let mut cmd = super::qemu_guest_command(q.bin, "q35", q.cpu, elf);
    cmd.arg("-append").arg(cmdline).arg("-drive").arg(format!(
        "file={},if=none,id=d0,format={},cache=writeback,aio=threads",
        img.display(),
        fmt.name()
    ));
    cmd.args(["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]);
    cmd
}

/// The QEMU command line as shown in the notes.
pub fn qemu_text(q: &Qemu) -> String {
    let cmd = qemu_command(
        q,
        Path::new("<guest ELF>"),
        Path::new("IMG"),
        Format::Raw,
        "test=blk-workload ...",
    );
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn qemu_run(q: &Qemu, elf: &Path, img: &Path, fmt: Format, cmdline: &str) -> Result<Done, String> {
    let r = time_child(qemu_command(q, elf, img, fmt, cmdline))
        .map_err(|e| format!("cannot run {}: {e}", q.bin.display()))?;
    // isa-debug-exit: status (v << 1) | 1, so the guest's 0 is 1.
    if r.status != 1 {
        let err = r.stderr.lines().take(3).collect::<Vec<_>>().join(" / ");
        return Err(format!(
            "QEMU q35 `{cmdline}` on {}: {} (want 1); stderr: {err}",
            fmt.name(),
            super::status_text(r.status)
        ));
    }
    check_done(&r.stdout, cmdline, "QEMU q35")
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The host loop: the same pattern with `pread`/`pwrite` on `path`.
fn host_run(path: &Path, test: Test, s: &Sizes) -> Result<f64, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(test == Test::SeqWrite)
        .open(path)
        .map_err(io_err("open", path))?;
    let size = s.image;
    match test {
        Test::RandRead => {
            let mut buf = vec![0u8; 4096];
            let blocks = size / 4096;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let t0 = Instant::now();
            for _ in 0..s.host_rand_n {
                let off = rng.next() % blocks * 4096;
                f.read_exact_at(&mut buf, off)
                    .map_err(io_err("read", path))?;
            }
            Ok(s.host_rand_n as f64 / t0.elapsed().as_secs_f64())
        }
        Test::SeqRead | Test::SeqWrite => {
            let mut buf = vec![0x3cu8; MIB as usize];
            let t0 = Instant::now();
            for off in (0..size).step_by(MIB as usize) {
                if test == Test::SeqRead {
                    f.read_exact_at(&mut buf, off)
                        .map_err(io_err("read", path))?;
                } else {
                    f.write_all_at(&buf, off).map_err(io_err("write", path))?;
                }
            }
            Ok(size as f64 / t0.elapsed().as_secs_f64() / 1e6)
        }
    }
}

/// One fidelity run's figures, all % of the modelled time.
struct Fidelity {
    /// Device view (`vlab disk stats`): p50, p99 of |observed − modelled|
    /// / modelled, demerit.
    dev: [f64; 3],
    /// Guest view (kvm-clock latency against the same k·T): the same.
    guest: [f64; 3],
    /// Requests that missed their modelled time.
    missed: f64,
}

/// The guest's `lat <idx> <R|W> <lba> <sectors> <ns>` lines: (lba, ns).
fn guest_lats(out: &str) -> Vec<(u64, f64)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.split_once("vlab-guest: lat ")?.1;
            let w: Vec<&str> = rest.split_whitespace().collect();
            match w[..] {
                [_, _, lba, _, ns] => Some((lba.parse().ok()?, ns.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// p50, p99 of |a − m| / m (%), and the demerit of `a` against `m` (% of
/// m's mean).
fn errors(pairs: &[(f64, f64)]) -> Option<[f64; 3]> {
    let rel: Vec<f64> = pairs
        .iter()
        .filter(|(_, m)| *m > 0.0)
        .map(|(a, m)| (a - m).abs() / m * 100.0)
        .collect();
    let a: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let m: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    Some([
        percentile(&rel, 50.0)?,
        percentile(&rel, 99.0)?,
        demerit_percent(&a, &m)?,
    ])
}

/// One fidelity run at queue depth `qd`, summarised as `vlab disk stats`
/// does (device view) and against the guest's own per-request latency.
fn fidelity(imgs: &Images, qd: u32) -> Result<Fidelity, String> {
    let stats = imgs.dir.join(format!("model-qd{qd}.txt"));
    let _ = std::fs::remove_file(&stats);
    let mut d = spec(&imgs.raw, Format::Raw);
    d.model = Some(MODEL.to_string());
    d.stats = Some(stats.clone());
    let n = imgs.sizes.fid_n;
    let cmdline = format!("test=blk-workload pattern=rand qd={qd} n={n} size=8 seed=11 lines=1");
    let out = vlab_boot(d, &cmdline)?;
    check_done(&out, &cmdline, "vlab")?;
    let text = std::fs::read_to_string(&stats).map_err(io_err("read disk stats", &stats))?;
    // (record, its LBA), in the order the device submitted them.
    let recs: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let r = crate::disk_stats::parse_line(l)?;
            let lba = l
                .split_whitespace()
                .find_map(|t| t.strip_prefix("lba="))?
                .parse::<u64>()
                .ok()?;
            Some((r, lba))
        })
        .collect();
    let lats = guest_lats(&out);
    if recs.len() as u64 != n || lats.len() as u64 != n {
        return Err(format!(
            "vlab `{cmdline}`: {} disk-model records and {} guest latencies for {n} requests",
            recs.len(),
            lats.len()
        ));
    }
    if let Some(i) = (0..recs.len()).find(|&i| recs[i].1 != lats[i].0) {
        return Err(format!(
            "vlab `{cmdline}`: request {i} is LBA {} to the guest but {} to the model",
            lats[i].0, recs[i].1
        ));
    }
    let bad = || format!("vlab `{cmdline}`: no usable disk-model records");
    let dev: Vec<(f64, f64)> = recs
        .iter()
        .map(|(r, _)| (r.observed_ns, r.modelled_ns))
        .collect();
    let guest: Vec<(f64, f64)> = recs
        .iter()
        .zip(&lats)
        .map(|((r, _), (_, ns))| (*ns, r.modelled_ns))
        .collect();
    Ok(Fidelity {
        dev: errors(&dev).ok_or_else(bad)?,
        guest: errors(&guest).ok_or_else(bad)?,
        missed: recs.iter().filter(|(r, _)| r.missed).count() as f64,
    })
}

/// Give freed heap memory back to the kernel. The disk runs allocate
/// megabyte buffers in this process (and its device threads' arenas);
/// glibc keeps them, and a spawned child's `ru_maxrss` counts this
/// process's RSS at `exec`, so without this the peak RSS row would measure
/// the disk rows' leftovers.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes a file occupies (allocated blocks).
fn allocated(p: &Path) -> Result<u64, String> {
    Ok(std::fs::metadata(p).map_err(io_err("stat", p))?.blocks() * 512)
}

/// Time 20 clones made by `make`, sum their allocated bytes, remove them.
fn clones(
    imgs: &Images,
    tag: &str,
    mut make: impl FnMut(&Path) -> Result<(), String>,
) -> Result<(f64, f64), String> {
    let paths: Vec<PathBuf> = (0..CLONES)
        .map(|i| imgs.dir.join(format!("clone-{tag}-{i}.qcow2")))
        .collect();
    let t0 = Instant::now();
    for p in &paths {
        make(p)?;
    }
    let ns = t0.elapsed().as_nanos() as f64;
    let mut bytes = 0;
    for p in &paths {
        bytes += allocated(p)?;
        let _ = std::fs::remove_file(p);
    }
    Ok((ns, bytes as f64))
}

fn child_ok(mut cmd: Command, what: &str) -> Result<(), String> {
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{what}: {}; {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// Row indices.
fn tp_row(fmt: Format, test: Test, qemu: bool) -> usize {
    let f = FORMATS.iter().position(|&x| x == fmt).unwrap_or(0);
    let t = TESTS.iter().position(|&x| x == test).unwrap_or(0);
    (f * TESTS.len() + t) * 2 + usize::from(qemu)
}
const FID: usize = FORMATS.len() * TESTS.len() * 2;
const CLONE: usize = FID + 8;

/// The disk rows, empty.
pub fn rows(s: &Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    for fmt in FORMATS {
        for test in TESTS {
            let base = format!("virtio-blk {}, {}", test.name(), fmt.name());
            rows.push(Row {
                metric: format!("{base} vs host `pread`/`pwrite` on the file"),
                key: match (fmt, test) {
                    (Format::Raw, Test::RandRead) => "blk_rand4k_iops_raw_vs_host",
                    (Format::Raw, Test::SeqRead) => "blk_seq_read_mbps_raw_vs_host",
                    (Format::Raw, Test::SeqWrite) => "blk_seq_write_mbps_raw_vs_host",
                    (Format::Qcow2, Test::RandRead) => "blk_rand4k_iops_qcow2_vs_host",
                    (Format::Qcow2, Test::SeqRead) => "blk_seq_read_mbps_qcow2_vs_host",
                    (Format::Qcow2, Test::SeqWrite) => "blk_seq_write_mbps_qcow2_vs_host",
                },
                peer: "host loop, same pattern, same file",
                vlab: vec![],
                peer_runs: vec![],
                unit: test.unit(),
                target: Target::Ratio,
            });
            rows.push(Row {
                metric: format!("{base} vs QEMU q35 virtio-blk-pci"),
                key: match (fmt, test) {
                    (Format::Raw, Test::RandRead) => "blk_rand4k_iops_raw_vs_qemu",
                    (Format::Raw, Test::SeqRead) => "blk_seq_read_mbps_raw_vs_qemu",
                    (Format::Raw, Test::SeqWrite) => "blk_seq_write_mbps_raw_vs_qemu",
                    (Format::Qcow2, Test::RandRead) => "blk_rand4k_iops_qcow2_vs_qemu",
                    (Format::Qcow2, Test::SeqRead) => "blk_seq_read_mbps_qcow2_vs_qemu",
                    (Format::Qcow2, Test::SeqWrite) => "blk_seq_write_mbps_qcow2_vs_qemu",
                },
                peer: "QEMU q35, virtio-blk-pci, same guest and image",
                vlab: vec![],
                peer_runs: vec![],
                unit: test.unit(),
                target: Target::Ratio,
            });
        }
    }
    // The device view is a consistency check of the throttle, not a
    // fidelity measure: it releases each request at submit + k·T unless the
    // host missed that time, so it reads 0 by construction. The guest view
    // (what the guest's own clock saw) is the one held to the target.
    let own = |metric: String, key: &'static str, target: Target| Row {
        metric,
        key,
        peer: VLAB_ONLY,
        vlab: vec![],
        peer_runs: vec![],
        unit: Unit::Percent,
        target,
    };
    for (view, what) in [
        (
            "device",
            "device view (`vlab disk stats`; 0 unless the host missed the model)",
        ),
        ("guest", "guest view (kvm-clock)"),
    ] {
        for (stat, name) in [
            ("p50", "p50 abs(actual − modelled) / modelled"),
            ("demerit", "Ruemmler–Wilkes demerit / modelled mean"),
        ] {
            for qd in [1, 4] {
                rows.push(own(
                    format!("model fidelity ({MODEL}, 4 KiB random, qd {qd}): {name}, {what}"),
                    match (view, stat, qd) {
                        ("device", "p50", 1) => "blk_model_dev_p50_err_pct_qd1",
                        ("device", "p50", _) => "blk_model_dev_p50_err_pct_qd4",
                        ("device", _, 1) => "blk_model_dev_demerit_pct_qd1",
                        ("device", _, _) => "blk_model_dev_demerit_pct_qd4",
                        (_, "p50", 1) => "blk_model_guest_p50_err_pct_qd1",
                        (_, "p50", _) => "blk_model_guest_p50_err_pct_qd4",
                        (_, _, 1) => "blk_model_guest_demerit_pct_qd1",
                        _ => "blk_model_guest_demerit_pct_qd4",
                    },
                    if view == "device" {
                        Target::None
                    } else {
                        Target::Below(FIDELITY_TARGET)
                    },
                ));
            }
        }
    }
    let master = if s.master >= 1 << 30 {
        format!("{} GiB", s.master >> 30)
    } else {
        format!("{} MiB", s.master >> 20)
    };
    let clone_row = |metric: String, key, peer, unit| Row {
        metric,
        key,
        peer,
        vlab: vec![],
        peer_runs: vec![],
        unit,
        target: Target::Ratio,
    };
    rows.push(clone_row(
        format!("{CLONES} clones of a {master} master: time (`clone_image`) vs qemu-img"),
        "blk_clone20_ns",
        "qemu-img create -f qcow2 -b master -F qcow2, ×20",
        Unit::NsAsMs,
    ));
    rows.push(clone_row(
        format!(
            "{CLONES} clones of a {master} master: time (`vlab disk clone` ×{CLONES}) vs qemu-img"
        ),
        "blk_clone20_cli_ns",
        "qemu-img create -f qcow2 -b master -F qcow2, ×20",
        Unit::NsAsMs,
    ));
    rows.push(clone_row(
        format!("{CLONES} clones of a {master} master: bytes allocated vs qemu-img"),
        "blk_clone20_kib",
        "qemu-img create -f qcow2 -b master -F qcow2, ×20",
        Unit::KibAsMib,
    ));
    rows
}

/// Extra per-run figures for the notes.
#[derive(Default)]
pub struct Extra {
    /// p99 of |actual − modelled| / modelled, %, per qd (1, 4), device
    /// and guest view.
    p99_dev: [Vec<f64>; 2],
    p99_guest: [Vec<f64>; 2],
    /// Requests that missed their modelled time, per qd.
    missed: [Vec<f64>; 2],
    /// Apparent size of one vlab clone and one qemu-img clone.
    clone_len: Option<(u64, u64)>,
}

/// One run of every disk figure, interleaved: per format and test vlab,
/// host, QEMU; then fidelity; then vlab's clones, `vlab disk clone`, and
/// qemu-img's.
pub fn run_once(
    imgs: &mut Images,
    rows: &mut [Row],
    extra: &mut Extra,
    exe: &Path,
    qemu: Option<&Qemu>,
    elf: &Path,
) -> Result<(), String> {
    let s = imgs.sizes;
    for fmt in FORMATS {
        for test in TESTS {
            let img = imgs.image(fmt).to_path_buf();
            let cmdline = test.cmdline(&s);
            let out = vlab_boot(spec(&img, fmt), &cmdline)?;
            let v = check_done(&out, &cmdline, "vlab")?;
            rows[tp_row(fmt, test, false)].vlab.push(test.figure(&v));
            rows[tp_row(fmt, test, true)].vlab.push(test.figure(&v));
            let host_file = match (fmt, test) {
                (Format::Qcow2, Test::SeqWrite) => imgs.scratch.clone(),
                _ => img.clone(),
            };
            rows[tp_row(fmt, test, false)]
                .peer_runs
                .push(host_run(&host_file, test, &s)?);
            if let (Some(q), true, None) = (qemu, s.qemu, &imgs.qemu_failed) {
                match qemu_run(q, elf, &img, fmt, &cmdline) {
                    Ok(d) => rows[tp_row(fmt, test, true)]
                        .peer_runs
                        .push(test.figure(&d)),
                    Err(e) => imgs.qemu_failed = Some(e),
                }
            }
        }
    }
    for (i, qd) in [1, 4].into_iter().enumerate() {
        let f = fidelity(imgs, qd)?;
        rows[FID + i].vlab.push(f.dev[0]);
        rows[FID + 2 + i].vlab.push(f.dev[2]);
        rows[FID + 4 + i].vlab.push(f.guest[0]);
        rows[FID + 6 + i].vlab.push(f.guest[2]);
        extra.p99_dev[i].push(f.dev[1]);
        extra.p99_guest[i].push(f.guest[1]);
        extra.missed[i].push(f.missed);
    }
    let master = imgs.master.clone();
    let (ns, bytes) = clones(imgs, "vlab", |p| {
        image::clone_image(&master, p).map_err(img_err)
    })?;
    rows[CLONE].vlab.push(ns);
    rows[CLONE + 2].vlab.push(bytes / 1024.0);
    let (ns, _) = clones(imgs, "cli", |p| {
        let mut cmd = Command::new(exe);
        cmd.arg("disk").arg("clone").arg(&master).arg(p);
        child_ok(cmd, "vlab disk clone")
    })?;
    rows[CLONE + 1].vlab.push(ns);
    if extra.clone_len.is_none() {
        let a = imgs.dir.join("len-vlab.qcow2");
        let b = imgs.dir.join("len-qemu.qcow2");
        image::clone_image(&master, &a).map_err(img_err)?;
        let la = std::fs::metadata(&a).map_err(io_err("stat", &a))?.len();
        let lb = qemu_img_clone(imgs, &master, &b)
            .ok()
            .and_then(|_| std::fs::metadata(&b).ok())
            .map_or(0, |m| m.len());
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        extra.clone_len = Some((la, lb));
    }
    if imgs.qemu_img_failed.is_none() {
        let qi = imgs.qemu_img.clone();
        match clones(imgs, "qemu", |p| qemu_img_clone_with(&qi, &master, p)) {
            Ok((ns, bytes)) => {
                rows[CLONE].peer_runs.push(ns);
                rows[CLONE + 1].peer_runs.push(ns);
                rows[CLONE + 2].peer_runs.push(bytes / 1024.0);
            }
            Err(e) => imgs.qemu_img_failed = Some(e),
        }
    }
    trim_heap();
    Ok(())
}

fn qemu_img_clone_with(qemu_img: &Path, master: &Path, clone: &Path) -> Result<(), String> {
    let mut cmd = Command::new(qemu_img);
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(master)
        .args(["-F", "qcow2"])
        .arg(clone);
    child_ok(cmd, &format!("{} create", qemu_img.display()))
}

fn qemu_img_clone(imgs: &Images, master: &Path, clone: &Path) -> Result<(), String> {
    qemu_img_clone_with(&imgs.qemu_img, master, clone)
}

/// Clear the peer columns a failed peer left half filled; say why.
pub fn finish(imgs: &Images, rows: &mut [Row]) {
    if let Some(e) = &imgs.qemu_failed {
        for fmt in FORMATS {
            for test in TESTS {
                rows[tp_row(fmt, test, true)].peer_runs.clear();
            }
        }
        println!("vlab bench: a QEMU disk run was invalid, its disk columns are n/a: {e}");
    }
    if let Some(e) = &imgs.qemu_img_failed {
        for r in &mut rows[CLONE..CLONE + 3] {
            r.peer_runs.clear();
        }
        println!("vlab bench: qemu-img failed, its clone columns are n/a: {e}");
    }
}

/// Notes for the disk rows.
pub fn notes(imgs: &Images, extra: &Extra, qemu: Option<&Qemu>) -> Vec<String> {
    let s = imgs.sizes;
    let med = |v: &[f64]| super::stats::fmt_value(super::stats::median(v), Unit::Percent);
    let mut notes = vec![format!(
        "Disk throughput ({} interleaved runs: vlab, host, QEMU per figure): the guest's \
         `test=blk-workload` on a {} MiB image with every byte written (raw; qcow2 with every \
         cluster allocated), 1 vCPU, MSI-X, in-process through `vmm::vm::Vm`. 4 KiB random \
         reads: {} requests at queue depth {QD}, IOPS from kvm-clock. Sequential: the whole \
         image in 64 KiB requests (the guest driver's largest) at queue depth {QD}, 1 MiB in \
         flight, MB = 10^6 bytes; writes are not flushed. Host: one thread on the same file, \
         `pread` of 4 KiB at {} random 4 KiB-aligned offsets, `pread`/`pwrite` of 1 MiB in \
         order over the whole file (for qcow2 writes, a raw file of the same size next to it: \
         raw bytes over a qcow2 file would corrupt it). Everyone goes through the host page \
         cache, as vlab's device does (buffered I/O, no `O_DIRECT`; QEMU with \
         `cache=writeback,aio=threads`), so the images are served from memory and the ratios \
         are the cost of virtualization, not of the storage. Ratio = vlab / peer: above 1 \
         vlab is faster.",
        s.runs,
        s.image >> 20,
        s.rand_n,
        s.host_rand_n
    )];
    match qemu {
        Some(q) if s.qemu => notes.push(format!(
            "QEMU disk runs: `{}`, the same guest ELF: q35's MCFG gives the guest ECAM, \
             SeaBIOS assigns the BARs, the guest uses MSI-X. Figures are the guest's own \
             (kvm-clock), so QEMU's slower boot does not count.{}",
            qemu_text(q),
            match &imgs.qemu_failed {
                Some(e) => format!(" A run failed, so the QEMU columns are n/a: {e}"),
                None => String::new(),
            }
        )),
        _ if !s.qemu => {
            notes.push("QEMU disk runs are skipped with --quick (each is a q35 boot).".into())
        }
        _ => {}
    }
    notes.push(format!(
        "Model fidelity: `--disk path=IMG,model={MODEL},stats=FILE` and `test=blk-workload \
         pattern=rand size=8 lines=1` ({} requests per run) at queue depth 1 and 4; modelled = \
         the record's k·T (k stayed 1: the host is far faster than a 1994 disk). Device view, as \
         `vlab disk stats FILE` computes it: actual = release − submit from the same record; \
         the throttle's release is max(host done, submit + k·T), so this is 0 unless the host \
         missed the model's time, and measures only that. Guest view: actual = the guest's \
         kvm-clock latency of the same request (matched by order and LBA; kick to the used \
         ring seen after the interrupt), so it adds the kick exit, the throttle's timer \
         wake-up, MSI-X injection and the guest's `hlt` wake-up. p99 of |actual − modelled| / \
         modelled: device {} (qd 1), {} (qd 4); guest {} (qd 1), {} (qd 4). Requests that \
         missed their modelled time: median {:.0} (qd 1) and {:.0} (qd 4) per run.",
        s.fid_n,
        med(&extra.p99_dev[0]),
        med(&extra.p99_dev[1]),
        med(&extra.p99_guest[0]),
        med(&extra.p99_guest[1]),
        super::stats::median(&extra.missed[0]).unwrap_or(0.0),
        super::stats::median(&extra.missed[1]).unwrap_or(0.0),
    ));
    let (la, lb) = extra.clone_len.unwrap_or((0, 0));
    notes.push(format!(
        "Clones: a {} MiB qcow2 master with every byte written (every 64 KiB cluster \
         allocated); {CLONES} × `block::image::clone_image` in-process (opens the \
         master's chain read-only, then writes a qcow2 overlay naming it) against {CLONES} × \
         `{} create -q -f qcow2 -b master -F qcow2` as child processes, and {CLONES} × `vlab \
         disk clone` children (process against process). Bytes: the clones' allocated blocks \
         (`du`); file length of one clone: vlab {la} B, qemu-img {lb} B.",
        s.master >> 20,
        imgs.qemu_img.display()
    ));
    notes
}

/// Warm-up: one short random-read run per format, not measured.
pub fn warm_up(imgs: &Images) -> Result<(), String> {
    if !imgs.sizes.qemu {
        // --quick: a smoke test, no warm-up.
        return Ok(());
    }
    for fmt in FORMATS {
        let cmdline = "test=blk-workload pattern=rand qd=16 n=100 size=8 seed=3 lines=0";
        let out = vlab_boot(spec(imgs.image(fmt), fmt), cmdline)?;
        check_done(&out, cmdline, "vlab")?;
    }
    Ok(())
}
