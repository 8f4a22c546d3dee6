use super::*;
use crate::irq::FakeIrq;

fn ids() -> PciIds {
    PciIds {
        vendor: 0x1234,
        device: 0x5678,
        revision: 2,
        class: 0x02,
        subclass: 0x80,
        prog_if: 0x01,
        subsystem_vendor: 0xabcd,
        subsystem: 0xef01,
    }
}

fn rd(c: &mut ConfigSpace, off: usize, len: usize) -> u64 {
    let mut b = [0u8; 8];
    c.read(off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn wr(c: &mut ConfigSpace, off: usize, len: usize, v: u64) -> Vec<BarChange> {
    c.write(off, &v.to_le_bytes()[..len])
}

#[test]
fn identity_registers_are_read_only() {
    let mut c = ConfigSpace::new(ids());
    assert_eq!(rd(&mut c, 0, 4), 0x5678_1234);
    assert_eq!(rd(&mut c, 8, 4), 0x0280_0102);
    assert_eq!(rd(&mut c, PCI_SUBSYSTEM_VENDOR_ID, 4), 0xef01_abcd);
    for off in [
        0,
        8,
        PCI_SUBSYSTEM_VENDOR_ID,
        PCI_HEADER_TYPE,
        PCI_INTERRUPT_LINE,
    ] {
        wr(&mut c, off, 4, 0xffff_ffff);
    }
    assert_eq!(rd(&mut c, 0, 4), 0x5678_1234);
    assert_eq!(rd(&mut c, 8, 4), 0x0280_0102);
    assert_eq!(rd(&mut c, PCI_SUBSYSTEM_VENDOR_ID, 4), 0xef01_abcd);
    assert_eq!(rd(&mut c, PCI_HEADER_TYPE, 1), 0);
    // Interrupt line is RW; the pin next to it is not.
    assert_eq!(rd(&mut c, PCI_INTERRUPT_LINE, 2), 0x00ff);
    // Cache line size and latency timer are storage.
    wr(&mut c, PCI_CACHE_LINE_SIZE, 2, 0x4010);
    assert_eq!(rd(&mut c, PCI_CACHE_LINE_SIZE, 2), 0x4010);
    // Expansion ROM BAR sizes to 0: no ROM.
    wr(&mut c, PCI_ROM_ADDRESS, 4, 0xffff_f800);
    assert_eq!(rd(&mut c, PCI_ROM_ADDRESS, 4), 0);
}

#[test]
fn command_register_bits() {
    let mut c = ConfigSpace::new(ids());
    wr(&mut c, PCI_COMMAND, 2, 0xffff);
    assert_eq!(c.command(), COMMAND_WMASK);
    assert!(c.mem_enabled() && c.io_enabled());
    assert!(c.bus_master().enabled());
    wr(&mut c, PCI_COMMAND, 1, 0);
    assert!(!c.mem_enabled() && !c.io_enabled());
    assert!(!c.bus_master().enabled());
    // The high byte (INTX_DISABLE, SERR) survived the byte write.
    assert_eq!(c.command(), PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_SERR);
}

#[test]
fn status_rw1c_clears_only_written_ones() {
    let mut c = ConfigSpace::new(ids());
    c.add_capability(PCI_CAP_ID_VNDR, &[2, 0], &[0, 0]).unwrap();
    c.raise_status(PCI_STATUS_SIG_TARGET_ABORT | PCI_STATUS_DETECTED_PARITY);
    c.bus_master().raise_master_abort();
    let all = PCI_STATUS_CAP_LIST
        | PCI_STATUS_SIG_TARGET_ABORT
        | PCI_STATUS_DETECTED_PARITY
        | PCI_STATUS_REC_MASTER_ABORT;
    assert_eq!(rd(&mut c, PCI_STATUS, 2), u64::from(all));
    // Writing 0s changes nothing; writing a 1 clears just that bit.
    wr(&mut c, PCI_STATUS, 2, 0);
    assert_eq!(c.status(), all);
    wr(&mut c, PCI_STATUS, 2, u64::from(PCI_STATUS_DETECTED_PARITY));
    assert_eq!(c.status(), all & !PCI_STATUS_DETECTED_PARITY);
    // CAP_LIST and INTERRUPT are read-only even when written with 1s.
    wr(
        &mut c,
        PCI_STATUS,
        2,
        u64::from(PCI_STATUS_CAP_LIST | PCI_STATUS_INTERRUPT),
    );
    assert_eq!(c.status() & PCI_STATUS_CAP_LIST, PCI_STATUS_CAP_LIST);
    // Clearing the master abort also clears the shared latch.
    wr(&mut c, PCI_STATUS + 1, 1, 0xff);
    assert_eq!(c.status(), PCI_STATUS_CAP_LIST);
    assert!(!c.bus_master().master_abort());
    // A dword write at 0x04 writes the command and clears status at once.
    c.raise_status(PCI_STATUS_SIG_SYSTEM_ERROR);
    wr(&mut c, PCI_COMMAND, 4, 0x4000_0002);
    assert_eq!(c.command(), PCI_COMMAND_MEMORY);
    assert_eq!(c.status(), PCI_STATUS_CAP_LIST);
}

#[test]
fn mem32_bar_sizing_and_relocation() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(0, Bar::mem32(0x1000)).unwrap();
    let off = bar_offset(0);
    assert_eq!(rd(&mut c, off, 4), 0);
    let ch = wr(&mut c, off, 4, 0xffff_ffff);
    assert_eq!(rd(&mut c, off, 4), 0xffff_f000);
    assert_eq!(
        ch,
        vec![BarChange {
            bar: 0,
            old: 0,
            new: 0xffff_f000
        }]
    );
    let ch = wr(&mut c, off, 4, 0xc000_1234);
    assert_eq!(c.bar_address(0), Some(0xc000_1000));
    assert_eq!(
        ch,
        vec![BarChange {
            bar: 0,
            old: 0xffff_f000,
            new: 0xc000_1000
        }]
    );
    // Rewriting the same address reports nothing; a byte write moves it.
    assert!(wr(&mut c, off, 4, 0xc000_1000).is_empty());
    let ch = wr(&mut c, off + 3, 1, 0xd0);
    assert_eq!(ch[0].new, 0xd000_1000);
    // Prefetchable type bit is read-only.
    let mut p = ConfigSpace::new(ids());
    p.add_bar(
        1,
        Bar {
            kind: BarKind::Mem32 { prefetchable: true },
            size: 16,
        },
    )
    .unwrap();
    wr(&mut p, bar_offset(1), 4, 0);
    assert_eq!(rd(&mut p, bar_offset(1), 4), 0x8);
    wr(&mut p, bar_offset(1), 4, 0xffff_ffff);
    assert_eq!(rd(&mut p, bar_offset(1), 4), 0xffff_fff8);
}

#[test]
fn mem64_bar_sizing_and_relocation() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(2, Bar::mem64(0x2_0000_0000, true)).unwrap();
    let (lo, hi) = (bar_offset(2), bar_offset(3));
    assert_eq!(rd(&mut c, lo, 4), 0xc);
    wr(&mut c, lo, 4, 0xffff_ffff);
    wr(&mut c, hi, 4, 0xffff_ffff);
    // 8 GiB: all low address bits are size bits.
    assert_eq!(rd(&mut c, lo, 4), 0x0000_000c);
    assert_eq!(rd(&mut c, hi, 4), 0xffff_fffe);
    wr(&mut c, lo, 4, 0);
    let ch = wr(&mut c, hi, 4, 0x4);
    assert_eq!(
        ch,
        vec![BarChange {
            bar: 2,
            old: 0xffff_fffe_0000_0000,
            new: 0x4_0000_0000
        }]
    );
    assert_eq!(c.bar_address(2), Some(0x4_0000_0000));
    // A qword write covers both halves.
    let mut d = ConfigSpace::new(ids());
    d.add_bar(0, Bar::mem64(0x4000, false)).unwrap();
    wr(&mut d, bar_offset(0), 8, u64::MAX);
    assert_eq!(rd(&mut d, bar_offset(0), 8), 0xffff_ffff_ffff_c004);
    wr(&mut d, bar_offset(0), 8, 0x1_2345_6000);
    assert_eq!(d.bar_address(0), Some(0x1_2345_4000));
    assert_eq!(d.bar(1), None);
    assert_eq!(d.bars().count(), 1);
}

#[test]
fn io_bar_sizing() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(5, Bar::io(32)).unwrap();
    let off = bar_offset(5);
    assert_eq!(rd(&mut c, off, 4), 1);
    wr(&mut c, off, 4, 0xffff_ffff);
    assert_eq!(rd(&mut c, off, 4), 0xffff_ffe1);
    wr(&mut c, off, 2, 0xc043);
    assert_eq!(c.bar_address(5), Some(0xffff_c040));
    wr(&mut c, off + 2, 2, 0);
    assert_eq!(c.bar_address(5), Some(0xc040));
}

#[test]
fn unused_bars_read_zero_and_bad_bars_are_rejected() {
    let mut c = ConfigSpace::new(ids());
    wr(&mut c, bar_offset(4), 4, 0xffff_ffff);
    assert_eq!(rd(&mut c, bar_offset(4), 4), 0);
    assert_eq!(c.add_bar(6, Bar::io(4)), Err(ConfigError::NoSuchBar(6)));
    assert_eq!(
        c.add_bar(5, Bar::mem64(16, false)),
        Err(ConfigError::NoSuchBar(5))
    );
    assert!(matches!(
        c.add_bar(0, Bar::io(512)),
        Err(ConfigError::BadBarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(0, Bar::io(2)),
        Err(ConfigError::BadBarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(0, Bar::mem32(0x3000)),
        Err(ConfigError::BadBarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(0, Bar::mem32(8)),
        Err(ConfigError::BadBarSize { .. })
    ));
    c.add_bar(0, Bar::mem64(0x1000, false)).unwrap();
    assert_eq!(c.add_bar(1, Bar::io(4)), Err(ConfigError::BarInUse(1)));
    assert_eq!(c.add_bar(0, Bar::io(4)), Err(ConfigError::BarInUse(0)));
    assert_eq!(c.set_interrupt_pin(5), Err(ConfigError::BadPin(5)));
}

#[test]
fn capability_list_walk_and_masks() {
    let mut c = ConfigSpace::new(ids());
    assert_eq!(c.capabilities(), vec![]);
    assert_eq!(c.status() & PCI_STATUS_CAP_LIST, 0);
    let a = c
        .add_capability(PCI_CAP_ID_VNDR, &[3, 0xaa, 0xbb], &[0, 0xff, 0])
        .unwrap();
    let b = c.add_capability(PCI_CAP_ID_MSI, &[0; 6], &[0; 6]).unwrap();
    assert_eq!((a, b), (0x40, 0x48));
    assert_eq!(rd(&mut c, PCI_CAPABILITY_LIST, 1), 0x40);
    assert_eq!(rd(&mut c, a, 4), 0xaa03_4809);
    assert_eq!(rd(&mut c, b + 1, 1), 0);
    assert_eq!(
        c.capabilities(),
        vec![(0x40, PCI_CAP_ID_VNDR), (0x48, PCI_CAP_ID_MSI)]
    );
    assert_eq!(c.find_capability(PCI_CAP_ID_MSI), Some(0x48));
    assert_eq!(c.find_capability(PCI_CAP_ID_MSIX), None);
    // ID and next pointer are read-only; the body follows its mask.
    wr(&mut c, a, 4, 0xffff_ffff);
    wr(&mut c, a + 4, 1, 0x11);
    assert_eq!(rd(&mut c, a, 5), 0xbb_ff03_4809);
    assert_eq!(c.status() & PCI_STATUS_CAP_LIST, PCI_STATUS_CAP_LIST);
    assert_eq!(
        c.add_capability(1, &[0; 2], &[0]),
        Err(ConfigError::MaskLength { body: 2, mask: 1 })
    );
    assert_eq!(
        c.add_capability(1, &[0; 200], &[0; 200]),
        Err(ConfigError::NoRoom(202))
    );
    // Fill the space to the last byte.
    let room = PCI_CFG_SPACE_SIZE - 0x50 - 2;
    assert_eq!(
        c.add_capability(1, &vec![0; room], &vec![0; room]),
        Ok(0x50)
    );
    assert_eq!(c.add_capability(1, &[], &[]), Err(ConfigError::NoRoom(2)));
    assert_eq!(c.capabilities().len(), 3);
}

#[test]
fn capability_walk_survives_loops() {
    let mut c = ConfigSpace::new(ids());
    let a = c.add_capability(PCI_CAP_ID_VNDR, &[2, 0], &[0, 0]).unwrap();
    c.set_u8(a + 1, a as u8);
    assert_eq!(c.capabilities().len(), MAX_CAPS);
}

#[test]
fn accesses_past_256_read_zero_and_are_counted() {
    let mut c = ConfigSpace::new(ids());
    assert_eq!(rd(&mut c, 0x100, 4), 0);
    assert_eq!(rd(&mut c, 0xffe, 4), 0);
    // Straddling 0xff/0x100 reads the real byte then zeros.
    c.set_u8(0xff, 0x5a);
    assert_eq!(rd(&mut c, 0xff, 2), 0x5a);
    wr(&mut c, 0x100, 4, 0xffff_ffff);
    wr(&mut c, usize::MAX, 4, 0xffff_ffff);
    assert_eq!(rd(&mut c, usize::MAX - 1, 8), 0);
    assert_eq!(c.unknown_accesses(), 6);
}

#[test]
fn intx_level_status_and_disable() {
    let mut c = ConfigSpace::new(ids());
    c.set_interrupt_pin(1).unwrap();
    let irq = Arc::new(FakeIrq::new());
    c.attach_intx(irq.clone(), 11);
    assert_eq!(rd(&mut c, PCI_INTERRUPT_LINE, 2), 0x010b);
    c.set_intx(true);
    assert!(irq.level());
    assert_ne!(c.status() & PCI_STATUS_INTERRUPT, 0);
    // INTX_DISABLE drops the line but the status bit still shows the state.
    wr(&mut c, PCI_COMMAND, 2, u64::from(PCI_COMMAND_INTX_DISABLE));
    assert!(!irq.level());
    assert_ne!(c.status() & PCI_STATUS_INTERRUPT, 0);
    // Re-enabling raises it again while still asserted.
    wr(&mut c, PCI_COMMAND, 2, 0);
    assert!(irq.level());
    assert_eq!(irq.rising_edges(), 2);
    c.set_intx(false);
    assert!(!irq.level());
    assert_eq!(c.status() & PCI_STATUS_INTERRUPT, 0);
    // Asserting twice is one level, not two edges.
    c.set_intx(true);
    c.set_intx(true);
    assert_eq!(irq.rising_edges(), 3);
}

/// Random offsets, widths and values: never panics, RO identity survives,
/// BARs stay consistent with their masks.
#[test]
fn random_accesses_never_panic() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(0, Bar::mem64(0x4000, true)).unwrap();
    c.add_bar(2, Bar::io(16)).unwrap();
    c.add_bar(3, Bar::mem32(0x1000)).unwrap();
    c.add_capability(PCI_CAP_ID_VNDR, &[6, 1, 2, 3], &[0, 0xff, 0xf0, 0])
        .unwrap();
    c.attach_intx(Arc::new(FakeIrq::new()), 5);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = [0u8; 16];
    for _ in 0..50_000 {
        let r = next();
        let off = match r % 4 {
            0 => (r >> 8) as usize % 0x40,
            1 => (r >> 8) as usize % 0x1000,
            2 => usize::MAX - (r >> 8) as usize % 16,
            _ => (r >> 8) as usize % 0x110,
        };
        let len = (r >> 40) as usize % 17;
        if r & (1 << 62) != 0 {
            c.read(off, &mut buf[..len]);
        } else {
            let v = next().to_le_bytes();
            let w = [v, v].concat();
            c.write(off, &w[..len]);
        }
        if r % 97 == 0 {
            c.set_intx(r & 2 != 0);
        }
    }
    assert_eq!(rd(&mut c, 0, 4), 0x5678_1234);
    assert_eq!(c.bar_address(0).unwrap() % 0x4000, 0);
    assert_eq!(rd(&mut c, bar_offset(0), 1) & 0xf, 0xc);
    assert_eq!(c.bar_address(2).unwrap() % 16, 0);
    assert_eq!(c.bar_address(3).unwrap() % 0x1000, 0);
    assert_eq!(c.capabilities().len(), 1);
}
