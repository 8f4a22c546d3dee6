//! KVM GSI routing matching the MP table and MADT.
//!
//! Both tables tell the guest that ISA IRQ0 (the PIT) arrives on IOAPIC
//! pin 2, like every PC. KVM's *default* routing (set up by
//! `KVM_CREATE_IRQCHIP`) instead sends GSI n to IOAPIC pin n, so the in-kernel
//! PIT, which raises GSI 0, would hit pin 0. The VMM must therefore install
//! [`legacy_irq_routing`] with `KVM_SET_GSI_ROUTING` right after creating the
//! irqchip (QEMU does the same):
//!
//! | GSI    | 8259 input        | IOAPIC pin |
//! |--------|-------------------|------------|
//! | 0      | master 0          | 2          |
//! | 1, 3–7 | master n          | n          |
//! | 2      | — (cascade)       | —          |
//! | 8–15   | slave n−8         | n          |
//! | 16–23  | —                 | n          |
//!
//! Devices keep raising their ISA IRQ number as the GSI (serial: 4, SCI: 9).

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP,
};
use thiserror::Error;

use super::mptable::isa_irq_to_pin;

/// Number of pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_NUM_PINS: u32 = 24;

/// Errors from building the routing table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrqError {
    /// The routing table could not be allocated.
    #[error("Cannot build the GSI routing table")]
    Routing,
}

/// An interrupt controller input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// Master 8259.
    PicMaster,
    /// Slave 8259.
    PicSlave,
    /// The IOAPIC.
    Ioapic,
}

/// One GSI → irqchip pin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqRoute {
    /// Global system interrupt number (what devices raise with `KVM_IRQ_LINE`/irqfd).
    pub gsi: u32,
    /// Target chip.
    pub chip: IrqChip,
    /// Target pin on the chip.
    pub pin: u32,
}

impl IrqRoute {
    /// The KVM representation of this route.
    pub fn to_kvm(self) -> kvm_irq_routing_entry {
        let irqchip = match self.chip {
            IrqChip::PicMaster => KVM_IRQCHIP_PIC_MASTER,
            IrqChip::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
            IrqChip::Ioapic => KVM_IRQCHIP_IOAPIC,
        };
        kvm_irq_routing_entry {
            gsi: self.gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip {
                    irqchip,
                    pin: self.pin,
                },
            },
            ..Default::default()
        }
    }
}

/// The PC-compatible routes listed in the module documentation.
pub fn legacy_irq_routes() -> Vec<IrqRoute> {
    let mut routes = Vec::new();
    for gsi in 0..16u32 {
        match gsi {
            2 => {}
            0..=7 => routes.push(IrqRoute {
                gsi,
                chip: IrqChip::PicMaster,
                pin: gsi,
            }),
            _ => routes.push(IrqRoute {
                gsi,
                chip: IrqChip::PicSlave,
                pin: gsi - 8,
            }),
        }
    }
    for gsi in 0..IOAPIC_NUM_PINS {
        let pin = match u8::try_from(gsi) {
            Ok(irq) if irq < 16 => isa_irq_to_pin(irq).map(u32::from),
            _ => Some(gsi),
        };
        if let Some(pin) = pin {
            routes.push(IrqRoute {
                gsi,
                chip: IrqChip::Ioapic,
                pin,
            });
        }
    }
    routes
}

/// [`legacy_irq_routes`] as a `KVM_SET_GSI_ROUTING` argument.
pub fn legacy_irq_routing() -> Result<KvmIrqRouting, IrqError> {
    let entries: Vec<_> = legacy_irq_routes()
        .into_iter()
        .map(IrqRoute::to_kvm)
        .collect();
    KvmIrqRouting::from_entries(&entries).map_err(|_| IrqError::Routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_pc_wiring() {
        let r = legacy_irq_routes();
        let find = |gsi, chip| {
            r.iter()
                .filter(|e| e.gsi == gsi && e.chip == chip)
                .map(|e| e.pin)
                .collect::<Vec<_>>()
        };
        assert_eq!(find(0, IrqChip::Ioapic), vec![2]);
        assert_eq!(find(0, IrqChip::PicMaster), vec![0]);
        assert!(r.iter().all(|e| e.gsi != 2));
        assert_eq!(find(4, IrqChip::Ioapic), vec![4]);
        assert_eq!(find(9, IrqChip::PicSlave), vec![1]);
        assert_eq!(find(23, IrqChip::Ioapic), vec![23]);
        assert_eq!(r.len(), 15 + 23);
        // Each IOAPIC pin is targeted at most once.
        let mut pins: Vec<_> = r
            .iter()
            .filter(|e| e.chip == IrqChip::Ioapic)
            .map(|e| e.pin)
            .collect();
        pins.sort_unstable();
        pins.dedup();
        assert_eq!(pins.len(), 23);
    }

    #[test]
    fn kvm_table() {
        let t = legacy_irq_routing().unwrap();
        assert_eq!(t.as_slice().len(), 38);
        assert!(t
            .as_slice()
            .iter()
            .all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        assert_eq!(t.as_slice()[0].gsi, 0);
    }
}
