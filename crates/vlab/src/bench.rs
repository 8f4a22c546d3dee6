//! `vlab bench`: vlab against its peers, measured in one run with the
//! peers interleaved (vlab, peer, vlab, peer, ...), medians and ratios
//! printed as a markdown table.
//!
//! - I/O exit round trip: the built-in guest's `pio-loop`/`mmio-loop`
//!   (run in-process through `vmm::vm::Vm`; the guest times the loop with
//!   kvm-clock) against a raw kvm-ioctls loop ([`raw`]).
//! - Start→exit of the built-in guest (`test=hello`): `vlab run` as a child
//!   process against QEMU microvm booting the same ELF.
//! - Peak RSS of those same children (`wait4`'s `ru_maxrss`).
//! - vgpu (issue 3, vlab only): register-page poll vs trapped read, fill
//!   and DMA throughput, interrupts per second, exits per frame
//!   ([`vgpu`]).
//! - Disks (issue 4): virtio-blk throughput against the host and QEMU q35,
//!   timing-model fidelity, the cost of 20 clones ([`disk`]).

mod disk;
mod raw;
mod stats;
mod vgpu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use vmm::control::StopReason;
use vmm::doctor::KvmFlavour;
use vmm::vm::{KernelSource, MachineOptions, Vm};

use crate::cli::BenchArgs;
use crate::guest::{GUEST_ELF, GUEST_NAME};
use crate::EXIT_VMM_ERROR;
use stats::{Row, Target, Unit};

/// The floor: the guest kernel's loop bytes, in the same CPU mode.
const FLOOR64: raw::Config = raw::Config {
    long_mode: true,
    irqchip: false,
};
/// The floor as first specified: 32-bit protected mode, no paging.
const FLOOR32: raw::Config = raw::Config {
    long_mode: false,
    irqchip: false,
};
/// Guest RAM for every run.
const MEM: &str = "256M";
const MEM_BYTES: u64 = 256 << 20;
/// A child that takes longer than this is killed and the run is invalid.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// The line both boots must print.
const HELLO_DONE: &str = "vlab-guest: hello done";

/// Serial output collected in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Boot the built-in guest in-process with `cmdline`; return the serial
/// output after checking it exited 0.
fn vlab_in_process(cmdline: &str) -> Result<(String, u64), String> {
    let opts = MachineOptions {
        pci_devices: Vec::new(),
        disks: Vec::new(),
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
    let probe = running.handles().probe.clone();
    let reason = running.wait();
    let out = cap.text();
    if reason != StopReason::GuestExit(0) {
        return Err(format!(
            "vlab `{cmdline}` stopped with {reason:?}; output:\n{out}"
        ));
    }
    let writes = probe.writes.load(std::sync::atomic::Ordering::Relaxed);
    Ok((out, writes))
}

/// One vlab I/O loop: ns per exit from the guest's kvm-clock.
fn vlab_loop(test: &str, n: u64) -> Result<f64, String> {
    let cmdline = format!("test={test} n={n}");
    let (out, writes) = vlab_in_process(&cmdline)?;
    let (got_n, ns) = stats::parse_loop_line(&out)
        .ok_or_else(|| format!("vlab `{cmdline}`: no `loop done` line in:\n{out}"))?;
    if got_n != n || writes != n {
        return Err(format!(
            "vlab `{cmdline}`: guest reported n={got_n}, probe saw {writes} writes, expected {n}"
        ));
    }
    if ns == 0 {
        return Err(format!(
            "vlab `{cmdline}`: the guest has no kvm-clock (ns=0)"
        ));
    }
    Ok(ns as f64 / n as f64)
}

/// What a child process did.
struct ChildRun {
    wall_ns: f64,
    maxrss_kib: f64,
    /// Exit status, or the negated signal number.
    status: i32,
    stdout: String,
    stderr: String,
}

/// This process's resident set, KiB (`VmRSS`; 0 if unknown).
fn own_rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The highest [`own_rss_kib`] seen when a child was spawned: a child's
/// `ru_maxrss` is never below it (see [`time_child`]).
static PARENT_RSS_KIB: Mutex<f64> = Mutex::new(0.0);

/// Spawn `cmd`, read its output, reap it with `wait4` and time spawn→exit.
///
/// A child's `ru_maxrss` includes the peak RSS of the memory map it had
/// before `exec`: with `posix_spawn`/vfork that is this process's, which
/// the in-process vgpu runs drive up. Resetting this process's peak to its
/// current RSS first (`5` to `/proc/self/clear_refs`) leaves the child's
/// figure at max(its own peak, this process's RSS now).
fn time_child(mut cmd: Command) -> Result<ChildRun, std::io::Error> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    {
        let mut p = PARENT_RSS_KIB.lock().unwrap_or_else(|p| p.into_inner());
        *p = p.max(own_rss_kib());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(CHILD_TIMEOUT) {
            // SAFETY: plain kill(2); `pid` is our unreaped child (the main
            // thread has not returned from wait4, or it would have sent).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut err_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = &mut err_pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let mut stdout = String::new();
    if let Some(p) = &mut child.stdout {
        let _ = p.read_to_string(&mut stdout);
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: `status` and `ru` are valid for writes; `pid` is our child,
        // which std never reaps on its own.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let t1 = Instant::now();
    let wait_err = std::io::Error::last_os_error();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let stderr = err_reader.join().unwrap_or_default();
    if r != pid {
        return Err(wait_err);
    }
    let status = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    Ok(ChildRun {
        wall_ns: (t1 - t0).as_nanos() as f64,
        maxrss_kib: ru.ru_maxrss as f64,
        status,
        stdout,
        stderr,
    })
}

fn status_text(s: i32) -> String {
    if s < 0 {
        format!("killed by signal {}", -s)
    } else {
        format!("exit status {s}")
    }
}

/// `vlab run` of the built-in hello test as a child.
fn vlab_boot(exe: &Path) -> Result<ChildRun, String> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "run",
        "--cmdline",
        "test=hello",
        "--cpus",
        "1",
        "--memory",
        MEM,
    ]);
    let r = time_child(cmd).map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if r.status != 0 || !r.stdout.contains(HELLO_DONE) {
        return Err(format!(
            "`vlab run` invalid: {} without `{HELLO_DONE}`; stdout:\n{}\nstderr:\n{}",
            status_text(r.status),
            r.stdout,
            r.stderr
        ));
    }
    Ok(r)
}

/// QEMU with KVM booting vlab's guest ELF through PVH on `machine`, one
/// vCPU, [`MEM`] of RAM, serial on stdio and the debug-exit port; the
/// caller adds `-append` and devices.
pub(crate) fn qemu_guest_command(qemu: &Path, machine: &str, cpu: &str, elf: &Path) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-enable-kvm",
        "-M",
        machine,
        "-cpu",
        cpu,
        "-m",
        MEM,
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel",
    ]);
    cmd.arg(elf);
    cmd
}

/// QEMU's command for the hello boot.
fn qemu_command(qemu: &Path, cpu: &str, elf: &Path) -> Command {
    let mut cmd = qemu_guest_command(qemu, "microvm", cpu, elf);
    cmd.args(["-append", "test=hello"]);
    cmd
}

fn qemu_boot(qemu: &Path, cpu: &str, elf: &Path) -> Result<ChildRun, String> {
    let r = time_child(qemu_command(qemu, cpu, elf))
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    // isa-debug-exit: status (v << 1) | 1, so the guest's 0 is 1.
    if r.status != 1 || !r.stdout.contains(HELLO_DONE) {
        let err = r.stderr.lines().take(3).collect::<Vec<_>>().join(" / ");
        return Err(format!(
            "QEMU -cpu {cpu} invalid: {} (want 1) and `{HELLO_DONE}` {}; stderr: {err}",
            status_text(r.status),
            if r.stdout.contains(HELLO_DONE) {
                "seen"
            } else {
                "missing"
            }
        ));
    }
    Ok(r)
}

/// The guest ELF as a temp file, removed on drop.
struct TempElf(PathBuf);

impl TempElf {
    fn new() -> std::io::Result<TempElf> {
        let p = std::env::temp_dir().join(format!("vlab-bench-guest-{}.elf", std::process::id()));
        std::fs::write(&p, GUEST_ELF)?;
        Ok(TempElf(p))
    }
}

impl Drop for TempElf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// QEMU as found, with the `-cpu` value that works on this host.
struct Qemu<'a> {
    bin: &'a Path,
    cpu: &'static str,
}

/// Check QEMU runs the guest; try `-cpu host`, then without
/// IA32_ARCH_CAPABILITIES (plain `host` aborts on kvm_pvm).
fn find_qemu<'a>(bin: &'a Path, elf: &Path, notes: &mut Vec<String>) -> Option<Qemu<'a>> {
    match Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => {
            println!(
                "vlab bench: QEMU not found ({}: {e}); QEMU columns are n/a (give --qemu PATH)",
                bin.display()
            );
            return None;
        }
    }
    let mut errors = Vec::new();
    for cpu in ["host", "host,-arch-capabilities"] {
        match qemu_boot(bin, cpu, elf) {
            Ok(_) => {
                if cpu != "host" {
                    notes.push(format!(
                        "QEMU runs with `-cpu {cpu}`: `-cpu host` fails here ({}).",
                        errors.join("; ")
                    ));
                }
                return Some(Qemu { bin, cpu });
            }
            Err(e) => errors.push(e),
        }
    }
    println!(
        "vlab bench: QEMU ({}) cannot boot the guest: {}; QEMU columns are n/a",
        bin.display(),
        errors.join("; ")
    );
    None
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn progress(quick: bool, msg: &str) {
    if !quick {
        eprint!("{msg}");
        let _ = std::io::stderr().flush();
    }
}

/// Run the benchmark; returns vlab's exit code.
pub fn bench(args: BenchArgs) -> u8 {
    match bench_inner(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vlab bench: error: {e}");
            EXIT_VMM_ERROR
        }
    }
}

fn bench_inner(args: &BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find vlab's own path: {e}"))?;
    let n = args.exits;
    let n32 = u32::try_from(n).map_err(|_| format!("--exits {n} is too large"))?;
    let flavour = KvmFlavour::detect();
    let command: Vec<String> = std::env::args().collect();
    let command = format!("vlab {}", command.get(1..).unwrap_or_default().join(" "));
    let date = utc_now();
    let host = format!(
        "KVM: {flavour}; CPU: {} ({} logical CPUs); {date}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut notes = Vec::new();

    let elf =
        TempElf::new().map_err(|e| format!("cannot write the guest ELF to a temp file: {e}"))?;
    let qemu = find_qemu(&args.qemu, &elf.0, &mut notes);

    // Warm-up (not measured): page cache, KVM module paths, CPU frequency.
    progress(args.quick, "vlab bench: warm-up");
    vlab_loop("pio-loop", n.min(1000))?;
    vlab_loop("mmio-loop", n.min(1000))?;
    raw::run(n32.min(1000), FLOOR64)?;
    raw::run(n32.min(1000), FLOOR32)?;
    vlab_boot(&exe)?;
    vgpu::warm_up()?;
    let dsizes = disk::Sizes::new(args.runs, args.quick);
    let mut dimgs = disk::Images::new(dsizes, &args.qemu)?;
    disk::warm_up(&dimgs)?;

    let exit_row = |metric: &str, key: &'static str, peer: &'static str| Row {
        metric: metric.to_string(),
        key,
        peer,
        vlab: vec![],
        peer_runs: vec![],
        unit: Unit::Ns,
        target: Target::AtMost(1.10),
    };
    let mut rows = [
        exit_row(
            "PIO exit round trip (`out` to port 0xf5) vs raw KVM loop, 64-bit + paging",
            "pio_exit_ns",
            "raw kvm-ioctls loop, 64-bit mode, paging",
        ),
        exit_row(
            "MMIO exit round trip (store to 0xd000_0000) vs raw KVM loop, 64-bit + paging",
            "mmio_exit_ns",
            "raw kvm-ioctls loop, 64-bit mode, paging",
        ),
        exit_row(
            "PIO exit round trip vs raw KVM loop, 32-bit, no paging",
            "pio_exit_ns_vs_32bit",
            "raw kvm-ioctls loop, 32-bit protected mode, no paging",
        ),
        exit_row(
            "MMIO exit round trip vs raw KVM loop, 32-bit, no paging",
            "mmio_exit_ns_vs_32bit",
            "raw kvm-ioctls loop, 32-bit protected mode, no paging",
        ),
        Row {
            metric: format!("start→exit, own kernel `test=hello`, 1 vCPU, {MEM} vs QEMU microvm"),
            key: "boot_ns",
            peer: "QEMU microvm",
            vlab: vec![],
            peer_runs: vec![],
            unit: Unit::NsAsMs,
            target: Target::AtMost(0.30),
        },
        Row {
            metric: format!("peak RSS, {MEM} guest (same boots) vs QEMU microvm"),
            key: "peak_rss_kib",
            peer: "QEMU microvm",
            vlab: vec![],
            peer_runs: vec![],
            unit: Unit::KibAsMib,
            target: Target::AtMost(0.15),
        },
    ];
    let sizes = vgpu::Sizes::new(n, args.quick);
    let mut vrows = vgpu::rows();
    let mut drows = disk::rows(&dsizes);
    let mut dextra = disk::Extra::default();
    let mut ram_read_ns = Vec::new();
    let mut qemu_failed = None;
    for i in 0..args.runs {
        progress(args.quick, &format!(" {}", i + 1));
        let pio = vlab_loop("pio-loop", n)?;
        let r64 = raw::run(n32, FLOOR64)?;
        let r32 = raw::run(n32, FLOOR32)?;
        let mmio = vlab_loop("mmio-loop", n)?;
        rows[0].vlab.push(pio);
        rows[0].peer_runs.push(r64.pio_ns);
        rows[1].vlab.push(mmio);
        rows[1].peer_runs.push(r64.mmio_ns);
        rows[2].vlab.push(pio);
        rows[2].peer_runs.push(r32.pio_ns);
        rows[3].vlab.push(mmio);
        rows[3].peer_runs.push(r32.mmio_ns);
        let v = vlab_boot(&exe)?;
        rows[4].vlab.push(v.wall_ns);
        rows[5].vlab.push(v.maxrss_kib);
        if let (Some(q), None) = (&qemu, &qemu_failed) {
            match qemu_boot(q.bin, q.cpu, &elf.0) {
                Ok(r) => {
                    rows[4].peer_runs.push(r.wall_ns);
                    rows[5].peer_runs.push(r.maxrss_kib);
                }
                Err(e) => qemu_failed = Some(e),
            }
        }
        vgpu::run_once(&mut vrows, &mut ram_read_ns, sizes)?;
        if i < dsizes.runs {
            disk::run_once(
                &mut dimgs,
                &mut drows,
                &mut dextra,
                &exe,
                qemu.as_ref(),
                &elf.0,
            )?;
        }
    }
    disk::finish(&dimgs, &mut drows);
    progress(args.quick, "\n");
    if let Some(e) = &qemu_failed {
        rows[4].peer_runs.clear();
        rows[5].peer_runs.clear();
        println!("vlab bench: a QEMU run was invalid, QEMU columns are n/a: {e}");
    }

    println!("## vlab bench\n");
    println!("- host: {host}");
    println!("- command: `{command}`");
    println!(
        "- {} interleaved runs per figure, {n} exits per I/O loop, guest RAM {MEM}, 1 vCPU{}",
        args.runs,
        if args.quick {
            " (--quick: a smoke test, not a measurement)"
        } else {
            ""
        }
    );
    println!(
        "- vgpu (1 vgpu, in-process): {} STATUS reads per poll loop, {} full-screen fills, {} \
         3 MiB uploads, {} interrupts per run",
        sizes.poll, sizes.fills, sizes.uploads, sizes.irqs
    );
    println!();
    let all: Vec<Row> = rows
        .iter()
        .chain(vrows.iter())
        .chain(drows.iter())
        .cloned()
        .collect();
    print!("{}", stats::table(&all));
    println!();
    let rss = rows[5].vlab_median().unwrap_or(0.0) / 1024.0;
    notes.insert(
        0,
        format!(
            "VMM overhead: vlab's peak RSS is {rss:.1} MiB for a {MEM} guest; the guest touches only \
             a few MiB (kernel + .bss ~2 MiB, page tables), so nearly all of it is vlab itself."
        ),
    );
    notes.insert(
        1,
        "Exit round trip: vlab's figure is the guest's kvm-clock time for N exits / N (guest \
         kernel in-process through `vmm::vm::Vm`, irqchip on); the floor is host-side `Instant` \
         around a bare `KVM_RUN` → match → `KVM_RUN` loop / N (kvm-ioctls only, one memory slot, \
         one vCPU, no irqchip). Both run the same instructions per iteration (PIO: \
         lea/out/cmp/mov/jne; MMIO: mov/inc/cmp/jne): the 64-bit floor is byte for byte the guest \
         kernel's compiled loop, with the same kind of identity paging; the 32-bit floor (no \
         paging) is the cheaper variant and shows what long mode + paging cost the emulator."
            .to_string(),
    );
    if flavour == KvmFlavour::Pvm {
        notes.insert(
            2,
            "kvm_pvm: guest supervisor code is emulated instruction by instruction, so the loop \
             bodies cost too; both sides run the same kind of loop, so the ratio is fair, but the \
             absolute ns are not hardware-virtualization numbers."
                .to_string(),
        );
    }
    if let Some(q) = &qemu {
        let cmd = qemu_command(q.bin, q.cpu, Path::new("<guest ELF>"));
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        notes.push(format!(
            "QEMU: `{}` (exit status 1 = the guest's 0).",
            argv.join(" ")
        ));
    }
    let parent_rss = *PARENT_RSS_KIB.lock().unwrap_or_else(|p| p.into_inner()) / 1024.0;
    notes.push(format!(
        "Start→exit and peak RSS: spawn to `wait4` of the child; `ru_maxrss` from the same wait4; \
         both runs must print `vlab-guest: hello done`. A child's `ru_maxrss` also counts the \
         peak RSS of the spawning process (the memory map it leaves at `exec`), so vlab bench \
         resets its own peak (`/proc/self/clear_refs`) before each spawn: the figures are \
         max(the child's peak, vlab bench's RSS at the spawn, at most {parent_rss:.1} MiB)."
    ));
    notes.extend(vgpu_notes(
        &vrows,
        stats::median(&ram_read_ns),
        flavour == KvmFlavour::Pvm,
    ));
    notes.extend(disk::notes(&dimgs, &dextra, qemu.as_ref()));
    println!("Notes:");
    for n in &notes {
        println!("- {n}");
    }

    if let Some(p) = &args.json {
        let header = [
            ("host", host.clone()),
            ("kvm", flavour.to_string()),
            ("cpu", cpu_model()),
            ("date", date.clone()),
            ("command", command.clone()),
            ("runs", args.runs.to_string()),
            ("exits", n.to_string()),
        ];
        std::fs::write(p, stats::json(&header, &all))
            .map_err(|e| format!("cannot write --json {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Notes for the vgpu rows.
fn vgpu_notes(rows: &[Row], ram_ns: Option<f64>, pvm: bool) -> Vec<String> {
    let ram = stats::fmt_value(ram_ns, Unit::Ns);
    let mut poll = format!(
        "vgpu poll: the guest's `test=vgpu-poll` runs N × `mov eax, [BAR0 + STATUS]; dec; jnz` \
         in ring 3 (the register page mapped read-only into a user window, entered with \
         `iretq`, left with `ud2`; timed with `rdtsc` at kvm-clock's scale), then in ring 0 \
         (the second row), in two VMs. \"Register page\": vlab's default, the vgpu's register \
         page is a read-only KVM memslot at BAR0, so the load is a memory read. \"Trapped\": \
         the same VM with `MachineOptions::register_pages = false`; the same load at the same \
         address exits to vlab (MMIO exit → PCI bus → vgpu `bar_read`, served from the same \
         page), the cost of every register read without the page. Each run's MMIO exit count \
         is checked (≥ 2N trapped, < N mapped). The same ring-3 loop over a RAM word: {ram} \
         per read."
    );
    if pvm {
        poll.push_str(
            " On kvm_pvm guest kernel code is emulated instruction by instruction, so the \
             ring-0 row's page read costs microseconds whatever it reads; ring-3 code runs \
             natively, which is where a driver's user-space half polls mapped registers.",
        );
    }
    let mut notes = vec![
        poll,
        "vgpu fill / DMA: `test=vgpu-fill` sets mode 1024×768 and submits N full-screen \
         FILL_RECTs (command buffers of up to 340, each ending with a FENCE; the first written \
         before the clock starts); `test=vgpu-dma` submits N UPLOAD_IMAGEs of a 1024×768 image \
         (3 MiB) from guest RAM at 16 MiB. Bytes written / kvm-clock time from the first \
         DOORBELL to the last fence's MSI waking the guest; MB = 10^6 bytes. The engine runs on \
         its own host thread (`vgpu-engine`)."
            .to_string(),
        "vgpu interrupts/s: `test=vgpu-irq` submits N command buffers holding one FENCE each \
         and waits for each (RING_TAIL + DOORBELL, `sti; hlt`, MSI, INT_STATUS read from the \
         page and acknowledged, EOI): a full round trip with one interrupt in flight, not the \
         MSI injection rate."
            .to_string(),
    ];
    if let Some(f) = rows.iter().find(|r| r.key == "vgpu_exits_per_frame") {
        notes.push(format!(
            "vgpu exits per frame ({}): `test=vgpu-scene` in-process with the monitors and the \
             trace on, summarised by `vlab trace`'s own code (as `vlab run --cmdline \
             test=vgpu-scene --trace t.jsonl; vlab trace t.jsonl`): in steady state each frame \
             costs RING_TAIL, DOORBELL and the interrupt acknowledgement (INT_STATUS); every \
             register the driver polls (STATUS, RING_HEAD, FENCE_COMPLETED) is read from the \
             register page without an exit.",
            stats::fmt_value(f.vlab_median(), f.unit)
        ));
    }
    notes
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    stats::utc_date(secs)
}
