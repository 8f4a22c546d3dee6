//! virtio-blk (virtio 1.2 §5.2) over a [`DiskImage`].
//!
//! | module | what |
//! |--------|------|
//! | [`request`] | descriptor chain → [`request::Request`] → image calls (pure, fuzzable) |
//! | [`worker`] | the I/O thread: queues, timer heap, used rings, interrupts |
//! | [`policy`] | [`policy::CompletionPolicy`]: when a finished request is completed (disk timing models) |
//! | [`fuzz`] | [`fuzz::fuzz_queue`] (bytes → a queue → the request path) and [`fuzz::MemDisk`] |
//!
//! Features offered: `VERSION_1`, `INDIRECT_DESC`, `EVENT_IDX`, `SEG_MAX`,
//! `BLK_SIZE`, `FLUSH`, `MQ` (more than one queue), `RO` (read-only disk),
//! `DISCARD` and `WRITE_ZEROES` (writable disk). Request types: IN, OUT,
//! FLUSH, GET_ID, DISCARD, WRITE_ZEROES; anything else is UNSUPP.

pub mod fuzz;
pub mod policy;
pub mod request;
pub mod worker;

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use block::image::DiskImage;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    Activation, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::bus::lock;
use policy::{CompletionPolicy, Immediate};
use request::{DiskParams, ID_LEN, SECTOR_SIZE};
use worker::{BlockStats, Engine, EngineParts};

/// Feature: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: FLUSH is supported (write-back cache).
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: more than one request queue.
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
/// Feature: DISCARD.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
/// Feature: WRITE_ZEROES.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Length of the configuration space served (up to `unused1`).
pub const CONFIG_LEN: usize = 60;
/// Default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Most request queues.
pub const MAX_BLK_QUEUES: u16 = 16;
/// `max_discard_sectors` and `max_write_zeroes_sectors` (just under 2 GiB).
pub const MAX_RANGE_SECTORS: u32 = 0x3f_ffff;
/// `max_discard_seg` and `max_write_zeroes_seg`.
pub const MAX_RANGE_SEGMENTS: u32 = 32;
/// `discard_sector_alignment` (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Errors building a device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Queue count out of range.
    #[error("virtio-blk: {0} queues requested; give 1 to {MAX_BLK_QUEUES}")]
    Queues(u16),
    /// Queue size not a power of two in 4..=1024.
    #[error("virtio-blk: queue size {0} is not a power of two from 4 to 1024")]
    QueueSize(u16),
}

/// How to present the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// Request queues (1..=16; `MQ` when more than one).
    pub num_queues: u16,
    /// Maximum size of each queue (power of two, 4..=1024).
    pub queue_size: u16,
    /// The ID returned by GET_ID (first 20 bytes used; empty: the name).
    pub serial: String,
    /// Present the disk read-only even if the image is writable.
    pub read_only: bool,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            num_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
            serial: String::new(),
            read_only: false,
        }
    }
}

struct Worker {
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A virtio-blk device. Put it behind [`super::pci::VirtioPci`].
pub struct Block {
    name: String,
    disk: Arc<Mutex<Box<dyn DiskImage>>>,
    policy: Arc<Mutex<Box<dyn CompletionPolicy>>>,
    opts: BlockOptions,
    capacity: u64,
    read_only: bool,
    serial: [u8; ID_LEN],
    stats: Arc<BlockStats>,
    worker: Option<Worker>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A device named `name` (thread name, logs) serving `disk`.
    pub fn new(
        name: &str,
        disk: Box<dyn DiskImage>,
        opts: BlockOptions,
    ) -> Result<Block, BlockError> {
        if opts.num_queues == 0 || opts.num_queues > MAX_BLK_QUEUES {
            return Err(BlockError::Queues(opts.num_queues));
        }
        if !opts.queue_size.is_power_of_two() || !(4..=1024).contains(&opts.queue_size) {
            return Err(BlockError::QueueSize(opts.queue_size));
        }
        let mut serial = [0u8; ID_LEN];
        let s = if opts.serial.is_empty() {
            name
        } else {
            &opts.serial
        };
        let n = s.len().min(ID_LEN);
        serial[..n].copy_from_slice(&s.as_bytes()[..n]);
        Ok(Block {
            name: name.to_string(),
            capacity: disk.virtual_size() / SECTOR_SIZE,
            read_only: opts.read_only || disk.read_only(),
            disk: Arc::new(Mutex::new(disk)),
            policy: Arc::new(Mutex::new(Box::new(Immediate))),
            opts,
            serial,
            stats: Arc::new(BlockStats::default()),
            worker: None,
        })
    }

    /// Time completions with `policy` (e.g. [`policy::ThrottlePolicy`]).
    pub fn set_policy(&mut self, policy: Box<dyn CompletionPolicy>) {
        *lock(&self.policy) = policy;
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest sees the disk read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The configuration space (`struct virtio_blk_config` up to
    /// `write_zeroes_may_unmap`).
    pub fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, v: &[u8]| c[off..off + v.len()].copy_from_slice(v);
        put(0, &self.capacity.to_le_bytes());
        put(12, &u32::from(self.opts.queue_size - 2).to_le_bytes()); // seg_max
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(34, &self.opts.num_queues.to_le_bytes());
        put(36, &MAX_RANGE_SECTORS.to_le_bytes());
        put(40, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        put(48, &MAX_RANGE_SECTORS.to_le_bytes());
        put(52, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(56, &[1]); // write_zeroes_may_unmap
        c
    }

    /// The request path's view of the disk under `features`.
    pub fn params(&self, features: u64) -> DiskParams {
        let on = |f: u64| features & f != 0;
        DiskParams {
            capacity: self.capacity,
            read_only: self.read_only,
            discard: !self.read_only && on(VIRTIO_BLK_F_DISCARD),
            write_zeroes: !self.read_only && on(VIRTIO_BLK_F_WRITE_ZEROES),
            max_discard_sectors: MAX_RANGE_SECTORS,
            max_discard_seg: MAX_RANGE_SEGMENTS,
            max_write_zeroes_sectors: MAX_RANGE_SECTORS,
            max_write_zeroes_seg: MAX_RANGE_SEGMENTS,
            writethrough: !on(VIRTIO_BLK_F_FLUSH),
            serial: self.serial,
        }
    }

    fn stop(&mut self) -> Vec<JoinHandle<()>> {
        match self.worker.take() {
            Some(w) => {
                w.stopping.store(true, Ordering::Release);
                let _ = w.stop.write(1);
                vec![w.thread]
            }
            None => Vec::new(),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        (0x01, 0x00, 0x00) // mass storage (SCSI), as QEMU
    }

    fn num_queues(&self) -> u16 {
        self.opts.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.opts.queue_size
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if self.opts.num_queues > 1 {
            f |= VIRTIO_BLK_F_MQ;
        }
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| c.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, act: Activation) -> Result<(), VirtioError> {
        let bad = |why: &str| VirtioError::BadActivation {
            device: self.name.clone(),
            why: why.to_string(),
        };
        let nq = usize::from(self.opts.num_queues);
        if act.queues.len() != nq || act.kicks.len() != nq {
            return Err(bad("queue count differs from the device's"));
        }
        if self.worker.is_some() {
            return Err(bad("already active"));
        }
        let thread_err = |source| VirtioError::Thread {
            device: self.name.clone(),
            source,
        };
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(thread_err)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let engine = Engine::new(EngineParts {
            mem: act.mem,
            dma: act.dma,
            queues: act.queues,
            interrupt: act.interrupt,
            disk: self.disk.clone(),
            policy: self.policy.clone(),
            params: self.params(act.features),
            stats: self.stats.clone(),
            stopping: stopping.clone(),
        });
        let (kicks, s) = (act.kicks, stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{}-io", self.name))
            .spawn(move || worker::run(engine, kicks, s))
            .map_err(thread_err)?;
        self.worker = Some(Worker {
            stop,
            stopping,
            thread,
        });
        Ok(())
    }

    fn reset(&mut self) -> Vec<JoinHandle<()>> {
        self.stop()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let me = std::thread::current().id();
        for h in self.stop() {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}
