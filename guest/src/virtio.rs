//! virtio-pci modern transport (virtio 1.2 §4.1) and one split virtqueue
//! (§2.7), for the virtio-blk driver (`virtio_blk.rs`).
//!
//! # Finding the structures
//! The function's capability list holds vendor capabilities (ID 0x09):
//! `+3 cfg_type` (1 common, 2 notify, 3 ISR, 4 device), `+4 bar`,
//! `+8 offset`, `+12 length`, and for notify `+16 notify_off_multiplier`.
//! vlab puts all four in BAR4 (one 4 KiB page each); the driver does not
//! assume that, it maps whatever BAR and offset each capability names
//! (32-bit address space only). The MSI-X capability (ID 0x11): `+2`
//! message control (bit 15 enable, bit 14 function mask), `+4` table
//! offset | BIR; table entries are 16 bytes: address low, address high,
//! data, vector control (bit 0 masked).
//!
//! # Initialisation (§3.1.1)
//! reset (write 0 to `device_status`, poll until it reads 0) →
//! ACKNOWLEDGE → DRIVER → read `device_feature` (two 32-bit halves),
//! write `driver_feature` → FEATURES_OK, read back (refused → error) →
//! queue 0: size (min of the device's maximum and [`QSIZE_MAX`]), ring
//! addresses, MSI-X vector 0 (if MSI-X is used), `queue_enable` = 1 →
//! DRIVER_OK.
//!
//! # The queue
//! Descriptor table, available ring and used ring are statics in `.bss`
//! (identity mapped, so guest-physical = virtual). The driver publishes
//! chains in the available ring (Release fence before the index store),
//! then — after a full fence — kicks unless the device set
//! `VRING_USED_F_NO_NOTIFY` (no `EVENT_IDX`). Completions are harvested
//! from the used ring (Acquire fence after reading its index).
//!
//! # Interrupts
//! With MSI-X, table entry 0 is programmed with `0xFEE0_0000 | apic << 12`
//! and one of the kernel's counting vectors; the driver waits with
//! `sti; hlt` and a LAPIC one-shot timeout (`irq::DeviceIrq::wait`). Without
//! MSI-X (or with `irq=poll`) it polls the used ring.

use crate::irq::{Deadline, DeviceIrq};
use crate::pci::Function;
use crate::sync::RacyCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

pub const VENDOR: u16 = 0x1af4;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// Transport feature bits.
pub const F_VERSION_1: u64 = 1 << 32;

/// Common configuration offsets.
const C_DFSELECT: u64 = 0x00;
const C_DF: u64 = 0x04;
const C_GFSELECT: u64 = 0x08;
const C_GF: u64 = 0x0c;
const C_MSIX: u64 = 0x10;
const C_STATUS: u64 = 0x14;
const C_CFGGEN: u64 = 0x15;
const C_Q_SELECT: u64 = 0x16;
const C_Q_SIZE: u64 = 0x18;
const C_Q_MSIX: u64 = 0x1a;
const C_Q_ENABLE: u64 = 0x1c;
const C_Q_NOFF: u64 = 0x1e;
const C_Q_DESC: u64 = 0x20;
const C_Q_AVAIL: u64 = 0x28;
const C_Q_USED: u64 = 0x30;

const NO_VECTOR: u16 = 0xffff;
const CAP_ID_VENDOR: u8 = 0x09;
const CAP_ID_MSIX: u8 = 0x11;

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
/// Used ring flag: the device does not want kicks right now.
const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue this driver sets up (the static rings' size).
pub const QSIZE_MAX: usize = 64;

/// Why bringing the device up failed.
pub type Error = &'static str;

/// One split-ring descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[repr(C, align(4096))]
struct DescTable([Desc; QSIZE_MAX]);

#[repr(C, align(4096))]
struct AvailRing {
    flags: u16,
    idx: u16,
    ring: [u16; QSIZE_MAX],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4096))]
struct UsedRing {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QSIZE_MAX],
    avail_event: u16,
}

// The rings live in `.bss`: zero at boot (fresh guest RAM), never zeroed
// by the kernel. One device (queue 0) at a time.
static DESCS: RacyCell<DescTable> = RacyCell::new(DescTable(
    [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QSIZE_MAX],
));
static AVAIL: RacyCell<AvailRing> = RacyCell::new(AvailRing {
    flags: 0,
    idx: 0,
    ring: [0; QSIZE_MAX],
    used_event: 0,
});
static USED: RacyCell<UsedRing> = RacyCell::new(UsedRing {
    flags: 0,
    idx: 0,
    ring: [UsedElem { id: 0, len: 0 }; QSIZE_MAX],
    avail_event: 0,
});

/// A virtio-pci function with its structures mapped.
pub struct VirtioPci {
    pub f: Function,
    common: u64,
    device: u64,
    notify: u64,
    notify_mult: u32,
    msix_cap: u16,
    msix_table: u64,
}

/// Map the region a vendor capability describes.
fn map_cap(f: &Function, bar: u8, off: u32, len: u32) -> Option<u64> {
    if bar > 5 {
        return None;
    }
    let b = f.bars[bar as usize];
    let end = b.addr.checked_add(u64::from(off) + u64::from(len))?;
    if b.addr == 0 || b.io || end > 1 << 32 {
        return None;
    }
    f.map_bar(bar as usize, u64::from(off) + u64::from(len))?;
    Some(b.addr + u64::from(off))
}

impl VirtioPci {
    /// Walk `f`'s capabilities and map the common, notify and device
    /// structures and the MSI-X table.
    pub fn new(f: Function) -> Result<VirtioPci, Error> {
        let mut v = VirtioPci {
            f,
            common: 0,
            device: 0,
            notify: 0,
            notify_mult: 0,
            msix_cap: 0,
            msix_table: 0,
        };
        if f.read16(crate::pci::CFG_COMMAND + 2) & (1 << 4) == 0 {
            return Err("no capability list");
        }
        let mut ptr = (f.read32(crate::pci::CFG_CAP_PTR) & 0xfc) as u16;
        let mut budget = 48;
        while ptr >= 0x40 && budget > 0 {
            let hdr = f.read32(ptr);
            match hdr as u8 {
                CAP_ID_VENDOR => {
                    let cfg_type = (hdr >> 24) as u8;
                    let bar = f.read32(ptr + 4) as u8;
                    let off = f.read32(ptr + 8);
                    let len = f.read32(ptr + 12);
                    let slot = match cfg_type {
                        1 => Some(&mut v.common),
                        2 => Some(&mut v.notify),
                        4 => Some(&mut v.device),
                        _ => None,
                    };
                    // The first capability of each type wins (§4.1.4).
                    if let Some(slot) = slot.filter(|s| **s == 0) {
                        if let Some(a) = map_cap(&f, bar, off, len) {
                            *slot = a;
                            if cfg_type == 2 {
                                v.notify_mult = f.read32(ptr + 16);
                            }
                        }
                    }
                }
                CAP_ID_MSIX => {
                    let table = f.read32(ptr + 4);
                    let n = u32::from(f.read16(ptr + 2) & 0x7ff) + 1;
                    if let Some(a) = map_cap(&f, (table & 7) as u8, table & !7, n * 16) {
                        v.msix_cap = ptr;
                        v.msix_table = a;
                    }
                }
                _ => {}
            }
            ptr = ((hdr >> 8) & 0xfc) as u16;
            budget -= 1;
        }
        if v.common == 0 {
            return Err("no common configuration capability");
        }
        if v.notify == 0 {
            return Err("no notify capability");
        }
        if v.device == 0 {
            return Err("no device configuration capability");
        }
        Ok(v)
    }

    fn r8(&self, off: u64) -> u8 {
        // SAFETY: the common configuration is mapped uncached (`new`).
        unsafe { read_volatile((self.common + off) as usize as *const u8) }
    }
    fn w8(&self, off: u64, v: u8) {
        // SAFETY: as in `r8`.
        unsafe { write_volatile((self.common + off) as usize as *mut u8, v) }
    }
    fn r16(&self, off: u64) -> u16 {
        // SAFETY: as in `r8`.
        unsafe { read_volatile((self.common + off) as usize as *const u16) }
    }
    fn w16(&self, off: u64, v: u16) {
        // SAFETY: as in `r8`.
        unsafe { write_volatile((self.common + off) as usize as *mut u16, v) }
    }
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: as in `r8`.
        unsafe { crate::io::mmio_read32(self.common + off) }
    }
    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in `r8`.
        unsafe { crate::io::mmio_write32(self.common + off, v) }
    }
    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    /// `device_status`.
    pub fn status(&self) -> u8 {
        self.r8(C_STATUS)
    }

    fn add_status(&self, bits: u8) {
        self.w8(C_STATUS, self.status() | bits);
    }

    /// Reset and wait (1 s) until the device reports status 0.
    pub fn reset(&self) -> Result<(), Error> {
        self.w8(C_STATUS, 0);
        let deadline = Deadline::after_ms(1000);
        while self.status() != 0 {
            if deadline.passed() {
                return Err("reset did not complete (status never read 0)");
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER, negotiate: accept the offered subset of
    /// `wanted` (VERSION_1 is required). Returns the negotiated features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, Error> {
        self.reset()?;
        self.add_status(STATUS_ACKNOWLEDGE);
        self.add_status(STATUS_DRIVER);
        self.w32(C_DFSELECT, 0);
        let lo = self.r32(C_DF);
        self.w32(C_DFSELECT, 1);
        let hi = self.r32(C_DF);
        let offered = u64::from(hi) << 32 | u64::from(lo);
        if offered & F_VERSION_1 == 0 {
            self.add_status(STATUS_FAILED);
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let features = offered & (wanted | F_VERSION_1);
        self.w32(C_GFSELECT, 0);
        self.w32(C_GF, features as u32);
        self.w32(C_GFSELECT, 1);
        self.w32(C_GF, (features >> 32) as u32);
        self.add_status(STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.add_status(STATUS_FAILED);
            return Err("device refused FEATURES_OK");
        }
        Ok(features)
    }

    /// Program MSI-X table entry 0 for `vector` on the BSP and enable
    /// MSI-X (INTx disabled). False if the function has no MSI-X.
    pub fn enable_msix(&self, vector: u8) -> bool {
        if self.msix_cap == 0 {
            return false;
        }
        let e = self.msix_table;
        // SAFETY: the table is mapped uncached (`new`); entry 0 exists.
        unsafe {
            crate::io::mmio_write32(e, 0xfee0_0000 | crate::apic::id() << 12);
            crate::io::mmio_write32(e + 4, 0);
            crate::io::mmio_write32(e + 8, u32::from(vector));
            crate::io::mmio_write32(e + 12, 0);
        }
        let ctrl = self.f.read16(self.msix_cap + 2);
        self.f
            .write16(self.msix_cap + 2, (ctrl | 1 << 15) & !(1 << 14));
        self.f.update_command(crate::pci::CMD_INTX_DISABLE, 0);
        true
    }

    /// Set up queue 0 on the static rings with at most `max` entries;
    /// MSI-X vector 0 if `msix`. Returns the queue.
    pub fn setup_queue(&self, max: usize, msix: bool) -> Result<Virtqueue, Error> {
        self.w16(C_Q_SELECT, 0);
        let dev_max = self.r16(C_Q_SIZE) as usize;
        if dev_max == 0 {
            return Err("queue 0 does not exist");
        }
        let want = dev_max.min(max).min(QSIZE_MAX);
        // Largest power of two <= want.
        let size = 1usize << (usize::BITS - 1 - want.leading_zeros());
        self.w16(C_Q_SIZE, size as u16);
        self.w64(C_Q_DESC, DESCS.get() as u64);
        self.w64(C_Q_AVAIL, AVAIL.get() as u64);
        self.w64(C_Q_USED, USED.get() as u64);
        if msix {
            self.w16(C_MSIX, NO_VECTOR);
            self.w16(C_Q_MSIX, 0);
            if self.r16(C_Q_MSIX) != 0 {
                return Err("device refused MSI-X vector 0 for queue 0");
            }
        }
        let noff = u64::from(self.r16(C_Q_NOFF));
        self.w16(C_Q_ENABLE, 1);
        if self.r16(C_Q_ENABLE) != 1 || self.status() & STATUS_NEEDS_RESET != 0 {
            return Err("device refused queue 0");
        }
        // SAFETY: the rings are ours alone (one device at a time); the
        // device does not touch them before DRIVER_OK.
        let (avail_idx, used_idx) = unsafe {
            (
                read_volatile(addr_of!((*AVAIL.get()).idx)),
                read_volatile(addr_of!((*USED.get()).idx)),
            )
        };
        Ok(Virtqueue {
            size: size as u16,
            avail_idx,
            last_used: used_idx,
            notify: self.notify + noff * u64::from(self.notify_mult),
            irq: None,
            kicks: 0,
        })
    }

    /// DRIVER_OK; fails if the device wants a reset.
    pub fn driver_ok(&self) -> Result<(), Error> {
        self.add_status(STATUS_DRIVER_OK);
        let s = self.status();
        if s & STATUS_NEEDS_RESET != 0 || s & STATUS_DRIVER_OK == 0 {
            return Err("device did not accept DRIVER_OK");
        }
        Ok(())
    }

    /// A 32-bit device configuration field (retried across
    /// `config_generation` changes).
    pub fn cfg32(&self, off: u64) -> u32 {
        loop {
            let g = self.r8(C_CFGGEN);
            // SAFETY: the device configuration is mapped uncached (`new`).
            let v = unsafe { crate::io::mmio_read32(self.device + off) };
            if self.r8(C_CFGGEN) == g {
                return v;
            }
        }
    }

    /// A 64-bit device configuration field (two 32-bit reads, retried
    /// across `config_generation` changes).
    pub fn cfg64(&self, off: u64) -> u64 {
        loop {
            let g = self.r8(C_CFGGEN);
            // SAFETY: as in `cfg32`.
            let (lo, hi) = unsafe {
                (
                    crate::io::mmio_read32(self.device + off),
                    crate::io::mmio_read32(self.device + off + 4),
                )
            };
            if self.r8(C_CFGGEN) == g {
                return u64::from(hi) << 32 | u64::from(lo);
            }
        }
    }
}

/// Queue 0 of the device: the static rings plus the driver's indices.
pub struct Virtqueue {
    pub size: u16,
    /// Next available-ring index to publish (free running).
    avail_idx: u16,
    /// Used-ring entries consumed (free running).
    last_used: u16,
    notify: u64,
    /// MSI-X vector slot, or None (polling).
    pub irq: Option<DeviceIrq>,
    /// Notify writes done.
    pub kicks: u64,
}

impl Virtqueue {
    /// Write descriptor `i` (`i < size`).
    pub fn set_desc(&mut self, i: u16, d: Desc) {
        debug_assert!(i < self.size);
        // SAFETY: `i` is inside the table; the descriptor is not part of an
        // available chain (the caller owns it until it is published).
        unsafe { write_volatile(addr_of_mut!((*DESCS.get()).0[i as usize]), d) };
    }

    /// Put chain `head` in the available ring (not yet visible: see
    /// [`Virtqueue::publish`]).
    pub fn push(&mut self, head: u16) {
        let slot = (self.avail_idx % self.size) as usize;
        // SAFETY: the ring entry is driver-owned until `idx` passes it.
        unsafe { write_volatile(addr_of_mut!((*AVAIL.get()).ring[slot]), head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Make the pushed chains visible and kick the device unless it asked
    /// not to be notified.
    pub fn publish(&mut self) {
        fence(Ordering::Release);
        // SAFETY: the available index is driver-owned.
        unsafe { write_volatile(addr_of_mut!((*AVAIL.get()).idx), self.avail_idx) };
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's flags are written by the device; a
        // volatile read of a u16 in our static.
        let flags = unsafe { read_volatile(addr_of!((*USED.get()).flags)) };
        if flags & USED_F_NO_NOTIFY == 0 {
            // SAFETY: the notify address is in the mapped notify region;
            // the value written is the queue index (0).
            unsafe { write_volatile(self.notify as usize as *mut u16, 0) };
            self.kicks += 1;
        }
    }

    /// The next completed chain `(head, used length)`, if any.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: the used index is device-written; volatile read.
        let idx = unsafe { read_volatile(addr_of!((*USED.get()).idx)) };
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = (self.last_used % self.size) as usize;
        // SAFETY: entries before `idx` were written by the device before
        // it published `idx` (Acquire fence above).
        let e = unsafe { read_volatile(addr_of!((*USED.get()).ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        Some((e.id as u16, e.len))
    }

    /// Does the used ring hold entries not yet popped?
    pub fn has_used(&self) -> bool {
        // SAFETY: as in `pop_used`.
        unsafe { read_volatile(addr_of!((*USED.get()).idx)) != self.last_used }
    }

    /// Wait until the used ring has an entry or `deadline` passes
    /// (false). With an interrupt: `sti; hlt` until it fires, then EOI;
    /// else polls.
    pub fn wait_used(&mut self, deadline: Deadline) -> bool {
        loop {
            if self.has_used() {
                return true;
            }
            match self.irq.as_mut() {
                Some(irq) => {
                    if irq.wait(deadline) == 0 {
                        return self.has_used();
                    }
                    irq.eoi();
                }
                None => {
                    if deadline.passed() {
                        return self.has_used();
                    }
                    core::hint::spin_loop();
                }
            }
        }
    }
}
