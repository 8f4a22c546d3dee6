//! The vgpu rows of `vlab bench` (issue 3): the guest kernel's
//! `vgpu-poll`, `vgpu-fill`, `vgpu-dma` and `vgpu-irq` tests (guest
//! `bench_tests.rs`) and `vgpu-scene` under the I/O trace, each booted
//! in-process through `vmm::vm::Vm` with one vgpu. vlab only: QEMU has no
//! vgpu.
//!
//! - Register-page poll: `vgpu-poll` twice, with the register page mapped
//!   (a STATUS read is a plain load) and without (`register_pages: false`:
//!   the same load traps to vlab, which serves it from the same page). The
//!   MMIO exit counts prove which path ran. The guest runs the same loop
//!   in ring 3 (the register page mapped into its user window, as a
//!   driver's user-space half polls it: the main row) and in ring 0 (a
//!   second row: on kvm_pvm guest kernel code is emulated, so a kernel
//!   load costs microseconds there whatever it reads).
//! - Fill rate / DMA: bytes written / read by the engine per kvm-clock
//!   second, first doorbell to the last fence's interrupt.
//! - Interrupts per second: fence → MSI → `hlt` wake → acknowledge, one at
//!   a time.
//! - Exits per frame: `vgpu-scene` with monitors and the trace on, the trace
//!   summarised by `vlab trace`'s own code.

use std::sync::atomic::Ordering;

use devices::monitor::ReportSink;
use vmm::control::StopReason;
use vmm::pci::PciDeviceKind;
use vmm::trace::ObserveOptions;
use vmm::vm::{KernelSource, MachineOptions, Vm};

use super::stats::{Fields, Row, Target, Unit, VLAB_ONLY};
use super::{Capture, MEM_BYTES};
use crate::guest::{GUEST_ELF, GUEST_NAME};

/// The target: a page read at least this many times cheaper.
pub const POLL_TARGET: f64 = 50.0;

/// How much work each test does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// STATUS reads per `vgpu-poll` loop.
    pub poll: u64,
    /// Full-screen (1024×768) FILL_RECTs per `vgpu-fill`.
    pub fills: u64,
    /// 3 MiB UPLOAD_IMAGEs per `vgpu-dma`.
    pub uploads: u64,
    /// Fences (interrupts) per `vgpu-irq`.
    pub irqs: u64,
}

impl Sizes {
    /// `poll` reads per loop; the rest fixed (smaller with `--quick`).
    pub fn new(poll: u64, quick: bool) -> Sizes {
        if quick {
            Sizes {
                poll,
                fills: 16,
                uploads: 16,
                irqs: 100,
            }
        } else {
            Sizes {
                poll,
                fills: 256,
                uploads: 128,
                irqs: 1000,
            }
        }
    }
}

/// Bytes of one `vgpu-dma` upload: a whole 1024×768 XRGB8888 screen.
const UPLOAD_BYTES: u64 = 1024 * 768 * 4;

/// What one in-process boot left behind.
struct Boot {
    out: String,
    mmio_exits: u64,
    trace: Vec<u8>,
}

/// Boot the built-in guest with one vgpu and `cmdline`; it must exit 0.
fn boot(cmdline: &str, register_pages: bool, trace: bool) -> Result<Boot, String> {
    let opts = MachineOptions {
        pci_devices: vec![PciDeviceKind::Vgpu],
        disks: Vec::new(),
        cpus: 1,
        mem_size: MEM_BYTES,
        irqchip: true,
        register_pages,
    };
    let cap = Capture::default();
    let trace_cap = Capture::default();
    let observe = trace.then(|| {
        let report: ReportSink = Box::new(|_| {});
        ObserveOptions {
            monitors: true,
            trace: Some(Box::new(trace_cap.clone())),
            report: Some(report),
            ..ObserveOptions::default()
        }
    });
    let mut vm =
        Vm::with_observer(&opts, Box::new(cap.clone()), observe).map_err(|e| e.to_string())?;
    vm.boot(&KernelSource::Bytes(GUEST_ELF, GUEST_NAME), None, cmdline)
        .map_err(|e| e.to_string())?;
    let running = vm.start().map_err(|e| e.to_string())?;
    let handles = running.handles().clone();
    let reason = running.wait();
    let out = cap.text();
    if reason != StopReason::GuestExit(0) {
        return Err(format!(
            "vlab `{cmdline}` (vgpu) stopped with {reason:?}; output:\n{out}"
        ));
    }
    if let Some(m) = &handles.monitor {
        if m.violations() != 0 {
            return Err(format!(
                "vlab `{cmdline}`: {} protocol-monitor violations; output:\n{out}",
                m.violations()
            ));
        }
    }
    let trace = trace_cap
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Boot {
        out,
        mmio_exits: handles.buses.stats.mmio.load(Ordering::Relaxed),
        trace,
    })
}

/// The guest's result line `head`, with `keys` all present.
fn fields<'a>(b: &'a Boot, cmdline: &str, head: &str, keys: &[&str]) -> Result<Fields<'a>, String> {
    let f = Fields::find(&b.out, head)
        .ok_or_else(|| format!("vlab `{cmdline}`: no `{head}` line in:\n{}", b.out))?;
    match keys.iter().find(|k| f.u64(k).is_none()) {
        Some(k) => Err(format!(
            "vlab `{cmdline}`: `{head}` line without {k}= in:\n{}",
            b.out
        )),
        None => Ok(f),
    }
}

fn get(f: &Fields, k: &str) -> u64 {
    f.u64(k).unwrap_or(0)
}

/// ns per read of one `vgpu-poll` boot: STATUS and the RAM word, by the
/// ring-3 loop (the rows' figures) and by the ring-0 loop.
struct PollRun {
    user: f64,
    user_ram: f64,
    kernel: f64,
}

/// The `vgpu-poll mode=<mode>` line's ns per read of STATUS and of RAM.
fn poll_line(b: &Boot, cmdline: &str, mode: &str, n: u64) -> Result<(f64, f64), String> {
    let tag = format!(" mode={mode} ");
    let lines: Vec<&str> = b.out.lines().filter(|l| l.contains(&tag)).collect();
    let out = lines.join("\n");
    let f = Fields::find(&out, "vgpu-poll")
        .filter(|f| {
            ["n", "status_ns", "ram_ns"]
                .iter()
                .all(|k| f.u64(k).is_some())
        })
        .ok_or_else(|| {
            format!(
                "vlab `{cmdline}`: no `vgpu-poll mode={mode}` line in:\n{}",
                b.out
            )
        })?;
    let (ns, ram) = (get(&f, "status_ns"), get(&f, "ram_ns"));
    if get(&f, "n") != n || ns == 0 || ram == 0 {
        return Err(format!(
            "vlab `{cmdline}`: bad mode={mode} result in:\n{}",
            b.out
        ));
    }
    Ok((ns as f64 / n as f64, ram as f64 / n as f64))
}

/// One `vgpu-poll` boot with the register page mapped or not. The guest
/// runs the same loop in ring 0 and in ring 3; checks from the exit count
/// that the STATUS reads took the path asked for.
fn poll(n: u64, register_pages: bool) -> Result<PollRun, String> {
    let cmdline = format!("test=vgpu-poll n={n}");
    let b = boot(&cmdline, register_pages, false)?;
    let (kernel, _) = poll_line(&b, &cmdline, "kernel", n)?;
    let (user, user_ram) = poll_line(&b, &cmdline, "user", n)?;
    // Probe and reset cost a handful of MMIO exits; the two loops 2n or
    // none.
    let ok = if register_pages {
        b.mmio_exits < n
    } else {
        b.mmio_exits >= 2 * n
    };
    if !ok {
        return Err(format!(
            "vlab `{cmdline}`: {} MMIO exits for 2 × {n} STATUS reads with the register page {}",
            b.mmio_exits,
            if register_pages { "mapped" } else { "unmapped" }
        ));
    }
    Ok(PollRun {
        user,
        user_ram,
        kernel,
    })
}

/// MB/s of a `vgpu-fill` or `vgpu-dma` run.
fn throughput(cmdline: &str, head: &str) -> Result<f64, String> {
    let b = boot(cmdline, true, false)?;
    let f = fields(&b, cmdline, head, &["bytes", "ns", "irqs"])?;
    let (bytes, ns) = (get(&f, "bytes"), get(&f, "ns"));
    if bytes == 0 || ns == 0 || get(&f, "irqs") == 0 {
        return Err(format!("vlab `{cmdline}`: bad result in:\n{}", b.out));
    }
    Ok(bytes as f64 / ns as f64 * 1e3)
}

/// Interrupts per second of `vgpu-irq`.
fn irq_rate(n: u64) -> Result<f64, String> {
    let cmdline = format!("test=vgpu-irq n={n}");
    let b = boot(&cmdline, true, false)?;
    let f = fields(&b, &cmdline, "vgpu-irq", &["irqs", "ns"])?;
    let (irqs, ns) = (get(&f, "irqs"), get(&f, "ns"));
    if irqs != n || ns == 0 {
        return Err(format!(
            "vlab `{cmdline}`: {irqs} interrupts for {n} fences in:\n{}",
            b.out
        ));
    }
    Ok(irqs as f64 / ns as f64 * 1e9)
}

/// Steady-state exits per frame of `vgpu-scene`, from its trace.
fn exits_per_frame() -> Result<f64, String> {
    let cmdline = "test=vgpu-scene";
    let b = boot(cmdline, true, true)?;
    if !b.out.contains("vgpu scene done") {
        return Err(format!(
            "vlab `{cmdline}`: no `vgpu scene done` in:\n{}",
            b.out
        ));
    }
    let sum = crate::trace::summarize(&b.trace[..])
        .map_err(|e| format!("vlab `{cmdline}`: cannot read its trace: {e}"))?;
    sum.devices
        .iter()
        .find(|(name, _)| name == "vgpu")
        .and_then(|(_, d)| d.exits_per_frame())
        .ok_or_else(|| format!("vlab `{cmdline}`: the trace has no vgpu frames"))
}

/// The vgpu rows, empty.
pub fn rows() -> Vec<Row> {
    let own = |metric: &str, key: &'static str, unit: Unit| Row {
        metric: metric.to_string(),
        key,
        peer: VLAB_ONLY,
        vlab: vec![],
        peer_runs: vec![],
        unit,
        target: Target::None,
    };
    vec![
        Row {
            metric: "register-page poll vs trapped read (vgpu STATUS, user-mode `mov` from BAR0)"
                .to_string(),
            key: "vgpu_poll_ns",
            peer: "the same read, trapped (register page not mapped)",
            vlab: vec![],
            peer_runs: vec![],
            unit: Unit::Ns,
            target: Target::CheaperBy(POLL_TARGET),
        },
        Row {
            metric: "register-page poll vs trapped read, guest kernel mode (emulated on kvm_pvm)"
                .to_string(),
            key: "vgpu_poll_kernel_ns",
            peer: "the same read, trapped (register page not mapped)",
            vlab: vec![],
            peer_runs: vec![],
            unit: Unit::Ns,
            target: Target::None,
        },
        own(
            "vgpu fill rate (MB/s), 1024×768 FILL_RECTs",
            "vgpu_fill_mbps",
            Unit::MBps,
        ),
        own(
            "vgpu DMA upload (MB/s), 3 MiB UPLOAD_IMAGEs from guest RAM",
            "vgpu_dma_mbps",
            Unit::MBps,
        ),
        own(
            "vgpu interrupts/s (fence → MSI → `hlt` wake → ack, one at a time)",
            "vgpu_irqs_per_s",
            Unit::PerSec,
        ),
        own(
            "exits per frame (vgpu-scene, vlab trace), reference driver",
            "vgpu_exits_per_frame",
            Unit::Count,
        ),
    ]
}

/// One run of every vgpu figure, pushed onto `rows` (from [`rows`]); the
/// ring-3 poll loop's RAM baseline (ns per read of a RAM word) onto `ram`.
pub fn run_once(rows: &mut [Row], ram: &mut Vec<f64>, s: Sizes) -> Result<(), String> {
    let page = poll(s.poll, true)?;
    let trapped = poll(s.poll, false)?;
    ram.push(page.user_ram);
    rows[0].vlab.push(page.user);
    rows[0].peer_runs.push(trapped.user);
    rows[1].vlab.push(page.kernel);
    rows[1].peer_runs.push(trapped.kernel);
    let fill = throughput(&format!("test=vgpu-fill n={}", s.fills), "vgpu-fill")?;
    rows[2].vlab.push(fill);
    let dma = throughput(
        &format!("test=vgpu-dma n={} size={UPLOAD_BYTES}", s.uploads),
        "vgpu-dma",
    )?;
    rows[3].vlab.push(dma);
    rows[4].vlab.push(irq_rate(s.irqs)?);
    rows[5].vlab.push(exits_per_frame()?);
    Ok(())
}

/// Warm-up: one short run of each test, not measured.
pub fn warm_up() -> Result<(), String> {
    poll(1000, true)?;
    poll(1000, false)?;
    throughput("test=vgpu-fill n=4", "vgpu-fill")?;
    irq_rate(20)?;
    Ok(())
}
