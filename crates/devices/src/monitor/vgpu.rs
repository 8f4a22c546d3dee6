//! The vgpu protocol monitor: the rules of docs/devices/vgpu.md §10 ("Rules
//! a correct driver follows"), checked against the monitor's own view of
//! the device.
//!
//! The view is built from what the driver did (BAR0 writes, the PCI
//! command register) and from what the engine reported (descriptors done,
//! interrupts raised and acknowledged, engine errors). Register rules are
//! decided from the monitor's view alone, never from the model's verdict;
//! engine errors (a malformed descriptor, a command buffer outside RAM)
//! need guest memory the monitor does not read, so they come from the
//! model's error events.
//!
//! # Ordering
//!
//! A trapped write is observed *after* the device handled it, and the
//! model events it caused (and engine events that happened since) may be
//! observed before it. The view only moves RING_HEAD forward on engine
//! events, so a stale view can only hide a violation in a race, never
//! invent one.
//!
//! Register-page reads never trap, so the monitor cannot see them (rule 3,
//! checking ID and VERSION, is therefore not checked); nor can it see
//! guest writes to RAM (rule 10) or what the driver does with its IRQ
//! (rules 11, 14). See docs/monitors.md.

use crate::pci::config::PCI_COMMAND_MASTER;
use crate::vgpu::regs::*;
use crate::vgpu::Event as VgpuEvent;

use super::{Event, EventKind, Monitor, RamMap, Violation};

/// Rule 1: bus mastering.
pub const R1: &str = "vgpu.R1";
/// Rule 2: access width, read-only/unknown registers, reserved bits.
pub const R2: &str = "vgpu.R2";
/// Rule 4: reset at probe.
pub const R4: &str = "vgpu.R4";
/// Rule 5: mode only while idle, values in range.
pub const R5: &str = "vgpu.R5";
/// Rule 6: ring programming and shape.
pub const R6: &str = "vgpu.R6";
/// Rule 7: DMA only into RAM the driver allocated.
pub const R7: &str = "vgpu.R7";
/// Rule 8: submission order (ring enabled, descriptor complete).
pub const R8: &str = "vgpu.R8";
/// Rule 9: no ring overflow, tail inside the ring.
pub const R9: &str = "vgpu.R9";
/// Rule 12: acknowledge every interrupt promptly.
pub const R12: &str = "vgpu.R12";
/// Rule 15: do not disable the ring with work outstanding.
pub const R15: &str = "vgpu.R15";
/// Command buffers the engine rejected (datasheet §6).
pub const CMD: &str = "vgpu.CMD";

const INT_NAMES: [(u32, &str); 3] = [
    (INT_FENCE, "FENCE"),
    (INT_ERROR, "ERROR"),
    (INT_IDLE, "IDLE"),
];

/// An interrupt cause raised and not yet acknowledged.
#[derive(Clone, Copy, Debug, Default)]
struct Raised {
    at_ns: u64,
    reported: bool,
}

/// The monitor's view of one vgpu.
#[derive(Debug)]
pub struct VgpuMonitor {
    ram: RamMap,
    ack_timeout_ns: u64,
    bus_master: bool,
    reset_seen: bool,
    r4_reported: bool,
    enabled: bool,
    ring_base: u64,
    ring_size: u32,
    head: u32,
    tail: u32,
    doorbell_tail: u32,
    int_mask: u32,
    raised: [Option<Raised>; 3],
    /// An engine error halted the engine; `true` if CLEAR_ERROR skips the
    /// faulting descriptor.
    halted: Option<bool>,
}

fn reg(offset: u64) -> String {
    match reg_name(offset) {
        Some(n) => format!("BAR0 {n}"),
        None => format!("BAR0+{offset:#x}"),
    }
}

impl VgpuMonitor {
    /// A monitor for a vgpu in its reset state, in a machine with `ram`,
    /// reporting interrupts not acknowledged within `ack_timeout`.
    pub fn new(ram: RamMap, ack_timeout: std::time::Duration) -> Self {
        VgpuMonitor {
            ram,
            ack_timeout_ns: u64::try_from(ack_timeout.as_nanos()).unwrap_or(u64::MAX),
            bus_master: false,
            reset_seen: false,
            r4_reported: false,
            enabled: false,
            ring_base: 0,
            ring_size: 0,
            head: 0,
            tail: 0,
            doorbell_tail: 0,
            int_mask: 0,
            raised: [None; 3],
            halted: None,
        }
    }

    /// Descriptors the device owns (from the monitor's view).
    fn outstanding(&self) -> u32 {
        if !self.enabled || self.ring_size == 0 {
            return 0;
        }
        self.doorbell_tail.wrapping_sub(self.head) & self.ring_size.wrapping_sub(1)
    }

    fn reset_view(&mut self) {
        self.enabled = false;
        self.ring_base = 0;
        self.ring_size = 0;
        self.head = 0;
        self.tail = 0;
        self.doorbell_tail = 0;
        self.int_mask = 0;
        self.raised = [None; 3];
        self.halted = None;
    }

    /// Rule 4: the first programming write must come after CONTROL.RESET.
    fn check_reset_first(&mut self, offset: u64, v: u32, out: &mut Vec<Violation>) {
        if !self.reset_seen && !self.r4_reported {
            self.r4_reported = true;
            out.push(Violation::new(
                R4,
                reg(offset),
                Some(v.into()),
                "device programmed before CONTROL.RESET: reset the device at probe (write CONTROL = 0x2 first)",
            ));
        }
    }

    fn bar_write(&mut self, offset: u64, width: u8, value: u64, out: &mut Vec<Violation>) {
        if width != 4 || !offset.is_multiple_of(4) {
            out.push(Violation::new(
                R2,
                reg(offset & !3),
                Some(value),
                format!(
                    "{width}-byte write at offset {offset:#x}: BAR0 registers take 32-bit writes at 4-byte aligned offsets (iowrite32); the write was ignored"
                ),
            ));
            return;
        }
        let v = value as u32;
        match reg_access(offset) {
            None => {
                out.push(Violation::new(
                    R2,
                    reg(offset),
                    Some(v.into()),
                    format!("write to offset {offset:#x}, which is not a register"),
                ));
                return;
            }
            Some(RegAccess::ReadOnly) => {
                out.push(Violation::new(
                    R2,
                    reg(offset),
                    Some(v.into()),
                    "write to a read-only register",
                ));
                return;
            }
            Some(_) => {}
        }
        let r = || reg(offset);
        match offset {
            REG_CONTROL => self.write_control(v, out),
            REG_INT_STATUS | REG_INT_MASK if v & !INT_VALID != 0 => out.push(Violation::new(
                R2,
                r(),
                Some(v.into()),
                format!(
                    "reserved bits {:#x} set (valid bits: FENCE|ERROR|IDLE = 0x7); the write was ignored",
                    v & !INT_VALID
                ),
            )),
            REG_INT_STATUS => self.ack(v),
            REG_INT_MASK => {
                self.check_reset_first(offset, v, out);
                self.int_mask = v;
                // Masking a cause resolves its interrupt (rule 11).
                self.ack(!v);
            }
            REG_MODE_WIDTH | REG_MODE_HEIGHT | REG_MODE_FORMAT => {
                self.check_reset_first(offset, v, out);
                let n = self.outstanding();
                if n != 0 {
                    out.push(Violation::new(
                        R5,
                        r(),
                        Some(v.into()),
                        format!(
                            "mode register written while the engine owns {n} descriptor(s): set the mode only while idle (RING_HEAD == tail); the write was ignored"
                        ),
                    ));
                    return;
                }
                let (ok, limit) = match offset {
                    REG_MODE_WIDTH => (v <= MAX_WIDTH, "0..=1024"),
                    REG_MODE_HEIGHT => (v <= MAX_HEIGHT, "0..=768"),
                    _ => (v == FORMAT_NONE || v == FORMAT_XRGB8888, "0 or 1 (XRGB8888)"),
                };
                if !ok {
                    out.push(Violation::new(
                        R5,
                        r(),
                        Some(v.into()),
                        format!("mode value out of range (valid: {limit}); the write was ignored"),
                    ));
                }
            }
            REG_RING_BASE_LO | REG_RING_BASE_HI | REG_RING_SIZE => {
                self.check_reset_first(offset, v, out);
                if self.enabled {
                    out.push(Violation::new(
                        R6,
                        r(),
                        Some(v.into()),
                        "ring register written while the ring is enabled: program RING_BASE/RING_SIZE only with CONTROL.ENABLE = 0; the write was ignored",
                    ));
                    return;
                }
                match offset {
                    REG_RING_BASE_LO => {
                        self.ring_base = (self.ring_base & !0xffff_ffff) | u64::from(v)
                    }
                    REG_RING_BASE_HI => {
                        self.ring_base = (self.ring_base & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => self.ring_size = v,
                }
            }
            REG_RING_TAIL => {
                if !self.enabled {
                    out.push(Violation::new(
                        R8,
                        r(),
                        Some(v.into()),
                        "RING_TAIL written while the ring is disabled: enable the ring (CONTROL.ENABLE) before submitting; the write was ignored",
                    ));
                    return;
                }
                if v >= self.ring_size {
                    out.push(Violation::new(
                        R9,
                        r(),
                        Some(v.into()),
                        format!(
                            "RING_TAIL {v} is outside the ring of {} descriptors (write (tail + 1) % RING_SIZE); the write was ignored",
                            self.ring_size
                        ),
                    ));
                    return;
                }
                let mask = self.ring_size.wrapping_sub(1);
                let before = self.tail.wrapping_sub(self.head) & mask;
                let added = v.wrapping_sub(self.tail) & mask;
                if added != 0 && u64::from(before) + u64::from(added) >= u64::from(self.ring_size) {
                    out.push(Violation::new(
                        R9,
                        r(),
                        Some(v.into()),
                        format!(
                            "ring overflow: {before} descriptor(s) outstanding from RING_HEAD {} plus {added} new would reach the head; at most RING_SIZE - 1 = {} may be outstanding",
                            self.head,
                            self.ring_size.saturating_sub(1)
                        ),
                    ));
                }
                self.tail = v;
            }
            REG_DOORBELL => {
                if !self.bus_master {
                    out.push(Violation::new(
                        R1,
                        r(),
                        Some(v.into()),
                        "doorbell rung while bus mastering is disabled: call pci_set_master() before submitting work",
                    ));
                }
                if !self.enabled {
                    out.push(Violation::new(
                        R8,
                        r(),
                        Some(v.into()),
                        "doorbell rung while the ring is disabled: enable the ring (CONTROL.ENABLE) before submitting; the write was ignored",
                    ));
                    return;
                }
                self.doorbell_tail = self.tail;
            }
            _ => {}
        }
    }

    fn write_control(&mut self, v: u32, out: &mut Vec<Violation>) {
        let r = || reg(REG_CONTROL);
        if v & !CONTROL_VALID != 0 {
            out.push(Violation::new(
                R2,
                r(),
                Some(v.into()),
                format!(
                    "reserved bits {:#x} set in CONTROL (valid: ENABLE|RESET|CLEAR_ERROR = 0x7); the write was ignored",
                    v & !CONTROL_VALID
                ),
            ));
            return;
        }
        if v & CONTROL_RESET != 0 {
            self.reset_view();
            self.reset_seen = true;
            return;
        }
        if v & CONTROL_CLEAR_ERROR != 0 {
            if self.halted == Some(true) && self.outstanding() != 0 {
                self.head = self.head.wrapping_add(1) & self.ring_size.wrapping_sub(1);
            }
            self.halted = None;
        }
        let enable = v & CONTROL_ENABLE != 0;
        if enable && !self.enabled {
            self.check_reset_first(REG_CONTROL, v, out);
            let size = self.ring_size;
            let base = self.ring_base;
            let bytes = u64::from(size) * DESC_SIZE;
            let problem =
                if !(size.is_power_of_two() && (RING_SIZE_MIN..=RING_SIZE_MAX).contains(&size)) {
                    Some(format!(
                    "RING_SIZE {size} is not a power of two in {RING_SIZE_MIN}..={RING_SIZE_MAX}"
                ))
                } else if !base.is_multiple_of(RING_ALIGN) {
                    Some(format!("RING_BASE {base:#x} is not 16-byte aligned"))
                } else if base.checked_add(bytes).is_none() {
                    Some(format!(
                        "the ring at {base:#x} wraps around the address space"
                    ))
                } else {
                    None
                };
            if let Some(p) = problem {
                out.push(Violation::new(
                    R6,
                    r(),
                    Some(v.into()),
                    format!("ring enabled with a malformed ring: {p}; ENABLE stays 0"),
                ));
                return;
            }
            if !self.ram.contains(base, bytes) {
                out.push(Violation::new(
                    R6,
                    r(),
                    Some(v.into()),
                    format!(
                        "the ring at {base:#x}+{bytes:#x} is not in guest RAM: allocate it with dma_alloc_coherent"
                    ),
                ));
            }
            self.enabled = true;
            self.head = 0;
            self.tail = 0;
            self.doorbell_tail = 0;
        } else if !enable && self.enabled {
            let n = self.outstanding();
            if n != 0 {
                out.push(Violation::new(
                    R15,
                    r(),
                    Some(v.into()),
                    format!(
                        "ring disabled while the device owns {n} descriptor(s): wait until RING_HEAD equals the tail (or reset) first"
                    ),
                ));
            }
            self.enabled = false;
        }
    }

    fn ack(&mut self, bits: u32) {
        for (i, (b, _)) in INT_NAMES.iter().enumerate() {
            if bits & b != 0 {
                self.raised[i] = None;
            }
        }
    }

    fn engine_error(&mut self, code: ErrorCode, addr: u64, out: &mut Vec<Violation>) {
        use ErrorCode::*;
        // Register errors are decided by the monitor itself from the write.
        let register_reserved =
            code == ReservedBits && matches!(addr, REG_CONTROL | REG_INT_STATUS | REG_INT_MASK);
        match code {
            None | WrongWidth | UnknownRegister | ReadOnly | BadState | BadMode | BadTail => return,
            BadRing if addr == REG_CONTROL => return,
            _ if register_reserved => return,
            _ => {}
        }
        self.halted = Some(code != NoBusMaster);
        let (rule, text) = match code {
            // Reported at the doorbell or the config write (rule 1).
            NoBusMaster => return,
            DmaFault => (
                R7,
                format!(
                    "engine DMA at {addr:#x} is outside guest RAM: descriptors, command buffers and images must lie in memory the driver allocated (ERROR_CODE DMA_FAULT)"
                ),
            ),
            BadDescriptor => (
                R8,
                format!(
                    "descriptor at {addr:#x} is malformed (buffer 4-byte aligned, length a multiple of 4 in 4..=65536, flags 0): write it completely before RING_TAIL (ERROR_CODE BAD_DESCRIPTOR)"
                ),
            ),
            BadRing => (
                R6,
                format!("the ring at {addr:#x} wraps around the address space (ERROR_CODE BAD_RING)"),
            ),
            other => (
                CMD,
                format!(
                    "command at {addr:#x} rejected by the engine: {} (datasheet §6); the descriptor is skipped on CLEAR_ERROR",
                    other.name()
                ),
            ),
        };
        out.push(Violation::new(rule, "ENGINE", Some(addr), text));
    }

    fn check_acks(&mut self, now: u64, out: &mut Vec<Violation>) {
        for (i, r) in self.raised.iter_mut().enumerate() {
            let Some(r) = r else { continue };
            if r.reported || now.saturating_sub(r.at_ns) < self.ack_timeout_ns {
                continue;
            }
            r.reported = true;
            let bit = INT_NAMES[i].0;
            out.push(Violation::late(
                R12,
                "BAR0 INT_STATUS",
                Some(bit.into()),
                format!(
                    "interrupt {} raised at t={:.3}ms was not acknowledged within {} ms: the handler must write the bits it read back to INT_STATUS",
                    INT_NAMES[i].1,
                    r.at_ns as f64 / 1e6,
                    self.ack_timeout_ns / 1_000_000
                ),
            ));
        }
    }
}

impl Monitor for VgpuMonitor {
    fn observe(&mut self, ev: &Event) -> Vec<Violation> {
        let mut out = Vec::new();
        // First: a deadline that passed before this event is a violation
        // even if this event is the (late) acknowledgement.
        self.check_acks(ev.t_ns, &mut out);
        match &ev.kind {
            EventKind::BarWrite {
                bar: 0,
                offset,
                width,
                value,
                ..
            } => self.bar_write(*offset, *width, *value, &mut out),
            EventKind::BarRead {
                bar: 0,
                offset,
                width,
                value,
                ..
            } if *width != 4 || !offset.is_multiple_of(4) => out.push(Violation::new(
                R2,
                reg(offset & !3),
                Some(*value),
                format!(
                    "{width}-byte read at offset {offset:#x}: read BAR0 registers with 32-bit aligned reads (ioread32)"
                ),
            )),
            EventKind::ConfigWrite { command, .. } => {
                let on = command & PCI_COMMAND_MASTER != 0;
                if self.bus_master && !on && self.outstanding() != 0 {
                    out.push(Violation::new(
                        R1,
                        "CONFIG COMMAND",
                        Some((*command).into()),
                        format!(
                            "bus mastering disabled while the device owns {} descriptor(s): wait for the ring to drain (or reset) first",
                            self.outstanding()
                        ),
                    ));
                }
                self.bus_master = on;
            }
            EventKind::Vgpu(e) => match *e {
                VgpuEvent::DescriptorDone { index, .. } if self.ring_size.is_power_of_two() => {
                    self.head = index.wrapping_add(1) & (self.ring_size - 1);
                }
                VgpuEvent::InterruptRaised { bits } => {
                    for (i, (b, _)) in INT_NAMES.iter().enumerate() {
                        if bits & b != 0 && self.raised[i].is_none() {
                            self.raised[i] = Some(Raised {
                                at_ns: ev.t_ns,
                                reported: false,
                            });
                        }
                    }
                }
                VgpuEvent::InterruptAcked { bits } => self.ack(bits),
                VgpuEvent::Error { code, addr } => self.engine_error(code, addr, &mut out),
                _ => {}
            },
            _ => {}
        }
        out
    }

    fn finish(&mut self, t_ns: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check_acks(t_ns, &mut out);
        out
    }

    fn register_name(&self, bar: u8, offset: u64) -> Option<&'static str> {
        match bar {
            0 => reg_name(offset),
            2 => Some("FRAMEBUFFER"),
            _ => None,
        }
    }
}
