//! PCI on KVM: the bus adapters on vlab's buses, MSI through
//! `KVM_SIGNAL_MSI`, INTx through level lines (irqfd + resample), register
//! pages as read-only memslots and RAM-backed BARs (the vgpu framebuffer)
//! as read-write memslots, both following the guest when it moves a BAR.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_msi, kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use devices::bus::{lock, BusError};
use devices::dma::Dma;
use devices::irq::Irq;
use devices::monitor::edu::EduMonitor;
use devices::monitor::vgpu::VgpuMonitor;
use devices::monitor::{EventKind, Monitor, ObservedIrq, ObservedMsi, RamMap, Recorder};
use devices::pci::bus::{BarRemap, Intx, PciBarWindow, PciBus, PciWindows, SharedPciDevice};
use devices::pci::config::PciSpace;
use devices::pci::host_bridge::{ConfigIo, Ecam};
use devices::pci::msi::{MsiMessage, MsiSink};
use devices::vgpu::worker::EventSink;
use devices::vgpu::{FrameMemory, VgpuPci};

use crate::arch::layout;
use crate::disk::{DiskError, DiskSpec};
use crate::exit::Buses;
use crate::interrupts::{InterruptError, LevelIrq};

/// PCI configuration mechanism #1 ports.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// The PCI I/O window.
pub const PCI_IO_BASE: u64 = 0xc000;
/// Its size.
pub const PCI_IO_SIZE: u64 = 0x4000;
/// First GSI used for PCI INTx (IOAPIC pins 16–23).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// First KVM memslot used for BAR mappings (RAM uses the ones below).
pub const BAR_MEMSLOT_BASE: u32 = 8;

/// The teaching devices vlab can put on its PCI bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciDeviceKind {
    /// vgpu, the teaching GPU (docs/devices/vgpu.md).
    Vgpu,
    /// edu, QEMU's educational device (docs/devices/edu.md).
    Edu,
}

impl PciDeviceKind {
    /// Parse a `--device` name.
    pub fn parse(s: &str) -> Option<PciDeviceKind> {
        match s {
            "vgpu" => Some(PciDeviceKind::Vgpu),
            "edu" => Some(PciDeviceKind::Edu),
            _ => None,
        }
    }

    /// Every kind, with its name.
    pub const ALL: &'static [(&'static str, PciDeviceKind)] =
        &[("vgpu", PciDeviceKind::Vgpu), ("edu", PciDeviceKind::Edu)];
}

/// Errors wiring PCI.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    /// Bus construction or BAR assignment failed.
    #[error("PCI: {0}")]
    Bus(String),
    /// Placing an adapter on vlab's buses failed.
    #[error("PCI: {0}")]
    Range(#[from] BusError),
    /// An interrupt line could not be created.
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
    /// Host memory for a RAM-backed BAR.
    #[error("PCI: cannot allocate {0} bytes for a BAR: {1}")]
    Memory(u64, std::io::Error),
    /// A device failed to start.
    #[error("PCI: {0}")]
    Device(String),
    /// A `--disk` could not be set up.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// MSIs into the guest with `KVM_SIGNAL_MSI`.
pub struct KvmMsi {
    vm: Arc<VmFd>,
}

impl MsiSink for KvmMsi {
    fn send(&self, m: MsiMessage) {
        let msi = kvm_msi {
            address_lo: m.address as u32,
            address_hi: (m.address >> 32) as u32,
            data: m.data,
            ..Default::default()
        };
        // A refused MSI (bad address programmed by the guest) is the
        // guest's problem; there is no one to report it to here.
        let _ = self.vm.signal_msi(msi);
    }
}

/// Host memory that backs a BAR and is mapped into the guest.
pub struct HostRegion {
    ptr: *mut u8,
    len: usize,
    /// Serialises the VMM's own users; the guest writes through its
    /// mapping regardless, as it would to real video memory.
    lock: Mutex<()>,
}

// SAFETY: the region is a private anonymous mapping owned by this struct;
// access from VMM threads is serialised by `lock`.
unsafe impl Send for HostRegion {}
// SAFETY: as above.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// A zeroed, page-aligned region of `len` bytes.
    pub fn new(len: usize) -> std::io::Result<HostRegion> {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(HostRegion {
            ptr: ptr.cast(),
            len,
            lock: Mutex::new(()),
        })
    }

    /// The host address (for the memslot).
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`. By then every
        // vCPU thread has been joined, so the guest cannot touch it; KVM
        // copes with memory unmapped behind a memslot (MMU notifiers).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl FrameMemory for HostRegion {
    fn with_mut(&self, f: &mut dyn FnMut(&mut [u8])) {
        let _g = lock(&self.lock);
        // SAFETY: the mapping is live for `self`'s lifetime and VMM users
        // are serialised by `lock`. The guest may write the same bytes
        // concurrently through its mapping; like a GPU's video memory the
        // contents are then whatever either side wrote last.
        f(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) })
    }

    fn with(&self, f: &mut dyn FnMut(&[u8])) {
        let _g = lock(&self.lock);
        // SAFETY: as for `with_mut`.
        f(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// A doorbell: the eventfd a device waits on and its offset in a BAR.
type Doorbell = (Arc<EventFd>, u64);

/// Keeps KVM memslots in step with the BARs the guest places.
struct Memslots {
    vm: Arc<VmFd>,
    next: u32,
    /// (PCI slot, BAR) -> KVM memslot id.
    by_bar: HashMap<(u8, usize), u32>,
    /// RAM-backed BARs: (PCI slot, BAR) -> (host address, size).
    ram_bars: HashMap<(u8, usize), (u64, u64)>,
    /// Doorbells served by ioeventfds: (PCI slot, BAR) -> (eventfd, offset
    /// in the BAR). A write there signals the eventfd inside KVM: no exit
    /// to vlab, the device thread wakes directly.
    ioevents: HashMap<(u8, usize), Vec<Doorbell>>,
    /// Map register pages (else their BARs trap like any other).
    register_pages: bool,
}

impl Memslots {
    /// Move the BAR's ioeventfds with it.
    fn move_ioevents(&self, r: &BarRemap) {
        let Some(list) = self.ioevents.get(&(r.slot, r.bar)) else {
            return;
        };
        for (fd, off) in list {
            if let Some(old) = r.old {
                let _ =
                    self.vm
                        .unregister_ioevent(fd, &IoEventAddress::Mmio(old + off), NoDatamatch);
            }
            if let Some(new) = r.new {
                // On failure the doorbell write traps to the device model,
                // which signals the same eventfd: slower, still correct.
                let _ = self
                    .vm
                    .register_ioevent(fd, &IoEventAddress::Mmio(new + off), NoDatamatch);
            }
        }
    }

    fn remap(&mut self, r: &BarRemap) {
        self.move_ioevents(r);
        let key = (r.slot, r.bar);
        let page = r.register_page.as_ref().filter(|_| self.register_pages);
        let (host, size, flags, _keep) = if let Some(p) = page {
            (p.as_ptr() as u64, 0x1000, KVM_MEM_READONLY, Some(p.clone()))
        } else if let Some(&(host, size)) = self.ram_bars.get(&key) {
            (host, size, 0, None)
        } else {
            return;
        };
        let slot = *self.by_bar.entry(key).or_insert_with(|| {
            self.next += 1;
            self.next - 1
        });
        if r.old.is_some() {
            let gone = kvm_userspace_memory_region {
                slot,
                ..Default::default()
            };
            // SAFETY: deleting a slot (size 0) touches no host memory.
            let _ = unsafe { self.vm.set_user_memory_region(gone) };
        }
        if let Some(gpa) = r.new {
            let region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host,
                flags,
            };
            // SAFETY: `host` is a live, page-aligned mapping of `size`
            // bytes (a register page or a HostRegion) that the PCI device
            // or `PciMachine` keeps alive as long as the VM. A failure
            // (e.g. overlap with RAM, impossible inside the PCI window)
            // leaves the BAR trapping to the device model, which still
            // works, only slower.
            let _ = unsafe { self.vm.set_user_memory_region(region) };
        }
    }
}

/// Handles to a vgpu on the bus.
#[derive(Clone)]
pub struct VgpuHandle {
    /// The device model.
    pub model: Arc<Mutex<devices::vgpu::Vgpu>>,
    /// Its framebuffer.
    pub framebuffer: Arc<HostRegion>,
}

/// The PCI part of a machine.
pub struct PciMachine {
    /// The bus.
    pub bus: Arc<PciBus>,
    /// The INTx lines, for the resampler.
    pub lines: Vec<Arc<LevelIrq>>,
    /// The vgpu, if any (for screenshots).
    pub vgpu: Option<VgpuHandle>,
    /// The virtio-blk disks, in `--disk` order.
    pub disks: Vec<DiskHandle>,
}

/// A virtio-blk disk on the bus.
#[derive(Clone)]
pub struct DiskHandle {
    /// Device name (`vblk0`, ...).
    pub name: String,
    /// What was asked for.
    pub spec: DiskSpec,
    /// The timing model's throttle, when `model=` was given.
    pub throttle: Option<crate::disk::SharedThrottle>,
    /// The virtio-pci function (for shutdown).
    pub device: Arc<Mutex<devices::virtio::pci::VirtioPci>>,
}

/// Monitors and trace for the PCI devices: the VM's recorder and the
/// monitors' interrupt-acknowledge timeout.
#[derive(Clone)]
pub struct PciObserve {
    /// The recorder.
    pub recorder: Arc<Recorder>,
    /// Interrupts not acknowledged within this long are violations.
    pub ack_timeout: Duration,
}

/// The names devices get in reports and traces: the kind's name, numbered
/// from 0 when there are several of a kind (`vgpu0`, `vgpu1`).
pub fn device_names(kinds: &[PciDeviceKind]) -> Vec<String> {
    let name = |k: &PciDeviceKind| {
        PciDeviceKind::ALL
            .iter()
            .find(|(_, x)| x == k)
            .map_or("pci", |(n, _)| *n)
    };
    let mut seen: HashMap<PciDeviceKind, usize> = HashMap::new();
    kinds
        .iter()
        .map(|k| {
            let total = kinds.iter().filter(|x| *x == k).count();
            let n = seen.entry(*k).or_insert(0);
            *n += 1;
            if total == 1 {
                name(k).to_string()
            } else {
                format!("{}{}", name(k), *n - 1)
            }
        })
        .collect()
}

/// Build the PCI bus with `kinds` in slots 1.., put its adapters on `buses`
/// and assign every BAR. With `observe`, every device gets its monitor and
/// its accesses, DMA and interrupts are recorded. `register_pages`: map
/// devices' register pages read-only (see [`Memslots`]).
#[allow(clippy::too_many_arguments)]
pub fn build(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    kinds: &[PciDeviceKind],
    disks: &[DiskSpec],
    queues: u16,
    register_pages: bool,
    buses: &mut Buses,
    observe: Option<&PciObserve>,
) -> Result<PciMachine, PciSetupError> {
    let windows = PciWindows {
        mmio_base: layout::PCI_MMIO32_START,
        mmio_size: layout::PCI_MMIO32_SIZE,
        io_base: PCI_IO_BASE,
        io_size: PCI_IO_SIZE,
    };
    let mut bus = PciBus::new(windows).map_err(|e| PciSetupError::Bus(e.to_string()))?;
    let memslots = Arc::new(Mutex::new(Memslots {
        vm: vm.clone(),
        next: BAR_MEMSLOT_BASE,
        by_bar: HashMap::new(),
        ram_bars: HashMap::new(),
        ioevents: HashMap::new(),
        register_pages,
    }));
    let m = memslots.clone();
    bus.set_remap_hook(Arc::new(move |r: &BarRemap| lock(&m).remap(r)));

    let msi: Arc<dyn MsiSink> = Arc::new(KvmMsi { vm: vm.clone() });
    let mut lines = Vec::new();
    let mut vgpu = None;
    let names = device_names(kinds);
    let ram = RamMap::from_memory(mem);
    let mut observed_slots = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let slot = (i + 1) as u8;
        let gsi = PCI_INTX_GSI_BASE + u32::from(slot - 1) % 8;
        let line = LevelIrq::new(vm, gsi)?;
        lines.push(line.clone());
        // With observation: the device's id, and its INTx line and MSI
        // sink wrapped to record interrupts.
        let mut intx: Arc<dyn Irq> = line.clone();
        let mut msi = msi.clone();
        let obs = observe.map(|o| {
            let monitor: Box<dyn Monitor> = match kind {
                PciDeviceKind::Vgpu => Box::new(VgpuMonitor::new(ram.clone(), o.ack_timeout)),
                PciDeviceKind::Edu => Box::new(EduMonitor::new(ram.clone(), o.ack_timeout)),
            };
            let id = o.recorder.add_device(&names[i], Some(monitor));
            observed_slots.push((slot, id));
            intx = ObservedIrq::new(intx.clone(), o.recorder.clone(), id);
            msi = ObservedMsi::new(msi.clone(), o.recorder.clone(), id);
            (o.recorder.clone(), id)
        });
        let (name, dev): (&str, SharedPciDevice) = match kind {
            PciDeviceKind::Vgpu => {
                let fb = Arc::new(
                    HostRegion::new(devices::vgpu::regs::BAR2_SIZE as usize)
                        .map_err(|e| PciSetupError::Memory(devices::vgpu::regs::BAR2_SIZE, e))?,
                );
                let (events, dma_trace): (EventSink, _) = match &obs {
                    Some((rec, id)) => {
                        let (rec2, id) = (rec.clone(), *id);
                        (
                            Box::new(move |e| rec2.record(id, None, EventKind::Vgpu(e))),
                            Some(rec.dma_hook(id)),
                        )
                    }
                    None => (Box::new(|_| {}), None),
                };
                let d = VgpuPci::with_dma_trace(
                    &names[i],
                    mem.clone(),
                    fb.clone(),
                    intx.clone(),
                    msi.clone(),
                    events,
                    dma_trace,
                )
                .map_err(|e| PciSetupError::Device(e.to_string()))?;
                lock(&memslots).ram_bars.insert(
                    (slot, devices::vgpu::pci::FB_BAR),
                    (fb.host_addr(), fb.len() as u64),
                );
                vgpu = Some(VgpuHandle {
                    model: d.model(),
                    framebuffer: fb,
                });
                (names[i].as_str(), Arc::new(Mutex::new(d)))
            }
            PciDeviceKind::Edu => {
                let trace = obs.as_ref().map(|(rec, id)| rec.dma_hook(*id));
                let d = devices::edu::Edu::new(
                    |bm| {
                        let dma = Dma::new(&names[i], mem.clone(), bm);
                        match trace {
                            Some(t) => dma.with_trace(t),
                            None => dma,
                        }
                    },
                    msi.clone(),
                )
                .map_err(|e| PciSetupError::Device(e.to_string()))?;
                (names[i].as_str(), Arc::new(Mutex::new(d)))
            }
        };
        bus.add_device(
            slot,
            name,
            dev,
            Some(Intx {
                line: gsi as u8,
                irq: intx,
            }),
        )
        .map_err(|e| PciSetupError::Bus(e.to_string()))?;
    }
    let mut disk_handles = Vec::new();
    for (i, spec) in disks.iter().enumerate() {
        let slot = (kinds.len() + i + 1) as u8;
        if usize::from(slot) >= devices::pci::bus::PCI_SLOTS {
            return Err(PciSetupError::Device(format!(
                "too many devices: no PCI slot left for --disk {}",
                spec.path.display()
            )));
        }
        let name = format!("vblk{i}");
        let gsi = PCI_INTX_GSI_BASE + u32::from(slot - 1) % 8;
        let line = LevelIrq::new(vm, gsi)?;
        lines.push(line.clone());
        let mut intx: Arc<dyn Irq> = line.clone();
        let mut msi = msi.clone();
        if let Some(o) = observe {
            let id = o.recorder.add_device(&name, None);
            observed_slots.push((slot, id));
            intx = ObservedIrq::new(intx.clone(), o.recorder.clone(), id);
            msi = ObservedMsi::new(msi.clone(), o.recorder.clone(), id);
        }
        let (blk, throttle) = spec.open(&name, queues)?;
        let dev = devices::virtio::pci::VirtioPci::new(&name, Box::new(blk), mem.clone(), msi)
            .map_err(|e| PciSetupError::Device(e.to_string()))?;
        let mut doorbells = Vec::new();
        {
            let d = lock(&dev);
            for q in 0..d.num_queues() {
                if let (Some(fd), Some((bar, off))) = (d.kick_eventfd(q), d.notify_address(q)) {
                    doorbells.push((bar, fd, off));
                }
            }
        }
        {
            let mut m = lock(&memslots);
            for (bar, fd, off) in doorbells {
                m.ioevents.entry((slot, bar)).or_default().push((fd, off));
            }
        }
        bus.add_device(
            slot,
            &name,
            dev.clone(),
            Some(Intx {
                line: gsi as u8,
                irq: intx,
            }),
        )
        .map_err(|e| PciSetupError::Bus(e.to_string()))?;
        disk_handles.push(DiskHandle {
            name,
            spec: spec.clone(),
            throttle,
            device: dev,
        });
    }
    let disks = disk_handles;
    if let Some(o) = observe {
        bus.set_observer(o.recorder.pci_observer(&observed_slots));
    }
    let bus = Arc::new(bus);
    bus.assign_bars()
        .map_err(|e| PciSetupError::Bus(e.to_string()))?;

    buses.pio.insert(
        Arc::new(Mutex::new(ConfigIo::new(bus.clone()))),
        PCI_CONFIG_PORT,
        8,
        "pci-config",
    )?;
    buses.mmio.insert(
        Arc::new(Mutex::new(Ecam::new(bus.clone()))),
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
        "pci-ecam",
    )?;
    buses.mmio.insert(
        Arc::new(Mutex::new(PciBarWindow::new(bus.clone(), PciSpace::Mmio))),
        windows.mmio_base,
        windows.mmio_size,
        "pci-mmio",
    )?;
    buses.pio.insert(
        Arc::new(Mutex::new(PciBarWindow::new(bus.clone(), PciSpace::Io))),
        windows.io_base,
        windows.io_size,
        "pci-io",
    )?;
    Ok(PciMachine {
        bus,
        lines,
        vgpu,
        disks,
    })
}

impl Drop for PciMachine {
    fn drop(&mut self) {
        // Stop each disk's I/O thread (it flushes nothing by itself: the
        // guest's flushes are what make data durable) and release the
        // image and its locks.
        for d in &self.disks {
            devices::virtio::pci::VirtioPci::shutdown(&d.device);
            if let (Some(path), Some(t)) = (&d.spec.stats, &d.throttle) {
                if let Err(e) = crate::disk::write_stats(path, t) {
                    eprintln!("vlab: cannot write disk stats {}: {e}", path.display());
                }
            }
        }
    }
}
