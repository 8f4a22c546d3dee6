//! `vlab run`: build the VM, wire the terminal, wait, report, exit.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vmm::control::StopReason;
use vmm::trace::ObserveOptions;
use vmm::vm::{KernelSource, MachineOptions, Vm, VmHandles};

use crate::cli::RunArgs;
use crate::guest::{GUEST_ELF, GUEST_NAME};
use crate::terminal::{self, RawMode};
use crate::{
    EXIT_CRASH, EXIT_GUEST_MAX, EXIT_INTERRUPTED, EXIT_MONITOR, EXIT_USAGE, EXIT_VMM_ERROR,
};

/// Serial output: the terminal, and a log file if asked.
struct Console {
    log: Option<File>,
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        if let Some(f) = &mut self.log {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Signals the watcher thread handles: the first three stop vlab, SIGUSR1
/// writes a screenshot.
const WATCHED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in WATCHED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Turn the watched signals (blocked in every thread) into stop requests
/// and screenshots, on a dedicated thread.
fn watch_signals(handles: VmHandles, shot: Screenshotter) {
    let set = stop_sigset();
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid for the call.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        let name = match sig {
            libc::SIGUSR1 => {
                shot.take();
                continue;
            }
            libc::SIGINT => "SIGINT (Ctrl-C)",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        handles.control.request_stop(StopReason::User(name));
        return;
    });
}

/// Writes vgpu's framebuffer as PNG.
#[derive(Clone)]
struct Screenshotter {
    vgpu: Option<vmm::pci::VgpuHandle>,
    path: Option<std::path::PathBuf>,
}

impl Screenshotter {
    /// Write a screenshot to the configured path, or to
    /// `vlab-screenshot-<pid>.png` when none was given. Reports on stderr.
    fn take(&self) -> bool {
        let Some(v) = &self.vgpu else {
            eprintln!("vlab: no screenshot: this machine has no vgpu");
            return false;
        };
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| format!("vlab-screenshot-{}.png", std::process::id()).into());
        match devices::vgpu::screenshot(&v.model, &*v.framebuffer) {
            Ok(png) => match std::fs::write(&path, png) {
                Ok(()) => {
                    eprintln!("vlab: screenshot written to {}", path.display());
                    true
                }
                Err(e) => {
                    eprintln!("vlab: cannot write screenshot {}: {e}", path.display());
                    false
                }
            },
            Err(e) => {
                eprintln!("vlab: no screenshot: {e}");
                false
            }
        }
    }
}

/// Run a VM; returns vlab's exit code.
pub fn run(args: RunArgs) -> u8 {
    let started = Instant::now();
    let log = match &args.console_log {
        Some(p) => match File::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "vlab: Cannot create console log {}: {e}; check the directory exists and is writable",
                    p.display()
                );
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    // Block the stop signals before any thread exists, so every vCPU thread
    // inherits the mask and only the watcher sees them.
    let set = stop_sigset();
    // SAFETY: `set` is a valid sigset; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let opts = MachineOptions {
        cpus: args.cpus,
        mem_size: args.mem_size,
        irqchip: true,
        pci_devices: args.devices.clone(),
        disks: args.disks.clone(),
        register_pages: true,
    };
    let kernel = match &args.kernel {
        Some(p) => KernelSource::Path(p.clone()),
        None => KernelSource::Bytes(GUEST_ELF, GUEST_NAME),
    };
    let observe = match observe_options(&args) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let vm = Vm::with_observer(&opts, Box::new(Console { log }), observe).and_then(|mut vm| {
        vm.boot(&kernel, args.initrd.as_deref(), &args.cmdline)?;
        vm.start()
    });
    let running = match vm {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vlab: {e}");
            return EXIT_USAGE;
        }
    };
    let handles = running.handles().clone();
    let shot = Screenshotter {
        vgpu: handles.vgpu.clone(),
        path: args.screenshot.clone(),
    };
    watch_signals(handles.clone(), shot.clone());
    let raw = RawMode::enter();
    {
        let h = handles.clone();
        let escapes = raw.is_some();
        let s = shot.clone();
        std::thread::spawn(move || {
            terminal::pump_stdin(h, escapes, &|| {
                s.take();
            })
        });
    }
    let reason = running.wait();
    if let Some(r) = &raw {
        r.restore();
    }
    let _ = std::io::stdout().flush();
    let mut code = report(&reason);
    if args.screenshot.is_some() && !shot.take() && code == 0 {
        code = EXIT_VMM_ERROR;
    }
    if let Some(m) = &handles.monitor {
        let n = m.violations();
        if n > 0 {
            let by: Vec<String> = m
                .violations_by_device()
                .into_iter()
                .filter(|(_, c)| *c > 0)
                .map(|(d, c)| format!("{d}: {c}"))
                .collect();
            eprintln!("vlab: monitor: {n} violation(s) ({})", by.join(", "));
            if args.strict {
                code = EXIT_MONITOR;
            }
        }
    }
    if let Some(t) = &args.trace {
        eprintln!(
            "vlab: trace written to {} (summarise it with `vlab trace {}`)",
            t.display(),
            t.display()
        );
    }
    if args.verbose {
        summary(&handles, started);
    }
    code
}

/// The monitors and trace `args` ask for (`None`: neither), or the exit
/// code if the trace file cannot be created.
fn observe_options(args: &RunArgs) -> Result<Option<ObserveOptions>, u8> {
    if !args.monitors && args.trace.is_none() {
        return Ok(None);
    }
    let trace: Option<Box<dyn Write + Send>> = match &args.trace {
        Some(p) => match File::create(p) {
            Ok(f) => Some(Box::new(f)),
            Err(e) => {
                eprintln!(
                    "vlab: Cannot create trace {}: {e}; check the directory exists and is writable",
                    p.display()
                );
                return Err(EXIT_USAGE);
            }
        },
        None => None,
    };
    // SAFETY: isatty only inspects the descriptor.
    let raw = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    // In raw mode the terminal needs an explicit carriage return.
    let eol = if raw { "\r\n" } else { "\n" };
    Ok(Some(ObserveOptions {
        monitors: args.monitors,
        strict: args.strict,
        trace,
        report: Some(Box::new(move |r| {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "vlab: monitor: {r}{eol}");
        })),
        ..ObserveOptions::default()
    }))
}

/// Print why the VM stopped (when it is news) and map it to an exit code.
fn report(reason: &StopReason) -> u8 {
    match reason {
        StopReason::GuestExit(v) if *v <= EXIT_GUEST_MAX => *v,
        StopReason::GuestExit(v) => {
            eprintln!(
                "vlab: guest exit status {v} is reserved (251-255 are vlab's); exiting {EXIT_GUEST_MAX}"
            );
            EXIT_GUEST_MAX
        }
        StopReason::GuestReset | StopReason::GuestPowerOff => 0,
        StopReason::GuestCrash(info) => {
            eprintln!("vlab: guest crashed: {info}");
            EXIT_CRASH
        }
        StopReason::Halted { vcpu } => {
            eprintln!("vlab: guest crashed: vCPU {vcpu} halted with no interrupt controller");
            EXIT_CRASH
        }
        StopReason::User(what) => {
            eprintln!("vlab: stopped by {what}");
            EXIT_INTERRUPTED
        }
        StopReason::VmmError(e) => {
            eprintln!("vlab: {e}");
            EXIT_VMM_ERROR
        }
        StopReason::MonitorViolation(_) => {
            eprintln!("vlab: stopped by --strict at the first monitor violation (above)");
            EXIT_MONITOR
        }
    }
}

/// The `--verbose` summary.
fn summary(h: &VmHandles, started: Instant) {
    let s = &h.buses.stats;
    eprintln!(
        "vlab: ran {:.3} s; exits to vlab: {} port I/O, {} MMIO, {} other",
        started.elapsed().as_secs_f64(),
        s.pio.load(Ordering::Relaxed),
        s.mmio.load(Ordering::Relaxed),
        s.other.load(Ordering::Relaxed)
    );
    let e = &s.emulated;
    let counts = [
        ("int3", &e.int3),
        ("cmpxchg16b", &e.cmpxchg16b),
        ("xrstor", &e.xrstor),
        ("popcnt", &e.popcnt),
        ("clac/stac", &e.ac_flag),
        ("fwait", &e.fwait),
        ("ldmxcsr/stmxcsr", &e.mxcsr),
        ("faults injected", &e.faults),
    ];
    let done: Vec<String> = counts
        .iter()
        .map(|(n, c)| (n, c.load(Ordering::Relaxed)))
        .filter(|(_, c)| *c > 0)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    if !done.is_empty() {
        eprintln!(
            "vlab: instructions KVM could not emulate, completed by vlab: {}",
            done.join(", ")
        );
    }
    for bus in [&h.buses.pio, &h.buses.mmio] {
        let u = bus.unknown_accesses();
        if u.total() == 0 {
            eprintln!("vlab: no unclaimed {} accesses", bus.name());
            continue;
        }
        eprintln!(
            "vlab: {} unclaimed {} accesses ({} at untracked addresses):",
            u.total(),
            bus.name(),
            u.overflow
        );
        for ((addr, dir, width), n) in &u.by_addr {
            eprintln!("vlab:   {dir:?} {width} byte(s) at {addr:#x}: {n}");
        }
    }
}
