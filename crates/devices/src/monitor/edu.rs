//! The edu protocol monitor: access widths and registers, DMA set-up, and
//! interrupt acknowledgement (docs/devices/edu.md; the rules are listed in
//! docs/monitors.md).
//!
//! edu has no register page, so every BAR0 access traps and is seen. The
//! monitor keeps its own copy of what the driver programmed (DMA source,
//! destination, count, the factorial-interrupt enable, the interrupt
//! status it caused) and checks a transfer when the driver starts it,
//! before and independently of the device model's own checks.

use crate::edu::{
    DEFAULT_DMA_MASK, DMA_BUF_ADDR, DMA_BUF_SIZE, DMA_CMD_IRQ, DMA_CMD_START, DMA_CMD_TO_RAM,
    IRQ_DMA, IRQ_FACT, REG_DMA_CMD, REG_DMA_COUNT, REG_DMA_DST, REG_DMA_SRC, REG_FACTORIAL, REG_ID,
    REG_IRQ_ACK, REG_IRQ_RAISE, REG_IRQ_STATUS, REG_LIVENESS, REG_STATUS, STATUS_IRQ_FACT,
};
use crate::pci::config::PCI_COMMAND_MASTER;

use super::{Event, EventKind, Monitor, RamMap, Violation};

/// E1: access width.
pub const E1: &str = "edu.E1";
/// E2: not a register, or the wrong direction.
pub const E2: &str = "edu.E2";
/// E3: DMA while bus mastering is off.
pub const E3: &str = "edu.E3";
/// E4: DMA guest range outside RAM.
pub const E4: &str = "edu.E4";
/// E5: DMA device range outside the 4 KiB buffer.
pub const E5: &str = "edu.E5";
/// E6: DMA guest address above the DMA mask.
pub const E6: &str = "edu.E6";
/// E7: interrupt not acknowledged.
pub const E7: &str = "edu.E7";

/// The register name at `offset`.
pub fn reg_name(offset: u64) -> Option<&'static str> {
    Some(match offset {
        REG_ID => "ID",
        REG_LIVENESS => "LIVENESS",
        REG_FACTORIAL => "FACTORIAL",
        REG_STATUS => "STATUS",
        REG_IRQ_STATUS => "IRQ_STATUS",
        REG_IRQ_RAISE => "IRQ_RAISE",
        REG_IRQ_ACK => "IRQ_ACK",
        REG_DMA_SRC => "DMA_SRC",
        REG_DMA_DST => "DMA_DST",
        REG_DMA_COUNT => "DMA_COUNT",
        REG_DMA_CMD => "DMA_CMD",
        _ => return None,
    })
}

fn reg(offset: u64) -> String {
    match reg_name(offset) {
        Some(n) => format!("BAR0 {n}"),
        None => format!("BAR0+{offset:#x}"),
    }
}

/// The monitor's view of one edu.
#[derive(Debug)]
pub struct EduMonitor {
    ram: RamMap,
    dma_mask: u64,
    ack_timeout_ns: u64,
    bus_master: bool,
    irq_fact: bool,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    /// Interrupt status bits the monitor saw raised: (bits, first raised,
    /// reported).
    pending: u32,
    raised_at: Option<u64>,
    reported: bool,
}

impl EduMonitor {
    /// A monitor for an edu with the default 28-bit DMA mask in a machine
    /// with `ram`, reporting interrupts not acknowledged within
    /// `ack_timeout`.
    pub fn new(ram: RamMap, ack_timeout: std::time::Duration) -> Self {
        EduMonitor {
            ram,
            dma_mask: DEFAULT_DMA_MASK,
            ack_timeout_ns: u64::try_from(ack_timeout.as_nanos()).unwrap_or(u64::MAX),
            bus_master: false,
            irq_fact: false,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            pending: 0,
            raised_at: None,
            reported: false,
        }
    }

    /// Use `mask` as the device's DMA mask (as `Edu::with_dma_mask`).
    pub fn with_dma_mask(mut self, mask: u64) -> Self {
        self.dma_mask = mask;
        self
    }

    fn raise(&mut self, bits: u32, now: u64) {
        if bits == 0 {
            return;
        }
        if self.pending == 0 {
            self.raised_at = Some(now);
            self.reported = false;
        }
        self.pending |= bits;
    }

    fn ack(&mut self, bits: u32) {
        self.pending &= !bits;
        if self.pending == 0 {
            self.raised_at = None;
        }
    }

    fn access(
        &mut self,
        write: bool,
        offset: u64,
        width: u8,
        value: u64,
        now: u64,
        out: &mut Vec<Violation>,
    ) {
        let what = if write { "write" } else { "read" };
        let width_ok = if offset < REG_DMA_SRC {
            width == 4
        } else {
            width == 4 || width == 8
        };
        if !width_ok {
            out.push(Violation::new(
                E1,
                reg(offset),
                Some(value),
                format!(
                    "{width}-byte {what} at offset {offset:#x}: registers below 0x80 take 32-bit accesses, from 0x80 32- or 64-bit; the access was dropped"
                ),
            ));
            return;
        }
        let (readable, writable) = match offset {
            REG_ID | REG_IRQ_STATUS => (true, false),
            REG_IRQ_RAISE | REG_IRQ_ACK => (false, true),
            o if reg_name(o).is_some() => (true, true),
            _ => (false, false),
        };
        if !readable && !writable {
            out.push(Violation::new(
                E2,
                reg(offset),
                Some(value),
                format!(
                    "{what} of offset {offset:#x}, which is not a register; the access was dropped"
                ),
            ));
            return;
        }
        if write && !writable {
            out.push(Violation::new(
                E2,
                reg(offset),
                Some(value),
                "write to a read-only register; the write was dropped",
            ));
            return;
        }
        if !write && !readable {
            out.push(Violation::new(
                E2,
                reg(offset),
                Some(value),
                "read of a write-only register (it reads all-ones)",
            ));
            return;
        }
        if !write {
            return;
        }
        let v32 = value as u32;
        match offset {
            REG_FACTORIAL if self.irq_fact => self.raise(IRQ_FACT, now),
            REG_STATUS => self.irq_fact = v32 & STATUS_IRQ_FACT != 0,
            REG_IRQ_RAISE => self.raise(v32, now),
            REG_IRQ_ACK => self.ack(v32),
            REG_DMA_SRC => self.dma_src = value,
            REG_DMA_DST => self.dma_dst = value,
            REG_DMA_COUNT => self.dma_count = value,
            REG_DMA_CMD if value & DMA_CMD_START != 0 => {
                self.start_dma(value, out);
                if value & DMA_CMD_IRQ != 0 {
                    self.raise(IRQ_DMA, now);
                }
            }
            _ => {}
        }
    }

    fn start_dma(&mut self, cmd: u64, out: &mut Vec<Violation>) {
        let r = || reg(REG_DMA_CMD);
        let to_ram = cmd & DMA_CMD_TO_RAM != 0;
        let (guest, device) = if to_ram {
            (self.dma_dst, self.dma_src)
        } else {
            (self.dma_src, self.dma_dst)
        };
        let len = self.dma_count;
        let side = if to_ram { "destination" } else { "source" };
        if !self.bus_master {
            out.push(Violation::new(
                E3,
                r(),
                Some(cmd),
                "DMA started while bus mastering is disabled: call pci_set_master() first; the transfer moved no data",
            ));
        }
        let in_buf = device
            .checked_sub(DMA_BUF_ADDR)
            .and_then(|s| s.checked_add(len))
            .is_some_and(|end| end <= DMA_BUF_SIZE as u64);
        if !in_buf {
            out.push(Violation::new(
                E5,
                r(),
                Some(cmd),
                format!(
                    "DMA device-side range {device:#x}+{len:#x} is outside the buffer 0x40000..0x41000; the transfer moved no data"
                ),
            ));
        }
        let clamped = guest & self.dma_mask;
        if clamped != guest {
            out.push(Violation::new(
                E6,
                r(),
                Some(cmd),
                format!(
                    "DMA {side} {guest:#x} is above the device's DMA mask {:#x}: the device uses {clamped:#x}; set the mask (dma_set_mask) and map buffers below it",
                    self.dma_mask
                ),
            ));
        }
        if !self.ram.contains(clamped, len) {
            out.push(Violation::new(
                E4,
                r(),
                Some(cmd),
                format!(
                    "DMA {side} {clamped:#x}+{len:#x} is outside guest RAM: DMA only to memory the driver allocated; the transfer moved no data"
                ),
            ));
        }
    }

    fn check_ack(&mut self, now: u64, out: &mut Vec<Violation>) {
        let Some(at) = self.raised_at else { return };
        if self.reported || now.saturating_sub(at) < self.ack_timeout_ns {
            return;
        }
        self.reported = true;
        out.push(Violation::late(
            E7,
            "BAR0 IRQ_STATUS",
            Some(self.pending.into()),
            format!(
                "interrupt raised at t={:.3}ms was not acknowledged within {} ms: the handler must write the status bits to IRQ_ACK (0x64)",
                at as f64 / 1e6,
                self.ack_timeout_ns / 1_000_000
            ),
        ));
    }
}

impl Monitor for EduMonitor {
    fn observe(&mut self, ev: &Event) -> Vec<Violation> {
        let mut out = Vec::new();
        // First: a deadline that passed before this event is a violation
        // even if this event is the (late) acknowledgement.
        self.check_ack(ev.t_ns, &mut out);
        match &ev.kind {
            EventKind::BarWrite {
                bar: 0,
                offset,
                width,
                value,
                ..
            } => self.access(true, *offset, *width, *value, ev.t_ns, &mut out),
            EventKind::BarRead {
                bar: 0,
                offset,
                width,
                value,
                ..
            } => self.access(false, *offset, *width, *value, ev.t_ns, &mut out),
            EventKind::ConfigWrite { command, .. } => {
                self.bus_master = command & PCI_COMMAND_MASTER != 0;
            }
            _ => {}
        }
        out
    }

    fn finish(&mut self, t_ns: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check_ack(t_ns, &mut out);
        out
    }

    fn register_name(&self, bar: u8, offset: u64) -> Option<&'static str> {
        (bar == 0).then(|| reg_name(offset)).flatten()
    }
}
