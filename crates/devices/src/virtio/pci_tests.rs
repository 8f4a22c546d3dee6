//! The virtio-pci transport's registers, driven like a guest would.

use super::*;
use crate::irq::FakeIrq;
use crate::pci::config::{PCI_CAP_ID_MSIX, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY};
use crate::pci::msi::{FakeMsiSink, MsiMessage};
use crate::pci::msix::{PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE};
use crate::virtio::block::fuzz::MemDisk;
use crate::virtio::block::{Block, BlockOptions, VIRTIO_BLK_F_FLUSH};
use crate::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::GuestAddress;

pub(crate) const RAM: u64 = 1 << 20;

pub(crate) struct Fx {
    pub dev: Arc<Mutex<VirtioPci>>,
    pub sink: Arc<FakeMsiSink>,
    pub irq: Arc<FakeIrq>,
    pub disk: MemDisk,
    pub mem: GuestMemoryMmap,
}

pub(crate) fn setup(queues: u16) -> Fx {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let disk = MemDisk::new(1 << 20);
    let opts = BlockOptions {
        num_queues: queues,
        queue_size: 16,
        serial: "serial-1".into(),
        read_only: false,
    };
    let blk = Block::new("vblk0", Box::new(disk.clone()), opts).unwrap();
    let sink = FakeMsiSink::new();
    let dev = VirtioPci::new("vblk0", Box::new(blk), mem.clone(), sink.clone()).unwrap();
    let irq = Arc::new(FakeIrq::new());
    {
        let mut d = lock(&dev);
        d.config_mut().attach_intx(irq.clone(), 10);
        let cmd = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        d.config_write(PCI_COMMAND, &cmd.to_le_bytes());
    }
    Fx {
        dev,
        sink,
        irq,
        disk,
        mem,
    }
}

pub(crate) fn w(d: &mut VirtioPci, off: u64, v: u64, width: usize) {
    d.bar_write(VIRTIO_BAR, COMMON_OFFSET + off, &v.to_le_bytes()[..width]);
}

pub(crate) fn r(d: &mut VirtioPci, off: u64, width: usize) -> u64 {
    let mut b = [0u8; 8];
    d.bar_read(VIRTIO_BAR, COMMON_OFFSET + off, &mut b[..width]);
    u64::from_le_bytes(b)
}

pub(crate) fn set_status(d: &mut VirtioPci, s: u8) -> u8 {
    w(d, common::STATUS, u64::from(s), 1);
    r(d, common::STATUS, 1) as u8
}

/// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read back.
pub(crate) fn negotiate(d: &mut VirtioPci, features: u64) -> u8 {
    set_status(d, STATUS_ACKNOWLEDGE);
    set_status(d, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(d, common::GFSELECT, 0, 4);
    w(d, common::GF, features & 0xffff_ffff, 4);
    w(d, common::GFSELECT, 1, 4);
    w(d, common::GF, features >> 32, 4);
    set_status(d, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
}

pub(crate) fn setup_queue(d: &mut VirtioPci, q: u16, size: u16, base: u64) {
    w(d, common::Q_SELECT, u64::from(q), 2);
    w(d, common::Q_SIZE, u64::from(size), 2);
    w(d, common::Q_DESC, base, 8);
    w(d, common::Q_AVAIL, base + 0x1000, 8);
    w(d, common::Q_USED, base + 0x2000, 8);
    w(d, common::Q_ENABLE, 1, 2);
}

const OK_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;

#[test]
fn identity_and_capabilities() {
    let f = setup(2);
    let d = lock(&f.dev);
    let c = d.config();
    assert_eq!((c.read_u16(0), c.read_u16(2)), (0x1af4, 0x1042));
    assert_eq!((c.read_u8(8), c.read_u8(0x0b)), (1, 0x01));
    assert_eq!((c.read_u16(0x2c), c.read_u16(0x2e)), (0x1af4, 0x1100));
    assert_eq!(c.read_u8(0x3d), 1);
    assert_eq!(c.bar(VIRTIO_BAR).unwrap().size, VIRTIO_BAR_SIZE);
    assert_eq!(c.read_u32(0x10 + 4 * VIRTIO_BAR) & 0x6, 0x4, "64-bit BAR");
    let mut seen = Vec::new();
    for (off, id) in c.capabilities() {
        if id != PCI_CAP_ID_VNDR {
            continue;
        }
        let (len, t, bar) = (c.read_u8(off + 2), c.read_u8(off + 3), c.read_u8(off + 4));
        let (o, l) = (c.read_u32(off + 8), c.read_u32(off + 12));
        seen.push((t, bar, o, l, len));
        if t == VIRTIO_PCI_CAP_NOTIFY_CFG {
            assert_eq!(c.read_u32(off + 16), NOTIFY_OFF_MULTIPLIER);
        }
    }
    assert_eq!(
        seen,
        vec![
            (1, 4, 0x0000, 0x1000, 16),
            (2, 4, 0x3000, 0x1000, 20),
            (3, 4, 0x1000, 0x1000, 16),
            (4, 4, 0x2000, 0x1000, 16),
            (5, 0, 0, 0, 20),
        ]
    );
    assert!(c.find_capability(PCI_CAP_ID_MSIX).is_some());
    assert_eq!(d.notify_address(1), Some((VIRTIO_BAR, 0x3004)));
    assert_eq!(d.notify_address(2), None);
    assert!(d.kick_eventfd(1).is_some());
}

#[test]
fn feature_negotiation() {
    let f = setup(1);
    let mut d = lock(&f.dev);
    w(&mut d, common::DFSELECT, 0, 4);
    let lo = r(&mut d, common::DF, 4);
    w(&mut d, common::DFSELECT, 1, 4);
    let hi = r(&mut d, common::DF, 4);
    w(&mut d, common::DFSELECT, 2, 4);
    assert_eq!(r(&mut d, common::DF, 4), 0);
    let offered = lo | hi << 32;
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    assert_ne!(
        offered & (VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC),
        0
    );
    assert_eq!(
        offered & (VIRTIO_F_ACCESS_PLATFORM | VIRTIO_F_RING_RESET),
        0
    );
    // Without VERSION_1, or with a bit not offered: FEATURES_OK refused.
    assert_eq!(
        negotiate(&mut d, VIRTIO_BLK_F_FLUSH) & STATUS_FEATURES_OK,
        0
    );
    set_status(&mut d, 0);
    assert_eq!(
        negotiate(&mut d, OK_FEATURES | VIRTIO_F_ACCESS_PLATFORM) & STATUS_FEATURES_OK,
        0
    );
    set_status(&mut d, 0);
    assert_ne!(negotiate(&mut d, OK_FEATURES) & STATUS_FEATURES_OK, 0);
    // Frozen afterwards.
    w(&mut d, common::GFSELECT, 0, 4);
    w(&mut d, common::GF, 0, 4);
    assert_eq!(r(&mut d, common::GF, 4), OK_FEATURES & 0xffff_ffff);
    assert!(d.stats().refused_status >= 2);
}

#[test]
fn status_state_machine() {
    let f = setup(1);
    let mut d = lock(&f.dev);
    // FEATURES_OK before DRIVER, DRIVER_OK before FEATURES_OK: refused.
    set_status(&mut d, STATUS_ACKNOWLEDGE);
    w(&mut d, common::GF, 0, 4);
    assert_eq!(
        set_status(&mut d, STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK),
        STATUS_ACKNOWLEDGE
    );
    let s = set_status(
        &mut d,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_eq!(s, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // Clearing a bit is refused; the driver cannot set NEEDS_RESET.
    assert_eq!(
        set_status(&mut d, STATUS_DRIVER),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER
    );
    let s = set_status(
        &mut d,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DEVICE_NEEDS_RESET,
    );
    assert_eq!(s, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    set_status(&mut d, 0);
    assert_ne!(negotiate(&mut d, OK_FEATURES) & STATUS_FEATURES_OK, 0);
    setup_queue(&mut d, 0, 8, 0x10000);
    let s = set_status(
        &mut d,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_ne!(s & STATUS_DRIVER_OK, 0);
    assert!(d.active());
    assert_eq!(set_status(&mut d, s | STATUS_FAILED), s | STATUS_FAILED);
    // Reset: status reads 0 once the I/O thread is gone; registers reset.
    w(&mut d, common::STATUS, 0, 1);
    let t = std::time::Instant::now();
    while r(&mut d, common::STATUS, 1) != 0 {
        assert!(t.elapsed().as_secs() < 5, "reset never completed");
        std::thread::yield_now();
    }
    assert!(!d.active());
    w(&mut d, common::Q_SELECT, 0, 2);
    assert_eq!(
        (r(&mut d, common::Q_SIZE, 2), r(&mut d, common::Q_ENABLE, 2)),
        (16, 0)
    );
    assert_eq!(
        (r(&mut d, common::Q_DESC, 8), r(&mut d, common::GF, 4)),
        (0, 0)
    );
    assert_eq!(
        r(&mut d, common::Q_MSIX, 2),
        u64::from(VIRTIO_MSI_NO_VECTOR)
    );
    assert_eq!(d.stats().activations, 1);
}

#[test]
fn queue_configuration_validity() {
    let f = setup(2);
    let mut d = lock(&f.dev);
    let bad = |d: &mut VirtioPci, size: u16, base: u64, configure: bool| {
        set_status(d, 0);
        negotiate(d, OK_FEATURES);
        if configure {
            setup_queue(d, 0, size, base);
        } else {
            w(d, common::Q_SELECT, 0, 2);
            w(d, common::Q_ENABLE, 1, 2);
        }
        assert_eq!(r(d, common::Q_ENABLE, 2), 0, "size {size} base {base:#x}");
        assert_ne!(r(d, common::STATUS, 1) as u8 & STATUS_DEVICE_NEEDS_RESET, 0);
    };
    bad(&mut d, 3, 0x10000, true); // not a power of two
    bad(&mut d, 32, 0x10000, true); // above the maximum
    bad(&mut d, 0, 0x10000, true);
    bad(&mut d, 8, RAM - 0x1000, true); // rings past the end of RAM
    bad(&mut d, 8, 0x10008, true); // misaligned descriptor table
    bad(&mut d, 8, 0, false); // enabled before configuring
                              // The configuration interrupt went out on INTx with ISR bit 1.
    assert!(f.irq.level());
    let mut isr = [0u8];
    d.bar_read(VIRTIO_BAR, ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], 2);
    // Enabling before FEATURES_OK is refused too.
    set_status(&mut d, 0);
    set_status(&mut d, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    setup_queue(&mut d, 0, 8, 0x10000);
    assert_eq!(r(&mut d, common::Q_ENABLE, 2), 0);
    // A good queue; then size and addresses are frozen.
    set_status(&mut d, 0);
    negotiate(&mut d, OK_FEATURES);
    setup_queue(&mut d, 1, 8, 0x10000);
    assert_eq!(r(&mut d, common::Q_ENABLE, 2), 1);
    assert_eq!(r(&mut d, common::Q_NOFF, 2), 1);
    w(&mut d, common::Q_SIZE, 4, 2);
    w(&mut d, common::Q_DESC, 0x20000, 4);
    assert_eq!(
        (r(&mut d, common::Q_SIZE, 2), r(&mut d, common::Q_DESC, 8)),
        (8, 0x10000)
    );
    // 32-bit halves of a 64-bit field.
    w(&mut d, common::Q_SELECT, 0, 2);
    w(&mut d, common::Q_USED, 0x3000, 4);
    w(&mut d, common::Q_USED + 4, 0x1, 4);
    assert_eq!(r(&mut d, common::Q_USED, 8), 0x1_0000_3000);
    // A queue that does not exist reads 0 and ignores writes.
    w(&mut d, common::Q_SELECT, 7, 2);
    w(&mut d, common::Q_SIZE, 4, 2);
    assert_eq!(
        (r(&mut d, common::Q_SIZE, 2), r(&mut d, common::Q_ENABLE, 2)),
        (0, 0)
    );
    assert_eq!(r(&mut d, common::NUMQ, 2), 2);
    assert!(d.stats().bad_queue_configs >= 7);
}

pub(crate) fn enable_msix(d: &mut VirtioPci) {
    let off = d.msix.offset() + PCI_MSIX_FLAGS;
    d.config_write(off, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes());
    for v in 0..3u64 {
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&(0xfee0_0000 + v * 0x1000).to_le_bytes());
        e[8..12].copy_from_slice(&(0x40 + v as u32).to_le_bytes());
        d.bar_write(MSIX_BAR, v * 16, &e);
    }
}

#[test]
fn msix_vector_routing() {
    let f = setup(2);
    let mut d = lock(&f.dev);
    enable_msix(&mut d);
    w(&mut d, common::MSIX, 2, 2);
    assert_eq!(r(&mut d, common::MSIX, 2), 2);
    w(&mut d, common::MSIX, 3, 2); // only 3 vectors
    assert_eq!(r(&mut d, common::MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    w(&mut d, common::MSIX, 0, 2);
    for (q, v) in [(0u64, 1u64), (1, 2)] {
        w(&mut d, common::Q_SELECT, q, 2);
        w(&mut d, common::Q_MSIX, v, 2);
    }
    d.active = true; // as after DRIVER_OK
    d.raise_queue(1);
    d.raise_queue(0);
    d.raise_config();
    let data: Vec<u32> = f.sink.take().iter().map(|m: &MsiMessage| m.data).collect();
    assert_eq!(data, vec![0x42, 0x41, 0x40]);
    assert!(!f.irq.level(), "no INTx with MSI-X");
    // NO_VECTOR: nothing.
    w(&mut d, common::Q_SELECT, 1, 2);
    w(&mut d, common::Q_MSIX, u64::from(VIRTIO_MSI_NO_VECTOR), 2);
    d.raise_queue(1);
    assert!(f.sink.take().is_empty());
}

#[test]
fn isr_is_read_to_clear_and_drives_intx() {
    let f = setup(1);
    let mut d = lock(&f.dev);
    d.raise_queue(0);
    assert!(f.irq.level());
    let mut b = [0u8; 4];
    d.bar_read(VIRTIO_BAR, ISR_OFFSET + 1, &mut b[..1]); // not the ISR byte
    assert!(f.irq.level());
    d.bar_read(VIRTIO_BAR, ISR_OFFSET, &mut b);
    assert_eq!(b, [1, 0, 0, 0]);
    assert!(!f.irq.level());
    d.bar_read(VIRTIO_BAR, ISR_OFFSET, &mut b[..1]);
    assert_eq!(b[0], 0);
    // Enabling MSI-X drops a pending INTx.
    d.raise_config();
    assert!(f.irq.level());
    enable_msix(&mut d);
    assert!(!f.irq.level());
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let f = setup(2);
    let mut d = lock(&f.dev);
    let c = d.pci_cfg_cap;
    d.config_write(c + 4, &[VIRTIO_BAR as u8]);
    d.config_write(c + 8, &(common::NUMQ as u32).to_le_bytes());
    d.config_write(c + 12, &2u32.to_le_bytes());
    let mut b = [0u8; 4];
    d.config_read(c + 16, &mut b);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 2);
    // A write through the window: queue_select = 1.
    d.config_write(c + 8, &(common::Q_SELECT as u32).to_le_bytes());
    d.config_write(c + 16, &1u32.to_le_bytes());
    assert_eq!(r(&mut d, common::Q_SELECT, 2), 1);
    // A bad length or BAR does nothing.
    d.config_write(c + 12, &3u32.to_le_bytes());
    d.config_write(c + 16, &0u32.to_le_bytes());
    assert_eq!(r(&mut d, common::Q_SELECT, 2), 1);
}

#[test]
fn kicks_before_driver_ok_are_ignored() {
    let f = setup(1);
    let mut d = lock(&f.dev);
    d.bar_write(VIRTIO_BAR, NOTIFY_OFFSET, &[0, 0]);
    d.bar_write(VIRTIO_BAR, NOTIFY_OFFSET + 2, &[0, 0]);
    d.bar_write(VIRTIO_BAR, NOTIFY_OFFSET + 0x800, &[0, 0]);
    assert_eq!(d.stats().ignored_kicks, 3);
    assert!(
        d.kick_eventfd(0).unwrap().read().is_err(),
        "nothing written"
    );
}

#[test]
fn register_hammering_never_panics() {
    let f = setup(2);
    let mut rng = crate::virtio::block::tests::Rng(0xdead_beef);
    let mut d = lock(&f.dev);
    for i in 0..30_000u32 {
        let width = [1usize, 2, 4, 8, 3, 5][rng.below(6) as usize];
        let v = rng.next().to_le_bytes();
        let bar = [VIRTIO_BAR, VIRTIO_BAR, VIRTIO_BAR, MSIX_BAR, 0, 5][rng.below(6) as usize];
        let off = match rng.below(4) {
            0 => rng.below(0x40),
            1 => NOTIFY_OFFSET + rng.below(0x20),
            2 => rng.below(VIRTIO_BAR_SIZE + 0x100),
            _ => rng.next(),
        };
        let mut buf = [0u8; 8];
        match rng.below(5) {
            0 => d.bar_read(bar, off, &mut buf[..width]),
            1 => {
                let o = rng.below(0x110) as usize;
                d.config_write(o, &v[..width]);
            }
            2 => {
                let o = rng.below(0x110) as usize;
                d.config_read(o, &mut buf[..width]);
            }
            _ => d.bar_write(bar, off, &v[..width]),
        }
        // Now and then walk the status machine forward so activation and
        // reset happen with whatever queue state the hammer left.
        if i % 500 == 0 {
            let s = [0u8, 1, 3, 11, 15][rng.below(5) as usize];
            w(&mut d, common::STATUS, u64::from(s), 1);
        }
    }
    drop(d);
    VirtioPci::shutdown(&f.dev);
}
