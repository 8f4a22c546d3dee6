//! The vCPU thread: run the guest, convert exits, dispatch, obey commands.
//!
//! States: `Running` (in or about to enter `KVM_RUN`), `Paused` (parked on
//! the command channel), `Stopped` (left the loop). Commands arrive on a
//! channel and a signal kick makes `KVM_RUN` return so they are seen at
//! once (see [`crate::kick`]).

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use devices::monitor::Recorder;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::control::{CrashInfo, StopReason, VcpuCommand, VcpuState, VmControl};
use crate::emulate;
use crate::exit::{handle_exit, Action, Buses, Exit};
use crate::kick;

/// KVM_INTERNAL_ERROR_EMULATION.
const INTERNAL_ERROR_EMULATION: u32 = 1;
/// How many instruction bytes a crash report shows.
const INSN_BYTES: usize = 15;

/// An exit whose handling needs vCPU ioctls after `KVM_RUN`'s borrow ends.
enum Pending {
    Shutdown,
    Internal,
    Fatal(String),
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    /// Index (also the APIC id).
    pub index: u32,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Device buses.
    pub buses: Arc<Buses>,
    /// Run control.
    pub control: Arc<VmControl>,
    /// Command channel.
    pub commands: Receiver<VcpuCommand>,
    /// Guest memory, to read instruction bytes for crash reports.
    pub mem: GuestMemoryMmap,
    /// Protocol monitors: violations this vCPU caused wait for its RIP.
    pub monitor: Option<Arc<Recorder>>,
}

impl Vcpu {
    /// Run until the VM stops. Called on the vCPU's own thread.
    pub fn run(mut self) {
        let imm = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        // SAFETY: `imm` points into this vCPU's kvm_run mapping, owned by
        // `self.fd`, which lives until the end of this function; we
        // unregister before returning.
        unsafe { kick::register_current_thread(imm) };
        self.control
            .set_kicker(self.index, Box::new(kick::ThreadKicker::current()));
        self.run_loop();
        kick::unregister_current_thread();
        self.control.report_state(self.index, VcpuState::Stopped);
    }

    /// Handle pending commands. Returns false when the loop must end.
    fn obey_commands(&self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(VcpuCommand::Stop) | Err(TryRecvError::Disconnected) => return false,
                Ok(VcpuCommand::Resume) => {}
                Ok(VcpuCommand::Pause) => {
                    self.control.report_state(self.index, VcpuState::Paused);
                    loop {
                        match self.commands.recv() {
                            Ok(VcpuCommand::Resume) => break,
                            Ok(VcpuCommand::Pause) => {}
                            Ok(VcpuCommand::Stop) | Err(_) => return false,
                        }
                    }
                    self.control.report_state(self.index, VcpuState::Running);
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn run_loop(&mut self) {
        'run: while self.obey_commands() {
            // Exits that need more vCPU ioctls (registers, instruction bytes)
            // are finished after the borrow of the kvm_run page ends.
            let action = match self.fd.run() {
                Ok(exit) => 'exit: {
                    let exit = match exit {
                        VcpuExit::IoIn(port, data) => Exit::PioIn(port, data),
                        VcpuExit::IoOut(port, data) => Exit::PioOut(port, data),
                        VcpuExit::MmioRead(addr, data) => Exit::MmioRead(addr, data),
                        VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite(addr, data),
                        VcpuExit::Hlt => Exit::Hlt,
                        VcpuExit::Debug(_) => Exit::Debug,
                        VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent(kind),
                        VcpuExit::Intr => continue 'run,
                        VcpuExit::Shutdown => break 'exit Err(Pending::Shutdown),
                        VcpuExit::InternalError => break 'exit Err(Pending::Internal),
                        VcpuExit::FailEntry(reason, cpu) => {
                            break 'exit Err(Pending::Fatal(format!(
                                "KVM entry failed (hardware reason {reason:#x}, host cpu {cpu})"
                            )))
                        }
                        other => {
                            break 'exit Err(Pending::Fatal(format!(
                                "unexpected KVM exit {other:?}"
                            )))
                        }
                    };
                    Ok(handle_exit(exit, &self.buses, self.index))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => Ok(Action::Stop(StopReason::VmmError(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.index
                )))),
            };
            let action = match action {
                Ok(a) => a,
                Err(p) => self.finish(p),
            };
            self.flush_monitor();
            match action {
                Action::Continue | Action::DebugStop => {}
                Action::Stop(reason) => {
                    self.control.request_stop(reason);
                    return;
                }
            }
        }
    }

    /// Protocol-monitor hook: if the last exit broke a device rule, print
    /// the report with this vCPU's RIP (one relaxed load otherwise).
    fn flush_monitor(&self) {
        if let Some(m) = &self.monitor {
            if m.needs_rip(self.index) {
                let rip = self.fd.get_regs().ok().map(|r| r.rip);
                m.flush_vcpu(self.index, rip);
            }
        }
    }

    /// Turn an exit that needed more ioctls into an action.
    fn finish(&mut self, p: Pending) -> Action {
        let exit = match p {
            Pending::Shutdown => {
                let c = self.crash(String::new());
                Exit::Shutdown {
                    rip: c.rip,
                    insn: c.insn,
                }
            }
            Pending::Internal => match self.internal_error() {
                Some(info) => Exit::Fatal(info),
                // vlab completed the instruction KVM could not emulate.
                None => return Action::Continue,
            },
            Pending::Fatal(what) => Exit::Fatal(self.crash(what)),
        };
        handle_exit(exit, &self.buses, self.index)
    }

    /// A KVM internal error: complete the instruction in user space when
    /// it is one vlab emulates (see [`crate::emulate`]) and return `None`,
    /// or describe the crash.
    fn internal_error(&mut self) -> Option<CrashInfo> {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the
        // `internal` member of the union is the one KVM filled in.
        let (suberror, ndata) = unsafe {
            let i = &self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (i.suberror, i.ndata)
        };
        let what = if suberror == INTERNAL_ERROR_EMULATION {
            match emulate::complete(&self.fd, &self.mem) {
                Ok(outcome) => {
                    self.buses.stats.emulated.count(outcome);
                    return None;
                }
                Err(e) => format!(
                    "KVM internal error: instruction emulation failed (vlab's fallback: {e})"
                ),
            }
        } else {
            format!("KVM internal error (suberror {suberror}, {ndata} data words)")
        };
        Some(self.crash(what))
    }

    /// A crash report with the current RIP and the bytes there.
    fn crash(&self, what: String) -> CrashInfo {
        let regs = self.fd.get_regs().ok();
        let sregs = self.fd.get_sregs().ok();
        let rip = regs.map(|r| r.rip);
        let mut insn = Vec::new();
        if let (Some(rip), Some(s)) = (rip, sregs) {
            let linear = s.cs.base.wrapping_add(rip);
            let phys = if s.cr0 & (1 << 31) != 0 {
                self.fd
                    .translate_gva(linear)
                    .ok()
                    .filter(|t| t.valid != 0)
                    .map(|t| t.physical_address)
            } else {
                Some(linear)
            };
            if let Some(p) = phys {
                let mut buf = [0u8; INSN_BYTES];
                if self.mem.read_slice(&mut buf, GuestAddress(p)).is_ok() {
                    insn = buf.to_vec();
                }
            }
        }
        CrashInfo {
            vcpu: self.index,
            what,
            rip,
            insn,
        }
    }
}
