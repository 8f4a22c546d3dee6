//! Run control shared by the VMM threads: why the VM stopped, and the
//! commands (pause, resume, stop) sent to each vCPU thread.
//!
//! Every vCPU thread owns a command channel. A stop request records the
//! first reason given (later reasons are ignored: the first cause is the
//! one worth reporting), sends `Stop` down every channel and kicks every
//! vCPU thread out of `KVM_RUN` with a signal (see [`crate::kick`]).

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Condvar, Mutex};

use devices::bus::lock;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote a status to the debug-exit port.
    GuestExit(u8),
    /// The guest asked for a reset (i8042 0xFE, or a KVM system event).
    GuestReset,
    /// The guest powered off (KVM system-event shutdown).
    GuestPowerOff,
    /// The guest crashed: triple fault, KVM internal error, failed entry.
    GuestCrash(CrashInfo),
    /// A `HLT` reached user space (only without an in-kernel irqchip).
    Halted {
        /// The vCPU that halted.
        vcpu: u32,
    },
    /// The user asked vlab to stop (Ctrl-C, SIGTERM, the escape key).
    User(&'static str),
    /// vlab itself failed while the guest ran.
    VmmError(String),
    /// A protocol monitor found a violation and `--strict` stopped the VM;
    /// the violation's report line (see `devices::monitor`).
    MonitorViolation(String),
}

/// What we know about a guest crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashInfo {
    /// The vCPU that crashed.
    pub vcpu: u32,
    /// What happened, one line.
    pub what: String,
    /// Guest RIP at the time, if known.
    pub rip: Option<u64>,
    /// Bytes at RIP, if they could be read.
    pub insn: Vec<u8>,
}

impl std::fmt::Display for CrashInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {}: {}", self.vcpu, self.what)?;
        if let Some(rip) = self.rip {
            write!(f, " at RIP {rip:#x}")?;
        }
        if !self.insn.is_empty() {
            write!(f, ", instruction bytes")?;
            for b in &self.insn {
                write!(f, " {b:02x}")?;
            }
        }
        Ok(())
    }
}

/// A command to one vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Stop running guest code until `Resume`.
    Pause,
    /// Go on after a `Pause`.
    Resume,
    /// Leave the run loop for good.
    Stop,
}

/// The state of a vCPU thread as reported to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Running guest code (or about to).
    Running,
    /// Parked, waiting for `Resume`.
    Paused,
    /// Left the run loop.
    Stopped,
}

/// Something that can interrupt a vCPU thread blocked in `KVM_RUN`.
pub trait Kicker: Send + Sync {
    /// Make the thread's current or next `KVM_RUN` return at once.
    fn kick(&self);
}

struct VcpuSlot {
    tx: Sender<VcpuCommand>,
    kicker: Option<Box<dyn Kicker>>,
    state: VcpuState,
}

/// Shared between the vCPU threads, the devices that can end the VM and the
/// front end.
#[derive(Default)]
pub struct VmControl {
    reason: Mutex<Option<StopReason>>,
    slots: Mutex<Vec<VcpuSlot>>,
    changed: Condvar,
}

impl VmControl {
    /// A control block with no vCPUs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a vCPU; returns its index and the receiving end of its
    /// command channel.
    pub fn add_vcpu(&self) -> (u32, Receiver<VcpuCommand>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut slots = lock(&self.slots);
        slots.push(VcpuSlot {
            tx,
            kicker: None,
            state: VcpuState::Running,
        });
        ((slots.len() - 1) as u32, rx)
    }

    /// Install the kicker of vCPU `index` (done by the vCPU thread itself
    /// once it runs). If a stop was requested before, kick at once.
    pub fn set_kicker(&self, index: u32, kicker: Box<dyn Kicker>) {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get_mut(index as usize) {
            s.kicker = Some(kicker);
        }
    }

    /// Record the state a vCPU thread reached.
    pub fn report_state(&self, index: u32, state: VcpuState) {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get_mut(index as usize) {
            s.state = state;
            if state == VcpuState::Stopped {
                // The thread is about to exit: never signal it again.
                s.kicker = None;
            }
        }
        self.changed.notify_all();
    }

    /// The states of all vCPUs.
    pub fn states(&self) -> Vec<VcpuState> {
        lock(&self.slots).iter().map(|s| s.state).collect()
    }

    fn send_all(&self, cmd: VcpuCommand) {
        let slots = lock(&self.slots);
        for s in slots.iter() {
            // A vCPU that already left its loop has dropped its receiver;
            // there is nothing left to tell it.
            let _ = s.tx.send(cmd);
            if let Some(k) = &s.kicker {
                k.kick();
            }
        }
    }

    /// Ask the VM to stop. The first reason wins.
    pub fn request_stop(&self, reason: StopReason) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.send_all(VcpuCommand::Stop);
        self.changed.notify_all();
    }

    /// Pause every vCPU and wait until each has parked (or stopped).
    pub fn pause(&self) {
        self.send_all(VcpuCommand::Pause);
        let mut slots = lock(&self.slots);
        while slots.iter().any(|s| s.state == VcpuState::Running) {
            slots = self.changed.wait(slots).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) {
        self.send_all(VcpuCommand::Resume);
    }

    /// The stop reason, once there is one.
    pub fn stop_reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    /// Block until a stop is requested, and return its reason.
    pub fn wait_for_stop(&self) -> StopReason {
        let mut r = lock(&self.reason);
        loop {
            if let Some(reason) = r.as_ref() {
                return reason.clone();
            }
            r = self.changed.wait(r).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct CountKicks(Arc<AtomicU32>);
    impl Kicker for CountKicks {
        fn kick(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn first_stop_reason_wins_and_every_vcpu_is_told_and_kicked() {
        let c = VmControl::new();
        let (i0, rx0) = c.add_vcpu();
        let (i1, rx1) = c.add_vcpu();
        assert_eq!((i0, i1), (0, 1));
        let kicks = Arc::new(AtomicU32::new(0));
        c.set_kicker(0, Box::new(CountKicks(kicks.clone())));
        c.set_kicker(1, Box::new(CountKicks(kicks.clone())));
        c.request_stop(StopReason::GuestExit(7));
        c.request_stop(StopReason::User("ctrl-c"));
        assert_eq!(c.stop_reason(), Some(StopReason::GuestExit(7)));
        assert_eq!(c.wait_for_stop(), StopReason::GuestExit(7));
        assert_eq!(rx0.try_recv(), Ok(VcpuCommand::Stop));
        assert_eq!(rx1.try_recv(), Ok(VcpuCommand::Stop));
        assert_eq!(kicks.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn pause_waits_for_every_vcpu_to_park() {
        let c = Arc::new(VmControl::new());
        let (idx, rx) = c.add_vcpu();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            assert_eq!(rx.recv(), Ok(VcpuCommand::Pause));
            c2.report_state(idx, VcpuState::Paused);
            assert_eq!(rx.recv(), Ok(VcpuCommand::Resume));
            c2.report_state(idx, VcpuState::Running);
        });
        c.pause();
        assert_eq!(c.states(), vec![VcpuState::Paused]);
        c.resume();
        t.join().unwrap();
    }

    #[test]
    fn crash_info_names_vcpu_rip_and_bytes() {
        let c = CrashInfo {
            vcpu: 1,
            what: "triple fault".into(),
            rip: Some(0x1000),
            insn: vec![0x0f, 0x0b],
        };
        assert_eq!(
            c.to_string(),
            "vCPU 1: triple fault at RIP 0x1000, instruction bytes 0f 0b"
        );
    }
}
