//! PCI configuration space of one function: the type-0 header, BARs and the
//! capability list (PCI Local Bus Specification 3.0, chapter 6).
//!
//! # Layout and access rules
//!
//! | offset | register | guest access |
//! |--------|----------|--------------|
//! | 0x00 | vendor ID, device ID | read-only |
//! | 0x04 | command | IO, MEMORY, MASTER, PARITY, SERR, INTX_DISABLE writable; others read 0 |
//! | 0x06 | status | INTERRUPT (live INTx state) and CAP_LIST read-only; error bits RW1C |
//! | 0x08 | revision, class code | read-only |
//! | 0x0c | cache line size, latency timer | read-write storage |
//! | 0x0e | header type, BIST | read-only (0x00 or 0x80 for multi-function) |
//! | 0x10–0x27 | BAR0–BAR5 | address bits above the BAR size writable; type bits read-only |
//! | 0x28 | CardBus CIS | 0 |
//! | 0x2c | subsystem vendor ID, subsystem ID | read-only |
//! | 0x30 | expansion ROM BAR | 0 (no ROM: sizing reads 0) |
//! | 0x34 | capabilities pointer | read-only |
//! | 0x3c | interrupt line | read-write |
//! | 0x3d | interrupt pin | read-only |
//! | 0x40–0xff | capabilities | per capability write mask |
//! | 0x100–0xfff | PCIe extended space | reads 0, writes ignored (no extended capabilities) |
//!
//! Every byte has a write mask and an RW1C mask: a guest write of `v` to a
//! byte with value `old` stores `(old & !wmask) | (v & wmask)` and then
//! clears the bits `v & w1cmask`. Accesses have any width and any offset
//! and are applied byte by byte, so straddling accesses just work.
//!
//! BAR sizing falls out of the write masks: writing all-ones stores
//! `!(size - 1)` in the address bits, and the read-only type bits stay.
//! After every write [`ConfigSpace::write`] reports the BARs whose address
//! changed ([`BarChange`]); the PCI bus uses that (and the command register)
//! to move its decoding windows.
//!
//! Only the first 256 bytes are backed; the 4 KiB a function has under
//! ECAM reads as zero beyond them, so Linux sees no extended capabilities.
//! Accesses there are counted ([`ConfigSpace::unknown_accesses`]).

use std::sync::Arc;

use crate::dma::BusMaster;
use crate::irq::Irq;

#[cfg(test)]
mod tests;

/// Vendor ID (u16).
pub const PCI_VENDOR_ID: usize = 0x00;
/// Device ID (u16).
pub const PCI_DEVICE_ID: usize = 0x02;
/// Command register (u16).
pub const PCI_COMMAND: usize = 0x04;
/// Status register (u16).
pub const PCI_STATUS: usize = 0x06;
/// Revision ID (u8).
pub const PCI_REVISION_ID: usize = 0x08;
/// Programming interface (u8).
pub const PCI_CLASS_PROG: usize = 0x09;
/// Sub-class (u8); the base class follows at 0x0b.
pub const PCI_CLASS_DEVICE: usize = 0x0a;
/// Cache line size (u8).
pub const PCI_CACHE_LINE_SIZE: usize = 0x0c;
/// Latency timer (u8).
pub const PCI_LATENCY_TIMER: usize = 0x0d;
/// Header type (u8).
pub const PCI_HEADER_TYPE: usize = 0x0e;
/// BAR 0 (u32); BAR n is at `PCI_BASE_ADDRESS_0 + 4 * n`.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Subsystem vendor ID (u16).
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID (u16).
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM base address (u32).
pub const PCI_ROM_ADDRESS: usize = 0x30;
/// Offset of the first capability (u8).
pub const PCI_CAPABILITY_LIST: usize = 0x34;
/// Interrupt line (u8, firmware/OS scratch: the IRQ the pin is routed to).
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin (u8): 0 none, 1–4 INTA#–INTD#.
pub const PCI_INTERRUPT_PIN: usize = 0x3d;
/// Where capabilities start.
pub const PCI_CAP_START: usize = 0x40;
/// Size of the conventional configuration space.
pub const PCI_CFG_SPACE_SIZE: usize = 256;
/// Size of a function's configuration space under ECAM (PCIe).
pub const PCI_CFG_SPACE_EXP_SIZE: usize = 4096;
/// Number of BARs in a type-0 header.
pub const PCI_NUM_BARS: usize = 6;

/// Command: respond to I/O space accesses.
pub const PCI_COMMAND_IO: u16 = 0x1;
/// Command: respond to memory space accesses.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
/// Command: enable bus mastering (DMA).
pub const PCI_COMMAND_MASTER: u16 = 0x4;
/// Command: parity error response.
pub const PCI_COMMAND_PARITY: u16 = 0x40;
/// Command: SERR# enable.
pub const PCI_COMMAND_SERR: u16 = 0x100;
/// Command: INTx emulation disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x400;

/// Status: INTx asserted (read-only, live).
pub const PCI_STATUS_INTERRUPT: u16 = 0x8;
/// Status: a capability list is present.
pub const PCI_STATUS_CAP_LIST: u16 = 0x10;
/// Status: master data parity error (RW1C).
pub const PCI_STATUS_PARITY: u16 = 0x100;
/// Status: signaled target abort (RW1C).
pub const PCI_STATUS_SIG_TARGET_ABORT: u16 = 0x800;
/// Status: received target abort (RW1C).
pub const PCI_STATUS_REC_TARGET_ABORT: u16 = 0x1000;
/// Status: received master abort (RW1C); set by a refused DMA.
pub const PCI_STATUS_REC_MASTER_ABORT: u16 = 0x2000;
/// Status: signaled system error (RW1C).
pub const PCI_STATUS_SIG_SYSTEM_ERROR: u16 = 0x4000;
/// Status: detected parity error (RW1C).
pub const PCI_STATUS_DETECTED_PARITY: u16 = 0x8000;

/// BAR bit 0: I/O space BAR.
pub const PCI_BAR_SPACE_IO: u32 = 0x1;
/// BAR bits 2:1 = 10b: 64-bit memory BAR.
pub const PCI_BAR_MEM_TYPE_64: u32 = 0x4;
/// BAR bit 3: prefetchable memory.
pub const PCI_BAR_MEM_PREFETCH: u32 = 0x8;
/// Address bits of a memory BAR.
pub const PCI_BAR_MEM_MASK: u32 = !0xf;
/// Address bits of an I/O BAR.
pub const PCI_BAR_IO_MASK: u32 = !0x3;

/// Header type 0 (a normal function).
pub const PCI_HEADER_TYPE_NORMAL: u8 = 0x00;
/// Header type bit 7: the device has more than one function.
pub const PCI_HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;

/// Capability ID: MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Capability ID: vendor specific.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Capability ID: PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;
/// Capability ID: MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

const COMMAND_WMASK: u16 = PCI_COMMAND_IO
    | PCI_COMMAND_MEMORY
    | PCI_COMMAND_MASTER
    | PCI_COMMAND_PARITY
    | PCI_COMMAND_SERR
    | PCI_COMMAND_INTX_DISABLE;
const STATUS_W1C: u16 = PCI_STATUS_PARITY
    | PCI_STATUS_SIG_TARGET_ABORT
    | PCI_STATUS_REC_TARGET_ABORT
    | PCI_STATUS_REC_MASTER_ABORT
    | PCI_STATUS_SIG_SYSTEM_ERROR
    | PCI_STATUS_DETECTED_PARITY;
/// Longest capability chain walked before giving up on a loop.
const MAX_CAPS: usize = (PCI_CFG_SPACE_SIZE - PCI_CAP_START) / 4;

/// Errors building a configuration space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// BAR index out of 0..6 (or 5 for a 64-bit BAR).
    #[error("BAR {0} does not exist (a type-0 header has BARs 0-5; a 64-bit BAR needs two)")]
    NoSuchBar(usize),
    /// The BAR (or the upper half of a 64-bit one) is already defined.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// Size not a power of two or out of the range for its kind.
    #[error("BAR size {size:#x} is invalid: {why}")]
    BadBarSize {
        /// The rejected size.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Body and write mask differ in length.
    #[error("Capability body is {body} bytes but its write mask is {mask}")]
    MaskLength {
        /// Body length.
        body: usize,
        /// Mask length.
        mask: usize,
    },
    /// No room left in the 256-byte space.
    #[error("Capability of {0} bytes does not fit in configuration space")]
    NoRoom(usize),
    /// Interrupt pin outside 0..=4.
    #[error("Interrupt pin {0} is invalid (0 = none, 1-4 = INTA#-INTD#)")]
    BadPin(u8),
}

/// The identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Base class (e.g. 0x06 bridge).
    pub class: u8,
    /// Sub-class.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// Which address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PciSpace {
    /// Memory space.
    Mmio,
    /// I/O space.
    Io,
}

/// The kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space (4 to 256 bytes).
    Io,
    /// 32-bit memory.
    Mem32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory: uses this BAR and the next.
    Mem64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// A BAR definition: kind and (power-of-two) size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
}

impl Bar {
    /// An I/O BAR.
    pub fn io(size: u64) -> Self {
        Bar {
            kind: BarKind::Io,
            size,
        }
    }
    /// A non-prefetchable 32-bit memory BAR.
    pub fn mem32(size: u64) -> Self {
        Bar {
            kind: BarKind::Mem32 {
                prefetchable: false,
            },
            size,
        }
    }
    /// A 64-bit memory BAR.
    pub fn mem64(size: u64, prefetchable: bool) -> Self {
        Bar {
            kind: BarKind::Mem64 { prefetchable },
            size,
        }
    }
    /// The address space it decodes.
    pub fn space(&self) -> PciSpace {
        match self.kind {
            BarKind::Io => PciSpace::Io,
            _ => PciSpace::Mmio,
        }
    }
    /// The read-only type bits in the low dword.
    fn type_bits(&self) -> u32 {
        match self.kind {
            BarKind::Io => PCI_BAR_SPACE_IO,
            BarKind::Mem32 { prefetchable } => u32::from(prefetchable) * PCI_BAR_MEM_PREFETCH,
            BarKind::Mem64 { prefetchable } => {
                PCI_BAR_MEM_TYPE_64 | (u32::from(prefetchable) * PCI_BAR_MEM_PREFETCH)
            }
        }
    }
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why| {
            Err(ConfigError::BadBarSize {
                size: self.size,
                why,
            })
        };
        if !self.size.is_power_of_two() {
            return bad("not a power of two");
        }
        match self.kind {
            BarKind::Io if !(4..=256).contains(&self.size) => bad("I/O BARs are 4 to 256 bytes"),
            BarKind::Mem32 { .. } if !(16..=1 << 31).contains(&self.size) => {
                bad("32-bit memory BARs are 16 bytes to 2 GiB")
            }
            BarKind::Mem64 { .. } if !(16..=1 << 62).contains(&self.size) => {
                bad("64-bit memory BARs are 16 bytes to 4 EiB")
            }
            _ => Ok(()),
        }
    }
}

/// A BAR whose programmed address changed, as reported by a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarChange {
    /// BAR index (the lower one of a 64-bit BAR).
    pub bar: usize,
    /// Address before the write.
    pub old: u64,
    /// Address after the write.
    pub new: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar(Bar),
    /// The upper dword of the 64-bit BAR below.
    Upper,
}

/// A function's configuration space. See the module documentation.
pub struct ConfigSpace {
    regs: [u8; PCI_CFG_SPACE_SIZE],
    wmask: [u8; PCI_CFG_SPACE_SIZE],
    w1cmask: [u8; PCI_CFG_SPACE_SIZE],
    bars: [BarSlot; PCI_NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
    bus_master: Arc<BusMaster>,
    intx: Option<Arc<dyn Irq>>,
    intx_asserted: bool,
    intx_line_high: bool,
    unknown: u64,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field(
                "vendor",
                &format_args!("{:#06x}", self.read_u16(PCI_VENDOR_ID)),
            )
            .field(
                "device",
                &format_args!("{:#06x}", self.read_u16(PCI_DEVICE_ID)),
            )
            .field("command", &format_args!("{:#06x}", self.command()))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A type-0 header with `ids`, no BARs, no capabilities, no interrupt pin.
    pub fn new(ids: PciIds) -> Self {
        let mut c = ConfigSpace {
            regs: [0; PCI_CFG_SPACE_SIZE],
            wmask: [0; PCI_CFG_SPACE_SIZE],
            w1cmask: [0; PCI_CFG_SPACE_SIZE],
            bars: [BarSlot::Unused; PCI_NUM_BARS],
            last_cap: None,
            next_cap: PCI_CAP_START,
            bus_master: BusMaster::new(),
            intx: None,
            intx_asserted: false,
            intx_line_high: false,
            unknown: 0,
        };
        c.set_u16(PCI_VENDOR_ID, ids.vendor);
        c.set_u16(PCI_DEVICE_ID, ids.device);
        c.set_u8(PCI_REVISION_ID, ids.revision);
        c.set_u8(PCI_CLASS_PROG, ids.prog_if);
        c.set_u8(PCI_CLASS_DEVICE, ids.subclass);
        c.set_u8(PCI_CLASS_DEVICE + 1, ids.class);
        c.set_u16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        c.set_u16(PCI_SUBSYSTEM_ID, ids.subsystem);
        c.set_masks(PCI_COMMAND, &COMMAND_WMASK.to_le_bytes(), &[0, 0]);
        c.set_masks(PCI_STATUS, &[0, 0], &STATUS_W1C.to_le_bytes());
        c.set_masks(PCI_CACHE_LINE_SIZE, &[0xff, 0xff], &[0, 0]);
        c.set_masks(PCI_INTERRUPT_LINE, &[0xff], &[0]);
        c
    }

    // ---- building (device side) ----

    /// Define BAR `index`. A 64-bit BAR also takes `index + 1`.
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), ConfigError> {
        bar.validate()?;
        let wide = matches!(bar.kind, BarKind::Mem64 { .. });
        let last = index + usize::from(wide);
        if last >= PCI_NUM_BARS {
            return Err(ConfigError::NoSuchBar(index));
        }
        for i in index..=last {
            if self.bars[i] != BarSlot::Unused {
                return Err(ConfigError::BarInUse(i));
            }
        }
        let addr_mask = !(bar.size - 1);
        let low_mask = addr_mask as u32
            & match bar.kind {
                BarKind::Io => PCI_BAR_IO_MASK,
                _ => PCI_BAR_MEM_MASK,
            };
        let off = bar_offset(index);
        self.set_u32(off, bar.type_bits());
        self.set_masks(off, &low_mask.to_le_bytes(), &[0; 4]);
        self.bars[index] = BarSlot::Bar(bar);
        if wide {
            self.set_masks(off + 4, &((addr_mask >> 32) as u32).to_le_bytes(), &[0; 4]);
            self.bars[index + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// Set the interrupt pin (0 none, 1–4 INTA#–INTD#).
    pub fn set_interrupt_pin(&mut self, pin: u8) -> Result<(), ConfigError> {
        if pin > 4 {
            return Err(ConfigError::BadPin(pin));
        }
        self.set_u8(PCI_INTERRUPT_PIN, pin);
        Ok(())
    }

    /// Mark the function as part of a multi-function device.
    pub fn set_multi_function(&mut self, on: bool) {
        let v = if on {
            PCI_HEADER_TYPE_MULTI_FUNCTION
        } else {
            PCI_HEADER_TYPE_NORMAL
        };
        self.set_u8(PCI_HEADER_TYPE, v);
    }

    /// Append a capability with `id`. `body` is its contents after the
    /// two-byte header (ID, next pointer), `wmask` the guest-writable bits
    /// of each body byte. Returns the capability's offset (dword aligned).
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<usize, ConfigError> {
        if body.len() != wmask.len() {
            return Err(ConfigError::MaskLength {
                body: body.len(),
                mask: wmask.len(),
            });
        }
        let len = 2 + body.len();
        let off = self.next_cap;
        let end = off + len;
        if end > PCI_CFG_SPACE_SIZE {
            return Err(ConfigError::NoRoom(len));
        }
        self.regs[off] = id;
        self.regs[off + 1] = 0;
        self.regs[off + 2..end].copy_from_slice(body);
        self.wmask[off + 2..end].copy_from_slice(wmask);
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = off as u8,
            None => self.regs[PCI_CAPABILITY_LIST] = off as u8,
        }
        self.last_cap = Some(off);
        self.next_cap = (end + 3) & !3;
        let st = self.read_u16(PCI_STATUS) | PCI_STATUS_CAP_LIST;
        self.set_u16(PCI_STATUS, st);
        Ok(off)
    }

    /// Set the write and RW1C masks of `wmask.len()` bytes at `offset`
    /// (device side; bytes past 256 are ignored).
    pub fn set_masks(&mut self, offset: usize, wmask: &[u8], w1cmask: &[u8]) {
        for (i, &m) in wmask.iter().enumerate() {
            if let Some(b) = self.wmask.get_mut(offset.saturating_add(i)) {
                *b = m;
            }
        }
        for (i, &m) in w1cmask.iter().enumerate() {
            if let Some(b) = self.w1cmask.get_mut(offset.saturating_add(i)) {
                *b = m;
            }
        }
    }

    // ---- raw access (device side, no masks) ----

    /// Store bytes without masks (device side); bytes past 256 are ignored.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            if let Some(b) = self.regs.get_mut(offset.saturating_add(i)) {
                *b = v;
            }
        }
    }
    /// Store a byte without masks.
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        self.set_bytes(offset, &[v])
    }
    /// Store a little-endian u16 without masks.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes())
    }
    /// Store a little-endian u32 without masks.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes())
    }
    /// The stored byte (0 past 256; live bits not merged).
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.regs.get(offset).copied().unwrap_or(0)
    }
    /// The stored little-endian u16.
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.saturating_add(1))])
    }
    /// The stored little-endian u32.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let lo = self.read_u16(offset);
        let hi = self.read_u16(offset.saturating_add(2));
        u32::from(lo) | u32::from(hi) << 16
    }

    // ---- guest access ----

    /// The guest reads `data.len()` bytes at `offset` (any width, any offset).
    pub fn read(&mut self, offset: usize, data: &mut [u8]) {
        let mut outside = false;
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i) {
                Some(o) if o < PCI_CFG_SPACE_SIZE => self.guest_byte(o),
                _ => {
                    outside = true;
                    0
                }
            };
        }
        if outside {
            self.unknown += 1;
        }
    }

    /// The guest writes `data` at `offset`. Returns the BARs whose address
    /// changed.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let before = self.bar_addresses();
        let mut outside = false;
        for (i, &v) in data.iter().enumerate() {
            match offset.checked_add(i) {
                Some(o) if o < PCI_CFG_SPACE_SIZE => {
                    let (m, c) = (self.wmask[o], self.w1cmask[o]);
                    self.regs[o] = ((self.regs[o] & !m) | (v & m)) & !(v & c);
                    if o == PCI_STATUS + 1 && v & (PCI_STATUS_REC_MASTER_ABORT >> 8) as u8 != 0 {
                        self.bus_master.clear_master_abort();
                    }
                }
                _ => outside = true,
            }
        }
        if outside {
            self.unknown += 1;
        }
        self.bus_master
            .set_enabled(self.command() & PCI_COMMAND_MASTER != 0);
        self.update_intx_line();
        let after = self.bar_addresses();
        (0..PCI_NUM_BARS)
            .filter_map(|bar| match (before[bar], after[bar]) {
                (Some(old), Some(new)) if old != new => Some(BarChange { bar, old, new }),
                _ => None,
            })
            .collect()
    }

    /// A byte as the guest sees it: stored bits plus live status bits.
    fn guest_byte(&self, o: usize) -> u8 {
        let v = self.read_u8(o);
        if o == PCI_STATUS + 1 && self.bus_master.master_abort() {
            v | (PCI_STATUS_REC_MASTER_ABORT >> 8) as u8
        } else {
            v
        }
    }

    /// Guest accesses that touched bytes past the backed 256.
    pub fn unknown_accesses(&self) -> u64 {
        self.unknown
    }

    // ---- state ----

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(PCI_COMMAND)
    }
    /// The status register as the guest reads it.
    pub fn status(&self) -> u16 {
        u16::from_le_bytes([self.guest_byte(PCI_STATUS), self.guest_byte(PCI_STATUS + 1)])
    }
    /// Set status bits (device side, e.g. `PCI_STATUS_SIG_TARGET_ABORT`);
    /// the guest clears the RW1C ones.
    pub fn raise_status(&mut self, bits: u16) {
        let st = self.read_u16(PCI_STATUS) | bits;
        self.set_u16(PCI_STATUS, st);
    }
    /// Memory decoding enabled.
    pub fn mem_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0
    }
    /// I/O decoding enabled.
    pub fn io_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_IO != 0
    }
    /// The shared bus-master state, for [`crate::dma::Dma::new`].
    pub fn bus_master(&self) -> Arc<BusMaster> {
        self.bus_master.clone()
    }
    /// The definition of BAR `index` (`None` if unused, out of range or the
    /// upper half of a 64-bit BAR).
    pub fn bar(&self, index: usize) -> Option<Bar> {
        match self.bars.get(index) {
            Some(BarSlot::Bar(b)) => Some(*b),
            _ => None,
        }
    }
    /// The address programmed into BAR `index` (type bits stripped; both
    /// dwords of a 64-bit BAR).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = bar_offset(index);
        let low = self.read_u32(off);
        Some(match bar.kind {
            BarKind::Io => u64::from(low & PCI_BAR_IO_MASK),
            BarKind::Mem32 { .. } => u64::from(low & PCI_BAR_MEM_MASK),
            BarKind::Mem64 { .. } => {
                u64::from(low & PCI_BAR_MEM_MASK) | u64::from(self.read_u32(off + 4)) << 32
            }
        })
    }
    fn bar_addresses(&self) -> [Option<u64>; PCI_NUM_BARS] {
        std::array::from_fn(|i| self.bar_address(i))
    }
    /// The BARs that are defined: (index, definition, programmed address).
    pub fn bars(&self) -> impl Iterator<Item = (usize, Bar, u64)> + '_ {
        (0..PCI_NUM_BARS).filter_map(|i| Some((i, self.bar(i)?, self.bar_address(i)?)))
    }

    /// The capability list as a guest walks it: (offset, ID). Stops at a
    /// loop or a pointer outside the capability area.
    pub fn capabilities(&self) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut p = usize::from(self.read_u8(PCI_CAPABILITY_LIST)) & !3;
        while p >= PCI_CAP_START && out.len() < MAX_CAPS {
            out.push((p, self.read_u8(p)));
            p = usize::from(self.read_u8(p + 1)) & !3;
        }
        out
    }
    /// The offset of the first capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<usize> {
        self.capabilities()
            .into_iter()
            .find_map(|(o, i)| (i == id).then_some(o))
    }

    // ---- INTx ----

    /// Connect the function's interrupt pin to `irq`, routed to `line`
    /// (stored in `PCI_INTERRUPT_LINE`, as firmware does).
    pub fn attach_intx(&mut self, irq: Arc<dyn Irq>, line: u8) {
        self.set_u8(PCI_INTERRUPT_LINE, line);
        self.intx = Some(irq);
        self.intx_line_high = false;
        self.update_intx_line();
    }
    /// The device asserts (`true`) or deasserts its INTx. Level semantics:
    /// the line stays high until the device deasserts it. The status
    /// register's INTERRUPT bit follows the device's state; the line itself
    /// is held low while the guest sets `PCI_COMMAND_INTX_DISABLE`.
    pub fn set_intx(&mut self, asserted: bool) {
        self.intx_asserted = asserted;
        let st = self.read_u16(PCI_STATUS) & !PCI_STATUS_INTERRUPT;
        self.set_u16(
            PCI_STATUS,
            st | if asserted { PCI_STATUS_INTERRUPT } else { 0 },
        );
        self.update_intx_line();
    }
    /// Whether the device asserts INTx (regardless of INTX_DISABLE).
    pub fn intx_asserted(&self) -> bool {
        self.intx_asserted
    }
    fn update_intx_line(&mut self) {
        let Some(irq) = &self.intx else { return };
        let high = self.intx_asserted && self.command() & PCI_COMMAND_INTX_DISABLE == 0;
        if high != self.intx_line_high {
            self.intx_line_high = high;
            irq.set_level(high);
        }
    }
}

/// Offset of BAR `index`.
pub fn bar_offset(index: usize) -> usize {
    PCI_BASE_ADDRESS_0 + 4 * index
}
