//! Device registry: what `test=hello` reports on its `devices:` line.
//!
//! Each driver contributes a probe function to [`DRIVERS`]. A probe looks
//! at the machine (firmware tables, later PCI config space) and pushes one
//! name per device instance it found. To add a driver: write a module
//! with `pub fn probe(m: &Machine, out: &mut DeviceList)` and add it to
//! `DRIVERS` (the order of the table is the order of the output).

use crate::tests::Machine;

/// Names of the devices found, in probe order.
pub struct DeviceList {
    names: [&'static str; 64],
    len: usize,
}

impl DeviceList {
    const fn new() -> Self {
        DeviceList {
            names: [""; 64],
            len: 0,
        }
    }

    /// Record one device (silently dropped beyond 64 entries).
    pub fn push(&mut self, name: &'static str) {
        if self.len < self.names.len() {
            self.names[self.len] = name;
            self.len += 1;
        }
    }

    /// Devices recorded so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names[..self.len]
    }
}

/// A driver's probe function.
pub type Probe = fn(&Machine, &mut DeviceList);

/// All drivers, in output order.
pub static DRIVERS: &[Probe] = &[
    // COM1 and the debug-exit port are part of the boot contract.
    |_, out| out.push("serial0"),
    |_, out| out.push("debug-exit"),
    // The LAPIC is architectural (the kernel uses it for IPIs and timer).
    |_, out| out.push("lapic"),
    |m, out| {
        if m.plat.ioapics > 0 {
            out.push("ioapic");
        }
    },
];

/// Run every probe.
pub fn probe_all(m: &Machine) -> DeviceList {
    let mut out = DeviceList::new();
    for probe in DRIVERS {
        probe(m, &mut out);
    }
    out
}
