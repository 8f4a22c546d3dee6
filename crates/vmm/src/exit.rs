//! vCPU exit dispatch, as a pure function of the buses.
//!
//! The vCPU thread converts a KVM exit into an [`Exit`] and calls
//! [`handle_exit`]; nothing here talks to KVM, so dispatch is unit-tested
//! without `/dev/kvm`.

use std::sync::atomic::{AtomicU64, Ordering};

use devices::bus::Bus;

use crate::control::{CrashInfo, StopReason};

/// The buses a guest can reach by exits.
#[derive(Debug)]
pub struct Buses {
    /// x86 I/O ports.
    pub pio: Bus,
    /// Memory-mapped I/O (guest physical addresses not backed by RAM).
    pub mmio: Bus,
    /// Exit counters, for `--verbose` and the benchmarks.
    pub stats: ExitStats,
}

impl Default for Buses {
    fn default() -> Self {
        Buses {
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
            stats: ExitStats::default(),
        }
    }
}

/// Counts of exits by kind, shared by all vCPUs.
#[derive(Debug, Default)]
pub struct ExitStats {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// Other exits seen by user space.
    pub other: AtomicU64,
    /// Instructions KVM could not emulate that vlab completed.
    pub emulated: crate::emulate::EmulationStats,
}

/// A vCPU exit, as far as user space has to handle it.
#[derive(Debug)]
pub enum Exit<'a> {
    /// `IN` from a port: fill the buffer.
    PioIn(u16, &'a mut [u8]),
    /// `OUT` to a port.
    PioOut(u16, &'a [u8]),
    /// A read of unbacked guest-physical memory: fill the buffer.
    MmioRead(u64, &'a mut [u8]),
    /// A write to unbacked guest-physical memory.
    MmioWrite(u64, &'a [u8]),
    /// `HLT` reached user space (no in-kernel irqchip).
    Hlt,
    /// Triple fault.
    Shutdown {
        /// Guest RIP, if known.
        rip: Option<u64>,
        /// Instruction bytes at RIP, if they could be read.
        insn: Vec<u8>,
    },
    /// A guest-debug exit (breakpoint, single step).
    Debug,
    /// KVM asked for a reset or power-off via a system event.
    SystemEvent(u32),
    /// Anything that ends the guest: internal error, failed entry, ...
    Fatal(CrashInfo),
}

/// What the vCPU thread does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Continue,
    /// Stop the whole VM.
    Stop(StopReason),
    /// Park for the debugger.
    DebugStop,
}

/// KVM_SYSTEM_EVENT_SHUTDOWN.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// KVM_SYSTEM_EVENT_RESET.
const SYSTEM_EVENT_RESET: u32 = 2;

/// Dispatch one exit.
pub fn handle_exit(exit: Exit<'_>, buses: &Buses, vcpu: u32) -> Action {
    match exit {
        Exit::PioIn(port, data) => {
            buses.stats.pio.fetch_add(1, Ordering::Relaxed);
            buses.pio.read(u64::from(port), data, vcpu);
            Action::Continue
        }
        Exit::PioOut(port, data) => {
            buses.stats.pio.fetch_add(1, Ordering::Relaxed);
            buses.pio.write(u64::from(port), data, vcpu);
            Action::Continue
        }
        Exit::MmioRead(addr, data) => {
            buses.stats.mmio.fetch_add(1, Ordering::Relaxed);
            buses.mmio.read(addr, data, vcpu);
            Action::Continue
        }
        Exit::MmioWrite(addr, data) => {
            buses.stats.mmio.fetch_add(1, Ordering::Relaxed);
            buses.mmio.write(addr, data, vcpu);
            Action::Continue
        }
        Exit::Hlt => {
            buses.stats.other.fetch_add(1, Ordering::Relaxed);
            Action::Stop(StopReason::Halted { vcpu })
        }
        Exit::Shutdown { rip, insn } => {
            buses.stats.other.fetch_add(1, Ordering::Relaxed);
            Action::Stop(StopReason::GuestCrash(CrashInfo {
                vcpu,
                what: "triple fault (KVM shutdown exit)".into(),
                rip,
                insn,
            }))
        }
        Exit::Debug => Action::DebugStop,
        Exit::SystemEvent(kind) => {
            buses.stats.other.fetch_add(1, Ordering::Relaxed);
            Action::Stop(match kind {
                SYSTEM_EVENT_SHUTDOWN => StopReason::GuestPowerOff,
                SYSTEM_EVENT_RESET => StopReason::GuestReset,
                other => StopReason::GuestCrash(CrashInfo {
                    vcpu,
                    what: format!("KVM system event {other}"),
                    rip: None,
                    insn: Vec::new(),
                }),
            })
        }
        Exit::Fatal(info) => Action::Stop(StopReason::GuestCrash(info)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::{Access, BusDevice};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Rec(Vec<(Access, Vec<u8>, bool)>);
    impl BusDevice for Rec {
        fn read(&mut self, a: Access, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x10 + i as u8;
            }
            self.0.push((a, data.to_vec(), false));
        }
        fn write(&mut self, a: Access, data: &[u8]) {
            self.0.push((a, data.to_vec(), true));
        }
    }

    fn buses() -> (Buses, Arc<Mutex<Rec>>, Arc<Mutex<Rec>>) {
        let mut b = Buses::default();
        let p = Arc::new(Mutex::new(Rec::default()));
        let m = Arc::new(Mutex::new(Rec::default()));
        b.pio.insert(p.clone(), 0xf4, 4, "p").unwrap();
        b.mmio.insert(m.clone(), 0xd000_0000, 0x1000, "m").unwrap();
        (b, p, m)
    }

    #[test]
    fn pio_and_mmio_reach_the_device_with_width_and_offset() {
        let (b, p, m) = buses();
        let mut four = [0u8; 4];
        assert_eq!(
            handle_exit(Exit::PioIn(0xf4, &mut four), &b, 2),
            Action::Continue
        );
        assert_eq!(four, [0x10, 0x11, 0x12, 0x13]);
        assert_eq!(
            handle_exit(Exit::PioOut(0xf5, &[1, 2]), &b, 0),
            Action::Continue
        );
        let mut eight = [0u8; 8];
        handle_exit(Exit::MmioRead(0xd000_0ff8, &mut eight), &b, 1);
        handle_exit(Exit::MmioWrite(0xd000_0004, &[9, 9, 9, 9]), &b, 1);
        let p = p.lock().unwrap();
        assert_eq!(p.0[0].0.vcpu, 2);
        assert_eq!((p.0[1].0.offset, p.0[1].1.clone()), (1, vec![1, 2]));
        let m = m.lock().unwrap();
        assert_eq!((m.0[0].0.offset, m.0[0].1.len()), (0xff8, 8));
        assert_eq!((m.0[1].0.offset, m.0[1].2), (4, true));
        assert_eq!(b.stats.pio.load(Ordering::Relaxed), 2);
        assert_eq!(b.stats.mmio.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unclaimed_accesses_continue_and_are_counted() {
        let (b, _, _) = buses();
        let mut d = [0u8; 2];
        assert_eq!(
            handle_exit(Exit::PioIn(0x80, &mut d), &b, 0),
            Action::Continue
        );
        assert_eq!(d, [0xff, 0xff]);
        assert_eq!(
            handle_exit(Exit::MmioWrite(0x1234_5678, &[0; 3]), &b, 0),
            Action::Continue
        );
        assert_eq!(b.pio.unknown_accesses().total(), 1);
        assert_eq!(b.mmio.unknown_accesses().total(), 1);
    }

    #[test]
    fn terminal_exits_stop_the_vm_with_the_right_reason() {
        let (b, _, _) = buses();
        assert_eq!(
            handle_exit(Exit::Hlt, &b, 3),
            Action::Stop(StopReason::Halted { vcpu: 3 })
        );
        match handle_exit(
            Exit::Shutdown {
                rip: Some(0x42),
                insn: vec![0x0f, 0x0b],
            },
            &b,
            1,
        ) {
            Action::Stop(StopReason::GuestCrash(c)) => {
                assert_eq!((c.vcpu, c.rip), (1, Some(0x42)));
                assert_eq!(c.insn, vec![0x0f, 0x0b]);
                assert!(c.what.contains("triple fault"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            handle_exit(Exit::SystemEvent(SYSTEM_EVENT_RESET), &b, 0),
            Action::Stop(StopReason::GuestReset)
        );
        assert_eq!(
            handle_exit(Exit::SystemEvent(SYSTEM_EVENT_SHUTDOWN), &b, 0),
            Action::Stop(StopReason::GuestPowerOff)
        );
        assert!(matches!(
            handle_exit(Exit::SystemEvent(99), &b, 0),
            Action::Stop(StopReason::GuestCrash(_))
        ));
        assert_eq!(handle_exit(Exit::Debug, &b, 0), Action::DebugStop);
    }
}
