//! Building and running a VM: KVM objects, guest memory, devices, vCPUs.
//!
//! [`Vm::new`] makes an empty machine (memory, irqchip, PIT, vCPUs with
//! their CPUID/MSR model); [`Vm::boot`] loads a kernel and the boot tables;
//! [`Vm::start`] spawns one thread per vCPU and returns a [`RunningVm`].
//! KVM tests use `new` + their own code + [`Vm::set_boot_regs`] instead of
//! `boot`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use devices::bus::{lock, BusError, SharedDevice};
use devices::irq::Irq;
use devices::legacy::{Cmos, DebugExit, Serial, SystemClock, I8042};
use devices::monitor::Recorder;
use devices::probe::{Probe, ProbeCounters};

use crate::arch::{self, layout};
use crate::control::{StopReason, VmControl};
use crate::cpu_setup;
use crate::exit::Buses;
use crate::interrupts::Resampler;
use crate::loader::{self, BootEntry, LoadError, LoadedKernel};
use crate::pci::{self, PciDeviceKind, PciMachine, VgpuHandle};
use crate::trace::{self, ObserveOptions};
use crate::vcpu::Vcpu;

/// Most vCPUs a VM may have.
pub const MAX_CPUS: u8 = 32;
/// Address KVM uses for its real-mode TSS (three pages, inside the hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// I/O port of the debug-exit device.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// I/O port of the PIO probe (4 ports; the debug exit takes only 0xf4).
pub const PROBE_PORT: u64 = 0xf5;
/// Guest-physical address of the MMIO probe page.
pub const PROBE_MMIO: u64 = layout::PROBE_MMIO_START;
/// COM1.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: u32 = 4;

/// Errors building or starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing or not accessible.
    #[error("Cannot open /dev/kvm: {0}; load the kvm module (modprobe kvm_intel or kvm_amd) and give this user access to /dev/kvm (run `vlab doctor`)")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed while setting up.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Bad CPU count.
    #[error("Invalid --cpus {0}: give a number from 1 to {MAX_CPUS}")]
    Cpus(u32),
    /// Memory layout or size problem.
    #[error(transparent)]
    Layout(#[from] arch::layout::LayoutError),
    /// Guest memory could not be allocated.
    #[error("Cannot allocate {size} bytes of guest memory: {detail}; use a smaller --memory")]
    Memory {
        /// Requested size.
        size: u64,
        /// The error.
        detail: String,
    },
    /// Kernel or initrd problem.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Boot table problem.
    #[error("{0}")]
    Boot(String),
    /// Device wiring problem.
    #[error("Device setup failed: {0}")]
    Bus(#[from] BusError),
    /// PCI wiring problem.
    #[error(transparent)]
    Pci(#[from] pci::PciSetupError),
    /// Interrupt wiring problem.
    #[error(transparent)]
    Interrupt(#[from] crate::interrupts::InterruptError),
    /// Other I/O error during setup.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The kernel to boot.
#[derive(Clone, Debug)]
pub enum KernelSource {
    /// A file.
    Path(PathBuf),
    /// An image already in memory (the built-in guest), with a display name.
    Bytes(&'static [u8], &'static str),
}

/// What a VM is made of.
pub struct VmConfig {
    /// Kernel image.
    pub kernel: KernelSource,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Where COM1 output goes.
    pub console: Box<dyn Write + Send>,
}

/// An [`Irq`] that reaches the guest through a KVM irqfd (edge).
struct IrqFd(EventFd);

impl Irq for IrqFd {
    fn set_level(&self, high: bool) {
        if high {
            // A full eventfd counter (2^64-2 pending edges) cannot happen
            // with one write per edge; nothing useful to do on error.
            let _ = self.0.write(1);
        }
    }
}

/// Handles the front end keeps while the VM runs.
#[derive(Clone)]
pub struct VmHandles {
    /// Run control.
    pub control: Arc<VmControl>,
    /// COM1, for feeding input.
    pub serial: Arc<Mutex<Serial>>,
    /// The probes' counters.
    pub probe: Arc<ProbeCounters>,
    /// The buses (for the unknown-access summary).
    pub buses: Arc<Buses>,
    /// The vgpu, if the machine has one (screenshots).
    pub vgpu: Option<VgpuHandle>,
    /// The protocol monitors and trace, if observed.
    pub monitor: Option<Arc<Recorder>>,
}

impl VmHandles {
    /// Feed keyboard input to COM1; returns how many bytes were taken.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_input(bytes)
    }
}

/// A VM that is set up but not running.
pub struct Vm {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    pci: Option<PciMachine>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    vcpus: Vec<VcpuFd>,
    buses: Buses,
    handles_serial: Arc<Mutex<Serial>>,
    probe: Arc<ProbeCounters>,
    control: Arc<VmControl>,
    monitor: Option<Arc<Recorder>>,
}

/// Options for an empty machine.
pub struct MachineOptions {
    /// vCPUs.
    pub cpus: u8,
    /// RAM bytes.
    pub mem_size: u64,
    /// Create the in-kernel irqchip and PIT (always, except in KVM tests
    /// that want `HLT` to reach user space). Without it there is no PCI.
    pub irqchip: bool,
    /// Teaching devices on the PCI bus, in slot order from slot 1.
    pub pci_devices: Vec<PciDeviceKind>,
    /// virtio-blk disks, on the slots after the teaching devices.
    pub disks: Vec<crate::disk::DiskSpec>,
    /// Map devices' register pages (the vgpu's BAR0) read-only into the
    /// guest, so reads cost no exit (the default). `false` leaves every
    /// BAR0 read trapping to the device model: `vlab bench` measures what
    /// the page saves.
    pub register_pages: bool,
}

impl Vm {
    /// An empty machine: memory, irqchip, PIT, the legacy devices and the
    /// vCPUs with their CPUID and MSRs, no kernel.
    pub fn new(opts: &MachineOptions, console: Box<dyn Write + Send>) -> Result<Vm, VmError> {
        Self::with_observer(opts, console, None)
    }

    /// [`Vm::new`], with the PCI devices' protocol monitors and the I/O
    /// trace as `observe` says (see [`crate::trace`]).
    pub fn with_observer(
        opts: &MachineOptions,
        console: Box<dyn Write + Send>,
        observe: Option<ObserveOptions>,
    ) -> Result<Vm, VmError> {
        if opts.cpus == 0 || opts.cpus > MAX_CPUS {
            return Err(VmError::Cpus(opts.cpus.into()));
        }
        layout::check_mem_size(opts.mem_size, host_memory())?;
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create VM"))?);
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set TSS address"))?;
        if opts.irqchip {
            vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;
            // ISA IRQ0 (the PIT) arrives on IOAPIC pin 2, as the MP table
            // and MADT say; KVM's default routing would use pin 0.
            let routing =
                arch::irq::legacy_irq_routing().map_err(|e| VmError::Boot(e.to_string()))?;
            vm.set_gsi_routing(&routing)
                .map_err(kvm_err("set GSI routing"))?;
        }

        let ranges = layout::ram_regions(opts.mem_size);
        let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
            size: opts.mem_size,
            detail: e.to_string(),
        })?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // Vm keeps for as long as the KVM VM exists.
            unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("set memory region"))?;
        }

        let control = Arc::new(VmControl::new());
        let ack_timeout = observe.as_ref().map(|o| o.ack_timeout);
        let monitor = observe.map(|o| trace::recorder(o, &control));
        let mut buses = Buses::default();
        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Io {
            what: "create serial eventfd",
            source: e,
        })?;
        if opts.irqchip {
            vm.register_irqfd(&serial_evt, COM1_IRQ)
                .map_err(kvm_err("register serial irqfd"))?;
        }
        let serial = Arc::new(Mutex::new(Serial::new(
            Arc::new(IrqFd(serial_evt)),
            console,
        )));
        buses.pio.insert(serial.clone(), COM1_PORT, 8, "serial0")?;

        let c = control.clone();
        let debug_exit: SharedDevice = Arc::new(Mutex::new(DebugExit::new(Box::new(move |v| {
            c.request_stop(StopReason::GuestExit(v))
        }))));
        buses
            .pio
            .insert(debug_exit, DEBUG_EXIT_PORT, 1, "debug-exit")?;
        let c = control.clone();
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(Box::new(move || {
            c.request_stop(StopReason::GuestReset)
        }))));
        buses.pio.insert(i8042, 0x60, 5, "i8042")?;
        let below_4g = opts.mem_size.min(layout::MMIO_HOLE_START);
        let cmos: SharedDevice = Arc::new(Mutex::new(Cmos::new(
            below_4g,
            opts.mem_size - below_4g,
            Box::new(SystemClock),
        )));
        buses.pio.insert(cmos, 0x70, 2, "cmos")?;
        let probe = Arc::new(ProbeCounters::default());
        let pio_probe: SharedDevice = Arc::new(Mutex::new(Probe::new(probe.clone())));
        buses.pio.insert(pio_probe, PROBE_PORT, 4, "probe")?;
        let mmio_probe: SharedDevice = Arc::new(Mutex::new(Probe::new(probe.clone())));
        buses.mmio.insert(mmio_probe, PROBE_MMIO, 0x1000, "probe")?;

        let pci = if opts.irqchip {
            let observe = monitor.as_ref().map(|r| pci::PciObserve {
                recorder: r.clone(),
                ack_timeout: ack_timeout.unwrap_or(devices::monitor::DEFAULT_ACK_TIMEOUT),
            });
            Some(pci::build(
                &vm,
                &mem,
                &opts.pci_devices,
                &opts.disks,
                u16::from(opts.cpus).min(16),
                opts.register_pages,
                &mut buses,
                observe.as_ref(),
            )?)
        } else {
            None
        };

        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(kvm_err("get MSR index list"))?;
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let mut vcpus = Vec::new();
        for i in 0..u32::from(opts.cpus) {
            let fd = vm.create_vcpu(i.into()).map_err(kvm_err("create vCPU"))?;
            let mut cpuid = arch::cpuid::build_cpuid(&supported, i, opts.cpus.into())
                .map_err(|e| VmError::Boot(e.to_string()))?;
            arch::cpuid::set_tsc_deadline(&mut cpuid, tsc_deadline);
            fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            set_boot_msrs(&fd, msr_list.as_slice())?;
            fd.set_fpu(&cpu_setup::boot_fpu())
                .map_err(kvm_err("set FPU"))?;
            if opts.irqchip {
                let mut lapic = fd.get_lapic().map_err(kvm_err("get LAPIC"))?;
                cpu_setup::set_lint(&mut lapic);
                fd.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))?;
            }
            vcpus.push(fd);
        }

        Ok(Vm {
            _kvm: kvm,
            vm,
            pci,
            mem,
            mem_size: opts.mem_size,
            vcpus,
            buses,
            handles_serial: serial,
            probe,
            control,
            monitor,
        })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The buses, to add devices before the VM starts.
    pub fn buses_mut(&mut self) -> &mut Buses {
        &mut self.buses
    }

    /// The KVM VM (for tests that need raw access).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Set the boot vCPU's registers directly (KVM tests).
    pub fn set_boot_regs(
        &self,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
    ) -> Result<(), VmError> {
        let bsp = &self.vcpus[0];
        bsp.set_sregs(sregs).map_err(kvm_err("set sregs"))?;
        bsp.set_regs(regs).map_err(kvm_err("set regs"))
    }

    /// The boot vCPU's current special registers (a base for tests).
    pub fn boot_sregs(&self) -> Result<kvm_bindings::kvm_sregs, VmError> {
        self.vcpus[0].get_sregs().map_err(kvm_err("get sregs"))
    }

    /// Load the kernel (and initrd), write the boot tables and set the boot
    /// vCPU's entry state.
    pub fn boot(
        &mut self,
        kernel: &KernelSource,
        initrd: Option<&Path>,
        cmdline: &str,
    ) -> Result<LoadedKernel, VmError> {
        let owned;
        let (image, path): (&[u8], &Path) = match kernel {
            KernelSource::Path(p) => {
                owned = loader::read_image("kernel", p)?;
                (&owned, p)
            }
            KernelSource::Bytes(b, name) => (b, Path::new(name)),
        };
        let kernel = loader::load_kernel(&self.mem, image, path)?;
        let boot = |e: &dyn std::fmt::Display| VmError::Boot(e.to_string());
        let cpus = self.vcpus.len() as u8;

        let cmdline_addr = layout::CMDLINE_START;
        arch::boot::write_cmdline(&self.mem, cmdline_addr, cmdline).map_err(|e| boot(&e))?;
        let e820 = layout::e820_map(self.mem_size);
        arch::mptable::setup_mptable(&self.mem, cpus).map_err(|e| boot(&e))?;
        let mcfg = self.pci.as_ref().map(|_| arch::acpi::Mcfg {
            base: layout::PCI_ECAM_START,
            segment: 0,
            start_bus: 0,
            end_bus: ((layout::PCI_ECAM_SIZE >> 20) - 1) as u8,
        });
        let rsdp = arch::acpi::setup_acpi(&self.mem, cpus, mcfg).map_err(|e| boot(&e))?;

        let initrd = match initrd {
            Some(p) => {
                let bytes = loader::read_image("initrd", p)?;
                let max = kernel
                    .setup_header
                    .map(|h| u64::from(h.initrd_addr_max))
                    .unwrap_or(layout::MMIO_HOLE_START - 1);
                let addr =
                    arch::boot::initrd_addr(self.mem_size, bytes.len() as u64, kernel.end, max)
                        .map_err(|e| boot(&e))?;
                vm_memory::Bytes::write_slice(&self.mem, &bytes, addr)
                    .map_err(|e| VmError::Boot(format!("Cannot write initrd: {e}")))?;
                Some((addr, bytes.len() as u64))
            }
            None => None,
        };

        let mut sregs = self.boot_sregs()?;
        let regs = match kernel.entry {
            BootEntry::Pvh(entry) => {
                let info =
                    arch::boot::write_pvh_start_info(&self.mem, cmdline_addr, &e820, rsdp, initrd)
                        .map_err(|e| boot(&e))?;
                cpu_setup::pvh_regs(entry.raw_value(), info.raw_value(), &mut sregs)
            }
            BootEntry::Linux64(entry) => {
                let zero_page = arch::boot::write_boot_params(
                    &self.mem,
                    kernel.setup_header,
                    cmdline_addr,
                    cmdline.len() + 1,
                    &e820,
                    initrd,
                    rsdp,
                )
                .map_err(|e| boot(&e))?;
                let gdt = arch::boot::write_boot_gdt(&self.mem).map_err(|e| boot(&e))?;
                let cr3 =
                    arch::boot::write_identity_page_tables(&self.mem).map_err(|e| boot(&e))?;
                cpu_setup::linux64_regs(
                    entry.raw_value(),
                    zero_page.raw_value(),
                    gdt,
                    cr3,
                    &mut sregs,
                )
            }
        };
        self.set_boot_regs(&regs, &sregs)?;
        Ok(kernel)
    }

    /// Start one thread per vCPU.
    pub fn start(self) -> Result<RunningVm, VmError> {
        crate::kick::install_handler().map_err(|source| VmError::Io {
            what: "install vCPU kick signal handler",
            source,
        })?;
        let resampler = match &self.pci {
            Some(p) => Some(Resampler::start(p.lines.clone())?),
            None => None,
        };
        let vgpu = self.pci.as_ref().and_then(|p| p.vgpu.clone());
        let buses = Arc::new(self.buses);
        let mut threads = Vec::new();
        for fd in self.vcpus {
            let (index, commands) = self.control.add_vcpu();
            let vcpu = Vcpu {
                index,
                fd,
                buses: buses.clone(),
                control: self.control.clone(),
                commands,
                mem: self.mem.clone(),
                monitor: self.monitor.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu.run())
                .map_err(|source| VmError::Io {
                    what: "spawn vCPU thread",
                    source,
                })?;
            threads.push(t);
        }
        Ok(RunningVm {
            handles: VmHandles {
                control: self.control,
                serial: self.handles_serial,
                probe: self.probe,
                buses,
                vgpu,
                monitor: self.monitor,
            },
            threads,
            _resampler: resampler,
            _pci: self.pci,
            _vm: self.vm,
            _kvm: self._kvm,
            _mem: self.mem,
        })
    }
}

/// Set the boot MSRs the host supports, one by one: an MSR the host
/// refuses (IA32_ARCH_CAPABILITIES on some hosts) is skipped, not fatal.
fn set_boot_msrs(fd: &VcpuFd, supported: &[u32]) -> Result<(), VmError> {
    for entry in arch::msr::retain_supported(arch::msr::boot_msrs(), supported) {
        let msrs = Msrs::from_entries(&[entry]).map_err(|_| VmError::Boot("MSR list".into()))?;
        // KVM returns how many MSRs it set; 0 means refused, which we accept.
        let _ = fd.set_msrs(&msrs);
    }
    Ok(())
}

/// Total host RAM in bytes (0 if unknown, which disables the check).
pub fn host_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGE_SIZE),
        )
    };
    if pages <= 0 || size <= 0 {
        0
    } else {
        (pages as u64).saturating_mul(size as u64)
    }
}

/// A VM whose vCPU threads are running.
pub struct RunningVm {
    handles: VmHandles,
    threads: Vec<JoinHandle<()>>,
    // Keep the KVM objects and memory alive until the threads are joined;
    // the PCI devices (and the host memory behind their memslots) go
    // before the VM fd.
    _resampler: Option<Resampler>,
    _pci: Option<PciMachine>,
    _vm: Arc<VmFd>,
    _kvm: Kvm,
    _mem: GuestMemoryMmap,
}

impl RunningVm {
    /// Handles for input and control.
    pub fn handles(&self) -> &VmHandles {
        &self.handles
    }

    /// Wait until the VM stops, join every vCPU thread and return why.
    /// The monitors' final checks run and the trace is completed (with
    /// the exit counts) before this returns.
    pub fn wait(self) -> StopReason {
        let reason = self.handles.control.wait_for_stop();
        for t in self.threads {
            if t.join().is_err() {
                // A vCPU thread panicked: that is a vlab bug; the reason
                // recorded first still stands.
            }
        }
        if let Some(m) = &self.handles.monitor {
            let s = &self.handles.buses.stats;
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            m.finish(&[
                ("exits_pio", load(&s.pio)),
                ("exits_mmio", load(&s.mmio)),
                ("exits_other", load(&s.other)),
            ]);
        }
        reason
    }
}
