//! The virtio-blk I/O thread: one per device, serving all its queues.
//!
//! [`Engine`] is the thread's state and works without a thread (tests and
//! the fuzz target call it directly):
//!
//! * [`Engine::drain`] pops every available chain of a queue (with
//!   notifications suppressed while it does), and for each one splits,
//!   parses and executes it ([`super::request`]), writes its status and
//!   asks the [`CompletionPolicy`] when to release it; the completion goes
//!   into a timer heap.
//! * [`Engine::release_due`] puts due completions in their used rings and
//!   signals each touched queue once, honouring `EVENT_IDX` (`used_event`)
//!   or `VRING_AVAIL_F_NO_INTERRUPT`.
//!
//! Descriptor table and rings are read through vm-memory inside
//! virtio-queue (bounds-checked: an address outside RAM ends the chain or
//! fails the ring access); the transport validated the rings at
//! `queue_enable`. Data buffers, headers and status bytes go through
//! [`Dma`]. Nothing is popped or pushed while the guest has bus mastering
//! off.
//!
//! The thread waits in `ppoll` on the queues' kick EventFds and a stop
//! EventFd, with the next release time as timeout; on stop it returns at
//! once, dropping held completions (a reset or VM shutdown).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use block::image::DiskImage;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::policy::{CompletionPolicy, RequestInfo};
use super::request::{self, Chain, DiskParams, RequestError, VIRTIO_BLK_S_OK};
use crate::bus::lock;
use crate::dma::{Dma, DmaError};
use crate::virtio::{VirtioInterrupt, VRING_AVAIL_F_NO_INTERRUPT};

/// Drain rounds per queue before the thread serves the others.
const MAX_ROUNDS: usize = 8;

/// Counters of one virtio-blk device (all activations).
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed, by outcome.
    pub ok: AtomicU64,
    /// Requests completed with IOERR.
    pub io_errors: AtomicU64,
    /// Requests completed with UNSUPP.
    pub unsupported: AtomicU64,
    /// Chains returned with no status (malformed, no status byte, status
    /// outside RAM).
    pub malformed: AtomicU64,
    /// Bytes read from the image into the guest.
    pub bytes_read: AtomicU64,
    /// Bytes written from the guest to the image.
    pub bytes_written: AtomicU64,
    /// Flush requests done.
    pub flushes: AtomicU64,
    /// Completions dropped (bus mastering off, bad head index, ring error).
    pub dropped: AtomicU64,
    /// Kicks not served because bus mastering was off.
    pub no_bus_master: AtomicU64,
    /// Queues found broken (avail index beyond the ring): NEEDS_RESET.
    pub broken_queues: AtomicU64,
    /// The last request error, for the log.
    pub last_error: Mutex<Option<String>>,
}

impl BlockStats {
    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// A counter's value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    release_ns: u64,
    seq: u64,
    queue: u16,
    head: u16,
    len: u32,
}

/// What an [`Engine`] works on.
pub struct EngineParts {
    /// Guest memory (rings).
    pub mem: GuestMemoryMmap,
    /// Data buffers.
    pub dma: Arc<Dma>,
    /// The queues (`None`: not enabled).
    pub queues: Vec<Option<Queue>>,
    /// Interrupts.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The image.
    pub disk: Arc<Mutex<Box<dyn DiskImage>>>,
    /// Completion timing.
    pub policy: Arc<Mutex<Box<dyn CompletionPolicy>>>,
    /// Disk parameters.
    pub params: DiskParams,
    /// Counters.
    pub stats: Arc<BlockStats>,
    /// Set when the thread must stop: no more used-ring writes.
    pub stopping: Arc<AtomicBool>,
}

/// The I/O thread's state. See the module documentation.
pub struct Engine {
    p: EngineParts,
    bounce: Vec<u8>,
    pending: BinaryHeap<Reverse<Held>>,
    start: Instant,
    next_id: u64,
}

impl Engine {
    /// An engine over `p`.
    pub fn new(p: EngineParts) -> Engine {
        Engine {
            p,
            bounce: Vec::new(),
            pending: BinaryHeap::new(),
            start: Instant::now(),
            next_id: 0,
        }
    }

    /// Nanoseconds since the engine started (the policy's clock).
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.p.queues.len()
    }

    /// Completions held for a later release.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Pop and execute every available request of queue `q`. Returns true
    /// if it stopped early and should be called again.
    pub fn drain(&mut self, q: usize) -> bool {
        let Some(mut queue) = self.p.queues.get_mut(q).and_then(Option::take) else {
            return false;
        };
        let more = self.drain_queue(q as u16, &mut queue);
        self.p.queues[q] = Some(queue);
        more
    }

    fn drain_queue(&mut self, q: u16, queue: &mut Queue) -> bool {
        if matches!(
            self.p.dma.check(0, 0),
            Err(DmaError::BusMasterDisabled { .. })
        ) {
            BlockStats::bump(&self.p.stats.no_bus_master, 1);
            return false;
        }
        let mem = self.p.mem.clone();
        for _ in 0..MAX_ROUNDS {
            let _ = queue.disable_notification(&mem);
            let mut popped = 0;
            match queue.iter(&mem) {
                Ok(iter) => {
                    for chain in iter {
                        popped += 1;
                        let head = chain.head_index();
                        self.handle(q, head, chain);
                    }
                }
                Err(_) => {
                    BlockStats::bump(&self.p.stats.broken_queues, 1);
                    self.p.interrupt.needs_reset();
                    return false;
                }
            }
            match queue.enable_notification(&mem) {
                Ok(true) if popped > 0 => continue,
                _ => return false,
            }
        }
        true
    }

    fn handle(
        &mut self,
        q: u16,
        head: u16,
        descs: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let submit = self.now_ns();
        let mut info = RequestInfo {
            id,
            queue: q,
            kind: None,
            sector: 0,
            sectors: 0,
            status: 0,
        };
        let (used, result) = self.run(&mut info, submit, descs);
        let stats = &self.p.stats;
        match &result {
            Ok(Some(s)) => {
                info.status = *s;
                let c = match *s {
                    VIRTIO_BLK_S_OK => &stats.ok,
                    request::VIRTIO_BLK_S_UNSUPP => &stats.unsupported,
                    _ => &stats.io_errors,
                };
                BlockStats::bump(c, 1);
            }
            _ => BlockStats::bump(&stats.malformed, 1),
        }
        if let Err(e) = &result {
            *lock(&stats.last_error) = Some(e.to_string());
        }
        let done = self.now_ns();
        let release = lock(&self.p.policy)
            .release_at(&info, submit, done)
            .max(done);
        self.pending.push(Reverse(Held {
            release_ns: release,
            seq: id,
            queue: q,
            head,
            len: used,
        }));
    }

    /// Execute one chain: (used length, Ok(status written) / Ok(None) if
    /// the status could not be written / Err for a chain with no status).
    fn run(
        &mut self,
        info: &mut RequestInfo,
        submit: u64,
        descs: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> (u32, Result<Option<u8>, RequestError>) {
        let chain = match Chain::split(descs) {
            Ok(c) => c,
            Err(e) => return (0, Err(e)),
        };
        let Some(status_addr) = chain.status_addr() else {
            return (0, Err(RequestError::NoStatus));
        };
        let dma = self.p.dma.clone();
        let (written, outcome) = match request::parse(&chain, &dma, &self.p.params) {
            Ok(req) => {
                info.kind = Some(req.kind);
                info.sector = req.ranges.first().map_or(req.sector, |r| r.sector);
                info.sectors = req.sectors();
                lock(&self.p.policy).on_submit(info, submit);
                let mut disk = lock(&self.p.disk);
                let (w, r) =
                    request::execute(&req, &mut **disk, &dma, &self.p.params, &mut self.bounce);
                if r.is_ok() {
                    let s = &self.p.stats;
                    match req.kind {
                        request::RequestKind::In => BlockStats::bump(&s.bytes_read, w),
                        request::RequestKind::Out => {
                            BlockStats::bump(&s.bytes_written, req.data_len)
                        }
                        request::RequestKind::Flush => BlockStats::bump(&s.flushes, 1),
                        _ => {}
                    }
                }
                (w, r)
            }
            Err(e) => (0, Err(e)),
        };
        let status = match &outcome {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(e) => {
                *lock(&self.p.stats.last_error) = Some(e.to_string());
                e.status()
            }
        };
        let written = written.min(u64::from(u32::MAX - 1)) as u32;
        match dma.write(status_addr, &[status]) {
            Ok(()) => (written + 1, Ok(Some(status))),
            Err(e) => (written, Err(e.into())),
        }
    }

    /// Complete every held request whose time has come; signal each queue
    /// that got used buffers (if the driver wants it). Returns the next
    /// release time, if any request is still held.
    pub fn release_due(&mut self) -> Option<u64> {
        let now = self.now_ns();
        let mut touched = vec![false; self.p.queues.len()];
        let bus_master = self.p.dma.check(0, 0).is_ok();
        while let Some(Reverse(h)) = self.pending.peek().copied() {
            if h.release_ns > now {
                break;
            }
            self.pending.pop();
            let q = usize::from(h.queue);
            let stopping = self.p.stopping.load(Ordering::Acquire);
            let ok = match self.p.queues.get_mut(q) {
                Some(Some(queue)) if bus_master && !stopping => {
                    queue.add_used(&self.p.mem, h.head, h.len).is_ok()
                }
                _ => false,
            };
            if ok {
                touched[q] = true;
            } else {
                BlockStats::bump(&self.p.stats.dropped, 1);
            }
        }
        for (q, t) in touched.into_iter().enumerate() {
            if t && self.should_notify(q) {
                self.p.interrupt.signal_used(q as u16);
            }
        }
        self.pending.peek().map(|Reverse(h)| h.release_ns)
    }

    fn should_notify(&mut self, q: usize) -> bool {
        let Some(Some(queue)) = self.p.queues.get_mut(q) else {
            return false;
        };
        if queue.event_idx_enabled() {
            return queue.needs_notification(&self.p.mem).unwrap_or(true);
        }
        let flags = self
            .p
            .mem
            .read_obj::<u16>(GuestAddress(queue.avail_ring()))
            .map(u16::from_le)
            .unwrap_or(0);
        flags & VRING_AVAIL_F_NO_INTERRUPT == 0
    }
}

/// Wait until an fd is readable or `timeout_ns` passes (`None`: forever).
/// Returns the readiness of each fd; `Err` only for unexpected failures.
fn wait(fds: &[&EventFd], timeout_ns: Option<u64>) -> std::io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = timeout_ns.map(|ns| libc::timespec {
        tv_sec: (ns / 1_000_000_000).min(i32::MAX as u64) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: `p` is a live array of `p.len()` pollfds and `tsp` is null or
    // points at a live timespec; ppoll writes only the `revents` fields.
    let r = unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            p.len() as libc::nfds_t,
            tsp,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// The thread body: serve `kicks` until `stop` is written.
pub fn run(mut engine: Engine, kicks: Vec<Arc<EventFd>>, stop: Arc<EventFd>) {
    let n = kicks.len().min(engine.num_queues());
    let mut again: Vec<bool> = (0..n).map(|q| engine.drain(q)).collect();
    let mut fds: Vec<&EventFd> = kicks.iter().take(n).map(|k| &**k).collect();
    fds.push(&stop);
    loop {
        if engine.p.stopping.load(Ordering::Acquire) {
            return;
        }
        let next = engine.release_due();
        let timeout = if again.iter().any(|&a| a) {
            Some(0)
        } else {
            next.map(|t| t.saturating_sub(engine.now_ns()))
        };
        let ready = match wait(&fds, timeout) {
            Ok(r) => r,
            Err(_) => {
                // Should not happen; do not spin if it does.
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        if ready[n] || engine.p.stopping.load(Ordering::Acquire) {
            return;
        }
        for q in 0..n {
            if ready[q] || again[q] {
                let _ = kicks[q].read();
                again[q] = engine.drain(q);
            }
        }
    }
}
