//! A fuzz entry point for the virtio-blk request path, plus the in-memory
//! disk and fake interrupt it (and the tests) use.
//!
//! [`fuzz_queue`] turns arbitrary bytes into a split virtqueue in a small
//! guest memory with a hole, and runs the device's real [`Engine`] on it:
//! descriptor chains, headers, segment lists, ring indices are all the
//! fuzzer's. It must never panic. A cargo-fuzz target is one line:
//! `fuzz_target!(|data: &[u8]| devices::virtio::block::fuzz::fuzz_queue(data));`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use block::image::{DiskImage, Format, ImageError, ImageInfo};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::policy::{CompletionPolicy, Immediate};
use super::request::{DiskParams, ID_LEN};
use super::worker::{BlockStats, Engine, EngineParts};
use super::{MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS};
use crate::bus::lock;
use crate::dma::{BusMaster, Dma};
use crate::virtio::VirtioInterrupt;

#[derive(Debug, Default)]
struct MemInner {
    data: Vec<u8>,
    read_only: bool,
    failing: bool,
    flushes: u64,
    discards: Vec<(u64, u64)>,
}

/// A disk in memory. Clones share the contents (keep one to look inside
/// after handing the other to a device).
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<MemInner>>,
}

impl MemDisk {
    /// A zeroed writable disk of `size` bytes.
    pub fn new(size: usize) -> MemDisk {
        let d = MemDisk::default();
        lock(&d.inner).data = vec![0; size];
        d
    }
    /// Make the image read-only.
    pub fn set_read_only(&self, on: bool) {
        lock(&self.inner).read_only = on;
    }
    /// Make every request fail (an I/O error).
    pub fn set_failing(&self, on: bool) {
        lock(&self.inner).failing = on;
    }
    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        lock(&self.inner).data.clone()
    }
    /// Store `data` at `offset` (test set-up; panics past the end).
    pub fn fill(&self, offset: usize, data: &[u8]) {
        lock(&self.inner).data[offset..offset + data.len()].copy_from_slice(data);
    }
    /// Flushes done.
    pub fn flushes(&self) -> u64 {
        lock(&self.inner).flushes
    }
    /// Discards done: (offset, length).
    pub fn discards(&self) -> Vec<(u64, u64)> {
        lock(&self.inner).discards.clone()
    }

    fn range(
        &self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<std::ops::Range<usize>, ImageError> {
        let m = lock(&self.inner);
        let path = "mem".to_string();
        if m.failing {
            return Err(ImageError::Io {
                path,
                source: std::io::Error::other("injected failure"),
            });
        }
        if write && m.read_only {
            return Err(ImageError::ReadOnly { path });
        }
        let size = m.data.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(ImageError::OutOfRange {
                path,
                offset,
                len,
                size,
            }),
        }
    }
}

impl DiskImage for MemDisk {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let r = self.range(offset, buf.len() as u64, false)?;
        buf.copy_from_slice(&lock(&self.inner).data[r]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ImageError> {
        let r = self.range(offset, buf.len() as u64, true)?;
        lock(&self.inner).data[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        self.range(0, 0, false)?;
        lock(&self.inner).flushes += 1;
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let r = self.range(offset, len, true)?;
        lock(&self.inner).data[r].fill(0);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let r = self.range(offset, len, true)?;
        let mut m = lock(&self.inner);
        m.data[r].fill(0);
        m.discards.push((offset, len));
        Ok(())
    }
    fn virtual_size(&self) -> u64 {
        lock(&self.inner).data.len() as u64
    }
    fn info(&self) -> Result<ImageInfo, ImageError> {
        let size = self.virtual_size();
        Ok(ImageInfo {
            path: "mem".to_string(),
            format: Format::Raw,
            virtual_size: size,
            file_bytes: size,
            data_bytes: None,
            cluster_size: None,
            backing: None,
        })
    }
    fn read_only(&self) -> bool {
        lock(&self.inner).read_only
    }
}

/// A [`VirtioInterrupt`] that counts.
#[derive(Debug, Default)]
pub struct FakeInterrupt {
    used: Mutex<Vec<u16>>,
    config: AtomicU64,
    needs_reset: AtomicBool,
}

impl FakeInterrupt {
    /// A fresh one.
    pub fn new() -> Arc<FakeInterrupt> {
        Arc::new(FakeInterrupt::default())
    }
    /// Queues signalled so far (and forget them).
    pub fn take_used(&self) -> Vec<u16> {
        std::mem::take(&mut *lock(&self.used))
    }
    /// Configuration interrupts so far.
    pub fn config_count(&self) -> u64 {
        self.config.load(Ordering::SeqCst)
    }
    /// Whether the device asked for a reset.
    pub fn needs_reset_seen(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for FakeInterrupt {
    fn signal_used(&self, queue: u16) {
        lock(&self.used).push(queue);
    }
    fn signal_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
    fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

/// The fuzz target's guest memory: 64 KiB at 0 and 64 KiB at 128 KiB.
pub fn fuzz_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)])
        .unwrap_or_default()
}

/// Queue size used by [`fuzz_queue`].
pub const FUZZ_QUEUE_SIZE: u16 = 16;
/// Descriptor table address in [`fuzz_queue`]'s memory.
pub const FUZZ_DESC: u64 = 0x1000;
/// Available ring address.
pub const FUZZ_AVAIL: u64 = 0x2000;
/// Used ring address.
pub const FUZZ_USED: u64 = 0x3000;
/// Where the rest of the input goes.
pub const FUZZ_DATA: u64 = 0x4000;

/// Disk parameters for tests and fuzzing: `capacity` sectors, everything
/// negotiated, serial "vlab-test".
pub fn test_params(capacity: u64, read_only: bool) -> DiskParams {
    let mut serial = [0u8; ID_LEN];
    serial[..9].copy_from_slice(b"vlab-test");
    DiskParams {
        capacity,
        read_only,
        discard: true,
        write_zeroes: true,
        max_discard_sectors: MAX_RANGE_SECTORS,
        max_discard_seg: MAX_RANGE_SEGMENTS,
        max_write_zeroes_sectors: MAX_RANGE_SECTORS,
        max_write_zeroes_seg: MAX_RANGE_SEGMENTS,
        writethrough: false,
        serial,
    }
}

/// An engine over one queue in `mem`, with a 64 KiB [`MemDisk`].
pub fn test_engine(
    mem: &GuestMemoryMmap,
    queue: Queue,
    params: DiskParams,
    disk: MemDisk,
    interrupt: Arc<FakeInterrupt>,
    policy: Box<dyn CompletionPolicy>,
) -> Engine {
    let bm = BusMaster::new();
    bm.set_enabled(true);
    Engine::new(EngineParts {
        mem: mem.clone(),
        dma: Arc::new(Dma::new("virtio-blk-test", mem.clone(), bm)),
        queues: vec![Some(queue)],
        interrupt,
        disk: Arc::new(Mutex::new(Box::new(disk))),
        policy: Arc::new(Mutex::new(policy)),
        params,
        stats: Arc::new(BlockStats::default()),
        stopping: Arc::new(AtomicBool::new(false)),
    })
}

/// Run arbitrary bytes through the virtio-blk request path. Layout: byte 0
/// options (bit 0 EVENT_IDX, bit 1 read-only, bit 2 no DISCARD/WRITE_ZEROES,
/// bit 3 FLUSH not negotiated), then the 16-entry descriptor table (256
/// bytes), the available ring (flags, idx, 16 entries, used_event), and
/// the rest at [`FUZZ_DATA`]. Never panics.
pub fn fuzz_queue(bytes: &[u8]) {
    let mem = fuzz_memory();
    let opts = bytes.first().copied().unwrap_or(0);
    let rest = bytes.get(1..).unwrap_or(&[]);
    let table = 16 * usize::from(FUZZ_QUEUE_SIZE);
    let avail = 6 + 2 * usize::from(FUZZ_QUEUE_SIZE);
    let put = |addr: u64, from: usize, len: usize| {
        if let Some(b) = rest.get(from..rest.len().min(from + len)) {
            let _ = mem.write_slice(b, GuestAddress(addr));
        }
    };
    put(FUZZ_DESC, 0, table);
    put(FUZZ_AVAIL, table, avail);
    put(FUZZ_DATA, table + avail, 0xc000);
    let Ok(mut q) = Queue::new(FUZZ_QUEUE_SIZE) else {
        return;
    };
    let _ = q.try_set_desc_table_address(GuestAddress(FUZZ_DESC));
    let _ = q.try_set_avail_ring_address(GuestAddress(FUZZ_AVAIL));
    let _ = q.try_set_used_ring_address(GuestAddress(FUZZ_USED));
    q.set_ready(true);
    q.set_event_idx(opts & 1 != 0);
    let mut params = test_params(128, opts & 2 != 0);
    params.discard = opts & 4 == 0;
    params.write_zeroes = opts & 4 == 0;
    params.writethrough = opts & 8 != 0;
    let disk = MemDisk::new(128 * 512);
    disk.set_read_only(opts & 2 != 0);
    let mut e = test_engine(
        &mem,
        q,
        params,
        disk,
        FakeInterrupt::new(),
        Box::new(Immediate),
    );
    for _ in 0..4 {
        if !e.drain(0) {
            break;
        }
    }
    e.release_due();
}
