//! PCI bus 0: up to 32 device slots (function 0 each), configuration
//! access by bus/device/function/register, and BAR decoding.
//!
//! # BAR decoding and relocation
//!
//! The VMM's [`crate::bus::Bus`] is built once and never changes, but the
//! guest moves BARs whenever it likes. So the PCI bus claims whole windows
//! — one MMIO window (the 32-bit PCI hole) and one I/O-port window — with
//! a [`PciBarWindow`] adapter each, and decodes inside them itself: after
//! every config write to a function it recomputes that function's decoded
//! BARs (address programmed, `PCI_COMMAND_MEMORY`/`PCI_COMMAND_IO` on, the
//! whole BAR inside the window) and routes accesses to
//! `PciDevice::bar_read`/`bar_write`. Accesses no BAR decodes read as
//! all-ones (a master abort) and are counted.
//!
//! Every change of a decoded BAR (moved, enabled, disabled) is reported to
//! the remap hook as a [`BarRemap`], carrying the BAR's register page if
//! it has one, so the VMM can move that page's read-only memslot.
//!
//! # Locking
//!
//! Order: a device's mutex → the bus's BAR map. An access looks up the
//! BAR in the map, releases it, then locks the device. A config write
//! holds the device's mutex while it updates the map and calls the remap
//! hook, so remaps of one device are reported in order; the hook must not
//! take a PCI device's lock.
//!
//! # Firmware
//!
//! [`PciBus::assign_bars`] plays firmware at start-up: it gives every BAR
//! an address in the windows (naturally aligned, MMIO at least 4 KiB
//! aligned, 64-bit BARs in the 32-bit window too) and turns on memory/I/O
//! decoding, so guests that do not assign BARs themselves (vlab's kernel)
//! find devices ready. Linux keeps valid assignments.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::config::{
    bar_offset, ConfigError, ConfigSpace, PciSpace, PCI_COMMAND, PCI_COMMAND_IO,
    PCI_COMMAND_MEMORY, PCI_INTERRUPT_PIN, PCI_NUM_BARS,
};
use super::device::PciDevice;
use super::host_bridge::HostBridge;
use super::register_page::RegisterPage;
use crate::bus::{lock, Access, BusDevice};
use crate::irq::Irq;

#[cfg(test)]
mod tests;

/// Device slots on a bus.
pub const PCI_SLOTS: usize = 32;
/// Smallest alignment given to an MMIO BAR (one page).
pub const PCI_MMIO_MIN_ALIGN: u64 = 4096;

/// A PCI function as stored on the bus.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// A remap hook: told about every change of a decoded BAR.
pub type RemapHook = Arc<dyn Fn(&BarRemap) + Send + Sync>;

/// Which space a [`PciAccess`] went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciAccessSpace {
    /// BAR `n` (offset inside the BAR).
    Bar(usize),
    /// Configuration space (offset = register); `command` is the PCI
    /// command register after the access.
    Config {
        /// PCI_COMMAND after the access.
        command: u16,
    },
}

/// One access a device handled, as shown to the [`PciObserver`].
#[derive(Debug, Clone, Copy)]
pub struct PciAccess<'a> {
    /// The device's slot.
    pub slot: u8,
    /// The vCPU that made it, if known.
    pub vcpu: Option<u32>,
    /// BAR or configuration space.
    pub space: PciAccessSpace,
    /// Offset inside the BAR, or the config register.
    pub offset: u64,
    /// The bytes written, or the bytes the guest read.
    pub data: &'a [u8],
    /// A write?
    pub write: bool,
    /// How long the device took (with its lock).
    pub took: std::time::Duration,
}

/// Sees every access a device on the bus handles (monitors, `--trace`).
/// Called with the device's lock held, after the device handled the
/// access: it must not take a PCI device's lock.
pub trait PciObserver: Send + Sync {
    /// A device handled `a`.
    fn access(&self, a: &PciAccess<'_>);
}

/// Errors building the bus or assigning BARs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciBusError {
    /// Slot number out of 1..32 (slot 0 is the host bridge).
    #[error("PCI slot {0} does not exist (devices go in slots 1-31)")]
    BadSlot(u8),
    /// The slot already holds a device.
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    /// No free slot left.
    #[error("All 31 PCI device slots are in use")]
    Full,
    /// The BAR did not fit in its window.
    #[error("No room for BAR {bar} ({size:#x} bytes) of PCI slot {slot} in the {space:?} window")]
    NoRoom {
        /// The slot.
        slot: u8,
        /// The BAR index.
        bar: usize,
        /// The BAR size.
        size: u64,
        /// The address space.
        space: PciSpace,
    },
    /// A window is empty or wraps around.
    #[error("PCI {0:?} window is empty or wraps around")]
    BadWindow(PciSpace),
    /// Attaching INTx failed.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The address windows BARs are decoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindows {
    /// First address of the MMIO window.
    pub mmio_base: u64,
    /// Size of the MMIO window.
    pub mmio_size: u64,
    /// First port of the I/O window.
    pub io_base: u64,
    /// Size of the I/O window.
    pub io_size: u64,
}

impl PciWindows {
    fn range(&self, space: PciSpace) -> (u64, u64) {
        match space {
            PciSpace::Mmio => (self.mmio_base, self.mmio_size),
            PciSpace::Io => (self.io_base, self.io_size),
        }
    }
    /// Whether `base..base+size` lies inside the window for `space`.
    pub fn contains(&self, space: PciSpace, base: u64, size: u64) -> bool {
        let (wb, ws) = self.range(space);
        match (base.checked_add(size), wb.checked_add(ws)) {
            (Some(end), Some(wend)) => base >= wb && end <= wend,
            _ => false,
        }
    }
}

/// A configuration-space address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0–31.
    pub device: u8,
    /// Function number, 0–7.
    pub function: u8,
    /// Register offset, 0–4095.
    pub register: u16,
}

impl PciAddress {
    /// Decode an ECAM offset: bus << 20 | device << 15 | function << 12 |
    /// register. `None` past 256 buses.
    pub fn from_ecam_offset(offset: u64) -> Option<Self> {
        (offset < 1 << 28).then_some(PciAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            register: (offset & 0xfff) as u16,
        })
    }
}

/// A BAR the bus currently decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMapping {
    /// The slot.
    pub slot: u8,
    /// The BAR index.
    pub bar: usize,
    /// Memory or I/O.
    pub space: PciSpace,
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A decoded BAR appeared, moved or disappeared.
#[derive(Debug, Clone)]
pub struct BarRemap {
    /// The slot.
    pub slot: u8,
    /// The BAR index.
    pub bar: usize,
    /// Memory or I/O.
    pub space: PciSpace,
    /// Size in bytes.
    pub size: u64,
    /// Where it was decoded before (`None`: not decoded).
    pub old: Option<u64>,
    /// Where it is decoded now (`None`: not decoded).
    pub new: Option<u64>,
    /// The BAR's register page, to be mapped read-only at `new`.
    pub register_page: Option<Arc<RegisterPage>>,
}

/// An INTx connection for a device: the line number written to
/// `PCI_INTERRUPT_LINE` and the interrupt it drives.
#[derive(Clone)]
pub struct Intx {
    /// The IRQ/GSI the pin is routed to.
    pub line: u8,
    /// The interrupt.
    pub irq: Arc<dyn Irq>,
}

/// Counters of accesses the bus could not route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciStats {
    /// Config reads of absent functions (answered with all-ones).
    pub absent_config_reads: u64,
    /// Config writes to absent functions (dropped).
    pub absent_config_writes: u64,
    /// Window accesses no BAR decodes.
    pub unclaimed_bar_accesses: u64,
    /// Malformed mechanism-#1 or ECAM accesses (wrong width on 0xCF8,
    /// straddling a function's 4 KiB).
    pub bad_config_accesses: u64,
}

#[derive(Default)]
struct Counters {
    absent_reads: AtomicU64,
    absent_writes: AtomicU64,
    unclaimed: AtomicU64,
    bad_config: AtomicU64,
}

struct Slot {
    name: String,
    dev: SharedPciDevice,
    pages: [Option<Arc<RegisterPage>>; PCI_NUM_BARS],
}

/// PCI bus 0 with its host bridge in slot 0. Build it with [`PciBus::new`]
/// and [`PciBus::add_device`], then share it as `Arc<PciBus>`.
pub struct PciBus {
    slots: Vec<Option<Slot>>,
    windows: PciWindows,
    map: RwLock<Vec<BarMapping>>,
    config_address: AtomicU32,
    counters: Counters,
    on_remap: Option<RemapHook>,
    observer: Option<Arc<dyn PciObserver>>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("devices", &self.devices())
            .field("windows", &self.windows)
            .field("mappings", &self.mappings())
            .finish_non_exhaustive()
    }
}

impl PciBus {
    /// A bus decoding BARs in `windows`, with the host bridge in slot 0.
    pub fn new(windows: PciWindows) -> Result<Self, PciBusError> {
        for space in [PciSpace::Mmio, PciSpace::Io] {
            let (b, s) = windows.range(space);
            if s == 0 || b.checked_add(s).is_none() {
                return Err(PciBusError::BadWindow(space));
            }
        }
        let mut bus = PciBus {
            slots: (0..PCI_SLOTS).map(|_| None).collect(),
            windows,
            map: RwLock::new(Vec::new()),
            config_address: AtomicU32::new(0),
            counters: Counters::default(),
            on_remap: None,
            observer: None,
        };
        bus.slots[0] = Some(Slot {
            name: "host-bridge".to_string(),
            dev: Arc::new(Mutex::new(HostBridge::new())),
            pages: Default::default(),
        });
        Ok(bus)
    }

    /// Tell `hook` about every change of a decoded BAR.
    pub fn set_remap_hook(&mut self, hook: RemapHook) {
        self.on_remap = Some(hook);
    }

    /// Show every device access (BAR and configuration space) to
    /// `observer`. Without one an access costs one branch more.
    pub fn set_observer(&mut self, observer: Arc<dyn PciObserver>) {
        self.observer = Some(observer);
    }

    /// The windows BARs are decoded in.
    pub fn windows(&self) -> PciWindows {
        self.windows
    }

    /// Put `dev` in `slot` (1–31). With `intx`, a device with an interrupt
    /// pin gets its INTx connected and `PCI_INTERRUPT_LINE` set.
    pub fn add_device(
        &mut self,
        slot: u8,
        name: &str,
        dev: SharedPciDevice,
        intx: Option<Intx>,
    ) -> Result<(), PciBusError> {
        let s = usize::from(slot);
        if s == 0 || s >= PCI_SLOTS {
            return Err(PciBusError::BadSlot(slot));
        }
        if self.slots[s].is_some() {
            return Err(PciBusError::SlotInUse(slot));
        }
        let pages = {
            let mut d = lock(&dev);
            if let Some(i) = intx {
                if d.config().read_u8(PCI_INTERRUPT_PIN) != 0 {
                    d.config_mut().attach_intx(i.irq, i.line);
                }
            }
            std::array::from_fn(|bar| {
                let cfg = d.config();
                match cfg.bar(bar) {
                    Some(b) if b.space() == PciSpace::Mmio => d.register_page(bar),
                    _ => None,
                }
            })
        };
        self.slots[s] = Some(Slot {
            name: name.to_string(),
            dev,
            pages,
        });
        Ok(())
    }

    /// The lowest free slot.
    pub fn free_slot(&self) -> Result<u8, PciBusError> {
        (1..PCI_SLOTS)
            .find(|&s| self.slots[s].is_none())
            .map(|s| s as u8)
            .ok_or(PciBusError::Full)
    }

    /// The devices on the bus: (slot, name).
    pub fn devices(&self) -> Vec<(u8, String)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u8, s.as_ref()?.name.clone())))
            .collect()
    }

    /// The device in `slot`.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| s.dev.clone())
    }

    /// The BARs decoded now.
    pub fn mappings(&self) -> Vec<BarMapping> {
        read_map(&self.map).clone()
    }

    /// Counters of accesses that could not be routed.
    pub fn stats(&self) -> PciStats {
        let c = &self.counters;
        PciStats {
            absent_config_reads: c.absent_reads.load(Ordering::Relaxed),
            absent_config_writes: c.absent_writes.load(Ordering::Relaxed),
            unclaimed_bar_accesses: c.unclaimed.load(Ordering::Relaxed),
            bad_config_accesses: c.bad_config.load(Ordering::Relaxed),
        }
    }

    // ---- configuration access ----

    fn slot_for(&self, a: PciAddress) -> Option<&Slot> {
        if a.bus != 0 || a.function != 0 {
            return None;
        }
        self.slots.get(usize::from(a.device))?.as_ref()
    }

    /// Read config space; absent functions read all-ones.
    pub fn config_read(&self, a: PciAddress, data: &mut [u8]) {
        self.config_read_by(a, data, None)
    }

    /// Read config space for vCPU `vcpu` (shown to the observer).
    pub fn config_read_by(&self, a: PciAddress, data: &mut [u8], vcpu: Option<u32>) {
        match self.slot_for(a) {
            Some(s) => {
                let mut dev = lock(&s.dev);
                match &self.observer {
                    None => dev.config_read(usize::from(a.register), data),
                    Some(o) => {
                        let t0 = std::time::Instant::now();
                        dev.config_read(usize::from(a.register), data);
                        let command = dev.config().command();
                        o.access(&PciAccess {
                            slot: a.device,
                            vcpu,
                            space: PciAccessSpace::Config { command },
                            offset: u64::from(a.register),
                            data,
                            write: false,
                            took: t0.elapsed(),
                        });
                    }
                }
            }
            None => {
                data.fill(0xff);
                self.counters.absent_reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Write config space; writes to absent functions are dropped. Updates
    /// BAR decoding and reports remaps.
    pub fn config_write(&self, a: PciAddress, data: &[u8]) {
        self.config_write_by(a, data, None)
    }

    /// Write config space for vCPU `vcpu` (shown to the observer).
    pub fn config_write_by(&self, a: PciAddress, data: &[u8], vcpu: Option<u32>) {
        let Some(s) = self.slot_for(a) else {
            self.counters.absent_writes.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut dev = lock(&s.dev);
        let t0 = self.observer.as_ref().map(|_| std::time::Instant::now());
        dev.config_write(usize::from(a.register), data);
        self.refresh(a.device, s, dev.config());
        if let (Some(o), Some(t0)) = (&self.observer, t0) {
            o.access(&PciAccess {
                slot: a.device,
                vcpu,
                space: PciAccessSpace::Config {
                    command: dev.config().command(),
                },
                offset: u64::from(a.register),
                data,
                write: true,
                took: t0.elapsed(),
            });
        }
    }

    /// Recompute the decoded BARs of `slot` (device lock held).
    fn refresh(&self, slot: u8, s: &Slot, cfg: &ConfigSpace) {
        let new: Vec<BarMapping> = cfg
            .bars()
            .filter(|(_, bar, base)| {
                let on = match bar.space() {
                    PciSpace::Mmio => cfg.mem_enabled(),
                    PciSpace::Io => cfg.io_enabled(),
                };
                on && *base != 0 && self.windows.contains(bar.space(), *base, bar.size)
            })
            .map(|(i, bar, base)| BarMapping {
                slot,
                bar: i,
                space: bar.space(),
                base,
                size: bar.size,
            })
            .collect();
        let old: Vec<BarMapping> = {
            let mut map = write_map(&self.map);
            let old = map.iter().filter(|m| m.slot == slot).copied().collect();
            map.retain(|m| m.slot != slot);
            map.extend(new.iter().copied());
            old
        };
        let Some(hook) = &self.on_remap else { return };
        for (i, bar, _) in cfg.bars() {
            let find = |v: &[BarMapping]| v.iter().find(|m| m.bar == i).map(|m| m.base);
            let (o, n) = (find(&old), find(&new));
            if o != n {
                hook(&BarRemap {
                    slot,
                    bar: i,
                    space: bar.space(),
                    size: bar.size,
                    old: o,
                    new: n,
                    register_page: s.pages.get(i).cloned().flatten(),
                });
            }
        }
    }

    // ---- mechanism #1 state ----

    /// The CONFIG_ADDRESS register (0xCF8) as last written.
    pub fn config_address(&self) -> u32 {
        self.config_address.load(Ordering::Relaxed)
    }
    /// Set CONFIG_ADDRESS.
    pub fn set_config_address(&self, v: u32) {
        self.config_address.store(v, Ordering::Relaxed)
    }
    pub(super) fn count_bad_config(&self) {
        self.counters.bad_config.fetch_add(1, Ordering::Relaxed);
    }

    // ---- BAR access ----

    fn find_bar(
        &self,
        space: PciSpace,
        addr: u64,
        len: usize,
    ) -> Option<(SharedPciDevice, u8, usize, u64)> {
        let map = read_map(&self.map);
        let m = map.iter().find(|m| {
            m.space == space
                && addr >= m.base
                && (addr - m.base)
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= m.size)
        })?;
        let dev = self.slots.get(usize::from(m.slot))?.as_ref()?.dev.clone();
        Some((dev, m.slot, m.bar, addr - m.base))
    }

    /// A guest read at `addr` in `space`. Returns false (and fills all-ones)
    /// if no decoded BAR holds the whole access.
    pub fn bar_read(&self, space: PciSpace, addr: u64, data: &mut [u8]) -> bool {
        self.bar_read_by(space, addr, data, None)
    }

    /// [`PciBus::bar_read`] by vCPU `vcpu` (shown to the observer).
    pub fn bar_read_by(
        &self,
        space: PciSpace,
        addr: u64,
        data: &mut [u8],
        vcpu: Option<u32>,
    ) -> bool {
        match self.find_bar(space, addr, data.len()) {
            Some((dev, slot, bar, off)) => {
                let mut dev = lock(&dev);
                match &self.observer {
                    None => dev.bar_read(bar, off, data),
                    Some(o) => {
                        let t0 = std::time::Instant::now();
                        dev.bar_read(bar, off, data);
                        o.access(&PciAccess {
                            slot,
                            vcpu,
                            space: PciAccessSpace::Bar(bar),
                            offset: off,
                            data,
                            write: false,
                            took: t0.elapsed(),
                        });
                    }
                }
                true
            }
            None => {
                data.fill(0xff);
                self.counters.unclaimed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// A guest write at `addr` in `space`. Returns false (and drops it) if
    /// no decoded BAR holds the whole access.
    pub fn bar_write(&self, space: PciSpace, addr: u64, data: &[u8]) -> bool {
        self.bar_write_by(space, addr, data, None)
    }

    /// [`PciBus::bar_write`] by vCPU `vcpu` (shown to the observer).
    pub fn bar_write_by(&self, space: PciSpace, addr: u64, data: &[u8], vcpu: Option<u32>) -> bool {
        match self.find_bar(space, addr, data.len()) {
            Some((dev, slot, bar, off)) => {
                let mut dev = lock(&dev);
                match &self.observer {
                    None => dev.bar_write(bar, off, data),
                    Some(o) => {
                        let t0 = std::time::Instant::now();
                        dev.bar_write(bar, off, data);
                        o.access(&PciAccess {
                            slot,
                            vcpu,
                            space: PciAccessSpace::Bar(bar),
                            offset: off,
                            data,
                            write: true,
                            took: t0.elapsed(),
                        });
                    }
                }
                true
            }
            None => {
                self.counters.unclaimed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    // ---- firmware ----

    /// Give every BAR of every device an address and enable decoding (see
    /// the module documentation). Returns the resulting mappings.
    pub fn assign_bars(&self) -> Result<Vec<BarMapping>, PciBusError> {
        let mut mmio = BarAllocator::new(self.windows.mmio_base, self.windows.mmio_size);
        let mut io = BarAllocator::new(self.windows.io_base, self.windows.io_size);
        for (slot, s) in self.slots.iter().enumerate() {
            let Some(s) = s else { continue };
            let slot = slot as u8;
            let mut dev = lock(&s.dev);
            let mut bars: Vec<_> = dev.config().bars().collect();
            bars.sort_by_key(|(i, b, _)| (std::cmp::Reverse(b.size), *i));
            let mut command = dev.config().command();
            for (i, bar, _) in bars {
                let (alloc, align, enable) = match bar.space() {
                    PciSpace::Mmio => (
                        &mut mmio,
                        bar.size.max(PCI_MMIO_MIN_ALIGN),
                        PCI_COMMAND_MEMORY,
                    ),
                    PciSpace::Io => (&mut io, bar.size, PCI_COMMAND_IO),
                };
                let addr = alloc.alloc(bar.size, align).ok_or(PciBusError::NoRoom {
                    slot,
                    bar: i,
                    size: bar.size,
                    space: bar.space(),
                })?;
                dev.config_write(bar_offset(i), &(addr as u32).to_le_bytes());
                if matches!(bar.kind, super::config::BarKind::Mem64 { .. }) {
                    dev.config_write(bar_offset(i + 1), &((addr >> 32) as u32).to_le_bytes());
                }
                command |= enable;
            }
            dev.config_write(PCI_COMMAND, &command.to_le_bytes());
            self.refresh(slot, s, dev.config());
        }
        Ok(self.mappings())
    }
}

/// A bump allocator for BAR addresses.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// Allocate from `base..base+size`.
    pub fn new(base: u64, size: u64) -> Self {
        BarAllocator {
            next: base,
            end: base.saturating_add(size),
        }
    }
    /// `size` bytes aligned to `align` (a power of two), or `None` if full.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if !align.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

/// A [`BusDevice`] claiming a whole BAR window (MMIO or I/O) for the PCI
/// bus; register it at the window's base with the window's size.
#[derive(Debug)]
pub struct PciBarWindow {
    bus: Arc<PciBus>,
    space: PciSpace,
}

impl PciBarWindow {
    /// The window for `space` of `bus`.
    pub fn new(bus: Arc<PciBus>, space: PciSpace) -> Self {
        PciBarWindow { bus, space }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, a: Access, data: &mut [u8]) {
        match a.base.checked_add(a.offset) {
            Some(addr) => {
                self.bus.bar_read_by(self.space, addr, data, Some(a.vcpu));
            }
            None => data.fill(0xff),
        }
    }
    fn write(&mut self, a: Access, data: &[u8]) {
        if let Some(addr) = a.base.checked_add(a.offset) {
            self.bus.bar_write_by(self.space, addr, data, Some(a.vcpu));
        }
    }
}

fn read_map(m: &RwLock<Vec<BarMapping>>) -> std::sync::RwLockReadGuard<'_, Vec<BarMapping>> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write_map(m: &RwLock<Vec<BarMapping>>) -> std::sync::RwLockWriteGuard<'_, Vec<BarMapping>> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
