//! The engine thread: runs [`Vgpu::step`] off the vCPU threads, like a real
//! GPU's command processor.
//!
//! # Locking
//!
//! * The vCPU thread takes the device mutex for one register write; a
//!   DOORBELL write calls the device's work hook, which only sets a flag
//!   under the worker's own (leaf) mutex and notifies a condvar.
//! * The worker wakes, then repeatedly takes the device mutex, then the
//!   framebuffer's lock ([`FrameMemory::with_mut`]), executes **one**
//!   descriptor, releases the framebuffer lock, delivers the step's events
//!   to the sink and releases the device mutex; so a register write waits
//!   at most one descriptor's execution, and a protocol monitor fed by the
//!   sink sees the engine's events in the device's order relative to
//!   register writes. The sink must not take the device mutex.
//! * Lock order: device mutex → framebuffer lock; device mutex → sink.
//!   A screenshot takes the
//!   device mutex only to read the mode, releases it, then takes the
//!   framebuffer lock (see [`super::screenshot::screenshot`]).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::engine::{Event, Vgpu};
use super::raster::DmaRead;
use crate::bus::lock;

/// The memory behind BAR2, shared by the guest mapping, the engine and
/// screenshots. The VMM implements this for the host buffer it maps as a KVM
/// memslot at BAR2's address.
pub trait FrameMemory: Send + Sync {
    /// Run `f` on the framebuffer bytes, exclusively.
    fn with_mut(&self, f: &mut dyn FnMut(&mut [u8]));
    /// Run `f` on the framebuffer bytes, read-only.
    fn with(&self, f: &mut dyn FnMut(&[u8]));
}

/// A heap framebuffer: for tests, and for a VMM that does not map BAR2.
#[derive(Debug)]
pub struct VecFrame(Mutex<Vec<u8>>);

impl VecFrame {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        VecFrame(Mutex::new(vec![0; len]))
    }

    /// A copy of the contents.
    pub fn snapshot(&self) -> Vec<u8> {
        lock(&self.0).clone()
    }
}

impl FrameMemory for VecFrame {
    fn with_mut(&self, f: &mut dyn FnMut(&mut [u8])) {
        f(&mut lock(&self.0))
    }
    fn with(&self, f: &mut dyn FnMut(&[u8])) {
        f(&lock(&self.0))
    }
}

#[derive(Default)]
struct Wake {
    kicked: bool,
    stop: bool,
}

#[derive(Default)]
struct Signal {
    wake: Mutex<Wake>,
    cv: Condvar,
}

impl Signal {
    fn kick(&self) {
        lock(&self.wake).kicked = true;
        self.cv.notify_one();
    }

    /// Wait for a kick; false once stop was requested.
    fn wait(&self) -> bool {
        let mut w = lock(&self.wake);
        while !w.kicked && !w.stop {
            w = self.cv.wait(w).unwrap_or_else(|p| p.into_inner());
        }
        w.kicked = false;
        !w.stop
    }
}

/// Where the worker delivers events.
pub type EventSink = Box<dyn FnMut(Event) + Send>;
/// Guest memory as the worker reads it.
pub type SharedDma = Arc<dyn DmaRead + Send + Sync>;

/// A running engine thread; stopping or dropping it joins the thread.
pub struct Worker {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Start the engine thread for `dev` and install its work hook (a
    /// doorbell rung before this call is picked up at once).
    pub fn spawn(
        dev: Arc<Mutex<Vgpu>>,
        mem: SharedDma,
        fb: Arc<dyn FrameMemory>,
        mut sink: EventSink,
    ) -> std::io::Result<Worker> {
        let signal = Arc::new(Signal::default());
        let (s, d) = (signal.clone(), dev.clone());
        let thread = std::thread::Builder::new()
            .name("vgpu-engine".into())
            .spawn(move || {
                while s.wait() {
                    loop {
                        let mut events = Vec::new();
                        let mut d = lock(&d);
                        if !d.has_work() {
                            break;
                        }
                        fb.with_mut(&mut |bytes| events = d.step(&*mem, bytes));
                        // Delivered under the device lock, so a monitor sees
                        // them before any register write that follows.
                        for e in events {
                            sink(e);
                        }
                        // Between descriptors, let a register access that
                        // waits for the device lock in (a vCPU writing a
                        // register while the engine works), as real
                        // registers stay reachable while the engine runs.
                        drop(d);
                        std::thread::yield_now();
                    }
                }
            })?;
        let k = signal.clone();
        lock(&dev).set_work_hook(Arc::new(move || k.kick()));
        signal.kick();
        Ok(Worker {
            signal,
            thread: Some(thread),
        })
    }

    /// Stop the thread (after the descriptor in progress) and join it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        lock(&self.signal.wake).stop = true;
        self.signal.cv.notify_one();
        if let Some(t) = self.thread.take() {
            // A panic in the engine thread is already reported by std.
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
