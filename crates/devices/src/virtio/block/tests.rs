//! The request path on `virtio_queue::mock::MockSplitQueue` queues.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor as SplitDesc, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::fuzz::{fuzz_queue, test_engine, test_params, FakeInterrupt, MemDisk};
use super::policy::{CompletionPolicy, Immediate, RequestInfo, ThrottlePolicy};
use super::request::*;
use super::worker::BlockStats;
use crate::dma::{BusMaster, Dma};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const MIB: u64 = 1 << 20;
/// 128 sectors.
const DISK: usize = 64 * 1024;
const HDR: u64 = 0x10_0000 - 0x1000; // header page just below the hole
const DATA: u64 = 0x8_0000;
const STATUS: u64 = 0x9_0000;
const HOLE: u64 = MIB + 0x1000;

/// 1 MiB of RAM, a 1 MiB hole, 1 MiB of RAM.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(2 * MIB), MIB as usize),
    ])
    .unwrap()
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDesc::new(addr, len, flags, next))
}

fn header(mem: &GuestMemoryMmap, addr: u64, t: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

struct Fx {
    mem: GuestMemoryMmap,
    disk: MemDisk,
    irq: Arc<FakeInterrupt>,
    params: DiskParams,
}

impl Fx {
    fn new() -> Fx {
        let mem = memory();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        Fx {
            mem,
            disk: MemDisk::new(DISK),
            irq: FakeInterrupt::new(),
            params: test_params((DISK / 512) as u64, false),
        }
    }

    fn dma(&self) -> Dma {
        let bm = BusMaster::new();
        bm.set_enabled(true);
        Dma::new("t", self.mem.clone(), bm)
    }

    /// Run `descs` (explicit flags and next fields) as chains in a 16-entry
    /// queue through the engine; returns the used elements (id, len).
    fn run_raw(
        &self,
        descs: &[RawDescriptor],
        policy: Box<dyn CompletionPolicy>,
    ) -> Vec<(u32, u32)> {
        self.run_chains(&[descs], policy)
    }

    /// Several chains, placed one after the other in the table.
    fn run_chains(
        &self,
        chains: &[&[RawDescriptor]],
        policy: Box<dyn CompletionPolicy>,
    ) -> Vec<(u32, u32)> {
        let mock = MockSplitQueue::new(&self.mem, 16);
        let mut at = 0;
        for c in chains {
            mock.add_desc_chains(c, at).unwrap();
            at += c.len() as u16;
        }
        let q: Queue = mock.create_queue().unwrap();
        let mut e = test_engine(
            &self.mem,
            q,
            self.params.clone(),
            self.disk.clone(),
            self.irq.clone(),
            policy,
        );
        while e.drain(0) {}
        e.release_due();
        let n = mock.used().idx().load();
        (0..n)
            .map(|i| {
                let u = mock.used().ring().ref_at(usize::from(i)).unwrap().load();
                (u.id(), u.len())
            })
            .collect()
    }

    /// One chain: `segs` = (addr, len, writable); NEXT flags are set here.
    fn run(&self, segs: &[(u64, u32, bool)]) -> (u8, u32) {
        let n = segs.len();
        let descs: Vec<_> = segs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, w))| {
                let f = if w { WRITE } else { 0 } | if i + 1 < n { NEXT } else { 0 };
                d(a, l, f, (i + 1) as u16)
            })
            .collect();
        let used = self.run_raw(&descs, Box::new(Immediate));
        assert_eq!(used.len(), 1);
        (self.status(), used[0].1)
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

#[test]
fn read_across_several_descriptors() {
    let f = Fx::new();
    let content = pattern(DISK, 3);
    f.disk.fill(0, &content);
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 2);
    let (st, len) = f.run(&[
        (HDR, 16, false),
        (DATA, 512, true),
        (DATA + 0x1000, 1024, true),
        (STATUS, 1, true),
    ]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1536 + 1));
    let mut a = vec![0u8; 512];
    let mut b = vec![0u8; 1024];
    f.mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    f.mem
        .read_slice(&mut b, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(a, content[1024..1536]);
    assert_eq!(b, content[1536..2560]);
    assert_eq!(f.irq.take_used(), vec![0]);
}

#[test]
fn write_across_several_descriptors_and_odd_framing() {
    let f = Fx::new();
    let data = pattern(1536, 9);
    f.mem
        .write_slice(&data[..1000], GuestAddress(DATA))
        .unwrap();
    f.mem
        .write_slice(&data[1000..], GuestAddress(DATA + 0x2000))
        .unwrap();
    // Header split over two descriptors: framing is not assumed.
    header(&f.mem, HDR, VIRTIO_BLK_T_OUT, 5);
    let (st, len) = f.run(&[
        (HDR, 10, false),
        (HDR + 10, 6, false),
        (DATA, 1000, false),
        (DATA + 0x2000, 536, false),
        (STATUS, 1, true),
    ]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(f.disk.contents()[5 * 512..5 * 512 + 1536], data[..]);
    assert_eq!(f.disk.flushes(), 0);
}

#[test]
fn header_and_data_in_one_descriptor_status_after_data() {
    let f = Fx::new();
    f.disk.fill(512, &[0xab; 512]);
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 1);
    // Read data and status in one writable descriptor.
    let (_, len) = f.run(&[(HDR, 16, false), (DATA, 513, true)]);
    assert_eq!(len, 513);
    let mut b = [0u8; 513];
    f.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b[..512].iter().all(|&x| x == 0xab));
    assert_eq!(b[512], VIRTIO_BLK_S_OK);
}

#[test]
fn flush_get_id_and_writethrough() {
    let mut f = Fx::new();
    header(&f.mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        f.run(&[(HDR, 16, false), (STATUS, 1, true)]),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(f.disk.flushes(), 1);

    header(&f.mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let (st, len) = f.run(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..10], b"vlab-test\0");

    // Without FLUSH negotiated every write is made durable.
    f.params.writethrough = true;
    header(&f.mem, HDR, VIRTIO_BLK_T_OUT, 0);
    f.run(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    assert_eq!(f.disk.flushes(), 2);
}

fn segment(mem: &GuestMemoryMmap, addr: u64, sector: u64, n: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&n.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(addr)).unwrap();
}

#[test]
fn discard_and_write_zeroes() {
    let mut f = Fx::new();
    f.disk.fill(0, &[0xee; DISK]);
    header(&f.mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    segment(&f.mem, DATA, 2, 2, 0);
    segment(&f.mem, DATA + 16, 10, 1, 0);
    let r = f.run(&[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)]);
    assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
    assert_eq!(f.disk.discards(), vec![(1024, 1024), (5120, 512)]);

    header(&f.mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&f.mem, DATA, 20, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_OK
    );
    let c = f.disk.contents();
    assert!(c[20 * 512..23 * 512].iter().all(|&b| b == 0));
    assert_eq!(c[23 * 512], 0xee);

    // Unmap on a discard and unknown flags are UNSUPP; so is a type not
    // negotiated; too many segments, a range past the end, an empty list
    // are IOERR.
    header(&f.mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    segment(&f.mem, DATA, 0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_UNSUPP
    );
    header(&f.mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&f.mem, DATA, 0, 1, 0x4);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_UNSUPP
    );
    segment(&f.mem, DATA, 127, 2, 0);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(&[(HDR, 16, false), (STATUS, 1, true)]).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 33 * 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    f.params.write_zeroes = false;
    segment(&f.mem, DATA, 0, 1, 0);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_UNSUPP
    );
}

#[test]
fn out_of_range_read_only_and_unsupported() {
    let mut f = Fx::new();
    for (t, sector, len) in [
        (VIRTIO_BLK_T_IN, 127, 1024u32), // one sector past the end
        (VIRTIO_BLK_T_IN, u64::MAX, 512),
        (VIRTIO_BLK_T_OUT, 128, 512),
        (VIRTIO_BLK_T_IN, 0, 100), // not a multiple of 512
    ] {
        header(&f.mem, HDR, t, sector);
        let w = t == VIRTIO_BLK_T_IN;
        assert_eq!(
            f.run(&[(HDR, 16, false), (DATA, len, w), (STATUS, 1, true)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
    }
    for t in [2, 10, 14, 99, u32::MAX] {
        header(&f.mem, HDR, t, 0);
        assert_eq!(
            f.run(&[(HDR, 16, false), (STATUS, 1, true)]).0,
            VIRTIO_BLK_S_UNSUPP
        );
    }
    f.params.read_only = true;
    f.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    header(&f.mem, HDR, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    header(&f.mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&f.mem, DATA, 0, 1, 0);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    assert!(f.disk.contents().iter().all(|&b| b == 0));
    // Reads still work; an image error is IOERR.
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_OK
    );
    f.disk.set_failing(true);
    assert_eq!(
        f.run(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
}

#[test]
fn malformed_chains_fail_only_that_request() {
    let f = Fx::new();
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 0);
    let ioerr = |segs: &[(u64, u32, bool)]| {
        f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        assert_eq!(f.run(segs).0, VIRTIO_BLK_S_IOERR, "{segs:x?}");
    };
    ioerr(&[(DATA, 16, true), (STATUS, 1, true)]); // header device-writable
    ioerr(&[(HDR, 8, false), (STATUS, 1, true)]); // header too short
    ioerr(&[(HDR, 32, false), (DATA, 512, true), (STATUS, 1, true)]); // header too long for IN
    ioerr(&[(HOLE, 16, false), (STATUS, 1, true)]); // header in the hole
    ioerr(&[(HDR, 16, false), (HOLE, 512, true), (STATUS, 1, true)]); // data in the hole
    ioerr(&[(HDR, 16, false), (MIB - 256, 512, true), (STATUS, 1, true)]); // data straddles RAM's end
    ioerr(&[
        (HDR, 16, false),
        (DATA, 0xffff_fe00, true),
        (STATUS, 1, true),
    ]); // huge
    ioerr(&[
        (HDR, 16, false),
        (u64::MAX - 100, 512, true),
        (STATUS, 1, true),
    ]); // wraps
        // No status: status descriptor not writable, or outside RAM: used length 0.
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(f.run(&[(HDR, 16, false), (STATUS, 1, false)]), (0xff, 0));
    assert_eq!(f.run(&[(HDR, 16, false), (HOLE, 1, true)]), (0xff, 0));
    assert_eq!(f.run(&[(HDR, 16, false), (STATUS, 0, true)]), (0xff, 0));
    // Readable after writable.
    assert_eq!(
        f.run(&[(HDR, 16, false), (STATUS, 1, true), (DATA, 16, false)]),
        (0xff, 0)
    );
}

#[test]
fn loops_bad_indices_and_bad_heads() {
    let f = Fx::new();
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 0);
    // A loop 0 -> 1 -> 0, then a good request at 2..4: only the loop fails.
    let looping = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE | NEXT, 0)];
    let good = [
        d(HDR, 16, NEXT, 3),
        d(DATA, 512, WRITE | NEXT, 4),
        d(STATUS, 1, WRITE, 0),
    ];
    let used = f.run_chains(&[&looping, &good], Box::new(Immediate));
    assert_eq!(used, vec![(0, 0), (2, 513)]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    // A writable descriptor pointing at itself: cut short by the ring size.
    let selfloop = [d(HDR, 16, NEXT, 1), d(DATA, 512, WRITE | NEXT, 1)];
    assert_eq!(
        f.run_chains(&[&selfloop, &good], Box::new(Immediate)),
        vec![(0, 0), (2, 513)]
    );
    let c = Chain::split(
        [
            SplitDesc::new(HDR, 16, NEXT, 1),
            SplitDesc::new(DATA, 1, WRITE | NEXT, 1),
        ]
        .into_iter(),
    );
    assert_eq!(c, Err(RequestError::Truncated));
    // next past the table.
    let used = f.run_raw(&[d(HDR, 16, NEXT, 40)], Box::new(Immediate));
    assert_eq!(used, vec![(0, 0)]);
    // A head index past the queue in the available ring: dropped.
    let mock = MockSplitQueue::new(&f.mem, 16);
    mock.avail()
        .ring()
        .ref_at(0)
        .unwrap()
        .store(u16::to_le(200));
    mock.avail().idx().store(u16::to_le(1));
    let q: Queue = mock.create_queue().unwrap();
    let mut e = test_engine(
        &f.mem,
        q,
        f.params.clone(),
        f.disk.clone(),
        f.irq.clone(),
        Box::new(Immediate),
    );
    e.drain(0);
    e.release_due();
    assert_eq!(mock.used().idx().load(), 0);
    // An available index far ahead of the ring: the queue is broken.
    mock.avail().idx().store(u16::to_le(100));
    e.drain(0);
    assert!(f.irq.needs_reset_seen());
}

#[test]
fn indirect_descriptors() {
    let f = Fx::new();
    f.disk.fill(0, &pattern(1024, 1));
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 0);
    let table = 0x7_0000u64;
    for (i, desc) in [
        d(HDR, 16, NEXT, 1),
        d(DATA, 1024, WRITE | NEXT, 2),
        d(STATUS, 1, WRITE, 0),
    ]
    .iter()
    .enumerate()
    {
        f.mem
            .write_obj(*desc, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let used = f.run_raw(&[d(table, 48, INDIRECT, 0)], Box::new(Immediate));
    assert_eq!(used, vec![(0, 1025)]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    // An indirect table in the hole, or of a bad length: no status.
    assert_eq!(
        f.run_raw(&[d(HOLE, 48, INDIRECT, 0)], Box::new(Immediate)),
        vec![(0, 0)]
    );
    assert_eq!(
        f.run_raw(&[d(table, 47, INDIRECT, 0)], Box::new(Immediate)),
        vec![(0, 0)]
    );
}

#[test]
fn parse_directly_from_a_mock_chain() {
    let f = Fx::new();
    let mock = MockSplitQueue::new(&f.mem, 16);
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 3);
    let chain = mock
        .build_desc_chain(&[
            d(HDR, 16, 0, 0),
            d(DATA, 2048, WRITE, 0),
            d(STATUS, 1, WRITE, 0),
        ])
        .unwrap();
    let c = Chain::split(chain).unwrap();
    assert_eq!(c.status_addr(), Some(STATUS));
    let req = parse(&c, &f.dma(), &f.params).unwrap();
    assert_eq!(req.kind, RequestKind::In);
    assert_eq!((req.sector, req.data_len, req.sectors()), (3, 2048, 4));
    assert_eq!(
        req.data,
        vec![Segment {
            addr: DATA,
            len: 2048
        }]
    );
    let mut disk = f.disk.clone();
    let (w, r) = execute(&req, &mut disk, &f.dma(), &f.params, &mut Vec::new());
    assert_eq!((w, r), (2048, Ok(())));
}

#[test]
fn notification_suppression() {
    let f = Fx::new();
    header(&f.mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let mock = MockSplitQueue::new(&f.mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    q.set_event_idx(false);
    // NO_INTERRUPT in the available ring's flags: no signal.
    f.mem.write_obj(u16::to_le(1), mock.avail_addr()).unwrap();
    mock.add_desc_chains(&[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)], 0)
        .unwrap();
    let mut e = test_engine(
        &f.mem,
        q,
        f.params.clone(),
        f.disk.clone(),
        f.irq.clone(),
        Box::new(Immediate),
    );
    e.drain(0);
    e.release_due();
    assert_eq!(mock.used().idx().load(), 1);
    assert!(f.irq.take_used().is_empty());

    // EVENT_IDX: used_event = 1 means "tell me when the second completes".
    let mock = MockSplitQueue::new(&f.mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    q.set_event_idx(true);
    // used_event sits after the 16 ring entries.
    f.mem
        .write_obj(u16::to_le(1), mock.avail_addr().unchecked_add(4 + 2 * 16))
        .unwrap();
    let mut e = test_engine(
        &f.mem,
        q,
        f.params.clone(),
        f.disk.clone(),
        f.irq.clone(),
        Box::new(Immediate),
    );
    mock.add_desc_chains(&[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)], 0)
        .unwrap();
    e.drain(0);
    e.release_due();
    assert!(f.irq.take_used().is_empty());
    mock.add_desc_chains(&[d(HDR, 16, NEXT, 3), d(STATUS, 1, WRITE, 0)], 2)
        .unwrap();
    e.drain(0);
    e.release_due();
    assert_eq!(f.irq.take_used(), vec![0]);
    assert_eq!(mock.used().idx().load(), 2);
}

type Seen = Arc<Mutex<Vec<(Option<RequestKind>, u64)>>>;

#[derive(Default)]
struct Delay {
    seen: Seen,
}

impl CompletionPolicy for Delay {
    fn on_submit(&mut self, req: &RequestInfo, _submit_ns: u64) {
        self.seen.lock().unwrap().push((req.kind, req.sectors));
    }
    fn release_at(&mut self, _req: &RequestInfo, _submit_ns: u64, done_ns: u64) -> u64 {
        done_ns + 30_000_000
    }
}

#[test]
fn completion_policy_holds_completions() {
    let f = Fx::new();
    header(&f.mem, HDR, VIRTIO_BLK_T_IN, 0);
    let mock = MockSplitQueue::new(&f.mem, 16);
    let q: Queue = mock.create_queue().unwrap();
    let policy = Delay::default();
    let seen = policy.seen.clone();
    let mut e = test_engine(
        &f.mem,
        q,
        f.params.clone(),
        f.disk.clone(),
        f.irq.clone(),
        Box::new(policy),
    );
    mock.add_desc_chains(
        &[
            d(HDR, 16, NEXT, 1),
            d(DATA, 1024, WRITE | NEXT, 2),
            d(STATUS, 1, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    e.drain(0);
    let next = e.release_due().expect("held");
    assert!(next >= e.now_ns());
    assert_eq!((mock.used().idx().load(), e.held()), (0, 1));
    assert_eq!(*seen.lock().unwrap(), vec![(Some(RequestKind::In), 2)]);
    std::thread::sleep(std::time::Duration::from_millis(35));
    assert_eq!(e.release_due(), None);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(f.irq.take_used(), vec![0]);
}

#[test]
fn throttle_policy_never_releases_early() {
    let ssd = block::model::Ssd::new(block::model::SsdParams::generic()).unwrap();
    let t = Arc::new(Mutex::new(block::model::Throttle::new(Box::new(ssd), 1.0)));
    let mut p = ThrottlePolicy::new(t.clone());
    let info = |id, kind| RequestInfo {
        id,
        queue: 0,
        kind,
        sector: 0,
        sectors: 8,
        status: 0,
    };
    p.on_submit(&info(0, Some(RequestKind::In)), 1000);
    assert!(p.release_at(&info(0, Some(RequestKind::In)), 1000, 2000) >= 2000);
    p.on_submit(&info(1, Some(RequestKind::GetId)), 3000);
    assert_eq!(
        p.release_at(&info(1, Some(RequestKind::GetId)), 3000, 4000),
        4000
    );
    assert_eq!(t.lock().unwrap().stats().requests, 1);
}

#[test]
fn no_bus_master_no_processing() {
    let f = Fx::new();
    header(&f.mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let mock = MockSplitQueue::new(&f.mem, 16);
    mock.add_desc_chains(&[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)], 0)
        .unwrap();
    let q: Queue = mock.create_queue().unwrap();
    let bm = BusMaster::new();
    let mut e = super::worker::Engine::new(super::worker::EngineParts {
        mem: f.mem.clone(),
        dma: Arc::new(Dma::new("t", f.mem.clone(), bm.clone())),
        queues: vec![Some(q)],
        interrupt: f.irq.clone(),
        disk: Arc::new(Mutex::new(Box::new(f.disk.clone()))),
        policy: Arc::new(Mutex::new(Box::new(Immediate))),
        params: f.params.clone(),
        stats: Arc::new(BlockStats::default()),
        stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    });
    e.drain(0);
    e.release_due();
    assert_eq!((mock.used().idx().load(), f.disk.flushes()), (0, 0));
    bm.set_enabled(true);
    e.drain(0);
    e.release_due();
    assert_eq!((mock.used().idx().load(), f.disk.flushes()), (1, 1));
}

/// xorshift64*: deterministic test randomness.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn fuzz_queue_survives_random_and_structured_input() {
    use super::fuzz::{FUZZ_DATA, FUZZ_QUEUE_SIZE};
    let mut rng = Rng(0x5eed);
    fuzz_queue(&[]);
    for i in 0..3000 {
        let mut b = vec![0u8; 1 + 256 + 38 + 512];
        if i % 3 == 0 {
            b.iter_mut().for_each(|x| *x = rng.next() as u8);
        } else {
            // Mostly plausible chains with a few mutated fields.
            b[0] = rng.next() as u8;
            for k in 0..usize::from(FUZZ_QUEUE_SIZE) {
                let addr = match rng.below(6) {
                    0 => rng.next(),
                    1 => 0x10000 + rng.below(0x100), // around the hole
                    _ => FUZZ_DATA + rng.below(0x400),
                };
                let len = match rng.below(5) {
                    0 => rng.next() as u32,
                    1 => 16,
                    2 => 1,
                    _ => 512 * rng.below(3) as u32,
                };
                let flags = rng.below(8) as u16;
                let next = rng.below(20) as u16;
                let raw = d(addr, len, flags, next);
                let o = 1 + 16 * k;
                b[o..o + 16].copy_from_slice(vm_memory::ByteValued::as_slice(&raw));
            }
            let a = 1 + 256;
            b[a + 2..a + 4].copy_from_slice(&(rng.below(20) as u16).to_le_bytes());
            for k in 0..16 {
                let h = rng.below(18) as u16;
                b[a + 4 + 2 * k..a + 6 + 2 * k].copy_from_slice(&h.to_le_bytes());
            }
            let dta = a + 38;
            for k in 0..8 {
                let t = [0u32, 1, 4, 8, 11, 13, rng.next() as u32][rng.below(7) as usize];
                b[dta + 64 * k..dta + 64 * k + 4].copy_from_slice(&t.to_le_bytes());
                b[dta + 64 * k + 8..dta + 64 * k + 16]
                    .copy_from_slice(&rng.below(200).to_le_bytes());
            }
        }
        fuzz_queue(&b);
    }
}
