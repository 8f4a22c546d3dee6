//! When a finished request is completed to the guest: the hook for disk
//! timing models.
//!
//! The I/O thread times every request on its own monotonic clock
//! (nanoseconds since the thread started): `submit_ns` when it popped the
//! request, `done_ns` when the image call returned. It calls
//! [`CompletionPolicy::on_submit`] after parsing the request and before the
//! I/O, and [`CompletionPolicy::release_at`] after it; the request's used
//! ring entry and interrupt are held until the returned time (a timer in the
//! I/O thread; never earlier than `done_ns`). Requests are submitted in the
//! order they are popped, one at a time.
//!
//! [`Immediate`] completes at once; [`ThrottlePolicy`] plugs in
//! `block::model::Throttle` (docs/disk-models.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use block::model::{Op, Request as ModelRequest, Throttle, Ticket};

use super::request::RequestKind;
use crate::bus::lock;

/// A request as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    /// Unique per device (per activation), increasing in submission order.
    pub id: u64,
    /// The queue it came from.
    pub queue: u16,
    /// What it does; `None` for a request that could not be parsed.
    pub kind: Option<RequestKind>,
    /// First sector (reads/writes; the first range's for discard/zeroes).
    pub sector: u64,
    /// Sectors touched.
    pub sectors: u64,
    /// The status it completes with (0 before the I/O, in `on_submit`).
    pub status: u8,
}

/// Decides when a finished request is completed to the guest.
pub trait CompletionPolicy: Send {
    /// A parsed request is about to be executed (host time `submit_ns`).
    fn on_submit(&mut self, _req: &RequestInfo, _submit_ns: u64) {}
    /// The request finished on the host at `done_ns`: when may the guest
    /// see it? (Values before `done_ns` mean `done_ns`.)
    fn release_at(&mut self, _req: &RequestInfo, _submit_ns: u64, done_ns: u64) -> u64 {
        done_ns
    }
}

/// Complete every request as soon as it is done.
#[derive(Debug, Default, Clone, Copy)]
pub struct Immediate;

impl CompletionPolicy for Immediate {}

/// Completion times from a disk timing model through the throttle. Reads,
/// writes, write-zeroes (as writes) and flushes are modelled; GET_ID,
/// discards and failed parses complete at once.
pub struct ThrottlePolicy {
    throttle: Arc<Mutex<Throttle>>,
    tickets: HashMap<u64, Ticket>,
}

impl std::fmt::Debug for ThrottlePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottlePolicy")
            .field("in_flight", &self.tickets.len())
            .finish_non_exhaustive()
    }
}

impl ThrottlePolicy {
    /// Use `throttle` (shared, so the VMM can read its records and stats).
    pub fn new(throttle: Arc<Mutex<Throttle>>) -> Self {
        ThrottlePolicy {
            throttle,
            tickets: HashMap::new(),
        }
    }
}

impl CompletionPolicy for ThrottlePolicy {
    fn on_submit(&mut self, req: &RequestInfo, submit_ns: u64) {
        let op = match req.kind {
            Some(RequestKind::In) => Op::Read,
            Some(RequestKind::Out | RequestKind::WriteZeroes) => Op::Write,
            Some(RequestKind::Flush) => Op::Flush,
            _ => return,
        };
        let r = ModelRequest {
            lba: req.sector,
            sectors: req.sectors.min(u64::from(u32::MAX)) as u32,
            op,
        };
        let t = lock(&self.throttle).on_submit(r, submit_ns);
        self.tickets.insert(req.id, t);
    }

    fn release_at(&mut self, req: &RequestInfo, _submit_ns: u64, done_ns: u64) -> u64 {
        match self.tickets.remove(&req.id) {
            Some(t) => lock(&self.throttle).release_time(&t, done_ns),
            None => done_ns,
        }
    }
}
