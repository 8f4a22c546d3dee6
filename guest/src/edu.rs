//! Driver for QEMU's educational PCI device, edu (1234:11e8;
//! docs/devices/edu.md, QEMU docs/specs/edu.rst).
//!
//! BAR0 (1 MiB MMIO, every access is a VM exit): 0x00 ID (0x010000ed:
//! major in 31:24, 0xed in 7:0), 0x04 liveness (reads ~last write), 0x08
//! factorial (write n, read n! once STATUS bit 0 "computing" is clear),
//! 0x20 STATUS, 0x24 interrupt status, 0x60 raise, 0x64 acknowledge, and
//! 64-bit DMA registers 0x80 source, 0x88 destination, 0x90 count, 0x98
//! command (bit 0 start / busy, bit 1 direction: 1 = device → RAM, bit 2
//! raise 0x100 when done; vlab adds bit 31 = transfer refused). The DMA
//! buffer is at device address 0x40000 (4 KiB); guest addresses are masked
//! to 28 bits, so the driver's buffers (in `.bss`, low RAM) fit.
//!
//! Offsets below 0x80 take 4-byte accesses only; the DMA registers take 4
//! or 8 bytes (this driver writes them with 8-byte stores).

use crate::irq::{Deadline, DeviceIrq, IrqMode};
use crate::pci::Function;
use crate::sync::RacyCell;
use crate::tests::Machine;

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x11e8;

const REG_ID: u64 = 0x00;
const REG_LIVENESS: u64 = 0x04;
const REG_FACTORIAL: u64 = 0x08;
const REG_STATUS: u64 = 0x20;
const REG_IRQ_STATUS: u64 = 0x24;
const REG_IRQ_RAISE: u64 = 0x60;
const REG_IRQ_ACK: u64 = 0x64;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;

const STATUS_COMPUTING: u32 = 0x01;
const IRQ_DMA: u32 = 0x100;
const DMA_START: u64 = 0x1;
const DMA_TO_RAM: u64 = 0x2;
const DMA_IRQ: u64 = 0x4;
const DMA_ERROR: u64 = 1 << 31;
const DMA_BUF_ADDR: u64 = 0x40000;
const DMA_LEN: usize = 4096;

/// The value raised through 0x60 by the IRQ test (a bit the device never
/// sets itself).
const TEST_IRQ_BIT: u32 = 0x0001_0000;

const TIMEOUT_MS: u64 = 2000;

#[repr(C, align(4096))]
struct DmaBufs {
    src: [u32; DMA_LEN / 4],
    dst: [u32; DMA_LEN / 4],
}

static BUFS: RacyCell<DmaBufs> = RacyCell::new(DmaBufs {
    src: [0; DMA_LEN / 4],
    dst: [0; DMA_LEN / 4],
});

/// A bound edu device.
pub struct Edu {
    pub f: Function,
    regs: u64,
    irq: Option<DeviceIrq>,
    /// Interrupts handled.
    pub irqs: u64,
}

/// What `test=edu` found.
pub struct Report {
    pub id: u32,
    pub factorial: u32,
    pub mode: IrqMode,
}

impl Edu {
    /// Find the device.
    pub fn probe(m: &Machine) -> Option<Edu> {
        let f = crate::pci::scan(&m.plat).find(VENDOR, DEVICE)?;
        let regs = f.map_bar(0, 0x1000)?;
        // SAFETY: all-zero bytes are a valid `Edu` (integers, `None`, a
        // zeroed `Function`); `rep stosb` avoids SSE zeroing.
        let mut e: Edu = unsafe { crate::mem::zeroed() };
        e.f = f;
        e.regs = regs;
        Some(e)
    }

    fn read(&self, off: u64) -> u32 {
        // SAFETY: BAR0 is in the uncached, identity-mapped PCI window.
        unsafe { crate::io::mmio_read32(self.regs + off) }
    }

    fn write(&self, off: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { crate::io::mmio_write32(self.regs + off, v) }
    }

    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as in `read`; 8-byte accesses are allowed from 0x80.
        unsafe { core::ptr::read_volatile((self.regs + off) as usize as *const u64) }
    }

    fn write64(&self, off: u64, v: u64) {
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile((self.regs + off) as usize as *mut u64, v) }
    }

    /// Wait for an interrupt with `bit` pending, acknowledge it (0x64),
    /// EOI. Returns the interrupt status seen.
    fn wait_irq(&mut self, bit: u32) -> Result<u32, &'static str> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        let n = match self.irq.as_mut() {
            Some(irq) => irq.wait(deadline),
            None => return Err("no interrupt set up"),
        };
        if n == 0 {
            return Err("timeout waiting for the interrupt");
        }
        self.irqs += n;
        let s = self.read(REG_IRQ_STATUS);
        if s != 0 {
            self.write(REG_IRQ_ACK, s);
        }
        crate::apic::eoi();
        if s & bit == 0 {
            return Err("interrupt without the expected status bit");
        }
        Ok(s)
    }

    fn dma(&mut self, src: u64, dst: u64, to_ram: bool) -> Result<(), &'static str> {
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        self.write64(REG_DMA_COUNT, DMA_LEN as u64);
        let dir = if to_ram { DMA_TO_RAM } else { 0 };
        self.write64(REG_DMA_CMD, DMA_START | DMA_IRQ | dir);
        self.wait_irq(IRQ_DMA)?;
        let cmd = self.read64(REG_DMA_CMD);
        if cmd & DMA_START != 0 {
            return Err("DMA still running after its interrupt");
        }
        if cmd & DMA_ERROR != 0 {
            return Err("DMA refused by the device (command bit 31)");
        }
        Ok(())
    }

    /// ID, liveness, factorial, interrupt, DMA round trip.
    pub fn run(&mut self, m: &Machine, mode: Option<IrqMode>) -> Result<Report, &'static str> {
        let id = self.read(REG_ID);
        if id & 0xff != 0xed || id >> 24 != 1 {
            return Err("bad identification register");
        }
        for v in [0x1234_5678u32, 0xdead_beef] {
            self.write(REG_LIVENESS, v);
            if self.read(REG_LIVENESS) != !v {
                return Err("liveness check failed");
            }
        }
        self.write(REG_FACTORIAL, 12);
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        while self.read(REG_STATUS) & STATUS_COMPUTING != 0 {
            if deadline.passed() {
                return Err("factorial never finished");
            }
            core::hint::spin_loop();
        }
        let factorial = self.read(REG_FACTORIAL);
        if factorial != 479_001_600 {
            return Err("factorial(12) is wrong");
        }
        let mode = mode.unwrap_or(if self.f.msi_cap != 0 {
            IrqMode::Msi
        } else {
            IrqMode::Intx
        });
        self.irq =
            Some(DeviceIrq::setup(m, &self.f, mode, 1).map_err(|_| "interrupt setup failed")?);
        self.write(REG_IRQ_RAISE, TEST_IRQ_BIT);
        self.wait_irq(TEST_IRQ_BIT)?;
        if self.read(REG_IRQ_STATUS) != 0 {
            return Err("interrupt status not clear after acknowledge");
        }

        self.f.enable_bus_master();
        let bufs = BUFS.get();
        // SAFETY: the buffers are only used by this driver, and the device
        // only touches them during `dma`, which completes synchronously
        // with respect to the waits below.
        let (src, dst): (*mut u32, *mut u32) =
            unsafe { ((&raw mut (*bufs).src).cast(), (&raw mut (*bufs).dst).cast()) };
        for i in 0..DMA_LEN / 4 {
            let v = (i as u32).wrapping_mul(0x9e37_79b9) ^ 0xa5a5_0000;
            // SAFETY: i < DMA_LEN / 4.
            unsafe {
                src.add(i).write_volatile(v);
                dst.add(i).write_volatile(0);
            }
        }
        self.dma(src as u64, DMA_BUF_ADDR, false)?;
        self.dma(DMA_BUF_ADDR, dst as u64, true)?;
        for i in 0..DMA_LEN / 4 {
            // SAFETY: as above.
            if unsafe { src.add(i).read_volatile() != dst.add(i).read_volatile() } {
                return Err("DMA round trip: data differs");
            }
        }
        Ok(Report {
            id,
            factorial,
            mode,
        })
    }
}
