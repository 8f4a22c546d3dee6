use super::*;
use crate::bus::Bus;
use crate::irq::FakeIrq;
use crate::pci::config::{PCI_COMMAND_MASTER, PCI_INTERRUPT_LINE, PCI_STATUS};
use crate::pci::host_bridge::{ConfigIo, Ecam, PCI_CONFIG_ADDRESS_ENABLE, PCI_CONFIG_IO_PORT};
use crate::pci::msi::MsiMessage;
use crate::pci::msix::PCI_MSIX_FLAGS_ENABLE;
use crate::pci::testdev::TestDev;

const WINDOWS: PciWindows = PciWindows {
    mmio_base: 0xc000_0000,
    mmio_size: 0x1000_0000,
    io_base: 0xc000,
    io_size: 0x4000,
};

type Events = Arc<Mutex<Vec<BarRemap>>>;

fn setup() -> (Arc<PciBus>, Arc<Mutex<TestDev>>, Events) {
    let mut bus = PciBus::new(WINDOWS).unwrap();
    let dev = Arc::new(Mutex::new(TestDev::new()));
    bus.add_device(3, "test", dev.clone(), None).unwrap();
    let events: Events = Arc::default();
    let e = events.clone();
    bus.set_remap_hook(Arc::new(move |r: &BarRemap| lock(&e).push(r.clone())));
    (Arc::new(bus), dev, events)
}

fn addr(device: u8, register: u16) -> PciAddress {
    PciAddress {
        bus: 0,
        device,
        function: 0,
        register,
    }
}

fn cfg_write32(bus: &PciBus, dev: u8, reg: u16, v: u32) {
    bus.config_write(addr(dev, reg), &v.to_le_bytes());
}

fn cfg_read32(bus: &PciBus, dev: u8, reg: u16) -> u32 {
    let mut b = [0u8; 4];
    bus.config_read(addr(dev, reg), &mut b);
    u32::from_le_bytes(b)
}

fn mmio_read(bus: &PciBus, a: u64, len: usize) -> (bool, Vec<u8>) {
    let mut b = vec![0u8; len];
    let ok = bus.bar_read(PciSpace::Mmio, a, &mut b);
    (ok, b)
}

#[test]
fn firmware_assigns_bars_and_enables_decoding() {
    let (bus, dev, events) = setup();
    let maps = bus.assign_bars().unwrap();
    let want = [
        (2, PciSpace::Mmio, 0xc000_0000, 0x4000),
        (0, PciSpace::Mmio, 0xc000_4000, 0x1000),
        (1, PciSpace::Io, 0xc000, 32),
    ];
    assert_eq!(maps.len(), 3);
    for (bar, space, base, size) in want {
        assert!(
            maps.contains(&BarMapping {
                slot: 3,
                bar,
                space,
                base,
                size
            }),
            "{bar}"
        );
    }
    let d = lock(&dev);
    assert_eq!(d.cfg.command(), PCI_COMMAND_MEMORY | PCI_COMMAND_IO);
    assert_eq!(d.cfg.bar_address(2), Some(0xc000_0000));
    drop(d);
    let ev = lock(&events);
    assert_eq!(ev.len(), 3);
    let page = ev.iter().find(|r| r.bar == 0).unwrap();
    assert_eq!((page.old, page.new), (None, Some(0xc000_4000)));
    assert!(page.register_page.is_some());
    assert!(ev
        .iter()
        .filter(|r| r.bar != 0)
        .all(|r| r.register_page.is_none()));
}

#[test]
fn bar_accesses_reach_the_device_with_offsets() {
    let (bus, dev, _) = setup();
    bus.assign_bars().unwrap();
    lock(&dev).page.set(8, 0xcafe_f00d);
    assert_eq!(
        mmio_read(&bus, 0xc000_4008, 4),
        (true, vec![0x0d, 0xf0, 0xfe, 0xca])
    );
    // I/O BAR: the test device answers with the offset.
    let mut b = [0u8; 2];
    assert!(bus.bar_read(PciSpace::Io, 0xc005, &mut b));
    assert_eq!(b, [5, 5]);
    assert!(bus.bar_write(PciSpace::Io, 0xc01f, &[7]));
    assert!(bus.bar_write(PciSpace::Mmio, 0xc000_4ffd, &[1, 2, 3]));
    assert_eq!(
        lock(&dev).writes,
        vec![(1, 0x1f, vec![7]), (0, 0xffd, vec![1, 2, 3])]
    );
    // Straddling the end of a BAR, or between BARs: unclaimed, all-ones.
    assert_eq!(mmio_read(&bus, 0xc000_4ffe, 4), (false, vec![0xff; 4]));
    assert!(!bus.bar_read(PciSpace::Io, 0xc01e, &mut [0; 4]));
    assert_eq!(mmio_read(&bus, 0xc000_5000, 1), (false, vec![0xff]));
    assert!(!bus.bar_write(PciSpace::Mmio, u64::MAX, &[0; 8]));
    assert_eq!(bus.stats().unclaimed_bar_accesses, 4);
}

#[test]
fn command_enables_gate_decoding() {
    let (bus, _dev, events) = setup();
    bus.assign_bars().unwrap();
    lock(&events).clear();
    // Memory off, I/O on.
    bus.config_write(addr(3, PCI_COMMAND as u16), &[PCI_COMMAND_IO as u8, 0]);
    assert!(!mmio_read(&bus, 0xc000_4000, 4).0);
    assert!(!mmio_read(&bus, 0xc000_0000, 4).0);
    assert!(bus.bar_read(PciSpace::Io, 0xc000, &mut [0; 1]));
    {
        let ev = lock(&events);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|r| r.new.is_none() && r.old.is_some()));
    }
    // I/O off, memory on.
    bus.config_write(addr(3, PCI_COMMAND as u16), &[PCI_COMMAND_MEMORY as u8]);
    assert!(mmio_read(&bus, 0xc000_4000, 4).0);
    assert!(!bus.bar_read(PciSpace::Io, 0xc000, &mut [0; 1]));
    assert_eq!(lock(&events).len(), 5);
    // Writes that do not change decoding report nothing.
    bus.config_write(addr(3, PCI_INTERRUPT_LINE as u16), &[9]);
    bus.config_write(
        addr(3, PCI_COMMAND as u16),
        &[(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER) as u8],
    );
    assert_eq!(lock(&events).len(), 5);
}

#[test]
fn guest_relocates_32_and_64_bit_bars() {
    let (bus, _dev, events) = setup();
    bus.assign_bars().unwrap();
    lock(&events).clear();
    // Linux-style sizing of BAR0 with decoding off, then a new address.
    let cmd = cfg_read32(&bus, 3, 4) & 0xffff;
    cfg_write32(&bus, 3, 4, 0);
    cfg_write32(&bus, 3, 0x10, 0xffff_ffff);
    assert_eq!(cfg_read32(&bus, 3, 0x10), 0xffff_f000);
    cfg_write32(&bus, 3, 0x10, 0xc800_0000);
    cfg_write32(&bus, 3, 4, cmd);
    assert!(mmio_read(&bus, 0xc800_0000, 4).0);
    assert!(!mmio_read(&bus, 0xc000_4000, 4).0);
    let ev: Vec<_> = lock(&events)
        .iter()
        .filter(|r| r.bar == 0)
        .cloned()
        .collect();
    assert_eq!(ev.len(), 2);
    assert_eq!((ev[0].old, ev[0].new), (Some(0xc000_4000), None));
    assert_eq!((ev[1].old, ev[1].new), (None, Some(0xc800_0000)));
    assert!(ev[1].register_page.is_some());
    // 64-bit BAR2: moving the high dword out of the window stops decoding
    // (with decoding on); moving it back restores it.
    lock(&events).clear();
    cfg_write32(&bus, 3, 0x1c, 1);
    assert!(!mmio_read(&bus, 0xc000_0000, 4).0);
    cfg_write32(&bus, 3, 0x18, 0xc010_000c);
    cfg_write32(&bus, 3, 0x1c, 0);
    assert!(mmio_read(&bus, 0xc010_0000, 4).0);
    let ev = lock(&events);
    assert_eq!(ev.len(), 2);
    assert_eq!((ev[0].old, ev[0].new), (Some(0xc000_0000), None));
    assert_eq!((ev[1].old, ev[1].new), (None, Some(0xc010_0000)));
}

#[test]
fn bars_outside_the_window_are_not_decoded() {
    let (bus, _dev, _) = setup();
    bus.assign_bars().unwrap();
    cfg_write32(&bus, 3, 0x10, 0xbfff_f000); // below the window
    cfg_write32(&bus, 3, 0x14, 0x1_0000); // I/O beyond 0xffff
    assert!(!mmio_read(&bus, 0xbfff_f000, 4).0);
    assert_eq!(bus.mappings().len(), 1);
    cfg_write32(&bus, 3, 0x10, 0xcfff_f000); // the last page of the window
    assert!(mmio_read(&bus, 0xcfff_fffc, 4).0);
}

#[test]
fn msix_through_the_bar_and_msi_through_config() {
    let (bus, dev, _) = setup();
    bus.assign_bars().unwrap();
    // Vector 1: table entry at BAR2 + 16.
    let mut e = [0u8; 16];
    e[0..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
    e[8..12].copy_from_slice(&0x55u32.to_le_bytes());
    assert!(bus.bar_write(PciSpace::Mmio, 0xc000_0010, &e));
    let msix_ctrl = lock(&dev).msix.offset() as u16 + 2;
    bus.config_write(addr(3, msix_ctrl), &PCI_MSIX_FLAGS_ENABLE.to_le_bytes());
    {
        let mut d = lock(&dev);
        let d = &mut *d;
        assert_eq!(d.msix.trigger(&d.cfg, 1), crate::pci::msi::MsiOutcome::Sent);
        assert_eq!(
            d.sink.take(),
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x55
            }]
        );
    }
    // MSI, vector 0 masked then unmasked through config space.
    let off = lock(&dev).msi.offset() as u16;
    cfg_write32(&bus, 3, off + 4, 0xfee0_1000);
    cfg_write32(&bus, 3, off + 12, 0x66);
    cfg_write32(&bus, 3, off + 16, 1);
    bus.config_write(addr(3, off + 2), &[1]);
    {
        let mut d = lock(&dev);
        let d = &mut *d;
        assert_eq!(
            d.msi.trigger(&mut d.cfg, 0),
            crate::pci::msi::MsiOutcome::Pending
        );
        assert!(d.sink.take().is_empty());
    }
    cfg_write32(&bus, 3, off + 16, 0);
    assert_eq!(
        lock(&dev).sink.take(),
        vec![MsiMessage {
            address: 0xfee0_1000,
            data: 0x66
        }]
    );
}

#[test]
fn add_device_checks_slots_and_wires_intx() {
    let mut bus = PciBus::new(WINDOWS).unwrap();
    let d = || -> SharedPciDevice { Arc::new(Mutex::new(TestDev::new())) };
    assert_eq!(
        bus.add_device(0, "x", d(), None),
        Err(PciBusError::BadSlot(0))
    );
    assert_eq!(
        bus.add_device(32, "x", d(), None),
        Err(PciBusError::BadSlot(32))
    );
    let irq = Arc::new(FakeIrq::new());
    let dev = Arc::new(Mutex::new(TestDev::new()));
    let intx = Intx {
        line: 10,
        irq: irq.clone(),
    };
    bus.add_device(1, "a", dev.clone(), Some(intx)).unwrap();
    assert_eq!(
        bus.add_device(1, "b", d(), None),
        Err(PciBusError::SlotInUse(1))
    );
    assert_eq!(bus.free_slot(), Ok(2));
    assert_eq!(
        bus.devices(),
        vec![(0, "host-bridge".to_string()), (1, "a".to_string())]
    );
    assert_eq!(lock(&dev).cfg.read_u8(PCI_INTERRUPT_LINE), 10);
    lock(&dev).cfg.set_intx(true);
    assert!(irq.level());
    let bus = Arc::new(bus);
    assert_ne!(cfg_read32(&bus, 1, PCI_STATUS as u16) & 0x8, 0);
    let mut full = PciBus::new(WINDOWS).unwrap();
    for s in 1..32 {
        full.add_device(s, "f", d(), None).unwrap();
    }
    assert_eq!(full.free_slot(), Err(PciBusError::Full));
}

#[test]
fn bar_allocator_and_exhaustion() {
    let mut a = BarAllocator::new(0x1000, 0x3000);
    assert_eq!(a.alloc(0x100, 0x100), Some(0x1000));
    assert_eq!(a.alloc(0x1000, 0x1000), Some(0x2000));
    assert_eq!(a.alloc(0x1000, 0x1000), Some(0x3000));
    assert_eq!(a.alloc(1, 1), None);
    assert_eq!(a.alloc(1, 3), None);
    let mut a = BarAllocator::new(u64::MAX - 0x10, 0x100);
    assert_eq!(a.alloc(0x10, 0x1000), None);

    let tiny = PciWindows {
        mmio_size: 0x4000,
        ..WINDOWS
    };
    let mut bus = PciBus::new(tiny).unwrap();
    bus.add_device(1, "t", Arc::new(Mutex::new(TestDev::new())), None)
        .unwrap();
    assert!(matches!(
        bus.assign_bars(),
        Err(PciBusError::NoRoom {
            slot: 1,
            bar: 0,
            size: 0x1000,
            space: PciSpace::Mmio
        })
    ));
    let bad = PciWindows {
        io_size: 0,
        ..WINDOWS
    };
    assert_eq!(
        PciBus::new(bad).unwrap_err(),
        PciBusError::BadWindow(PciSpace::Io)
    );
}

/// The whole path a guest uses: the VMM's PIO and MMIO buses with the
/// mechanism-#1 ports, ECAM and the BAR windows.
fn vmm_buses() -> (Bus, Bus, Arc<PciBus>, Arc<Mutex<TestDev>>) {
    let (pci, dev, _) = setup();
    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    pio.insert(
        Arc::new(Mutex::new(ConfigIo::new(pci.clone()))),
        PCI_CONFIG_IO_PORT,
        8,
        "pci-cf8",
    )
    .unwrap();
    pio.insert(
        Arc::new(Mutex::new(PciBarWindow::new(pci.clone(), PciSpace::Io))),
        WINDOWS.io_base,
        WINDOWS.io_size,
        "pci-io",
    )
    .unwrap();
    mmio.insert(
        Arc::new(Mutex::new(PciBarWindow::new(pci.clone(), PciSpace::Mmio))),
        WINDOWS.mmio_base,
        WINDOWS.mmio_size,
        "pci-mmio",
    )
    .unwrap();
    mmio.insert(
        Arc::new(Mutex::new(Ecam::new(pci.clone()))),
        0xe000_0000,
        1 << 20,
        "ecam",
    )
    .unwrap();
    (pio, mmio, pci, dev)
}

#[test]
fn guest_enumerates_sizes_and_uses_a_device() {
    let (pio, mmio, _pci, dev) = vmm_buses();
    let cf8 = |d: u32, r: u32| {
        pio.write(
            0xcf8,
            &(PCI_CONFIG_ADDRESS_ENABLE | d << 11 | r).to_le_bytes(),
            0,
        );
    };
    let mut ids = Vec::new();
    for d in 0..32 {
        cf8(d, 0);
        let mut b = [0u8; 4];
        pio.read(0xcfc, &mut b, 0);
        ids.push(u32::from_le_bytes(b));
    }
    assert_eq!(ids[0], 0x0d57_8086);
    assert_eq!(ids[3], 0x10ff_1af4);
    assert_eq!(ids.iter().filter(|&&v| v == u32::MAX).count(), 30);
    // Size and place BAR1 (I/O) through ECAM, enable I/O, use it.
    let ecam = 0xe000_0000 + (3 << 15);
    mmio.write(ecam + 0x14, &u32::MAX.to_le_bytes(), 0);
    let mut b = [0u8; 4];
    mmio.read(ecam + 0x14, &mut b, 0);
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffe1);
    mmio.write(ecam + 0x14, &0xd000u32.to_le_bytes(), 0);
    mmio.write(ecam + 4, &[PCI_COMMAND_IO as u8], 0);
    let mut p = [0u8; 1];
    assert!(pio.read(0xd003, &mut p, 0));
    assert_eq!(p, [3]);
    assert!(pio.write(0xd004, &[0x42], 0));
    assert_eq!(lock(&dev).writes, vec![(1, 4, vec![0x42])]);
}

#[test]
fn random_guest_accesses_never_panic() {
    let (pio, mmio, pci, _dev) = vmm_buses();
    pci.assign_bars().unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = [0u8; 8];
    for _ in 0..50_000 {
        let r = next();
        let len = (r >> 8) as usize % 9;
        let v = next().to_le_bytes();
        let (bus, a) = match r % 5 {
            0 => (&pio, 0xcf8 + (r >> 16) % 8),
            1 => (&pio, 0xc000 + (r >> 16) % 0x100),
            2 => (&mmio, 0xe000_0000 + (r >> 16) % (1 << 20)),
            3 => (&mmio, 0xe000_0000 + (3 << 15) + (r >> 16) % 0x1000),
            _ => (&mmio, 0xc000_0000 + (r >> 16) % 0x8000),
        };
        // Keep CONFIG_ADDRESS pointing at something interesting often.
        if r % 3 == 0 {
            let d = if r & 8 != 0 { 3 } else { 0 };
            let reg = (r >> 24) as u32 & 0xfc;
            pio.write(
                0xcf8,
                &(PCI_CONFIG_ADDRESS_ENABLE | d << 11 | reg).to_le_bytes(),
                0,
            );
        }
        if r & (1 << 63) != 0 {
            bus.read(a, &mut buf[..len], 0);
        } else {
            bus.write(a, &v[..len], 0);
        }
    }
    // Still enumerable afterwards.
    let mut b = [0u8; 4];
    mmio.read(0xe000_0000 + (3 << 15), &mut b, 0);
    assert_eq!(u32::from_le_bytes(b), 0x10ff_1af4);
}
