//! Device registry: what `test=hello` reports on its `devices:` line.
//!
//! Each driver contributes a probe function to [`DRIVERS`]. A probe looks
//! at the machine (firmware tables, later PCI config space) and pushes one
//! name per device instance it found. To add a driver: write a module
//! with `pub fn probe(m: &Machine, out: &mut DeviceList)` and add it to
//! `DRIVERS` (the order of the table is the order of the output).

use crate::tests::Machine;
use core::mem::MaybeUninit;

/// Space-separated names of the devices found, in probe order.
pub struct DeviceList {
    /// `buf[..len]` is initialised (not zeroed: see `Functions` in pci.rs).
    buf: [MaybeUninit<u8>; 512],
    len: usize,
}

impl DeviceList {
    fn new() -> Self {
        DeviceList {
            buf: [const { MaybeUninit::uninit() }; 512],
            len: 0,
        }
    }

    /// Record one device.
    pub fn push(&mut self, name: &str) {
        self.start();
        self.append(name);
    }

    /// Begin a device name built with [`DeviceList::append`] /
    /// [`DeviceList::append_hex`].
    pub fn start(&mut self) {
        if self.len > 0 {
            self.append(" ");
        }
    }

    /// Append ASCII text to the current name (dropped when the line is
    /// full).
    pub fn append(&mut self, s: &str) {
        for &b in s.as_bytes() {
            self.byte(b);
        }
    }

    /// Append `v` as `digits` lower-case hex digits (no `core::fmt`: it
    /// costs thousands of emulated instructions per call on kvm_pvm).
    pub fn append_hex(&mut self, v: u32, digits: u32) {
        for i in (0..digits).rev() {
            let d = ((v >> (4 * i)) & 0xf) as u8;
            self.byte(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
    }

    fn byte(&mut self, b: u8) {
        // ASCII only, so the buffer is always valid UTF-8.
        if self.len < self.buf.len() && b.is_ascii() {
            self.buf[self.len].write(b);
            self.len += 1;
        }
    }

    /// The line: names separated by single spaces.
    pub fn as_str(&self) -> &str {
        // SAFETY: `buf[..len]` was written by `byte`.
        let bytes =
            unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len) };
        core::str::from_utf8(bytes).unwrap_or("")
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
    // Every function on PCI bus 0 (`pci.rs`).
    crate::pci::probe,
];

/// Run every probe.
pub fn probe_all(m: &Machine) -> DeviceList {
    let mut out = DeviceList::new();
    for probe in DRIVERS {
        probe(m, &mut out);
    }
    out
}
