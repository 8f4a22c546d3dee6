//! Command-line parsing. Every bad input becomes one line naming the
//! problem and the fix; clap's multi-line errors are folded to their first
//! line.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use vmm::arch::layout;
use vmm::pci::PciDeviceKind;
use vmm::vm::MAX_CPUS;

/// A virtual hardware lab on KVM: boot kernels, drive virtual devices.
#[derive(Parser, Debug)]
#[command(name = "vlab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: RawCommand,
}

#[derive(Subcommand, Debug)]
enum RawCommand {
    /// Boot a kernel (vlab's own guest kernel when --kernel is not given).
    Run(RawRunArgs),
    /// Report what this host's KVM can do for vlab.
    Doctor,
    /// Measure exit cost, start-up time and memory against a raw KVM loop and QEMU.
    Bench(RawBenchArgs),
    /// Create, clone, inspect and check disk images.
    #[command(subcommand)]
    Disk(crate::disk::DiskCommand),
    /// Summarise an I/O trace written by `vlab run --trace FILE`: per device
    /// and register, accesses, exits, handling time, DMA, interrupts and
    /// monitor violations.
    Trace(RawTraceArgs),
}

#[derive(Args, Debug)]
struct RawTraceArgs {
    /// The trace (JSON lines).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args, Debug)]
struct RawBenchArgs {
    /// Measured runs per figure (default 15; 3 with --quick).
    #[arg(long, value_name = "N")]
    runs: Option<u32>,
    /// Exits per I/O loop (default 20000; 2000 with --quick).
    #[arg(long, value_name = "N")]
    exits: Option<u64>,
    /// A few short runs: a smoke test, not a measurement.
    #[arg(long)]
    quick: bool,
    /// The QEMU binary to compare with.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RawRunArgs {
    /// Kernel: a 64-bit ELF with a PVH note, a Linux vmlinux or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for a Linux kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1 to 32).
    #[arg(
        long,
        value_name = "N",
        default_value = "1",
        allow_hyphen_values = true
    )]
    cpus: String,
    /// Guest RAM, e.g. 256M, 2G, 3584M (RAM above 3 GiB goes above 4 GiB).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "256M",
        allow_hyphen_values = true
    )]
    memory: String,
    /// Also write the guest's serial output to FILE.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Write vgpu's framebuffer as PNG to FILE when the VM stops (and on
    /// SIGUSR1 or Ctrl-A s while it runs).
    #[arg(long, value_name = "FILE")]
    screenshot: Option<PathBuf>,
    /// A virtio-blk disk (repeat for more):
    /// path=IMG[,ro][,format=raw|qcow2][,model=hdd:hp97560|hdd:cheetah4lp|ssd|file:PATH][,serial=S]
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// A teaching device on the PCI bus (repeat for more): vgpu, edu. Default:
    /// one of each; `--device none` for a bare bus.
    #[arg(long = "device", value_name = "NAME")]
    devices: Vec<String>,
    /// Print a summary (exits, unknown device accesses) when the VM stops.
    #[arg(long, short)]
    verbose: bool,
    /// Write every guest-device access, DMA, interrupt and monitor verdict
    /// of the PCI devices to FILE as JSON lines (summarise with `vlab trace`).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Stop the VM at the first protocol-monitor violation (exit code 255).
    #[arg(long)]
    strict: bool,
    /// Do not run the PCI devices' protocol monitors.
    #[arg(long)]
    no_monitors: bool,
}

/// A parsed command.
#[derive(Debug)]
pub enum Command {
    /// `vlab run`.
    Run(RunArgs),
    /// `vlab doctor`.
    Doctor,
    /// `vlab bench`.
    Bench(BenchArgs),
    /// `vlab disk`.
    Disk(crate::disk::DiskCommand),
    /// `vlab trace FILE`.
    Trace(PathBuf),
}

/// Validated `vlab bench` arguments.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Measured runs per figure.
    pub runs: u32,
    /// Exits per I/O loop.
    pub exits: u64,
    /// Smoke-test mode.
    pub quick: bool,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// JSON output file.
    pub json: Option<PathBuf>,
}

/// A parsed command line.
#[derive(Debug)]
pub struct CliArgs {
    /// What to do.
    pub command: Command,
}

/// Validated `vlab run` arguments.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// Kernel path, or None for the built-in guest.
    pub kernel: Option<PathBuf>,
    /// Initrd path.
    pub initrd: Option<PathBuf>,
    /// Command line (default: the built-in guest's `test=hello`, or
    /// `console=ttyS0` for Linux).
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u8,
    /// RAM bytes.
    pub mem_size: u64,
    /// Console log file.
    pub console_log: Option<PathBuf>,
    /// Print the summary.
    pub verbose: bool,
    /// PCI devices, slot order.
    pub devices: Vec<PciDeviceKind>,
    /// virtio-blk disks.
    pub disks: Vec<vmm::disk::DiskSpec>,
    /// Screenshot file.
    pub screenshot: Option<PathBuf>,
    /// I/O trace file.
    pub trace: Option<PathBuf>,
    /// Stop at the first monitor violation.
    pub strict: bool,
    /// Run the protocol monitors.
    pub monitors: bool,
}

/// Why parsing did not produce a command.
#[derive(Debug)]
pub enum ParseOutcome {
    /// --help or --version: print and exit 0.
    Info(String),
    /// A one-line error.
    Error(String),
}

/// The default command line for a Linux kernel.
pub const LINUX_DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Parse and validate.
pub fn parse<I, T>(args: I) -> Result<CliArgs, ParseOutcome>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| {
        use clap::error::ErrorKind::*;
        match e.kind() {
            DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => {
                ParseOutcome::Info(e.render().to_string())
            }
            _ => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                let first = first.trim_start_matches("error: ");
                ParseOutcome::Error(format!("{first} (see `vlab --help`)"))
            }
        }
    })?;
    let command = match cli.command {
        RawCommand::Doctor => Command::Doctor,
        RawCommand::Run(r) => Command::Run(validate_run(r).map_err(ParseOutcome::Error)?),
        RawCommand::Bench(b) => Command::Bench(validate_bench(b).map_err(ParseOutcome::Error)?),
        RawCommand::Disk(d) => Command::Disk(d),
        RawCommand::Trace(t) => Command::Trace(t.file),
    };
    Ok(CliArgs { command })
}

fn validate_bench(b: RawBenchArgs) -> Result<BenchArgs, String> {
    let runs = b.runs.unwrap_or(if b.quick { 3 } else { 15 });
    let exits = b.exits.unwrap_or(if b.quick { 2000 } else { 20000 });
    if !(1..=1000).contains(&runs) {
        return Err(format!(
            "Invalid --runs {runs}: give a number from 1 to 1000"
        ));
    }
    if !(1..=100_000_000).contains(&exits) {
        return Err(format!(
            "Invalid --exits {exits}: give a number from 1 to 100000000"
        ));
    }
    Ok(BenchArgs {
        runs,
        exits,
        quick: b.quick,
        qemu: b.qemu,
        json: b.json,
    })
}

fn validate_run(r: RawRunArgs) -> Result<RunArgs, String> {
    let cpus = match r.cpus.trim().parse::<u32>() {
        Ok(n) if (1..=u32::from(MAX_CPUS)).contains(&n) => n as u8,
        _ => {
            return Err(format!(
                "Invalid --cpus {}: give a number from 1 to {MAX_CPUS}",
                r.cpus
            ))
        }
    };
    let mem_size = layout::parse_mem_size(&r.memory).map_err(|e| e.to_string())?;
    layout::check_mem_size(mem_size, vmm::vm::host_memory()).map_err(|e| e.to_string())?;
    if r.initrd.is_some() && r.kernel.is_none() {
        return Err(
            "--initrd needs --kernel: the built-in guest kernel takes no initrd".to_string(),
        );
    }
    let cmdline = match (r.cmdline, &r.kernel) {
        (Some(c), _) => c,
        (None, None) => "test=hello".to_string(),
        (None, Some(_)) => LINUX_DEFAULT_CMDLINE.to_string(),
    };
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(format!(
            "Command line is {} bytes; the limit is {} bytes, shorten --cmdline",
            cmdline.len(),
            layout::CMDLINE_MAX - 1
        ));
    }
    if cmdline.contains('\0') {
        return Err("Command line contains a NUL byte; remove it".to_string());
    }
    let devices = parse_devices(&r.devices)?;
    if r.screenshot.is_some() && !devices.contains(&PciDeviceKind::Vgpu) {
        return Err("--screenshot needs a vgpu: drop --device none or add --device vgpu".into());
    }
    if r.strict && r.no_monitors {
        return Err("--strict needs the protocol monitors: drop --no-monitors".into());
    }
    let disks = r
        .disks
        .iter()
        .map(|d| vmm::disk::DiskSpec::parse(d).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    if devices.len() + disks.len() > MAX_DEVICES {
        return Err(format!(
            "Too many PCI devices ({} --device and {} --disk); at most {MAX_DEVICES} in all",
            devices.len(),
            disks.len()
        ));
    }
    Ok(RunArgs {
        disks,
        trace: r.trace,
        strict: r.strict,
        monitors: !r.no_monitors,
        devices,
        screenshot: r.screenshot,
        kernel: r.kernel,
        initrd: r.initrd,
        cmdline,
        cpus,
        mem_size,
        console_log: r.console_log,
        verbose: r.verbose,
    })
}

/// Most PCI devices `--device` may add (slots 1..=31 exist; keep room).
pub const MAX_DEVICES: usize = 16;

fn parse_devices(names: &[String]) -> Result<Vec<PciDeviceKind>, String> {
    if names.is_empty() {
        return Ok(PciDeviceKind::ALL.iter().map(|(_, k)| *k).collect());
    }
    if names.iter().any(|n| n == "none") {
        if names.len() > 1 {
            return Err("--device none cannot be combined with other devices".into());
        }
        return Ok(Vec::new());
    }
    if names.len() > MAX_DEVICES {
        return Err(format!(
            "Too many --device options ({}); at most {MAX_DEVICES}",
            names.len()
        ));
    }
    names
        .iter()
        .map(|n| {
            PciDeviceKind::parse(n).ok_or_else(|| {
                let known: Vec<&str> = PciDeviceKind::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "Unknown --device {n:?}; choose from {} or none",
                    known.join(", ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, String> {
        let mut v = vec!["vlab", "run"];
        v.extend_from_slice(args);
        match parse(v) {
            Ok(CliArgs {
                command: Command::Run(r),
            }) => Ok(r),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(ParseOutcome::Error(e)) => Err(e),
            Err(ParseOutcome::Info(i)) => panic!("unexpected info {i}"),
        }
    }

    fn one_line(e: &str) {
        assert!(!e.contains('\n'), "multi-line error: {e:?}");
    }

    #[test]
    fn defaults_boot_the_builtin_guest() {
        let r = run_args(&[]).unwrap();
        assert!(r.kernel.is_none());
        assert_eq!((r.cpus, r.mem_size), (1, 256 << 20));
        assert_eq!(r.cmdline, "test=hello");
    }

    #[test]
    fn linux_gets_a_serial_console_by_default() {
        let r = run_args(&["--kernel", "/boot/vmlinuz", "--cpus", "4", "--memory", "2G"]).unwrap();
        assert_eq!(r.cmdline, LINUX_DEFAULT_CMDLINE);
        assert_eq!((r.cpus, r.mem_size), (4, 2 << 30));
    }

    #[test]
    fn bad_cpu_counts_are_one_line_errors() {
        for bad in ["0", "33", "-1", "two", "", "99999999999"] {
            let e = run_args(&["--cpus", bad]).unwrap_err();
            one_line(&e);
            assert!(e.contains("--cpus") && e.contains("1 to 32"), "{e}");
        }
        assert_eq!(run_args(&["--cpus", "32"]).unwrap().cpus, 32);
    }

    #[test]
    fn bad_memory_sizes_are_one_line_errors() {
        for bad in ["0", "0M", "12Q", "", "1K", "99999999999999999999G", "-5M"] {
            let e = run_args(&["--memory", bad]).unwrap_err();
            one_line(&e);
            assert!(e.to_lowercase().contains("memory"), "{bad}: {e}");
        }
    }

    #[test]
    fn long_command_lines_are_refused() {
        let long = "x".repeat(layout::CMDLINE_MAX);
        let e = run_args(&["--cmdline", &long]).unwrap_err();
        one_line(&e);
        assert!(e.contains("Command line is"), "{e}");
    }

    #[test]
    fn initrd_without_kernel_is_refused() {
        let e = run_args(&["--initrd", "x.cpio"]).unwrap_err();
        assert!(e.contains("--initrd needs --kernel"));
    }

    #[test]
    fn clap_errors_are_folded_to_one_line() {
        let e = run_args(&["--bogus"]).unwrap_err();
        one_line(&e);
        assert!(e.contains("--bogus") && e.contains("vlab --help"), "{e}");
        match parse(["vlab", "frobnicate"]) {
            Err(ParseOutcome::Error(e)) => one_line(&e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bench_defaults_quick_and_bounds() {
        let b = |args: &[&str]| {
            let mut v = vec!["vlab", "bench"];
            v.extend_from_slice(args);
            match parse(v) {
                Ok(CliArgs {
                    command: Command::Bench(b),
                }) => Ok(b),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(ParseOutcome::Error(e)) => Err(e),
                Err(ParseOutcome::Info(i)) => panic!("unexpected info {i}"),
            }
        };
        let d = b(&[]).unwrap();
        assert_eq!((d.runs, d.exits, d.quick), (15, 20000, false));
        assert_eq!(d.qemu, PathBuf::from("qemu-system-x86_64"));
        let q = b(&["--quick"]).unwrap();
        assert_eq!((q.runs, q.exits), (3, 2000));
        let q = b(&["--quick", "--runs", "7"]).unwrap();
        assert_eq!((q.runs, q.exits), (7, 2000));
        for bad in [&["--runs", "0"][..], &["--exits", "0"], &["--runs", "x"]] {
            one_line(&b(bad).unwrap_err());
        }
    }

    #[test]
    fn devices_default_to_one_of_each_and_parse() {
        let all: Vec<_> = PciDeviceKind::ALL.iter().map(|(_, k)| *k).collect();
        assert_eq!(run_args(&[]).unwrap().devices, all);
        assert!(run_args(&["--device", "none"]).unwrap().devices.is_empty());
        assert_eq!(
            run_args(&["--device", "vgpu", "--device", "vgpu"])
                .unwrap()
                .devices,
            vec![PciDeviceKind::Vgpu, PciDeviceKind::Vgpu]
        );
        let e = run_args(&["--device", "gpu9000"]).unwrap_err();
        one_line(&e);
        assert!(e.contains("Unknown --device") && e.contains("vgpu"), "{e}");
        assert!(run_args(&["--device", "none", "--device", "vgpu"]).is_err());
    }

    #[test]
    fn trace_strict_and_monitor_flags() {
        let r = run_args(&[]).unwrap();
        assert!(r.monitors && !r.strict && r.trace.is_none());
        let r = run_args(&["--trace", "t.jsonl", "--strict"]).unwrap();
        assert_eq!(r.trace, Some(PathBuf::from("t.jsonl")));
        assert!(r.strict);
        assert!(!run_args(&["--no-monitors"]).unwrap().monitors);
        let e = run_args(&["--strict", "--no-monitors"]).unwrap_err();
        one_line(&e);
        match parse(["vlab", "trace", "x.jsonl"]) {
            Ok(CliArgs {
                command: Command::Trace(p),
            }) => assert_eq!(p, PathBuf::from("x.jsonl")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(["vlab", "trace"]),
            Err(ParseOutcome::Error(_))
        ));
    }

    #[test]
    fn help_is_info_not_error() {
        assert!(matches!(
            parse(["vlab", "--help"]),
            Err(ParseOutcome::Info(_))
        ));
    }
}
