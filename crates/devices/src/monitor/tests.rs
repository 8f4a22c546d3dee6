//! Monitor tests: one test provoking each rule, correct sequences producing
//! none, the recorder (report lines, RIP queue, strict stop, trace lines)
//! and the whole path through a real PCI bus and vgpu.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::edu::{self as edu_rules, EduMonitor};
use super::vgpu::{self as vgpu_rules, VgpuMonitor};
use super::*;
use crate::edu::{
    DMA_BUF_ADDR, DMA_CMD_IRQ, DMA_CMD_START, DMA_CMD_TO_RAM, IRQ_DMA, REG_DMA_CMD, REG_DMA_COUNT,
    REG_DMA_DST, REG_DMA_SRC, REG_FACTORIAL, REG_ID, REG_IRQ_ACK, REG_IRQ_RAISE, REG_IRQ_STATUS,
    REG_LIVENESS, REG_STATUS,
};
use crate::pci::config::{PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY};
use crate::vgpu::regs::*;
use crate::vgpu::{DmaKind, ErrorCode, Event as VgpuEvent};

const MS: u64 = 1_000_000;
const RAM_END: u64 = 64 << 20;

fn ram() -> RamMap {
    RamMap::new(std::iter::once(0..RAM_END))
}

/// Feeds events with a clock and collects the rule ids broken.
struct Feed<M: Monitor> {
    m: M,
    t: u64,
    broken: Vec<Violation>,
}

impl<M: Monitor> Feed<M> {
    fn new(m: M) -> Self {
        Feed {
            m,
            t: 0,
            broken: Vec::new(),
        }
    }
    fn ev(&mut self, kind: EventKind) -> &mut Self {
        self.t = self.t.saturating_add(1000);
        let e = Event {
            t_ns: self.t,
            vcpu: Some(0),
            kind,
        };
        self.broken.extend(self.m.observe(&e));
        self
    }
    fn wait_ms(&mut self, ms: u64) -> &mut Self {
        self.t = self.t.saturating_add(ms.saturating_mul(MS));
        self
    }
    fn w(&mut self, off: u64, v: u64) -> &mut Self {
        self.write(off, 4, v)
    }
    fn write(&mut self, off: u64, width: u8, v: u64) -> &mut Self {
        self.ev(EventKind::BarWrite {
            bar: 0,
            offset: off,
            width,
            value: v,
            ns: 0,
        })
    }
    fn read(&mut self, off: u64, width: u8) -> &mut Self {
        self.ev(EventKind::BarRead {
            bar: 0,
            offset: off,
            width,
            value: 0,
            ns: 0,
        })
    }
    fn command(&mut self, command: u16) -> &mut Self {
        self.ev(EventKind::ConfigWrite {
            offset: 4,
            width: 2,
            value: command.into(),
            command,
            ns: 0,
        })
    }
    fn model(&mut self, e: VgpuEvent) -> &mut Self {
        self.ev(EventKind::Vgpu(e))
    }
    fn finish(&mut self) -> &mut Self {
        self.t = self.t.saturating_add(1000);
        let v = self.m.finish(self.t);
        self.broken.extend(v);
        self
    }
    fn rules(&self) -> Vec<&'static str> {
        self.broken.iter().map(|v| v.rule).collect()
    }
    fn take(&mut self) -> Vec<&'static str> {
        let r = self.rules();
        self.broken.clear();
        r
    }
}

// ---- vgpu ----

const RING: u64 = 0x10_0000;
const CMDBUF: u64 = 0x20_0000;

fn vgpu() -> Feed<VgpuMonitor> {
    Feed::new(VgpuMonitor::new(ram(), Duration::from_millis(20)))
}

/// Probe and set up as the datasheet's worked example (§11), up to the
/// first submission.
fn vgpu_ready() -> Feed<VgpuMonitor> {
    let mut f = vgpu();
    f.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        .w(REG_CONTROL, CONTROL_RESET.into())
        .w(REG_MODE_WIDTH, 640)
        .w(REG_MODE_HEIGHT, 480)
        .w(REG_MODE_FORMAT, FORMAT_XRGB8888.into())
        .w(REG_RING_BASE_LO, RING)
        .w(REG_RING_BASE_HI, 0)
        .w(REG_RING_SIZE, 8)
        .w(REG_CONTROL, CONTROL_ENABLE.into())
        .w(REG_INT_MASK, (INT_FENCE | INT_ERROR).into());
    f
}

/// One submission and its completion, as the engine reports it.
fn vgpu_submit_and_complete(f: &mut Feed<VgpuMonitor>, index: u32, ack: bool) {
    let tail = (index + 1) % 8;
    f.w(REG_RING_TAIL, tail.into())
        .model(VgpuEvent::Doorbell { tail })
        .w(REG_DOORBELL, 1)
        .model(VgpuEvent::DmaRead {
            kind: DmaKind::Descriptor,
            addr: RING + 16 * u64::from(index),
            len: 16,
        })
        .model(VgpuEvent::DmaRead {
            kind: DmaKind::CommandBuffer,
            addr: CMDBUF,
            len: 32,
        })
        .model(VgpuEvent::Fence { value: index + 1 })
        .model(VgpuEvent::DescriptorDone {
            index,
            addr: CMDBUF,
            len: 32,
        })
        .model(VgpuEvent::InterruptRaised { bits: INT_FENCE });
    if ack {
        f.model(VgpuEvent::InterruptAcked { bits: INT_FENCE })
            .w(REG_INT_STATUS, INT_FENCE.into());
    }
}

#[test]
fn vgpu_worked_example_breaks_no_rule() {
    let mut f = vgpu_ready();
    for i in 0..20 {
        vgpu_submit_and_complete(&mut f, i % 8, true);
    }
    // Mode change while idle, ring disabled while idle, teardown.
    f.w(REG_MODE_WIDTH, 320)
        .w(REG_INT_MASK, 0)
        .w(REG_CONTROL, 0)
        .w(REG_RING_SIZE, 16)
        .w(REG_SCRATCH, 0xffff_ffff)
        .w(REG_CONTROL, CONTROL_RESET.into())
        .read(REG_STATUS, 4)
        .finish();
    assert_eq!(f.rules(), Vec::<&str>::new(), "{:?}", f.broken);
}

#[test]
fn vgpu_r1_doorbell_without_bus_master() {
    let mut f = vgpu_ready();
    f.command(PCI_COMMAND_MEMORY);
    f.w(REG_RING_TAIL, 1).w(REG_DOORBELL, 1);
    assert_eq!(f.take(), vec![vgpu_rules::R1]);
    // The engine's NO_BUS_MASTER error is not reported twice.
    f.model(VgpuEvent::Error {
        code: ErrorCode::NoBusMaster,
        addr: RING,
    });
    assert!(f.take().is_empty());
}

#[test]
fn vgpu_r1_bus_master_off_with_work_outstanding() {
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 1).w(REG_DOORBELL, 1);
    f.command(PCI_COMMAND_MEMORY);
    assert_eq!(f.take(), vec![vgpu_rules::R1]);
    // Off while idle is fine.
    let mut f = vgpu_ready();
    f.command(PCI_COMMAND_MEMORY);
    assert!(f.take().is_empty());
}

#[test]
fn vgpu_r2_widths_registers_and_reserved_bits() {
    let mut f = vgpu_ready();
    f.write(REG_SCRATCH, 2, 0x1234);
    f.write(REG_SCRATCH + 1, 4, 0x1234);
    f.write(REG_SCRATCH, 8, 0x1234);
    f.w(0x200, 1); // no register
    f.w(REG_STATUS, 1); // read-only
    f.w(REG_CONTROL, 0x8); // reserved bit
    f.w(REG_INT_MASK, 0xffff_ffff);
    f.w(REG_INT_STATUS, 0x10);
    f.read(REG_STATUS, 1); // a trapped narrow read
    assert_eq!(f.take(), vec![vgpu_rules::R2; 9]);
    // The model's own register errors are not reported again.
    f.model(VgpuEvent::Error {
        code: ErrorCode::WrongWidth,
        addr: REG_SCRATCH,
    })
    .model(VgpuEvent::Error {
        code: ErrorCode::ReservedBits,
        addr: REG_CONTROL,
    });
    assert!(f.take().is_empty());
}

#[test]
fn vgpu_r4_programming_before_reset() {
    let mut f = vgpu();
    f.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        .w(REG_MODE_WIDTH, 640)
        .w(REG_MODE_HEIGHT, 480);
    assert_eq!(f.take(), vec![vgpu_rules::R4], "reported once");
}

#[test]
fn vgpu_r5_mode_while_busy_and_out_of_range() {
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 1)
        .w(REG_DOORBELL, 1)
        .w(REG_MODE_WIDTH, 320);
    assert_eq!(f.take(), vec![vgpu_rules::R5]);
    // Once the engine reports the descriptor done, the device is idle.
    f.model(VgpuEvent::DescriptorDone {
        index: 0,
        addr: CMDBUF,
        len: 32,
    })
    .w(REG_MODE_WIDTH, 320);
    assert!(f.take().is_empty());
    f.w(REG_MODE_WIDTH, 1025)
        .w(REG_MODE_HEIGHT, 769)
        .w(REG_MODE_FORMAT, 2);
    assert_eq!(f.take(), vec![vgpu_rules::R5; 3]);
}

#[test]
fn vgpu_r6_ring_registers_while_enabled_and_malformed_rings() {
    let mut f = vgpu_ready();
    f.w(REG_RING_BASE_LO, 0x3000).w(REG_RING_SIZE, 16);
    assert_eq!(f.take(), vec![vgpu_rules::R6; 2]);
    for (base, size) in [(RING + 8, 8), (RING, 3), (RING, 8192), (RING, 0)] {
        let mut f = vgpu();
        f.w(REG_CONTROL, CONTROL_RESET.into())
            .w(REG_RING_BASE_LO, base)
            .w(REG_RING_SIZE, size)
            .w(REG_CONTROL, CONTROL_ENABLE.into());
        assert_eq!(f.take(), vec![vgpu_rules::R6], "{base:#x}/{size}");
        // Not enabled: a doorbell now is rule 8.
        f.w(REG_DOORBELL, 1);
        assert!(f.take().contains(&vgpu_rules::R8));
    }
    // Well-formed but not in RAM.
    let mut f = vgpu();
    f.w(REG_CONTROL, CONTROL_RESET.into())
        .w(REG_RING_BASE_LO, 0xfee0_0000)
        .w(REG_RING_SIZE, 8)
        .w(REG_CONTROL, CONTROL_ENABLE.into());
    assert_eq!(f.take(), vec![vgpu_rules::R6]);
}

#[test]
fn vgpu_r7_engine_dma_outside_ram() {
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 1)
        .w(REG_DOORBELL, 1)
        .model(VgpuEvent::Error {
            code: ErrorCode::DmaFault,
            addr: 0x1_0000_0000,
        });
    assert_eq!(f.take(), vec![vgpu_rules::R7]);
    assert_eq!(f.broken.len(), 0);
}

#[test]
fn vgpu_r8_submission_while_disabled_and_bad_descriptor() {
    let mut f = vgpu();
    f.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        .w(REG_CONTROL, CONTROL_RESET.into())
        .w(REG_RING_TAIL, 1)
        .w(REG_DOORBELL, 1);
    assert_eq!(f.take(), vec![vgpu_rules::R8; 2]);
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 1)
        .w(REG_DOORBELL, 1)
        .model(VgpuEvent::Error {
            code: ErrorCode::BadDescriptor,
            addr: RING,
        });
    assert_eq!(f.take(), vec![vgpu_rules::R8]);
}

#[test]
fn vgpu_r9_tail_outside_ring_and_overflow() {
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 8);
    assert_eq!(f.take(), vec![vgpu_rules::R9]);
    // 7 outstanding is the most an 8-entry ring holds.
    f.w(REG_RING_TAIL, 7).w(REG_DOORBELL, 1);
    assert!(f.take().is_empty());
    f.w(REG_RING_TAIL, 0);
    assert_eq!(f.take(), vec![vgpu_rules::R9]);
}

#[test]
fn vgpu_r12_interrupt_never_acknowledged() {
    // Found lazily on a later event.
    let mut f = vgpu_ready();
    vgpu_submit_and_complete(&mut f, 0, false);
    f.wait_ms(30).w(REG_SCRATCH, 1);
    assert_eq!(f.take(), vec![vgpu_rules::R12]);
    assert!(!f.broken.iter().any(|v| v.caused_by_event));
    // A late acknowledgement is still late; reported once.
    let mut f = vgpu_ready();
    vgpu_submit_and_complete(&mut f, 0, false);
    f.wait_ms(30)
        .w(REG_INT_STATUS, INT_FENCE.into())
        .w(REG_SCRATCH, 1);
    assert_eq!(f.take(), vec![vgpu_rules::R12]);
    // Found when the VM stops.
    let mut f = vgpu_ready();
    vgpu_submit_and_complete(&mut f, 0, false);
    f.wait_ms(30).finish();
    assert_eq!(f.take(), vec![vgpu_rules::R12]);
    // Acknowledged (or masked) in time: fine.
    let mut f = vgpu_ready();
    vgpu_submit_and_complete(&mut f, 0, false);
    f.wait_ms(5).w(REG_INT_MASK, 0).wait_ms(100).finish();
    assert!(f.take().is_empty());
}

#[test]
fn vgpu_r15_ring_disabled_with_work_outstanding() {
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 1).w(REG_DOORBELL, 1).w(REG_CONTROL, 0);
    assert_eq!(f.take(), vec![vgpu_rules::R15]);
}

#[test]
fn vgpu_command_errors_and_clear_error_skip() {
    let mut f = vgpu_ready();
    f.w(REG_RING_TAIL, 2)
        .w(REG_DOORBELL, 1)
        .model(VgpuEvent::Error {
            code: ErrorCode::UnknownOpcode,
            addr: CMDBUF,
        });
    assert_eq!(f.take(), vec![vgpu_rules::CMD]);
    // CLEAR_ERROR skips the faulting descriptor; the second completes and
    // the ring is idle again: a mode change is fine.
    f.w(REG_CONTROL, (CONTROL_ENABLE | CONTROL_CLEAR_ERROR).into())
        .model(VgpuEvent::DescriptorDone {
            index: 1,
            addr: CMDBUF,
            len: 32,
        })
        .w(REG_MODE_WIDTH, 100);
    assert!(f.take().is_empty(), "{:?}", f.broken);
}

#[test]
fn vgpu_arbitrary_guest_values_never_panic() {
    let mut f = vgpu();
    let offsets = [0u64, 1, 3, 0x14, 0x48, 0x50, 0x54, 0xffc, 0xfff, u64::MAX];
    let values = [0u64, 1, 3, 0x7, 0xffff_ffff, u64::MAX];
    for &o in &offsets {
        for &v in &values {
            for w in [0u8, 1, 2, 3, 4, 8, 255] {
                f.write(o, w, v).read(o, w);
            }
            f.command(v as u16);
        }
    }
    for code in ErrorCode::ALL {
        f.model(VgpuEvent::Error {
            code,
            addr: u64::MAX,
        });
    }
    f.model(VgpuEvent::DescriptorDone {
        index: u32::MAX,
        addr: 0,
        len: 0,
    })
    .model(VgpuEvent::InterruptRaised { bits: u32::MAX })
    .wait_ms(u64::MAX / MS)
    .finish();
}

// ---- edu ----

fn edu() -> Feed<EduMonitor> {
    let mut f = Feed::new(EduMonitor::new(ram(), Duration::from_millis(20)));
    f.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    f
}

fn edu_dma(f: &mut Feed<EduMonitor>, src: u64, dst: u64, count: u64, cmd: u64) {
    f.write(REG_DMA_SRC, 8, src)
        .write(REG_DMA_DST, 8, dst)
        .write(REG_DMA_COUNT, 8, count)
        .write(REG_DMA_CMD, 8, cmd);
}

#[test]
fn edu_correct_driver_breaks_no_rule() {
    let mut f = edu();
    f.read(REG_ID, 4)
        .w(REG_LIVENESS, 0x1234)
        .read(REG_LIVENESS, 4)
        .w(REG_STATUS, 0x80)
        .w(REG_FACTORIAL, 5)
        .read(REG_FACTORIAL, 4)
        .read(REG_IRQ_STATUS, 4)
        .w(REG_IRQ_ACK, 1)
        .w(REG_IRQ_RAISE, 0x1000)
        .w(REG_IRQ_ACK, 0x1000);
    edu_dma(
        &mut f,
        0x10_0000,
        DMA_BUF_ADDR,
        4096,
        DMA_CMD_START | DMA_CMD_IRQ,
    );
    f.w(REG_IRQ_ACK, IRQ_DMA.into());
    edu_dma(
        &mut f,
        DMA_BUF_ADDR + 0x800,
        0x20_0000,
        0x800,
        DMA_CMD_START | DMA_CMD_TO_RAM,
    );
    // 32-bit halves of the 64-bit registers, and a zero-byte transfer.
    f.w(REG_DMA_SRC, 0x1000)
        .w(REG_DMA_DST, DMA_BUF_ADDR)
        .w(REG_DMA_COUNT, 0)
        .w(REG_DMA_CMD, DMA_CMD_START);
    f.wait_ms(100).finish();
    assert_eq!(f.rules(), Vec::<&str>::new(), "{:?}", f.broken);
}

#[test]
fn edu_e1_wrong_widths() {
    let mut f = edu();
    f.write(REG_LIVENESS, 2, 1)
        .read(REG_ID, 8)
        .write(REG_DMA_SRC, 2, 1)
        .read(REG_DMA_CMD, 1);
    assert_eq!(f.take(), vec![edu_rules::E1; 4]);
}

#[test]
fn edu_e2_not_a_register_or_wrong_direction() {
    let mut f = edu();
    f.w(0x10, 1)
        .read(0x84, 4)
        .w(REG_ID, 1)
        .w(REG_IRQ_STATUS, 1)
        .read(REG_IRQ_RAISE, 4)
        .read(REG_IRQ_ACK, 4);
    assert_eq!(f.take(), vec![edu_rules::E2; 6]);
}

#[test]
fn edu_e3_dma_without_bus_master() {
    let mut f = edu();
    f.command(PCI_COMMAND_MEMORY);
    edu_dma(&mut f, 0x10_0000, DMA_BUF_ADDR, 16, DMA_CMD_START);
    assert_eq!(f.take(), vec![edu_rules::E3]);
}

#[test]
fn edu_e4_dma_outside_ram() {
    let m = EduMonitor::new(ram(), Duration::from_millis(20)).with_dma_mask(u64::MAX);
    let mut f = Feed::new(m);
    f.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    edu_dma(&mut f, RAM_END - 8, DMA_BUF_ADDR, 16, DMA_CMD_START);
    edu_dma(
        &mut f,
        DMA_BUF_ADDR,
        0xfee0_0000,
        16,
        DMA_CMD_START | DMA_CMD_TO_RAM,
    );
    assert_eq!(f.take(), vec![edu_rules::E4; 2]);
}

#[test]
fn edu_e5_device_range_outside_buffer() {
    let mut f = edu();
    edu_dma(
        &mut f,
        0x10_0000,
        DMA_BUF_ADDR + 0xf00,
        0x200,
        DMA_CMD_START,
    );
    edu_dma(&mut f, 0x10_0000, 0x1000, 16, DMA_CMD_START);
    edu_dma(
        &mut f,
        u64::MAX,
        0x10_0000,
        16,
        DMA_CMD_START | DMA_CMD_TO_RAM,
    );
    assert_eq!(f.take(), vec![edu_rules::E5; 3]);
}

#[test]
fn edu_e6_guest_address_above_dma_mask() {
    let mut f = edu();
    edu_dma(&mut f, 0x1000_1000, DMA_BUF_ADDR, 16, DMA_CMD_START);
    assert_eq!(f.take(), vec![edu_rules::E6]);
}

#[test]
fn edu_e7_interrupt_never_acknowledged() {
    let mut f = edu();
    f.w(REG_IRQ_RAISE, 0x4).wait_ms(30).read(REG_IRQ_STATUS, 4);
    assert_eq!(f.take(), vec![edu_rules::E7]);
    let mut f = edu();
    edu_dma(
        &mut f,
        0x10_0000,
        DMA_BUF_ADDR,
        16,
        DMA_CMD_START | DMA_CMD_IRQ,
    );
    f.wait_ms(30).finish();
    assert_eq!(f.take(), vec![edu_rules::E7]);
}

// ---- RamMap ----

#[test]
fn ram_map_contains() {
    let r = RamMap::new([0..0x1000, 0x1000..0x2000, 0x10_0000..0x20_0000]);
    assert!(r.contains(0xff0, 0x20), "adjacent ranges join");
    assert!(r.contains(0x5000, 0));
    assert!(!r.contains(0x1ff0, 0x20));
    assert!(!r.contains(u64::MAX, 2));
    assert!(r.contains(0x10_0000, 0x10_0000));
    assert!(!r.contains(0x10_0000, 0x10_0001));
}

// ---- Recorder ----

type Lines = Arc<Mutex<Vec<String>>>;

/// A Write that appends to a shared buffer.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn recorder(strict: bool) -> (Arc<Recorder>, Lines, Buf, Arc<Mutex<Vec<String>>>) {
    let lines: Lines = Arc::default();
    let stops: Arc<Mutex<Vec<String>>> = Arc::default();
    let trace = Buf::default();
    let l = lines.clone();
    let s = stops.clone();
    let rec = Recorder::new(RecorderOptions {
        monitors: true,
        strict,
        trace: Some(Box::new(trace.clone())),
        report: Box::new(move |r| l.lock().unwrap().push(r.to_string())),
        stop: Some(Box::new(move |r| s.lock().unwrap().push(r.to_string()))),
    });
    (rec, lines, trace, stops)
}

fn doorbell(rec: &Recorder, dev: DeviceId, vcpu: u32) {
    rec.record(
        dev,
        Some(vcpu),
        EventKind::BarWrite {
            bar: 0,
            offset: REG_DOORBELL,
            width: 4,
            value: 1,
            ns: 1500,
        },
    );
}

#[test]
fn report_line_waits_for_the_vcpu_rip_and_has_every_field() {
    let (rec, lines, trace, stops) = recorder(false);
    let dev = rec.add_device("vgpu", Some(Box::new(vgpu().m)));
    doorbell(&rec, dev, 1);
    assert!(lines.lock().unwrap().is_empty(), "waits for the RIP");
    assert!(rec.needs_rip(1) && !rec.needs_rip(0));
    rec.flush_vcpu(1, Some(0x1022df));
    assert!(!rec.needs_rip(1));
    let l = lines.lock().unwrap().clone();
    // Doorbell with no bus master and the ring disabled: R1 and R8.
    assert_eq!(l.len(), 2, "{l:?}");
    let re = &l[0];
    assert!(re.starts_with("t="), "{re}");
    assert!(
        re.contains("ms vcpu=1 rip=0x1022df vgpu BAR0 DOORBELL=0x1: rule vgpu.R1 broken: doorbell rung while bus mastering is disabled"),
        "{re}"
    );
    assert!(stops.lock().unwrap().is_empty(), "not strict");
    assert_eq!(rec.violations(), 2);
    assert_eq!(rec.violations_by_device(), vec![("vgpu".to_string(), 2)]);
    rec.finish(&[("exits_mmio", 3)]);
    let text = String::from_utf8(trace.0.lock().unwrap().clone()).unwrap();
    let t: Vec<&str> = text.lines().collect();
    assert!(t[0].starts_with("{\"t\":0,\"ev\":\"start\""), "{}", t[0]);
    assert!(
        t[1].contains("\"ev\":\"device\",\"dev\":\"vgpu\""),
        "{}",
        t[1]
    );
    assert!(
        t[2].contains("\"ev\":\"bar_write\",\"dev\":\"vgpu\",\"vcpu\":1,\"bar\":0,\"off\":84,\"width\":4,\"value\":1,\"ns\":1500,\"reg\":\"DOORBELL\"}"),
        "{}",
        t[2]
    );
    assert!(
        t[3].contains("\"ev\":\"violation\"") && t[3].contains("\"rip\":1057503"),
        "{}",
        t[3]
    );
    assert!(t[3].contains("\"rule\":\"vgpu.R1\""), "{}", t[3]);
    assert!(t
        .last()
        .unwrap()
        .contains("\"ev\":\"stop\",\"violations\":2,\"exits_mmio\":3}"));
    // After finish, events are ignored.
    doorbell(&rec, dev, 0);
    assert_eq!(rec.violations(), 2);
}

#[test]
fn strict_mode_stops_once_and_finish_prints_what_waits() {
    let (rec, lines, _, stops) = recorder(true);
    let dev = rec.add_device("vgpu", Some(Box::new(vgpu().m)));
    doorbell(&rec, dev, 0);
    doorbell(&rec, dev, 2);
    rec.flush_vcpu(0, None);
    assert_eq!(stops.lock().unwrap().len(), 1, "one stop request");
    assert!(stops.lock().unwrap()[0].contains("rule vgpu.R1"));
    assert!(lines.lock().unwrap()[0].contains("vcpu=0 rip=-"));
    // vCPU 2 never flushed: finish prints its reports without a RIP.
    assert_eq!(rec.finish(&[]), 4);
    assert_eq!(stops.lock().unwrap().len(), 1);
    assert!(lines.lock().unwrap()[2].contains("vcpu=2 rip=-"));
}

#[test]
fn json_strings_are_escaped() {
    let l = json::Line::new("x\"y", 5).str("k", "a\\b\n\u{1}").finish();
    assert_eq!(l, "{\"t\":5,\"ev\":\"x\\\"y\",\"k\":\"a\\\\b\\n\\u0001\"}");
}

#[test]
fn monitors_off_records_trace_only() {
    let trace = Buf::default();
    let rec = Recorder::new(RecorderOptions {
        monitors: false,
        trace: Some(Box::new(trace.clone())),
        ..RecorderOptions::new()
    });
    let dev = rec.add_device("vgpu", Some(Box::new(vgpu().m)));
    doorbell(&rec, dev, 0);
    assert!(!rec.needs_rip(0));
    assert_eq!(rec.finish(&[]), 0);
    let text = String::from_utf8(trace.0.lock().unwrap().clone()).unwrap();
    // Register names still come from the (idle) monitor.
    assert!(text.contains("\"reg\":\"DOORBELL\"") && !text.contains("\"ev\":\"violation\""));
}

// ---- the whole path: PCI bus -> vgpu -> engine -> recorder ----

#[test]
fn worked_example_through_the_pci_bus_and_engine_breaks_no_rule() {
    use crate::irq::FakeIrq;
    use crate::pci::bus::{PciAddress, PciBus, PciWindows};
    use crate::pci::config::{PciSpace, PCI_COMMAND};
    use crate::pci::device::PciDevice;
    use crate::pci::msi::FakeMsiSink;
    use crate::vgpu::command::{encode_buffer, Command, Rect};
    use crate::vgpu::{VecFrame, VgpuPci};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let (rec, lines, trace, _) = recorder(false);
    let id = rec.add_device(
        "vgpu",
        Some(Box::new(VgpuMonitor::new(
            RamMap::from_memory(&mem),
            Duration::from_secs(10),
        ))),
    );
    let r2 = rec.clone();
    let dev = VgpuPci::with_dma_trace(
        "vgpu",
        mem.clone(),
        Arc::new(VecFrame::new(BAR2_SIZE as usize)),
        Arc::new(FakeIrq::new()),
        FakeMsiSink::new(),
        Box::new(move |e| r2.record(id, None, EventKind::Vgpu(e))),
        Some(rec.dma_hook(id)),
    )
    .unwrap();
    let page = dev.register_page(0).unwrap();
    let mut bus = PciBus::new(PciWindows {
        mmio_base: 0xc000_0000,
        mmio_size: 0x1000_0000,
        io_base: 0xc000,
        io_size: 0x4000,
    })
    .unwrap();
    bus.add_device(1, "vgpu", Arc::new(Mutex::new(dev)), None)
        .unwrap();
    bus.set_observer(rec.pci_observer(&[(1, id)]));
    let bus = Arc::new(bus);
    let maps = bus.assign_bars().unwrap();
    let bar0 = maps.iter().find(|m| m.bar == 0).unwrap().base;
    let cfg = PciAddress {
        bus: 0,
        device: 1,
        function: 0,
        register: PCI_COMMAND as u16,
    };
    let cmd = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    bus.config_write_by(cfg, &cmd.to_le_bytes(), Some(0));
    let w = |off: u64, v: u32| {
        assert!(bus.bar_write_by(PciSpace::Mmio, bar0 + off, &v.to_le_bytes(), Some(0)));
    };
    w(REG_CONTROL, CONTROL_RESET);
    w(REG_MODE_WIDTH, 640);
    w(REG_MODE_HEIGHT, 480);
    w(REG_MODE_FORMAT, FORMAT_XRGB8888);
    w(REG_RING_BASE_LO, 0x1000);
    w(REG_RING_BASE_HI, 0);
    w(REG_RING_SIZE, 8);
    w(REG_CONTROL, CONTROL_ENABLE);
    w(REG_INT_MASK, INT_FENCE | INT_ERROR);
    for i in 0..12u32 {
        let cmds = [
            Command::FillRect {
                rect: Rect {
                    x: 10,
                    y: 20,
                    w: 100,
                    h: 50,
                },
                color: 0x00ff_0000,
            },
            Command::Fence { value: i + 1 },
        ];
        let buf = encode_buffer(&cmds);
        mem.write_slice(&buf, GuestAddress(0x2000)).unwrap();
        let slot = u64::from(i % 8);
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&0x2000u64.to_le_bytes());
        desc[8..12].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        mem.write_slice(&desc, GuestAddress(0x1000 + 16 * slot))
            .unwrap();
        w(REG_RING_TAIL, (i + 1) % 8);
        w(REG_DOORBELL, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while page.get(REG_FENCE_COMPLETED as usize) != i + 1 {
            assert!(std::time::Instant::now() < deadline, "fence {i}");
            std::thread::yield_now();
        }
        // The interrupt handler: read INT_STATUS (the page), ack it.
        let s = page.get(REG_INT_STATUS as usize);
        w(REG_INT_STATUS, s);
        // Idle again (the page says so): a mode write must not be
        // reported, however the engine's events interleave.
        while page.get(REG_RING_HEAD as usize) != (i + 1) % 8 {
            std::thread::yield_now();
        }
        w(REG_MODE_WIDTH, 640);
    }
    w(REG_CONTROL, CONTROL_RESET);
    assert_eq!(rec.finish(&[]), 0, "{:?}", lines.lock().unwrap());
    let text = String::from_utf8(trace.0.lock().unwrap().clone()).unwrap();
    let count = |pat: &str| text.lines().filter(|l| l.contains(pat)).count();
    assert_eq!(count("\"reg\":\"DOORBELL\""), 12);
    assert_eq!(count("\"what\":\"fence\""), 12);
    assert_eq!(count("\"ev\":\"cfg_write\""), 1);
    // Descriptor and command buffer per submission.
    assert_eq!(count("\"ev\":\"dma\""), 24);
}
