//! Level-triggered interrupt lines for PCI INTx, over KVM irqfd with
//! resample.
//!
//! Asserting the line writes the trigger eventfd: KVM raises the GSI on the
//! in-kernel IOAPIC (a level-triggered pin). When the guest EOIs the
//! vector, KVM lowers the pin and signals the resample eventfd; the
//! resampler thread then re-asserts the line if the device still holds it
//! high. That is real level semantics with no vCPU exit on either edge.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::irq::Irq;
use kvm_ioctls::VmFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Errors wiring interrupt lines.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// An eventfd or epoll call failed.
    #[error("Interrupt setup: {0}")]
    Io(#[from] std::io::Error),
    /// KVM refused the irqfd.
    #[error("Cannot register irqfd with resample for GSI {gsi}: {source}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

/// One level-triggered line into the IOAPIC.
#[derive(Debug)]
pub struct LevelIrq {
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
    level: AtomicBool,
}

impl LevelIrq {
    /// A line on `gsi`, registered with KVM.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<Arc<LevelIrq>, InterruptError> {
        let trigger = EventFd::new(libc::EFD_NONBLOCK)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_irqfd_with_resample(&trigger, &resample, gsi)
            .map_err(|source| InterruptError::Irqfd { gsi, source })?;
        Ok(Arc::new(LevelIrq {
            gsi,
            trigger,
            resample,
            level: AtomicBool::new(false),
        }))
    }

    /// The GSI (IOAPIC pin) of this line.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Is the device holding the line high?
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// The guest EOI'd: re-assert if the device still holds the line.
    fn on_resample(&self) {
        // Drain the counter; a spurious wake-up reads EAGAIN, harmless.
        let _ = self.resample.read();
        if self.level() {
            let _ = self.trigger.write(1);
        }
    }
}

impl Irq for LevelIrq {
    fn set_level(&self, high: bool) {
        let was = self.level.swap(high, Ordering::SeqCst);
        if high && !was {
            // Only fails if the counter would overflow: cannot happen with
            // one write per rising edge.
            let _ = self.trigger.write(1);
        }
        // Lowering takes effect at the guest's next EOI (resample), as
        // with any irqfd-backed level line.
    }
}

/// The thread that services resample notifications for a VM's lines.
pub struct Resampler {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Resampler {
    /// Start watching `lines`.
    pub fn start(lines: Vec<Arc<LevelIrq>>) -> Result<Resampler, InterruptError> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_token = lines.len() as u64;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        for (i, l) in lines.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                l.resample.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let thread = std::thread::Builder::new()
            .name("irq-resample".into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); lines.len() + 1];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    };
                    for ev in &events[..n] {
                        match lines.get(ev.data() as usize) {
                            Some(l) => l.on_resample(),
                            None => return, // the stop token
                        }
                    }
                }
            })?;
        Ok(Resampler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Resampler {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
