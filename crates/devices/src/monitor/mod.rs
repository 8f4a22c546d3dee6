//! Protocol monitors and the I/O trace.
//!
//! A *monitor* is a small state machine per device, separate from the
//! device model: it is fed every trapped access, configuration write, DMA,
//! interrupt and model event of its device, keeps its own view of the
//! device's state (what the driver programmed, whether bus mastering is on,
//! what work and which interrupts are outstanding) and checks the rules a
//! correct driver follows on every transition. A broken rule is a
//! [`Violation`]: one readable line with the time, vCPU, guest RIP, device,
//! register, value and rule.
//!
//! The [`Recorder`] is the per-VM observer: it timestamps events, runs the
//! device's monitor, writes every event and verdict to the JSON-lines trace
//! when one is open, prints violations and, in strict mode, asks the VMM to
//! stop the VM. It has no global state: every VM has its own.
//!
//! | module | what |
//! |--------|------|
//! | [`vgpu`] | [`vgpu::VgpuMonitor`]: the rules of docs/devices/vgpu.md §10 |
//! | [`edu`] | [`edu::EduMonitor`]: edu's access and DMA rules |
//! | [`json`] | the trace line encoder |
//!
//! The full rule list and the trace format are in docs/monitors.md.
//!
//! # Threads and locks
//!
//! Events arrive from vCPU threads (trapped accesses, with the vCPU index)
//! and from device threads (the vgpu engine, without one). The recorder's
//! mutex is a leaf: it is taken with device locks held and never takes
//! another lock itself (the report sink and the stop hook must not either).
//!
//! The guest RIP can only be read cheaply on the vCPU's own thread, so a
//! violation caused by a vCPU's access is queued; the vCPU thread checks
//! [`Recorder::needs_rip`] (one relaxed atomic load) after every exit and
//! calls [`Recorder::flush_vcpu`] with the RIP, which prints the line.
//! Violations found on other threads, or found late (an interrupt never
//! acknowledged), are printed at once with `vcpu=- rip=-`.

pub mod edu;
pub mod json;
pub mod vgpu;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::bus::lock;
use crate::dma::{DmaDir, DmaEvent};
use crate::irq::Irq;
use crate::pci::bus::{PciAccess, PciAccessSpace, PciObserver, PCI_SLOTS};
use crate::pci::msi::{MsiMessage, MsiSink};

/// How long a raised interrupt may stay unacknowledged before the monitors
/// report it (default). A driver acknowledges in its handler, within
/// microseconds; 20 ms leaves room for a host that deschedules the vCPU.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_millis(20);

/// One thing that happened to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the recorder started (the VM was built).
    pub t_ns: u64,
    /// The vCPU whose exit caused it, if it came from one.
    pub vcpu: Option<u32>,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A trapped read of a BAR.
    BarRead {
        /// BAR index.
        bar: u8,
        /// Offset inside the BAR.
        offset: u64,
        /// Access width in bytes.
        width: u8,
        /// The value the guest got (little-endian, up to 8 bytes).
        value: u64,
        /// Time the VMM spent handling it.
        ns: u64,
    },
    /// A trapped write of a BAR.
    BarWrite {
        /// BAR index.
        bar: u8,
        /// Offset inside the BAR.
        offset: u64,
        /// Access width in bytes.
        width: u8,
        /// The value written.
        value: u64,
        /// Time the VMM spent handling it.
        ns: u64,
    },
    /// A configuration-space read.
    ConfigRead {
        /// Register offset.
        offset: u16,
        /// Width in bytes.
        width: u8,
        /// The value read.
        value: u64,
        /// Handling time.
        ns: u64,
    },
    /// A configuration-space write.
    ConfigWrite {
        /// Register offset.
        offset: u16,
        /// Width in bytes.
        width: u8,
        /// The value written.
        value: u64,
        /// The PCI command register after the write.
        command: u16,
        /// Handling time.
        ns: u64,
    },
    /// A DMA through the device's checked path.
    Dma {
        /// Device reads or writes guest memory.
        dir: DmaDir,
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// Why it was refused, if it was.
        refused: Option<String>,
    },
    /// The INTx line changed level.
    Intx {
        /// The new level.
        level: bool,
    },
    /// An MSI message was sent.
    Msi,
    /// A vgpu model event.
    Vgpu(crate::vgpu::Event),
}

/// A broken rule, as found by a monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Rule id, e.g. `vgpu.R1`.
    pub rule: &'static str,
    /// What was wrong and what to do instead, one line.
    pub text: String,
    /// Where: `BAR0 DOORBELL`, `CONFIG COMMAND`, `DMA`, `IRQ`, ...
    pub register: String,
    /// The value involved, if any.
    pub value: Option<u64>,
    /// Caused by the event being observed (so its vCPU and RIP apply);
    /// false for violations found late (a timeout).
    pub caused_by_event: bool,
}

impl Violation {
    /// A violation caused by the current event.
    pub fn new(
        rule: &'static str,
        register: impl Into<String>,
        value: Option<u64>,
        text: impl Into<String>,
    ) -> Self {
        Violation {
            rule,
            text: text.into(),
            register: register.into(),
            value,
            caused_by_event: true,
        }
    }

    /// A violation found late, not caused by the current event.
    pub fn late(
        rule: &'static str,
        register: impl Into<String>,
        value: Option<u64>,
        text: impl Into<String>,
    ) -> Self {
        Violation {
            caused_by_event: false,
            ..Self::new(rule, register, value, text)
        }
    }
}

/// A device's protocol monitor.
pub trait Monitor: Send {
    /// Observe one event; return the rules it broke.
    fn observe(&mut self, ev: &Event) -> Vec<Violation>;

    /// The VM stopped at `t_ns`: report what is still wrong (interrupts
    /// never acknowledged, ...).
    fn finish(&mut self, _t_ns: u64) -> Vec<Violation> {
        Vec::new()
    }

    /// The name of the register at `offset` of BAR `bar`, for traces.
    fn register_name(&self, _bar: u8, _offset: u64) -> Option<&'static str> {
        None
    }
}

/// Guest RAM as a list of ranges, for monitors that check DMA targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RamMap(Vec<Range<u64>>);

impl RamMap {
    /// RAM made of `ranges`.
    pub fn new(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        RamMap(ranges.into_iter().collect())
    }

    /// The RAM of `mem`.
    pub fn from_memory(mem: &GuestMemoryMmap) -> Self {
        RamMap(
            mem.iter()
                .map(|r| {
                    let s = r.start_addr().raw_value();
                    s..s.saturating_add(r.len())
                })
                .collect(),
        )
    }

    /// Whether `addr..addr+len` lies entirely in RAM (adjacent ranges
    /// count as one). An empty range is always fine.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        // Ranges are few (two or three): walk them until `at` passes `end`.
        loop {
            match self.0.iter().find(|r| r.start <= at && at < r.end) {
                Some(r) if r.end >= end => return true,
                Some(r) => at = r.end,
                None => return false,
            }
        }
    }
}

/// A device registered with a recorder.
pub type DeviceId = usize;

/// A violation with its context, as printed and traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Nanoseconds since the VM was built.
    pub t_ns: u64,
    /// The vCPU, if the violation was caused by one's access.
    pub vcpu: Option<u32>,
    /// Its RIP, if known.
    pub rip: Option<u64>,
    /// The device name.
    pub device: String,
    /// The violation.
    pub violation: Violation,
}

impl std::fmt::Display for Report {
    /// `t=12.345ms vcpu=0 rip=0x1022df vgpu BAR0 DOORBELL=0x1: rule vgpu.R1 broken: ...`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t={:.3}ms vcpu=", self.t_ns as f64 / 1e6)?;
        match self.vcpu {
            Some(v) => write!(f, "{v}")?,
            None => write!(f, "-")?,
        }
        match self.rip {
            Some(r) => write!(f, " rip={r:#x}")?,
            None => write!(f, " rip=-")?,
        }
        let v = &self.violation;
        write!(f, " {} {}", self.device, v.register)?;
        if let Some(val) = v.value {
            write!(f, "={val:#x}")?;
        }
        write!(f, ": rule {} broken: {}", v.rule, v.text)
    }
}

/// Where report lines go (stderr in vlab; a buffer in tests).
pub type ReportSink = Box<dyn FnMut(&Report) + Send>;
/// Called once, for the first violation, in strict mode.
pub type StopHook = Box<dyn FnOnce(&Report) + Send>;

/// How a recorder is set up.
pub struct RecorderOptions {
    /// Run the devices' monitors (off: trace only).
    pub monitors: bool,
    /// Stop the VM on the first violation (through `stop`).
    pub strict: bool,
    /// The trace, one JSON object per line.
    pub trace: Option<Box<dyn Write + Send>>,
    /// Where report lines go.
    pub report: ReportSink,
    /// Called for the first violation when `strict`.
    pub stop: Option<StopHook>,
}

impl RecorderOptions {
    /// Monitors on, not strict, no trace, reports to stderr.
    pub fn new() -> Self {
        RecorderOptions {
            monitors: true,
            strict: false,
            trace: None,
            report: Box::new(|r| eprintln!("vlab: monitor: {r}")),
            stop: None,
        }
    }
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self::new()
    }
}

struct DeviceSlot {
    name: String,
    monitor: Option<Box<dyn Monitor>>,
    violations: u64,
}

struct Inner {
    devices: Vec<DeviceSlot>,
    trace: Option<std::io::BufWriter<Box<dyn Write + Send>>>,
    trace_failed: bool,
    /// Violations waiting for their vCPU's RIP.
    waiting: Vec<Report>,
    report: ReportSink,
    stop: Option<StopHook>,
    finished: bool,
}

/// The per-VM observer. See the module documentation.
pub struct Recorder {
    start: Instant,
    monitors: bool,
    strict: bool,
    inner: Mutex<Inner>,
    /// Bit `n`: vCPU `n % 64` has violations waiting for its RIP.
    rip_wanted: AtomicU64,
    violations: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("monitors", &self.monitors)
            .field("strict", &self.strict)
            .field("violations", &self.violations())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder; time 0 is now.
    pub fn new(opts: RecorderOptions) -> Arc<Recorder> {
        let rec = Recorder {
            start: Instant::now(),
            monitors: opts.monitors,
            strict: opts.strict,
            inner: Mutex::new(Inner {
                devices: Vec::new(),
                trace: opts.trace.map(std::io::BufWriter::new),
                trace_failed: false,
                waiting: Vec::new(),
                report: opts.report,
                stop: opts.stop,
                finished: false,
            }),
            rip_wanted: AtomicU64::new(0),
            violations: AtomicU64::new(0),
        };
        {
            let mut inner = lock(&rec.inner);
            let line = json::Line::new("start", 0)
                .str("vlab", env!("CARGO_PKG_VERSION"))
                .bool("monitors", opts.monitors)
                .bool("strict", opts.strict)
                .finish();
            trace_line(&mut inner, &line);
        }
        Arc::new(rec)
    }

    /// Nanoseconds since the recorder started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether monitors run.
    pub fn monitors_enabled(&self) -> bool {
        self.monitors
    }

    /// Register a device named `name` with its monitor (with monitors off
    /// it only names registers in the trace).
    pub fn add_device(&self, name: &str, monitor: Option<Box<dyn Monitor>>) -> DeviceId {
        let mut inner = lock(&self.inner);
        inner.devices.push(DeviceSlot {
            name: name.to_string(),
            monitor,
            violations: 0,
        });
        let id = inner.devices.len() - 1;
        let line = json::Line::new("device", self.now_ns())
            .str("dev", name)
            .u64("id", id as u64)
            .finish();
        trace_line(&mut inner, &line);
        id
    }

    /// Record an event of `dev` now.
    pub fn record(&self, dev: DeviceId, vcpu: Option<u32>, kind: EventKind) {
        let ev = Event {
            t_ns: self.now_ns(),
            vcpu,
            kind,
        };
        self.record_event(dev, ev);
    }

    /// Record an event with its own timestamp (tests).
    pub fn record_event(&self, dev: DeviceId, ev: Event) {
        let mut inner = lock(&self.inner);
        if inner.finished {
            return;
        }
        let inner = &mut *inner;
        let tracing = inner.trace.is_some();
        let Some(slot) = inner.devices.get_mut(dev) else {
            return;
        };
        let found = match slot.monitor.as_mut() {
            Some(m) if self.monitors => m.observe(&ev),
            _ => Vec::new(),
        };
        if tracing {
            let reg = match &ev.kind {
                EventKind::BarRead { bar, offset, .. }
                | EventKind::BarWrite { bar, offset, .. } => slot
                    .monitor
                    .as_ref()
                    .and_then(|m| m.register_name(*bar, *offset)),
                _ => None,
            };
            let line = json::event_line(&slot.name, &ev, reg);
            trace_line(inner, &line);
        }
        for v in found {
            let vcpu = if v.caused_by_event { ev.vcpu } else { None };
            let report = Report {
                t_ns: ev.t_ns,
                vcpu,
                rip: None,
                device: inner.devices[dev].name.clone(),
                violation: v,
            };
            inner.devices[dev].violations += 1;
            match vcpu {
                Some(n) => {
                    inner.waiting.push(report);
                    self.rip_wanted.fetch_or(1 << (n % 64), Ordering::Relaxed);
                }
                None => self.emit(inner, report),
            }
        }
    }

    /// Whether vCPU `vcpu` should call [`Recorder::flush_vcpu`] (one
    /// relaxed load: call it after every exit).
    #[inline]
    pub fn needs_rip(&self, vcpu: u32) -> bool {
        self.rip_wanted.load(Ordering::Relaxed) & (1 << (vcpu % 64)) != 0
    }

    /// Print the violations vCPU `vcpu` caused, with its RIP.
    pub fn flush_vcpu(&self, vcpu: u32, rip: Option<u64>) {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        self.rip_wanted
            .fetch_and(!(1 << (vcpu % 64)), Ordering::Relaxed);
        let (mine, rest): (Vec<Report>, Vec<Report>) = std::mem::take(&mut inner.waiting)
            .into_iter()
            .partition(|r| r.vcpu.is_some_and(|v| v % 64 == vcpu % 64));
        inner.waiting = rest;
        for mut r in mine {
            r.rip = rip;
            self.emit(inner, r);
        }
    }

    fn emit(&self, inner: &mut Inner, report: Report) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        (inner.report)(&report);
        if inner.trace.is_some() {
            let line = json::violation_line(&report);
            trace_line(inner, &line);
        }
        if self.strict {
            if let Some(stop) = inner.stop.take() {
                stop(&report);
            }
        }
    }

    /// Violations printed so far.
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    /// Violations per device: (name, count), in registration order.
    pub fn violations_by_device(&self) -> Vec<(String, u64)> {
        lock(&self.inner)
            .devices
            .iter()
            .map(|d| (d.name.clone(), d.violations))
            .collect()
    }

    /// The VM stopped: run the monitors' final checks, print what still
    /// waits for a RIP (without one), write a `stop` line with `counters`
    /// (e.g. the VM's exit counts) and flush the trace. Events after this
    /// are ignored. Returns the total number of violations.
    pub fn finish(&self, counters: &[(&str, u64)]) -> u64 {
        let t = self.now_ns();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if inner.finished {
            return self.violations();
        }
        for r in std::mem::take(&mut inner.waiting) {
            self.emit(inner, r);
        }
        self.rip_wanted.store(0, Ordering::Relaxed);
        for i in 0..inner.devices.len() {
            let found = match inner.devices[i].monitor.as_mut() {
                Some(m) if self.monitors => m.finish(t),
                _ => Vec::new(),
            };
            for v in found {
                inner.devices[i].violations += 1;
                let report = Report {
                    t_ns: t,
                    vcpu: None,
                    rip: None,
                    device: inner.devices[i].name.clone(),
                    violation: v,
                };
                self.emit(inner, report);
            }
        }
        inner.finished = true;
        if inner.trace.is_some() {
            let mut line = json::Line::new("stop", t).u64("violations", self.violations());
            for (k, v) in counters {
                line = line.u64(k, *v);
            }
            let line = line.finish();
            trace_line(inner, &line);
        }
        if let Some(w) = inner.trace.as_mut() {
            if let Err(e) = w.flush() {
                if !inner.trace_failed {
                    inner.trace_failed = true;
                    eprintln!("vlab: cannot write the trace: {e}; the trace is incomplete");
                }
            }
        }
        self.violations()
    }

    /// A [`PciObserver`] that records accesses to the devices in
    /// `slots` (PCI slot → device id) with this recorder.
    pub fn pci_observer(self: &Arc<Self>, slots: &[(u8, DeviceId)]) -> Arc<dyn PciObserver> {
        let mut by_slot = [None; PCI_SLOTS];
        for &(s, id) in slots {
            if let Some(e) = by_slot.get_mut(usize::from(s)) {
                *e = Some(id);
            }
        }
        Arc::new(PciRecorder {
            rec: self.clone(),
            by_slot,
        })
    }

    /// A DMA trace hook (for [`crate::dma::Dma::with_trace`]) recording
    /// into `dev`.
    pub fn dma_hook(self: &Arc<Self>, dev: DeviceId) -> crate::dma::DmaTrace {
        let rec = self.clone();
        Arc::new(move |e: &DmaEvent<'_>| {
            rec.record(
                dev,
                None,
                EventKind::Dma {
                    dir: e.dir,
                    addr: e.addr,
                    len: e.len,
                    refused: e.outcome.as_ref().err().map(|e| e.to_string()),
                },
            )
        })
    }
}

fn trace_line(inner: &mut Inner, line: &str) {
    let Some(w) = inner.trace.as_mut() else {
        return;
    };
    if let Err(e) = w
        .write_all(line.as_bytes())
        .and_then(|()| w.write_all(b"\n"))
    {
        if !inner.trace_failed {
            inner.trace_failed = true;
            eprintln!("vlab: cannot write the trace: {e}; tracing stops here");
        }
        inner.trace = None;
    }
}

/// Records PCI bus accesses of known slots.
struct PciRecorder {
    rec: Arc<Recorder>,
    by_slot: [Option<DeviceId>; PCI_SLOTS],
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciObserver for PciRecorder {
    fn access(&self, a: &PciAccess<'_>) {
        let Some(Some(dev)) = self.by_slot.get(usize::from(a.slot)) else {
            return;
        };
        let ns = u64::try_from(a.took.as_nanos()).unwrap_or(u64::MAX);
        let width = a.data.len().min(255) as u8;
        let value = le_value(a.data);
        let kind = match a.space {
            PciAccessSpace::Bar(bar) => {
                let bar = bar as u8;
                if a.write {
                    EventKind::BarWrite {
                        bar,
                        offset: a.offset,
                        width,
                        value,
                        ns,
                    }
                } else {
                    EventKind::BarRead {
                        bar,
                        offset: a.offset,
                        width,
                        value,
                        ns,
                    }
                }
            }
            PciAccessSpace::Config { command } => {
                let offset = a.offset as u16;
                if a.write {
                    EventKind::ConfigWrite {
                        offset,
                        width,
                        value,
                        command,
                        ns,
                    }
                } else {
                    EventKind::ConfigRead {
                        offset,
                        width,
                        value,
                        ns,
                    }
                }
            }
        };
        self.rec.record(*dev, a.vcpu, kind);
    }
}

/// An INTx line that records its level changes, then drives `inner`.
pub struct ObservedIrq {
    inner: Arc<dyn Irq>,
    rec: Arc<Recorder>,
    dev: DeviceId,
}

impl ObservedIrq {
    /// Record `inner`'s changes as events of `dev`.
    pub fn new(inner: Arc<dyn Irq>, rec: Arc<Recorder>, dev: DeviceId) -> Arc<Self> {
        Arc::new(ObservedIrq { inner, rec, dev })
    }
}

impl Irq for ObservedIrq {
    fn set_level(&self, high: bool) {
        self.rec
            .record(self.dev, None, EventKind::Intx { level: high });
        self.inner.set_level(high);
    }
}

/// An MSI sink that records every message, then sends it with `inner`.
pub struct ObservedMsi {
    inner: Arc<dyn MsiSink>,
    rec: Arc<Recorder>,
    dev: DeviceId,
}

impl ObservedMsi {
    /// Record `inner`'s messages as events of `dev`.
    pub fn new(inner: Arc<dyn MsiSink>, rec: Arc<Recorder>, dev: DeviceId) -> Arc<Self> {
        Arc::new(ObservedMsi { inner, rec, dev })
    }
}

impl MsiSink for ObservedMsi {
    fn send(&self, m: MsiMessage) {
        self.rec.record(self.dev, None, EventKind::Msi);
        self.inner.send(m);
    }
}
