//! IOAPIC: routing PCI INTx pins (GSIs) to LAPIC vectors.
//!
//! The IOAPIC (address and GSI base from the MADT; vlab: 0xFEC0_0000, GSI
//! base 0) is programmed indirectly: write the register index to IOREGSEL
//! (offset 0x00), then access IOWIN (offset 0x10). Redirection entry `n`
//! is registers 0x10 + 2n (low dword) and 0x11 + 2n (high dword):
//! low = vector (7:0), delivery mode 000 fixed (10:8), destination mode 0
//! physical (11), polarity (13, 1 = active low), trigger (15, 1 = level),
//! mask (16); high bits 31:24 = destination APIC ID. PCI INTx lines are
//! level-triggered; vlab's are active high.

use crate::acpi::Platform;
use crate::io::{mmio_read32, mmio_write32};

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REDTBL: u32 = 0x10;
const RTE_LEVEL: u32 = 1 << 15;
const RTE_ACTIVE_LOW: u32 = 1 << 13;
const RTE_MASKED: u32 = 1 << 16;

/// The first IOAPIC of the platform.
pub struct IoApic {
    base: u64,
    gsi_base: u32,
}

impl IoApic {
    /// The IOAPIC from the MADT, if any.
    pub fn new(plat: &Platform) -> Option<IoApic> {
        if plat.ioapics == 0 || plat.ioapic_base == 0 {
            return None;
        }
        crate::paging::map_mmio(plat.ioapic_base, 0x20);
        Some(IoApic {
            base: plat.ioapic_base,
            gsi_base: plat.ioapic_gsi_base,
        })
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: the IOAPIC page is in the uncached part of the boot
        // identity map; IOREGSEL/IOWIN are its only registers.
        unsafe {
            mmio_write32(self.base + IOREGSEL, reg);
            mmio_write32(self.base + IOWIN, value);
        }
    }

    /// Read an IOAPIC register.
    pub fn read(&self, reg: u32) -> u32 {
        // SAFETY: as in `write`.
        unsafe {
            mmio_write32(self.base + IOREGSEL, reg);
            mmio_read32(self.base + IOWIN)
        }
    }

    /// Number of redirection entries.
    pub fn pins(&self) -> u32 {
        ((self.read(1) >> 16) & 0xff) + 1
    }

    /// Route `gsi` to `vector` on `dest_apic`, fixed delivery, unmasked.
    /// Returns false if the GSI is not on this IOAPIC.
    pub fn route(
        &self,
        gsi: u32,
        vector: u8,
        level: bool,
        active_low: bool,
        dest_apic: u32,
    ) -> bool {
        let Some(pin) = gsi.checked_sub(self.gsi_base).filter(|&p| p < self.pins()) else {
            return false;
        };
        let mut low = u32::from(vector);
        if level {
            low |= RTE_LEVEL;
        }
        if active_low {
            low |= RTE_ACTIVE_LOW;
        }
        // Masked while the destination is written, then unmasked.
        self.write(REDTBL + 2 * pin, low | RTE_MASKED);
        self.write(REDTBL + 2 * pin + 1, dest_apic << 24);
        self.write(REDTBL + 2 * pin, low);
        true
    }
}
