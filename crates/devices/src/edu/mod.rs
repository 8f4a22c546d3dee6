//! edu: a model of QEMU's educational PCI device (`1234:11e8`), so the many
//! Linux drivers written for it run unmodified on vlab.
//!
//! The register map, access rules and vlab's timing decisions are in
//! `docs/devices/edu.md`; this is a summary.
//!
//! * BAR0: 32-bit memory, 1 MiB. Offsets below 0x80 take 4-byte accesses
//!   only; offsets from 0x80 take 4- or 8-byte accesses. Any other access
//!   reads all-ones and is ignored on write, and so is every offset that is
//!   not a register (as in QEMU).
//! * Factorial (0x08) is computed synchronously in the MMIO write, with
//!   32-bit wrapping, so the *computing* status bit is always clear when the
//!   guest looks.
//! * DMA runs synchronously when the guest writes the command register with
//!   the start bit; the start bit reads clear afterwards. Guest memory is
//!   reached only through [`Dma`]; a transfer refused there, or one that does
//!   not fit in the 4 KiB buffer at device address 0x40000, moves no data,
//!   sets [`DMA_CMD_ERROR`] (a vlab extension) in the command register and
//!   still completes (start bit clear, interrupt 0x100 if asked for).
//! * Interrupts: INTA# (level: asserted while the interrupt status is
//!   non-zero and MSI is off) or one 64-bit MSI vector, sent on every raise
//!   while MSI is on.

use std::ops::Range;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::dma::{BusMaster, Dma, DmaError, DmaStats};
use crate::pci::config::{Bar, BarChange, ConfigSpace, PciIds};
use crate::pci::device::PciDevice;
use crate::pci::msi::{MsiCapability, MsiError, MsiSink};

#[cfg(test)]
mod tests;

/// PCI vendor ID (QEMU's).
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// PCI revision ID.
pub const EDU_REVISION: u8 = 0x10;
/// PCI base class: 0xff, "device does not fit any defined class".
pub const EDU_CLASS: u8 = 0xff;
/// Size of BAR0.
pub const EDU_BAR0_SIZE: u64 = 1 << 20;
/// What the identification register reads: version 1.0, then 0xed.
pub const EDU_ID: u32 = 0x0100_00ed;

/// Identification (RO).
pub const REG_ID: u64 = 0x00;
/// Liveness check (RW): reads the bitwise inverse of the last write.
pub const REG_LIVENESS: u64 = 0x04;
/// Factorial (RW): write n, read n! (mod 2^32).
pub const REG_FACTORIAL: u64 = 0x08;
/// Status (RW): [`STATUS_COMPUTING`] (RO), [`STATUS_IRQ_FACT`].
pub const REG_STATUS: u64 = 0x20;
/// Interrupt status (RO).
pub const REG_IRQ_STATUS: u64 = 0x24;
/// Interrupt raise (WO): ORed into the interrupt status.
pub const REG_IRQ_RAISE: u64 = 0x60;
/// Interrupt acknowledge (WO): cleared from the interrupt status.
pub const REG_IRQ_ACK: u64 = 0x64;
/// DMA source address (RW, 64 bits).
pub const REG_DMA_SRC: u64 = 0x80;
/// DMA destination address (RW, 64 bits).
pub const REG_DMA_DST: u64 = 0x88;
/// DMA transfer count in bytes (RW, 64 bits).
pub const REG_DMA_COUNT: u64 = 0x90;
/// DMA command (RW, 64 bits): `DMA_CMD_*`.
pub const REG_DMA_CMD: u64 = 0x98;

/// Status: a factorial is being computed (read-only; never seen set on
/// vlab, which computes synchronously).
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: raise [`IRQ_FACT`] when a factorial finishes.
pub const STATUS_IRQ_FACT: u32 = 0x80;

/// Interrupt status bit raised by a finished factorial.
pub const IRQ_FACT: u32 = 0x001;
/// Interrupt status bit raised by a finished DMA.
pub const IRQ_DMA: u32 = 0x100;

/// DMA command: start the transfer (reads 1 while it runs).
pub const DMA_CMD_START: u64 = 0x1;
/// DMA command: direction; 0 = guest RAM → device buffer, 1 = device
/// buffer → guest RAM.
pub const DMA_CMD_TO_RAM: u64 = 0x2;
/// DMA command: raise [`IRQ_DMA`] when the transfer finishes.
pub const DMA_CMD_IRQ: u64 = 0x4;
/// DMA command (vlab extension, read-only): the last transfer was refused
/// and moved no data. Cleared when the next transfer starts.
pub const DMA_CMD_ERROR: u64 = 1 << 31;

/// Device-internal address of the DMA buffer.
pub const DMA_BUF_ADDR: u64 = 0x40000;
/// Size of the DMA buffer.
pub const DMA_BUF_SIZE: usize = 4096;
/// The default DMA address mask: 28 bits, as QEMU's `dma_mask` default.
/// Guest addresses are ANDed with it (drivers are expected to set a 28-bit
/// DMA mask).
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;

/// Why a transfer moved no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EduDmaError {
    /// The device-side range is not inside the 4 KiB buffer.
    #[error(
        "edu DMA refused: device range {addr:#x}+{len:#x} is outside the buffer at 0x40000+0x1000"
    )]
    OutsideBuffer {
        /// Device-side address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The guest-memory side was refused by [`Dma`].
    #[error(transparent)]
    Dma(#[from] DmaError),
}

/// Counters of one edu device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EduStats {
    /// BAR accesses with a width the register map does not accept, or at an
    /// offset that is not a register.
    pub bad_accesses: u64,
    /// Transfers done.
    pub dma_done: u64,
    /// Transfers refused (buffer range or guest memory).
    pub dma_refused: u64,
    /// Transfers whose guest address the DMA mask changed.
    pub dma_clamped: u64,
    /// The most recent refusal.
    pub last_dma_error: Option<EduDmaError>,
}

/// The edu PCI function. See the module documentation.
pub struct Edu {
    cfg: ConfigSpace,
    msi: MsiCapability,
    dma: Dma,
    dma_mask: u64,
    liveness: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buf: Vec<u8>,
    stats: EduStats,
}

impl std::fmt::Debug for Edu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edu")
            .field("status", &format_args!("{:#x}", self.status))
            .field("irq_status", &format_args!("{:#x}", self.irq_status))
            .field("dma_cmd", &format_args!("{:#x}", self.dma_cmd))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Edu {
    /// A new edu function. `dma` builds the function's [`Dma`] from its
    /// bus-master state (e.g. `|bm| Dma::new("edu", mem, bm)`, plus a trace
    /// hook if wanted); MSI messages go to `msi_sink`. INTx is connected
    /// by the PCI bus (`ConfigSpace::attach_intx`).
    pub fn new(
        dma: impl FnOnce(Arc<BusMaster>) -> Dma,
        msi_sink: Arc<dyn MsiSink>,
    ) -> Result<Self, MsiError> {
        let mut cfg = ConfigSpace::new(PciIds {
            vendor: EDU_VENDOR_ID,
            device: EDU_DEVICE_ID,
            revision: EDU_REVISION,
            class: EDU_CLASS,
            ..PciIds::default()
        });
        cfg.add_bar(0, Bar::mem32(EDU_BAR0_SIZE))?;
        cfg.set_interrupt_pin(1)?;
        let msi = MsiCapability::add(&mut cfg, 1, false, msi_sink)?;
        let dma = dma(cfg.bus_master());
        Ok(Edu {
            cfg,
            msi,
            dma,
            dma_mask: DEFAULT_DMA_MASK,
            liveness: 0,
            fact: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buf: vec![0; DMA_BUF_SIZE],
            stats: EduStats::default(),
        })
    }

    /// A new edu function doing DMA (as "edu") into `mem`.
    pub fn with_memory(mem: GuestMemoryMmap, msi_sink: Arc<dyn MsiSink>) -> Result<Self, MsiError> {
        Self::new(|bm| Dma::new("edu", mem, bm), msi_sink)
    }

    /// Use `mask` instead of [`DEFAULT_DMA_MASK`] for guest DMA addresses
    /// (QEMU's `dma_mask` property).
    pub fn with_dma_mask(mut self, mask: u64) -> Self {
        self.dma_mask = mask;
        self
    }

    /// The interrupt status register.
    pub fn irq_status(&self) -> u32 {
        self.irq_status
    }

    /// The 4 KiB DMA buffer.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// The device's counters.
    pub fn stats(&self) -> EduStats {
        self.stats.clone()
    }

    /// The counters of the device's [`Dma`].
    pub fn dma_stats(&self) -> DmaStats {
        self.dma.stats()
    }

    /// Whether an access of `width` bytes at `offset` is one the register
    /// map accepts.
    fn width_ok(offset: u64, width: usize) -> bool {
        if offset < REG_DMA_SRC {
            width == 4
        } else {
            width == 4 || width == 8
        }
    }

    fn read_reg(&self, offset: u64) -> Option<u64> {
        Some(match offset {
            REG_ID => u64::from(EDU_ID),
            REG_LIVENESS => u64::from(self.liveness),
            REG_FACTORIAL => u64::from(self.fact),
            REG_STATUS => u64::from(self.status),
            REG_IRQ_STATUS => u64::from(self.irq_status),
            REG_DMA_SRC => self.dma_src,
            REG_DMA_DST => self.dma_dst,
            REG_DMA_COUNT => self.dma_count,
            REG_DMA_CMD => self.dma_cmd,
            _ => return None,
        })
    }

    /// Returns false if `offset` is not a writable register.
    fn write_reg(&mut self, offset: u64, val: u64) -> bool {
        // Registers below 0x80 only take 4-byte accesses: `val` fits.
        let val32 = val as u32;
        let dma_busy = self.dma_cmd & DMA_CMD_START != 0;
        match offset {
            REG_LIVENESS => self.liveness = !val32,
            REG_FACTORIAL => {
                if self.status & STATUS_COMPUTING == 0 {
                    self.fact = factorial(val32);
                    if self.status & STATUS_IRQ_FACT != 0 {
                        self.raise(IRQ_FACT);
                    }
                }
            }
            REG_STATUS => {
                self.status = (self.status & !STATUS_IRQ_FACT) | (val32 & STATUS_IRQ_FACT);
            }
            REG_IRQ_RAISE => self.raise(val32),
            REG_IRQ_ACK => self.ack(val32),
            // While a transfer runs its registers are frozen (never
            // observable here: transfers finish inside the command write).
            REG_DMA_SRC | REG_DMA_DST | REG_DMA_COUNT if dma_busy => {}
            REG_DMA_SRC => self.dma_src = val,
            REG_DMA_DST => self.dma_dst = val,
            REG_DMA_COUNT => self.dma_count = val,
            REG_DMA_CMD => {
                if val & DMA_CMD_START != 0 && !dma_busy {
                    self.dma_cmd = val & !DMA_CMD_ERROR;
                    self.run_dma();
                }
            }
            _ => return false,
        }
        true
    }

    /// OR `bits` into the interrupt status and signal the interrupt.
    fn raise(&mut self, bits: u32) {
        self.irq_status |= bits;
        if self.irq_status != 0 && self.msi.enabled(&self.cfg) {
            // One vector, no masking: always sent.
            let _ = self.msi.trigger(&mut self.cfg, 0);
        }
        self.update_intx();
    }

    /// Clear `bits` from the interrupt status.
    fn ack(&mut self, bits: u32) {
        self.irq_status &= !bits;
        self.update_intx();
    }

    /// INTx follows the interrupt status while MSI is off.
    fn update_intx(&mut self) {
        let level = self.irq_status != 0 && !self.msi.enabled(&self.cfg);
        if level != self.cfg.intx_asserted() {
            self.cfg.set_intx(level);
        }
    }

    /// The buffer slice `addr..addr+len` (device addresses), if it fits.
    fn buf_range(addr: u64, len: u64) -> Option<Range<usize>> {
        let start = addr.checked_sub(DMA_BUF_ADDR)?;
        let end = start.checked_add(len)?;
        if end > DMA_BUF_SIZE as u64 {
            return None;
        }
        Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// A guest address after the DMA mask.
    fn clamp(&mut self, addr: u64) -> u64 {
        let a = addr & self.dma_mask;
        if a != addr {
            self.stats.dma_clamped += 1;
        }
        a
    }

    /// Do the transfer the command register describes, then complete it.
    fn run_dma(&mut self) {
        let len = self.dma_count;
        let result = if self.dma_cmd & DMA_CMD_TO_RAM != 0 {
            let src = self.dma_src;
            let dst = self.clamp(self.dma_dst);
            match Self::buf_range(src, len).and_then(|r| self.buf.get(r)) {
                Some(data) => self.dma.write(dst, data).map_err(EduDmaError::from),
                None => Err(EduDmaError::OutsideBuffer { addr: src, len }),
            }
        } else {
            let src = self.clamp(self.dma_src);
            let dst = self.dma_dst;
            match Self::buf_range(dst, len).and_then(|r| self.buf.get_mut(r)) {
                // A refused read leaves the buffer untouched.
                Some(data) => self.dma.read(src, data).map_err(EduDmaError::from),
                None => Err(EduDmaError::OutsideBuffer { addr: dst, len }),
            }
        };
        self.dma_cmd &= !DMA_CMD_START;
        match result {
            Ok(()) => self.stats.dma_done += 1,
            Err(e) => {
                self.dma_cmd |= DMA_CMD_ERROR;
                self.stats.dma_refused += 1;
                self.stats.last_dma_error = Some(e);
            }
        }
        if self.dma_cmd & DMA_CMD_IRQ != 0 {
            self.raise(IRQ_DMA);
        }
    }
}

/// `n!` modulo 2^32. From 34 on, the product has at least 32 factors of
/// two, so it is 0; the loop is bounded by that.
pub fn factorial(n: u32) -> u32 {
    if n >= 34 {
        return 0;
    }
    (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k))
}

impl PciDevice for Edu {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let changes = self.cfg.write(offset, data);
        self.msi.config_written(&mut self.cfg);
        // Switching MSI on or off moves a pending interrupt between MSI and
        // INTx.
        self.update_intx();
        changes
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let val = if bar == 0 && Self::width_ok(offset, data.len()) {
            self.read_reg(offset)
        } else {
            None
        };
        let val = val.unwrap_or_else(|| {
            self.stats.bad_accesses += 1;
            u64::MAX
        });
        data.fill(0xff);
        for (d, s) in data.iter_mut().zip(val.to_le_bytes()) {
            *d = s;
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let ok = bar == 0 && Self::width_ok(offset, data.len()) && {
            let mut b = [0u8; 8];
            for (d, s) in b.iter_mut().zip(data) {
                *d = *s;
            }
            self.write_reg(offset, u64::from_le_bytes(b))
        };
        if !ok {
            self.stats.bad_accesses += 1;
        }
    }
}
