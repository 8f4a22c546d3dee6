//! Device interrupts for PCI drivers: MSI (the function's MSI capability)
//! or INTx (pin A routed by vlab to the GSI in the interrupt-line register,
//! programmed into the IOAPIC as level-triggered, active high), delivered
//! to the BSP on one of the counting vectors of `cpu.rs`.
//!
//! MSI capability (64-bit layout): +2 message control (bit 0 enable, bit 7
//! 64-bit capable), +4 address low, +8 address high, +12 data (+8 data in
//! the 32-bit layout). The address is `0xFEE0_0000 | dest_apic << 12`
//! (physical destination, no redirection hint); the data is the vector
//! (fixed delivery, edge). While MSI is on the driver also sets the
//! command register's INTx-disable bit, as Linux does.
//!
//! Waiting: [`DeviceIrq::wait`] halts (`sti; hlt`) until the vector's count
//! moves, with a one-shot LAPIC timer (vector 0x20) as the kvm-clock
//! timeout; the caller then acknowledges the device and calls
//! [`DeviceIrq::eoi`]. (Spinning with interrupts enabled is not enough on
//! kvm_pvm: while kernel code is being emulated, an MSI may wait
//! milliseconds for the next real exit before it is injected.)

use crate::cpu::{DEVICE_IRQS, DEVICE_VECTOR_BASE, TIMER_VECTOR};
use crate::ioapic::IoApic;
use crate::pci::{Function, CMD_INTX_DISABLE};
use crate::tests::Machine;
use crate::{apic, kvmclock};
use core::sync::atomic::Ordering;

/// How a device interrupts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IrqMode {
    Msi,
    Intx,
}

impl IrqMode {
    /// `msi` or `intx`.
    pub fn name(self) -> &'static str {
        match self {
            IrqMode::Msi => "msi",
            IrqMode::Intx => "intx",
        }
    }
}

/// Why an interrupt could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum IrqError {
    NoMsiCapability,
    IoApicAbsent,
    NoIntxRoute,
}

/// One device interrupt routed to a counting vector.
pub struct DeviceIrq {
    /// Index into [`DEVICE_IRQS`].
    slot: usize,
    /// Count already consumed by [`DeviceIrq::take`].
    seen: u64,
}

impl DeviceIrq {
    /// Route `f`'s interrupt (`mode`) to device vector `slot` on the BSP.
    pub fn setup(
        m: &Machine,
        f: &Function,
        mode: IrqMode,
        slot: usize,
    ) -> Result<DeviceIrq, IrqError> {
        // Keep the legacy 8259s quiet.
        crate::io::outb(0x21, 0xff);
        crate::io::outb(0xa1, 0xff);
        let vector = DEVICE_VECTOR_BASE + slot as u8;
        let dest = apic::id();
        match mode {
            IrqMode::Msi => {
                let cap = u16::from(f.msi_cap);
                if cap == 0 {
                    return Err(IrqError::NoMsiCapability);
                }
                let ctrl = f.read16(cap + 2);
                f.write32(cap + 4, 0xfee0_0000 | dest << 12);
                if ctrl & 0x80 != 0 {
                    f.write32(cap + 8, 0);
                    f.write16(cap + 12, u16::from(vector));
                } else {
                    f.write16(cap + 8, u16::from(vector));
                }
                // Enable with one vector (multiple message enable = 0).
                f.write16(cap + 2, (ctrl & !0x70) | 1);
                f.update_command(CMD_INTX_DISABLE, 0);
            }
            IrqMode::Intx => {
                if f.irq_pin == 0 || f.irq_line == 0xff {
                    return Err(IrqError::NoIntxRoute);
                }
                let io = IoApic::new(&m.plat).ok_or(IrqError::IoApicAbsent)?;
                if f.msi_cap != 0 {
                    let cap = u16::from(f.msi_cap);
                    let ctrl = f.read16(cap + 2);
                    if ctrl & 1 != 0 {
                        f.write16(cap + 2, ctrl & !1);
                    }
                }
                f.update_command(0, CMD_INTX_DISABLE);
                if !io.route(u32::from(f.irq_line), vector, true, false, dest) {
                    return Err(IrqError::NoIntxRoute);
                }
            }
        }
        Ok(DeviceIrq {
            slot,
            seen: DEVICE_IRQS[slot].load(Ordering::Acquire),
        })
    }

    /// Counting vector `slot` for a driver that programs the device's
    /// interrupt itself (MSI-X: `virtio.rs`).
    pub fn for_slot(slot: usize) -> DeviceIrq {
        crate::io::outb(0x21, 0xff);
        crate::io::outb(0xa1, 0xff);
        DeviceIrq {
            slot,
            seen: DEVICE_IRQS[slot].load(Ordering::Acquire),
        }
    }

    /// Interrupts taken on this vector since setup.
    pub fn count(&self) -> u64 {
        DEVICE_IRQS[self.slot].load(Ordering::Acquire)
    }

    /// Number of interrupts that arrived and were not yet taken; marks
    /// them taken. The caller must acknowledge the device, then [`eoi`].
    ///
    /// [`eoi`]: DeviceIrq::eoi
    pub fn take(&mut self) -> u64 {
        let now = self.count();
        let new = now - self.seen;
        self.seen = now;
        new
    }

    /// Wait until an interrupt arrives or `deadline` passes. Returns the
    /// number of new interrupts (0 on timeout); interrupts are off again.
    ///
    /// Sleeps with `sti; hlt` (race-free: an interrupt pending before the
    /// `sti` is taken right after it and ends the `hlt`); a one-shot LAPIC
    /// timer armed for the remaining time bounds the sleep. Halting rather
    /// than spinning also leaves the host CPU to the device's own threads.
    pub fn wait(&mut self, deadline: Deadline) -> u64 {
        let mut armed = false;
        let n = loop {
            let n = self.take();
            if n != 0 {
                break n;
            }
            let Some(left) = deadline.remaining_ns() else {
                break 0;
            };
            if left != u64::MAX {
                apic::start_oneshot(TIMER_VECTOR, left);
                armed = true;
            }
            if left == u64::MAX {
                // No kvm-clock: poll instead (see `Deadline::passed`).
                // SAFETY: IDT/LAPIC are set up; the window lets a pending
                // interrupt in.
                unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            } else {
                // SAFETY: as above; `hlt` returns on any interrupt (device
                // vector or the one-shot timer).
                unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            }
        };
        if armed {
            apic::stop_timer();
        }
        n
    }

    /// End of interrupt at the LAPIC (after acknowledging the device).
    pub fn eoi(&self) {
        apic::eoi();
    }
}

/// A timeout measured with kvm-clock (or, without it, a spin count).
#[derive(Clone, Copy)]
pub struct Deadline {
    end_ns: u64,
    spins: u64,
}

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Deadline {
        Deadline {
            end_ns: kvmclock::now_ns() + ms * 1_000_000,
            spins: SPINS.load(Ordering::Relaxed) + ms * 1000,
        }
    }

    /// Nanoseconds left (None if passed; `u64::MAX` without kvm-clock,
    /// where the budget is counted in calls).
    pub fn remaining_ns(&self) -> Option<u64> {
        if kvmclock::available() {
            self.end_ns
                .checked_sub(kvmclock::now_ns())
                .filter(|&n| n > 0)
        } else if self.passed() {
            None
        } else {
            Some(u64::MAX)
        }
    }

    /// Has it passed? Without kvm-clock every call counts as 1 µs (about
    /// the cost of a polling iteration on kvm_pvm).
    pub fn passed(&self) -> bool {
        if kvmclock::available() {
            kvmclock::now_ns() >= self.end_ns
        } else {
            SPINS.fetch_add(1, Ordering::Relaxed) >= self.spins
        }
    }
}

/// Polling iterations counted by [`Deadline::passed`] without kvm-clock.
static SPINS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

// Drivers zero-initialise structs holding an `Option<DeviceIrq>` with
// `mem::zeroed` (no SSE): check at compile time that zero bytes are `None`.
const _: () = {
    const N: usize = core::mem::size_of::<Option<DeviceIrq>>();
    // SAFETY: `Option<DeviceIrq>` is plain integers plus a tag; if zero
    // bytes were not a valid value const evaluation would fail.
    let v: Option<DeviceIrq> =
        unsafe { core::mem::transmute::<[u8; N], Option<DeviceIrq>>([0; N]) };
    assert!(v.is_none());
};
