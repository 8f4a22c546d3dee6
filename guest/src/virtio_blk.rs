//! virtio-blk driver (virtio 1.2 §5.2) over the modern PCI transport
//! (`virtio.rs`): PCI 1AF4:1042.
//!
//! Features taken when offered: `VERSION_1` (required), `SEG_MAX` (2),
//! `RO` (5), `BLK_SIZE` (6), `FLUSH` (9). Not taken: `MQ` (one queue is
//! used), `EVENT_IDX`, indirect descriptors, discard/write-zeroes.
//!
//! Device configuration read: `capacity` (le64 at 0, 512-byte sectors),
//! `seg_max` (le32 at 12), `blk_size` (le32 at 20).
//!
//! # Requests
//! Slot `s` (0..[`Blk::slots`]) owns descriptors `3s`, `3s+1`, `3s+2`: a
//! request is the chain header (16 bytes, device-readable: `type` le32,
//! reserved, `sector` le64) → data (the slot's 64 KiB buffer, device-
//! writable for IN and GET_ID) → status byte (device-writable); FLUSH
//! skips the data descriptor. Up to [`Blk::slots`] requests are in flight
//! at once; the caller picks free slots (a chain's head index identifies
//! its slot when it comes back in the used ring).

use crate::irq::{Deadline, DeviceIrq};
use crate::pci::Function;
use crate::sync::RacyCell;
use crate::tests::Machine;
use crate::virtio::{Desc, Error, VirtioPci, Virtqueue, DESC_NEXT, DESC_WRITE};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};

pub const DEVICE: u16 = 0x1042;

/// Block feature bits.
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;

/// Request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// Status byte value before the device writes it.
const S_PENDING: u8 = 0xff;

/// Requests in flight at most.
pub const MAX_SLOTS: usize = 16;
/// Data buffer of one slot.
pub const SLOT_BYTES: usize = 64 * 1024;
/// Sectors per request at most.
pub const SLOT_SECTORS: u32 = (SLOT_BYTES / 512) as u32;
/// Counting vector slot (`cpu::DEVICE_IRQS`) of the queue interrupt.
const IRQ_SLOT: usize = 2;
/// Timeout of one synchronous request (disk models can be slow).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    typ: u32,
    reserved: u32,
    sector: u64,
}

#[repr(C, align(4096))]
struct SlotData([[u8; SLOT_BYTES]; MAX_SLOTS]);

// `.bss`: zero at boot, never zeroed by the kernel.
static DATA: RacyCell<SlotData> = RacyCell::new(SlotData([[0; SLOT_BYTES]; MAX_SLOTS]));
static HEADERS: RacyCell<[Header; MAX_SLOTS]> = RacyCell::new(
    [Header {
        typ: 0,
        reserved: 0,
        sector: 0,
    }; MAX_SLOTS],
);
static STATUS: RacyCell<[u8; MAX_SLOTS]> = RacyCell::new([0; MAX_SLOTS]);

/// A request type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    GetId,
}

/// A bound virtio-blk device (queue 0 live).
pub struct Blk {
    pub t: VirtioPci,
    pub q: Virtqueue,
    /// Negotiated features.
    pub features: u64,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// `blk_size` (512 if not offered).
    pub blk_size: u32,
    /// `seg_max` (0 if not offered).
    pub seg_max: u32,
    /// Requests that can be in flight (≤ [`MAX_SLOTS`]).
    pub slots: usize,
}

/// The `index`-th virtio-blk function on bus 0.
pub fn find(m: &Machine, index: usize) -> Option<Function> {
    crate::pci::scan(&m.plat)
        .all()
        .iter()
        .filter(|f| f.vendor == crate::virtio::VENDOR && f.device == DEVICE)
        .nth(index)
        .copied()
}

impl Blk {
    /// Bring up the `index`-th virtio-blk function: negotiate, one queue,
    /// MSI-X (unless `poll`), DRIVER_OK, read the configuration.
    pub fn probe(m: &Machine, index: usize, poll: bool) -> Result<Blk, Error> {
        let f = find(m, index).ok_or("no virtio-blk function (1af4:1042) on bus 0")?;
        let t = VirtioPci::new(f)?;
        let features = t.negotiate(F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH)?;
        // Memory decoding is on (vlab assigned the BARs); the device only
        // serves the queue while bus mastering is on.
        f.enable_bus_master();
        let msix = !poll && t.enable_msix(crate::cpu::DEVICE_VECTOR_BASE + IRQ_SLOT as u8);
        let mut q = t.setup_queue(crate::virtio::QSIZE_MAX, msix)?;
        if msix {
            q.irq = Some(DeviceIrq::for_slot(IRQ_SLOT));
        }
        t.driver_ok()?;
        let capacity = t.cfg64(0);
        let seg_max = if features & F_SEG_MAX != 0 {
            t.cfg32(12)
        } else {
            0
        };
        let blk_size = if features & F_BLK_SIZE != 0 {
            t.cfg32(20)
        } else {
            512
        };
        let slots = (usize::from(q.size) / 3).min(MAX_SLOTS);
        if slots == 0 {
            return Err("queue too small for one request");
        }
        Ok(Blk {
            t,
            q,
            features,
            capacity,
            blk_size,
            seg_max,
            slots,
        })
    }

    /// Is the queue interrupt (MSI-X) in use?
    pub fn uses_irq(&self) -> bool {
        self.q.irq.is_some()
    }

    /// The data buffer of `slot` ([`SLOT_BYTES`] bytes).
    pub fn data(&self, slot: usize) -> *mut u8 {
        assert!(slot < MAX_SLOTS);
        // SAFETY: in bounds of the static; a raw pointer, no reference.
        unsafe { addr_of_mut!((*DATA.get()).0[slot]).cast() }
    }

    /// Queue request `op` on `slot` (free: not in flight) for `sectors`
    /// sectors at `lba` (bytes for GET_ID: 20). Visible to the device after
    /// [`Blk::publish`].
    pub fn submit(&mut self, slot: usize, op: Op, lba: u64, sectors: u32) {
        assert!(slot < self.slots && sectors <= SLOT_SECTORS);
        let typ = match op {
            Op::Read => T_IN,
            Op::Write => T_OUT,
            Op::Flush => T_FLUSH,
            Op::GetId => T_GET_ID,
        };
        let hdr_ptr = HEADERS.get().cast::<Header>().wrapping_add(slot);
        let status_ptr = STATUS.get().cast::<u8>().wrapping_add(slot);
        // SAFETY: the slot is not in flight, so the device does not access
        // its header or status byte.
        unsafe {
            write_volatile(
                hdr_ptr,
                Header {
                    typ,
                    reserved: 0,
                    sector: if op == Op::Flush || op == Op::GetId {
                        0
                    } else {
                        lba
                    },
                },
            );
            write_volatile(status_ptr, S_PENDING);
        }
        let head = (3 * slot) as u16;
        self.q.set_desc(
            head,
            Desc {
                addr: hdr_ptr as u64,
                len: 16,
                flags: DESC_NEXT,
                next: if op == Op::Flush { head + 2 } else { head + 1 },
            },
        );
        if op != Op::Flush {
            let (len, flags) = match op {
                Op::GetId => (20, DESC_WRITE),
                Op::Read => (sectors * 512, DESC_WRITE),
                _ => (sectors * 512, 0),
            };
            self.q.set_desc(
                head + 1,
                Desc {
                    addr: self.data(slot) as u64,
                    len,
                    flags: flags | DESC_NEXT,
                    next: head + 2,
                },
            );
        }
        self.q.set_desc(
            head + 2,
            Desc {
                addr: status_ptr as u64,
                len: 1,
                flags: DESC_WRITE,
                next: 0,
            },
        );
        self.q.push(head);
    }

    /// Publish submitted requests and notify the device.
    pub fn publish(&mut self) {
        self.q.publish();
    }

    /// A completed request: `(slot, status)` (status [`S_PENDING`] = 0xff
    /// if the device returned the chain without writing it).
    pub fn complete(&mut self) -> Option<(usize, u8)> {
        let (head, _len) = self.q.pop_used()?;
        let slot = usize::from(head) / 3;
        if slot >= MAX_SLOTS {
            return Some((MAX_SLOTS, S_PENDING));
        }
        // SAFETY: the device finished with the chain (it is in the used
        // ring); volatile read of the static status byte.
        let status = unsafe { read_volatile(STATUS.get().cast::<u8>().wrapping_add(slot)) };
        Some((slot, status))
    }

    /// Wait until a completion is available (false on timeout).
    pub fn wait(&mut self, deadline: Deadline) -> bool {
        self.q.wait_used(deadline)
    }

    /// One request on slot 0, waited for. Returns its status.
    pub fn run(&mut self, op: Op, lba: u64, sectors: u32) -> Result<u8, Error> {
        self.submit(0, op, lba, sectors);
        self.publish();
        if !self.wait(Deadline::after_ms(REQUEST_TIMEOUT_MS)) {
            return Err("timeout waiting for a request to complete");
        }
        match self.complete() {
            Some((0, status)) => Ok(status),
            _ => Err("used ring returned an unknown chain"),
        }
    }
}

/// Name of a status byte.
pub fn status_name(s: u8) -> &'static str {
    match s {
        S_OK => "ok",
        S_IOERR => "ioerr",
        S_UNSUPP => "unsupp",
        S_PENDING => "unwritten",
        _ => "bad",
    }
}
