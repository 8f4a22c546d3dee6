//! End to end: a driver written in Rust configures a virtio-blk function
//! through its PCI registers, as a guest would, and does I/O through the
//! real I/O thread (trapped kicks and the ioeventfd path).

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use super::{VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX};
use crate::bus::lock;
use crate::pci::device::PciDevice;
use crate::pci::msi::FakeMsiSink;
use crate::virtio::pci::tests::{enable_msix, negotiate, r, set_status, setup, setup_queue, w};
use crate::virtio::pci::{common, VirtioPci, DEVICE_CFG_OFFSET, VIRTIO_BAR};
use crate::virtio::{
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const SIZE: u16 = 16;

/// The driver's side of one split virtqueue (desc at base, avail at
/// base + 0x1000, used at base + 0x2000).
struct DrvQ {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DrvQ {
    fn new(base: u64) -> Self {
        DrvQ {
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn submit(&mut self, mem: &GuestMemoryMmap, segs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in segs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % SIZE;
            let last = i + 1 == segs.len();
            let flags: u16 = if write { 2 } else { 0 } | if last { 0 } else { 1 };
            let next = (idx + 1) % SIZE;
            let mut dsc = [0u8; 16];
            dsc[0..8].copy_from_slice(&addr.to_le_bytes());
            dsc[8..12].copy_from_slice(&len.to_le_bytes());
            dsc[12..14].copy_from_slice(&flags.to_le_bytes());
            dsc[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&dsc, GuestAddress(self.base + 16 * u64::from(idx)))
                .unwrap();
        }
        self.next_desc = (self.next_desc + segs.len() as u16) % SIZE;
        let slot = self.base + 0x1000 + 4 + 2 * u64::from(self.avail_idx % SIZE);
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.base + 0x1002))
            .unwrap();
        head
    }

    /// Wait for the next used element: (id, len).
    fn wait_used(&mut self, mem: &GuestMemoryMmap) -> (u32, u32) {
        let t = Instant::now();
        loop {
            let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x2002)).unwrap();
            if idx != self.used_seen {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "request never completed"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let e = self.base + 0x2004 + 8 * u64::from(self.used_seen % SIZE);
        self.used_seen = self.used_seen.wrapping_add(1);
        (
            mem.read_obj(GuestAddress(e)).unwrap(),
            mem.read_obj(GuestAddress(e + 4)).unwrap(),
        )
    }
}

fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn wait_msi(sink: &FakeMsiSink) -> Vec<u32> {
    let t = Instant::now();
    loop {
        let m: Vec<u32> = sink.take().iter().map(|m| m.data).collect();
        if !m.is_empty() {
            return m;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no MSI");
        std::thread::sleep(Duration::from_micros(200));
    }
}

const HDR: u64 = 0x30000;
const DATA: u64 = 0x31000;
const STATUS: u64 = 0x38000;

/// Bring the device up like Linux's virtio_pci + virtio_blk would.
fn bring_up(d: &mut VirtioPci, features: u64) {
    assert_eq!(set_status(d, 0), 0);
    assert_ne!(negotiate(d, features) & STATUS_FEATURES_OK, 0);
    w(d, common::MSIX, 0, 2);
    for (q, base, vector) in [(0u16, 0x10000u64, 1u64), (1, 0x20000, 2)] {
        w(d, common::Q_SELECT, u64::from(q), 2);
        assert_eq!(r(d, common::Q_SIZE, 2), u64::from(SIZE));
        assert_eq!(r(d, common::Q_NOFF, 2), u64::from(q));
        w(d, common::Q_MSIX, vector, 2);
        assert_eq!(r(d, common::Q_MSIX, 2), vector);
        setup_queue(d, q, SIZE, base);
        assert_eq!(r(d, common::Q_ENABLE, 2), 1);
    }
    let s = r(d, common::STATUS, 1) as u8;
    assert_ne!(set_status(d, s | STATUS_DRIVER_OK) & STATUS_DRIVER_OK, 0);
}

#[test]
fn driver_reads_writes_and_flushes_through_the_transport() {
    let f = setup(2);
    let features = VIRTIO_F_VERSION_1
        | VIRTIO_BLK_F_FLUSH
        | VIRTIO_BLK_F_SEG_MAX
        | VIRTIO_BLK_F_BLK_SIZE
        | VIRTIO_BLK_F_MQ;
    {
        let mut d = lock(&f.dev);
        enable_msix(&mut d);
        bring_up(&mut d, features);
        // Device configuration: capacity (1 MiB) and num_queues.
        let mut c = [0u8; 8];
        d.bar_read(VIRTIO_BAR, DEVICE_CFG_OFFSET, &mut c);
        assert_eq!(u64::from_le_bytes(c), 2048);
        d.bar_read(VIRTIO_BAR, DEVICE_CFG_OFFSET + 34, &mut c[..2]);
        assert_eq!(u16::from_le_bytes([c[0], c[1]]), 2);
    }
    let (mut q0, mut q1) = (DrvQ::new(0x10000), DrvQ::new(0x20000));
    let mem = &f.mem;
    let notify = |q: u16| {
        let mut d = lock(&f.dev);
        let (bar, off) = d.notify_address(q).unwrap();
        d.bar_write(bar, off, &q.to_le_bytes());
    };

    // Write 8 KiB at sector 8 on queue 0 (trapped notify write).
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 251) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    header(mem, VIRTIO_BLK_T_OUT, 8);
    let h = q0.submit(
        mem,
        &[
            (HDR, 16, false),
            (DATA, 4096, false),
            (DATA + 4096, 4096, false),
            (STATUS, 1, true),
        ],
    );
    notify(0);
    assert_eq!(q0.wait_used(mem), (u32::from(h), 1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(wait_msi(&f.sink), vec![0x41]);
    assert_eq!(&f.disk.contents()[8 * 512..8 * 512 + 8192], &data[..]);

    // Read it back on queue 1, kicked through the EventFd as KVM would.
    mem.write_slice(&[0u8; 8192], GuestAddress(DATA)).unwrap();
    header(mem, VIRTIO_BLK_T_IN, 8);
    let h = q1.submit(
        mem,
        &[(HDR, 16, false), (DATA, 8192, true), (STATUS, 1, true)],
    );
    lock(&f.dev).kick_eventfd(1).unwrap().write(1).unwrap();
    assert_eq!(q1.wait_used(mem), (u32::from(h), 8193));
    let mut back = vec![0u8; 8192];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, data);
    assert_eq!(wait_msi(&f.sink), vec![0x42]);

    // Flush, then GET_ID.
    header(mem, VIRTIO_BLK_T_FLUSH, 0);
    q0.submit(mem, &[(HDR, 16, false), (STATUS, 1, true)]);
    notify(0);
    q0.wait_used(mem);
    assert_eq!(f.disk.flushes(), 1);
    header(mem, VIRTIO_BLK_T_GET_ID, 0);
    q0.submit(
        mem,
        &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
    );
    notify(0);
    assert_eq!(q0.wait_used(mem).1, 21);
    let mut id = [0u8; 9];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-1\0");
    assert_eq!(lock(&f.dev).dma_stats().refused, 0);

    // Reset (status polls back to 0 once the I/O thread is gone), bring
    // it up again with EVENT_IDX, and read.
    {
        let mut d = lock(&f.dev);
        w(&mut d, common::STATUS, 0, 1);
        let t = Instant::now();
        while r(&mut d, common::STATUS, 1) != 0 {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::yield_now();
        }
        for base in [0x10000u64, 0x20000] {
            mem.write_slice(&[0u8; 0x3000], GuestAddress(base)).unwrap();
        }
        bring_up(&mut d, features | VIRTIO_RING_F_EVENT_IDX);
    }
    let mut q0 = DrvQ::new(0x10000);
    f.sink.take();
    header(mem, VIRTIO_BLK_T_IN, 8);
    q0.submit(
        mem,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    notify(0);
    assert_eq!(q0.wait_used(mem).1, 513);
    assert_eq!(wait_msi(&f.sink), vec![0x41]);
    let st = lock(&f.dev).stats();
    assert_eq!((st.activations, st.resets), (2, 3)); // each bring-up starts with a reset
    VirtioPci::shutdown(&f.dev);
    assert!(!lock(&f.dev).active());
}
