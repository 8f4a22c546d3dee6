//! PCI configuration space through CF8/CFC, ECAM and the BAR windows, with
//! an edu device on the bus (no threads, no KVM).
#![no_main]

use std::sync::{Arc, Mutex};

use devices::bus::{Access, BusDevice};
use devices::edu::Edu;
use devices::pci::bus::{PciBarWindow, PciBus, PciWindows};
use devices::pci::config::PciSpace;
use devices::pci::host_bridge::{ConfigIo, Ecam};
use devices::pci::msi::FakeMsiSink;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let windows = PciWindows {
        mmio_base: 0xc000_0000,
        mmio_size: 0x1000_0000,
        io_base: 0xc000,
        io_size: 0x4000,
    };
    let mut bus = PciBus::new(windows).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let edu = Edu::with_memory(mem, FakeMsiSink::new()).unwrap();
    bus.add_device(1, "edu", Arc::new(Mutex::new(edu)), None).unwrap();
    let bus = Arc::new(bus);
    let _ = bus.assign_bars();
    let mut cfg = ConfigIo::new(bus.clone());
    let mut ecam = Ecam::new(bus.clone());
    let mut mmio = PciBarWindow::new(bus.clone(), PciSpace::Mmio);
    let mut io = PciBarWindow::new(bus, PciSpace::Io);
    for op in vlab_fuzz::ops(data, 1 << 28) {
        let (dev, base, off): (&mut dyn BusDevice, u64, u64) = match op.target % 4 {
            0 => (&mut cfg, 0xcf8, op.offset % 8),
            1 => (&mut ecam, 0xe000_0000, op.offset),
            2 => (&mut mmio, windows.mmio_base, op.offset % windows.mmio_size),
            _ => (&mut io, windows.io_base, op.offset % windows.io_size),
        };
        let a = Access {
            base,
            offset: off,
            vcpu: 0,
        };
        let bytes = op.value.to_le_bytes();
        if op.write {
            dev.write(a, &bytes[..op.width]);
        } else {
            let mut b = [0u8; 8];
            dev.read(a, &mut b[..op.width]);
        }
    }
});
