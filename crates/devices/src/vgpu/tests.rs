//! Device-level tests: registers, state rules, the ring engine end to end
//! over fake guest memory, the worker thread, and a randomized no-panic run.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::command::encode_buffer;
use super::raster::pixel;
use super::regs::*;
use super::*;
use crate::irq::FakeIrq;

const MEM_BASE: u64 = 0x10_0000;
const MEM_LEN: usize = 0x4_0000;
const RING: u64 = MEM_BASE;
const BUFS: u64 = MEM_BASE + 0x1000;
const IMAGE: u64 = MEM_BASE + 0x2_0000;

fn rd(d: &Vgpu, off: u64) -> u32 {
    d.read_reg(off, 4) as u32
}

fn wr(d: &mut Vgpu, off: u64, v: u32) -> Vec<Event> {
    d.write_reg(off, 4, u64::from(v))
}

fn errors(ev: &[Event]) -> Vec<ErrorCode> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

struct Rig {
    dev: Vgpu,
    mem: VecMemory,
    fb: Vec<u8>,
    intx: Arc<FakeIrq>,
    msis: Arc<AtomicU32>,
    next_buf: u64,
}

impl Rig {
    /// The worked example of the datasheet: mode 64x48, 8-entry ring,
    /// every interrupt enabled, bus master on.
    fn new() -> Rig {
        let mut dev = Vgpu::new();
        let intx = Arc::new(FakeIrq::new());
        let msis = Arc::new(AtomicU32::new(0));
        let m = msis.clone();
        dev.set_intx(intx.clone());
        dev.set_msi(Arc::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        }));
        let mut ev = dev.set_bus_master(true);
        for (off, v) in [
            (REG_MODE_WIDTH, 64),
            (REG_MODE_HEIGHT, 48),
            (REG_MODE_FORMAT, FORMAT_XRGB8888),
            (REG_RING_BASE_LO, RING as u32),
            (REG_RING_BASE_HI, 0),
            (REG_RING_SIZE, 8),
            (REG_INT_MASK, INT_FENCE | INT_ERROR),
            (REG_CONTROL, CONTROL_ENABLE),
        ] {
            ev.extend(wr(&mut dev, off, v));
        }
        assert_eq!(errors(&ev), vec![]);
        Rig {
            dev,
            mem: VecMemory::new(MEM_BASE, MEM_LEN),
            fb: vec![0; BAR2_SIZE as usize],
            intx,
            msis,
            next_buf: BUFS,
        }
    }

    /// Write a descriptor at RING_TAIL pointing at `buf`, advance RING_TAIL.
    fn push_raw(&mut self, addr: u64, len: u32, flags: u32) {
        let tail = rd(&self.dev, REG_RING_TAIL);
        let mut d = Vec::new();
        d.extend(addr.to_le_bytes());
        d.extend(len.to_le_bytes());
        d.extend(flags.to_le_bytes());
        assert!(self.mem.write(RING + u64::from(tail) * DESC_SIZE, &d));
        let ev = wr(&mut self.dev, REG_RING_TAIL, (tail + 1) % 8);
        assert_eq!(errors(&ev), vec![]);
    }

    fn push(&mut self, cmds: &[Command]) -> u64 {
        let bytes = encode_buffer(cmds);
        let addr = self.next_buf;
        assert!(self.mem.write(addr, &bytes));
        self.next_buf += 0x1000;
        self.push_raw(addr, bytes.len() as u32, 0);
        addr
    }

    fn doorbell(&mut self) -> Vec<Event> {
        wr(&mut self.dev, REG_DOORBELL, 1)
    }

    fn run(&mut self) -> Vec<Event> {
        self.dev.process(&self.mem, &mut self.fb)
    }

    fn px(&self, x: u32, y: u32) -> u32 {
        pixel(&self.fb, &self.dev.geometry().unwrap(), x, y).unwrap()
    }
}

fn fill(x: u32, y: u32, w: u32, h: u32, color: u32) -> Command {
    Command::FillRect {
        rect: Rect { x, y, w, h },
        color,
    }
}

#[test]
fn reset_state_and_identity() {
    let d = Vgpu::new();
    assert_eq!(rd(&d, REG_ID), 0x0001_7AB5);
    assert_eq!(rd(&d, REG_VERSION), 0x0001_0000);
    assert_eq!(rd(&d, REG_FB_SIZE), 0x40_0000);
    assert_eq!(rd(&d, REG_MAX_SIZE), (768 << 16) | 1024);
    assert_eq!(rd(&d, REG_STATUS), STATUS_RING_EMPTY);
    for off in (0x10..BAR0_SIZE).step_by(4) {
        if off != REG_STATUS {
            assert_eq!(rd(&d, off), 0, "{off:#x}");
        }
    }
    // The register page is exactly what reads return.
    let page = d.register_page();
    for off in (0..BAR0_SIZE).step_by(4) {
        assert_eq!(page[(off / 4) as usize], rd(&d, off));
    }
}

#[test]
fn reads_of_any_width_are_page_bytes_without_side_effects() {
    let d = Vgpu::new();
    assert_eq!(d.read_reg(REG_ID, 1), 0xB5);
    assert_eq!(d.read_reg(REG_ID + 1, 1), 0x7A);
    assert_eq!(d.read_reg(REG_ID + 2, 2), 0x0001);
    assert_eq!(d.read_reg(REG_ID, 8), 0x0001_0000_0001_7AB5);
    assert_eq!(d.read_reg(REG_ID + 3, 4), 0x0100_0000);
    assert_eq!(d.read_reg(BAR0_SIZE - 2, 4), 0);
    assert_eq!(d.read_reg(u64::MAX, 8), 0);
    assert_eq!(d.read_reg(0, 0), 0);
    assert_eq!(d.read_reg(0, 16), 0);
    assert_eq!(d.error(), None);
}

#[test]
fn writes_of_wrong_width_unknown_offsets_and_read_only_registers_are_errors() {
    let cases: [(u64, usize, ErrorCode); 7] = [
        (REG_SCRATCH, 2, ErrorCode::WrongWidth),
        (REG_SCRATCH, 8, ErrorCode::WrongWidth),
        (REG_SCRATCH + 1, 4, ErrorCode::WrongWidth),
        (0x800, 4, ErrorCode::UnknownRegister),
        (BAR0_SIZE, 4, ErrorCode::UnknownRegister),
        (REG_ID, 4, ErrorCode::ReadOnly),
        (REG_RING_HEAD, 4, ErrorCode::ReadOnly),
    ];
    for (off, width, code) in cases {
        let mut d = Vgpu::new();
        let ev = d.write_reg(off, width, 0x1234_5678);
        assert_eq!(errors(&ev), vec![code], "{off:#x}/{width}");
        assert_eq!(rd(&d, REG_ERROR_CODE), code.as_u32());
        assert_eq!(rd(&d, REG_ERROR_ADDR_LO), off as u32);
        assert_eq!(rd(&d, REG_SCRATCH), 0);
        assert_ne!(rd(&d, REG_STATUS) & STATUS_ERROR, 0);
        assert_ne!(rd(&d, REG_INT_STATUS) & INT_ERROR, 0);
    }
}

#[test]
fn first_error_is_latched_later_ones_counted_clear_error_resets() {
    let mut d = Vgpu::new();
    wr(&mut d, REG_ID, 0);
    let ev = wr(&mut d, 0x900, 0);
    assert_eq!(errors(&ev), vec![ErrorCode::UnknownRegister]);
    assert_eq!(rd(&d, REG_ERROR_CODE), ErrorCode::ReadOnly.as_u32());
    assert_eq!(rd(&d, REG_ERROR_COUNT), 2);
    wr(&mut d, REG_CONTROL, CONTROL_CLEAR_ERROR);
    assert_eq!(rd(&d, REG_ERROR_CODE), 0);
    assert_eq!(rd(&d, REG_ERROR_COUNT), 0);
    assert_eq!(rd(&d, REG_STATUS) & STATUS_ERROR, 0);
    // INT_STATUS.ERROR stays until acknowledged.
    assert_eq!(rd(&d, REG_INT_STATUS), INT_ERROR);
    let ev = wr(&mut d, REG_INT_STATUS, INT_ERROR);
    assert_eq!(ev, vec![Event::InterruptAcked { bits: INT_ERROR }]);
    assert_eq!(rd(&d, REG_INT_STATUS), 0);
}

#[test]
fn reserved_bits_are_rejected() {
    for (off, v) in [
        (REG_CONTROL, 1 << 7),
        (REG_INT_MASK, 1 << 3),
        (REG_INT_STATUS, 0xffff_ffff),
    ] {
        let mut d = Vgpu::new();
        assert_eq!(errors(&wr(&mut d, off, v)), vec![ErrorCode::ReservedBits]);
        assert_eq!(rd(&d, REG_INT_MASK), 0);
    }
}

#[test]
fn mode_registers_validate_values_and_compute_stride() {
    let mut d = Vgpu::new();
    assert_eq!(
        errors(&wr(&mut d, REG_MODE_WIDTH, 1025)),
        vec![ErrorCode::BadMode]
    );
    assert_eq!(rd(&d, REG_MODE_WIDTH), 0);
    wr(&mut d, REG_CONTROL, CONTROL_CLEAR_ERROR);
    assert_eq!(
        errors(&wr(&mut d, REG_MODE_HEIGHT, 769)),
        vec![ErrorCode::BadMode]
    );
    wr(&mut d, REG_CONTROL, CONTROL_CLEAR_ERROR);
    assert_eq!(
        errors(&wr(&mut d, REG_MODE_FORMAT, 2)),
        vec![ErrorCode::BadMode]
    );
    wr(&mut d, REG_CONTROL, CONTROL_CLEAR_ERROR);
    wr(&mut d, REG_MODE_WIDTH, 1000);
    wr(&mut d, REG_MODE_HEIGHT, 700);
    assert_eq!(rd(&d, REG_STATUS) & STATUS_MODE_SET, 0);
    assert_eq!(rd(&d, REG_MODE_STRIDE), 0);
    let ev = wr(&mut d, REG_MODE_FORMAT, FORMAT_XRGB8888);
    assert!(ev.contains(&Event::ModeChanged {
        geometry: Some(FbGeometry {
            width: 1000,
            height: 700,
            stride: 4032
        })
    }));
    assert_ne!(rd(&d, REG_STATUS) & STATUS_MODE_SET, 0);
    assert_eq!(rd(&d, REG_MODE_STRIDE), 4032);
    assert_eq!(d.error(), None);
}

#[test]
fn ring_registers_only_while_disabled_and_ring_validated_on_enable() {
    let mut d = Vgpu::new();
    // Tail and doorbell need an enabled ring.
    assert_eq!(
        errors(&wr(&mut d, REG_RING_TAIL, 0)),
        vec![ErrorCode::BadState]
    );
    assert_eq!(
        errors(&wr(&mut d, REG_DOORBELL, 1)),
        vec![ErrorCode::BadState]
    );
    for (size, base) in [
        (0, 0x1000),
        (3, 0x1000),
        (1, 0x1000),
        (8192, 0x1000),
        (8, 0x1008),
    ] {
        let mut d = Vgpu::new();
        wr(&mut d, REG_RING_BASE_LO, base);
        wr(&mut d, REG_RING_SIZE, size);
        let ev = wr(&mut d, REG_CONTROL, CONTROL_ENABLE);
        assert_eq!(errors(&ev), vec![ErrorCode::BadRing], "{size} {base:#x}");
        assert_eq!(rd(&d, REG_STATUS) & STATUS_ENABLED, 0);
    }
    // Base that wraps the address space.
    let mut d = Vgpu::new();
    wr(&mut d, REG_RING_BASE_LO, 0xffff_fff0);
    wr(&mut d, REG_RING_BASE_HI, 0xffff_ffff);
    wr(&mut d, REG_RING_SIZE, 2);
    assert_eq!(
        errors(&wr(&mut d, REG_CONTROL, CONTROL_ENABLE)),
        vec![ErrorCode::BadRing]
    );

    let mut r = Rig::new();
    assert_eq!(rd(&r.dev, REG_CONTROL), CONTROL_ENABLE);
    assert_ne!(rd(&r.dev, REG_STATUS) & STATUS_ENABLED, 0);
    for off in [REG_RING_BASE_LO, REG_RING_BASE_HI, REG_RING_SIZE] {
        let mut r = Rig::new();
        assert_eq!(
            errors(&wr(&mut r.dev, off, 0x40)),
            vec![ErrorCode::BadState]
        );
    }
    assert_eq!(
        errors(&wr(&mut r.dev, REG_RING_TAIL, 8)),
        vec![ErrorCode::BadTail]
    );
    assert_eq!(rd(&r.dev, REG_RING_TAIL), 0);
}

#[test]
fn mode_writes_forbidden_while_work_is_outstanding() {
    let mut r = Rig::new();
    r.push(&[fill(0, 0, 1, 1, 1)]);
    // Before the doorbell the engine owns nothing: mode may change.
    assert_eq!(errors(&wr(&mut r.dev, REG_MODE_WIDTH, 64)), vec![]);
    r.doorbell();
    assert_ne!(rd(&r.dev, REG_STATUS) & STATUS_ENGINE_BUSY, 0);
    assert_eq!(
        errors(&wr(&mut r.dev, REG_MODE_WIDTH, 32)),
        vec![ErrorCode::BadState]
    );
    assert_eq!(rd(&r.dev, REG_MODE_WIDTH), 64);
}

#[test]
fn end_to_end_two_buffers_with_fences_raise_interrupts() {
    let mut r = Rig::new();
    let a = r.push(&[fill(0, 0, 64, 48, 0x0000_00ff), Command::Fence { value: 1 }]);
    let b = r.push(&[
        Command::CopyRect {
            src_x: 0,
            src_y: 0,
            rect: Rect {
                x: 10,
                y: 10,
                w: 4,
                h: 4,
            },
        },
        fill(1, 1, 2, 2, 0x00ff_0000),
        Command::Fence { value: 2 },
    ]);
    // Nothing runs before the doorbell.
    assert!(r.run().is_empty());
    assert_eq!(r.doorbell(), vec![Event::Doorbell { tail: 2 }]);
    assert_eq!(rd(&r.dev, REG_RING_HEAD), 0);
    let ev = r.run();
    let expected = vec![
        Event::DmaRead {
            kind: DmaKind::Descriptor,
            addr: RING,
            len: 16,
        },
        Event::DmaRead {
            kind: DmaKind::CommandBuffer,
            addr: a,
            len: 32,
        },
        Event::Fence { value: 1 },
        Event::DescriptorDone {
            index: 0,
            addr: a,
            len: 32,
        },
        Event::InterruptRaised { bits: INT_FENCE },
        Event::DmaRead {
            kind: DmaKind::Descriptor,
            addr: RING + 16,
            len: 16,
        },
        Event::DmaRead {
            kind: DmaKind::CommandBuffer,
            addr: b,
            len: 60,
        },
        Event::Fence { value: 2 },
        Event::DescriptorDone {
            index: 1,
            addr: b,
            len: 60,
        },
    ];
    assert_eq!(ev, expected);
    assert_eq!(rd(&r.dev, REG_RING_HEAD), 2);
    assert_eq!(rd(&r.dev, REG_FENCE_COMPLETED), 2);
    assert_eq!(rd(&r.dev, REG_INT_STATUS), INT_FENCE | INT_IDLE);
    let st = rd(&r.dev, REG_STATUS);
    assert_eq!(st & (STATUS_ENGINE_BUSY | STATUS_ERROR), 0);
    assert_ne!(st & STATUS_RING_EMPTY, 0);
    assert_ne!(st & STATUS_INT_PENDING, 0);
    assert!(r.intx.level());
    assert_eq!(r.intx.rising_edges(), 1);
    assert_eq!(r.px(0, 0), 0xff);
    assert_eq!(r.px(1, 1), 0x00ff_0000);
    assert_eq!(r.px(11, 11), 0xff);
    // Ack: INTx drops.
    wr(&mut r.dev, REG_INT_STATUS, INT_FENCE | INT_IDLE);
    assert!(!r.intx.level());
    assert_eq!(r.msis.load(Ordering::SeqCst), 0);
    // The framebuffer equals the reference rendering of the same commands.
    let geom = r.dev.geometry().unwrap();
    let cmds: Vec<Command> = [a, b]
        .iter()
        .flat_map(|&addr| {
            let len = if addr == a { 32 } else { 60 };
            let s = (addr - MEM_BASE) as usize;
            parse(&r.mem.bytes[s..s + len]).unwrap()
        })
        .collect();
    let reference = render_reference(&geom, &cmds, &r.mem).unwrap();
    assert_eq!(&r.fb[..reference.len()], &reference[..]);
}

#[test]
fn msi_is_one_message_per_newly_pending_bit_and_intx_stays_low() {
    let mut r = Rig::new();
    r.dev.set_msi_enabled(true);
    r.push(&[Command::Fence { value: 1 }]);
    r.push(&[Command::Fence { value: 2 }]);
    r.doorbell();
    r.run();
    // Both fences, one pending bit: one message.
    assert_eq!(r.msis.load(Ordering::SeqCst), 1);
    assert!(!r.intx.level());
    wr(&mut r.dev, REG_INT_STATUS, INT_FENCE);
    r.push(&[Command::Fence { value: 3 }]);
    r.doorbell();
    r.run();
    assert_eq!(r.msis.load(Ordering::SeqCst), 2);
    // Masking and unmasking a pending bit signals it again.
    wr(&mut r.dev, REG_INT_MASK, 0);
    wr(&mut r.dev, REG_INT_MASK, INT_FENCE);
    assert_eq!(r.msis.load(Ordering::SeqCst), 3);
}

#[test]
fn upload_image_end_to_end_reports_its_dma_span() {
    let mut r = Rig::new();
    for i in 0..6u32 {
        assert!(r
            .mem
            .write(IMAGE + u64::from(i) * 4, &(0x100 + i).to_le_bytes()));
    }
    r.push(&[Command::UploadImage {
        rect: Rect {
            x: 5,
            y: 6,
            w: 3,
            h: 2,
        },
        src_addr: IMAGE,
        src_stride: 12,
    }]);
    r.doorbell();
    let ev = r.run();
    assert!(ev.contains(&Event::DmaRead {
        kind: DmaKind::Upload,
        addr: IMAGE,
        len: 24
    }));
    assert_eq!(
        (r.px(5, 6), r.px(7, 6), r.px(5, 7), r.px(7, 7)),
        (0x100, 0x102, 0x103, 0x105)
    );
}

/// Submit one bad descriptor followed by a good one; check the error, that
/// nothing of the bad buffer ran, and that CLEAR_ERROR skips it.
fn expect_engine_error(setup: impl FnOnce(&mut Rig), code: ErrorCode, addr: Option<u64>) {
    let mut r = Rig::new();
    setup(&mut r);
    r.push(&[fill(0, 0, 1, 1, 0x22), Command::Fence { value: 9 }]);
    r.doorbell();
    let ev = r.run();
    assert_eq!(errors(&ev), vec![code]);
    assert_eq!(rd(&r.dev, REG_ERROR_CODE), code.as_u32());
    if let Some(a) = addr {
        let got = u64::from(rd(&r.dev, REG_ERROR_ADDR_LO))
            | (u64::from(rd(&r.dev, REG_ERROR_ADDR_HI)) << 32);
        assert_eq!(got, a);
    }
    assert_eq!(rd(&r.dev, REG_RING_HEAD), 0);
    assert_eq!(rd(&r.dev, REG_FENCE_COMPLETED), 0);
    assert_ne!(rd(&r.dev, REG_STATUS) & STATUS_ERROR, 0);
    assert_eq!(rd(&r.dev, REG_STATUS) & STATUS_ENGINE_BUSY, 0);
    assert!(r.intx.level());
    assert!(r.run().is_empty(), "halted engine must not run");
    wr(
        &mut r.dev,
        REG_CONTROL,
        CONTROL_ENABLE | CONTROL_CLEAR_ERROR,
    );
    let ev = r.run();
    assert!(ev.contains(&Event::Fence { value: 9 }), "{ev:?}");
    assert_eq!(rd(&r.dev, REG_RING_HEAD), 2);
    assert_eq!(r.px(0, 0), 0x22);
}

#[test]
fn command_errors_halt_the_engine_at_the_faulting_descriptor() {
    let bad_buf = |words: Vec<u32>| {
        move |r: &mut Rig| {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let addr = BUFS + 0x8000;
            r.mem.write(addr, &bytes);
            r.push_raw(addr, bytes.len() as u32, 0);
        }
    };
    let cmd = BUFS + 0x8000;
    // Fill runs first in the buffer, then the bad command: nothing drawn.
    let fill_then = |w: Vec<u32>| {
        let mut v = fill(0, 0, 1, 1, 0x77).encode();
        v.extend(w);
        v
    };
    expect_engine_error(
        bad_buf(fill_then(vec![0x0001_0042])),
        ErrorCode::UnknownOpcode,
        Some(cmd + 24),
    );
    expect_engine_error(
        bad_buf(vec![0x0003_0004, 1, 2]),
        ErrorCode::BadLength,
        Some(cmd),
    );
    expect_engine_error(bad_buf(vec![0x0000_0000]), ErrorCode::BadLength, Some(cmd));
    expect_engine_error(
        bad_buf(vec![0x0006_0001, 0]),
        ErrorCode::Truncated,
        Some(cmd),
    );
    expect_engine_error(
        bad_buf(vec![0x0002_8004, 0]),
        ErrorCode::ReservedBits,
        Some(cmd),
    );
    expect_engine_error(
        bad_buf(fill(60, 0, 5, 1, 0).encode()),
        ErrorCode::RectOutOfBounds,
        Some(cmd),
    );
    let up = |stride| {
        Command::UploadImage {
            rect: Rect {
                x: 0,
                y: 0,
                w: 2,
                h: 2,
            },
            src_addr: IMAGE,
            src_stride: stride,
        }
        .encode()
    };
    expect_engine_error(bad_buf(up(7)), ErrorCode::StrideTooSmall, Some(cmd));
    // Source outside guest memory: a DMA fault at the first row's address.
    let far = Command::UploadImage {
        rect: Rect {
            x: 0,
            y: 0,
            w: 1,
            h: 1,
        },
        src_addr: 0x8000_0000,
        src_stride: 4,
    };
    expect_engine_error(
        bad_buf(far.encode()),
        ErrorCode::DmaFault,
        Some(0x8000_0000),
    );
}

#[test]
fn descriptor_and_ring_errors() {
    for (addr, len, flags) in [
        (BUFS, 0, 0),
        (BUFS, 6, 0),
        (BUFS, CMD_BUFFER_MAX + 4, 0),
        (BUFS + 2, 8, 0),
        (BUFS, 8, 1),
        (u64::MAX - 3, 4, 0),
    ] {
        expect_engine_error(
            |r| r.push_raw(addr, len, flags),
            ErrorCode::BadDescriptor,
            Some(RING),
        );
    }
    expect_engine_error(
        |r| r.push_raw(0x9000_0000, 16, 0),
        ErrorCode::DmaFault,
        Some(0x9000_0000),
    );
    // A ring outside guest memory.
    let mut r = Rig::new();
    wr(&mut r.dev, REG_CONTROL, 0);
    wr(&mut r.dev, REG_RING_BASE_LO, 0x4000_0000);
    wr(&mut r.dev, REG_CONTROL, CONTROL_ENABLE);
    wr(&mut r.dev, REG_RING_TAIL, 1);
    r.doorbell();
    assert_eq!(errors(&r.run()), vec![ErrorCode::DmaFault]);
}

#[test]
fn drawing_without_a_mode_is_an_error_fences_are_not() {
    let mut r = Rig::new();
    assert_eq!(
        errors(&wr(&mut r.dev, REG_MODE_FORMAT, FORMAT_NONE)),
        vec![]
    );
    r.push(&[Command::Fence { value: 5 }]);
    let bad = r.push(&[Command::Fence { value: 6 }, fill(0, 0, 1, 1, 1)]);
    r.doorbell();
    assert_eq!(errors(&r.run()), vec![ErrorCode::NoMode]);
    // The first buffer completed; nothing of the second (validated as a
    // whole before it runs) did, not even its fence.
    assert_eq!(rd(&r.dev, REG_FENCE_COMPLETED), 5);
    assert_eq!(rd(&r.dev, REG_RING_HEAD), 1);
    assert_eq!(u64::from(rd(&r.dev, REG_ERROR_ADDR_LO)), bad + 8);
}

#[test]
fn dma_without_bus_master_is_an_error_and_nothing_is_read() {
    let mut r = Rig::new();
    r.dev.set_bus_master(false);
    r.push(&[Command::Fence { value: 1 }]);
    r.doorbell();
    let ev = r.run();
    assert_eq!(errors(&ev), vec![ErrorCode::NoBusMaster]);
    assert!(!ev.iter().any(|e| matches!(e, Event::DmaRead { .. })));
    assert_eq!(rd(&r.dev, REG_STATUS) & STATUS_BUS_MASTER, 0);
    // Not an engine fault: clearing retries the same descriptor.
    r.dev.set_bus_master(true);
    wr(
        &mut r.dev,
        REG_CONTROL,
        CONTROL_ENABLE | CONTROL_CLEAR_ERROR,
    );
    assert!(r.run().contains(&Event::Fence { value: 1 }));
}

#[test]
fn reset_restores_everything_but_pci_state() {
    let mut r = Rig::new();
    r.push(&[fill(0, 0, 2, 2, 3), Command::Fence { value: 4 }]);
    r.doorbell();
    r.run();
    wr(&mut r.dev, REG_SCRATCH, 0x55);
    let ev = wr(&mut r.dev, REG_CONTROL, CONTROL_RESET | CONTROL_ENABLE);
    assert_eq!(
        ev,
        vec![Event::Reset, Event::ModeChanged { geometry: None }]
    );
    assert!(!r.intx.level());
    let fresh = Vgpu::new().register_page();
    let mut page = r.dev.register_page();
    page[(REG_STATUS / 4) as usize] &= !STATUS_BUS_MASTER;
    assert_eq!(page, fresh);
    // Framebuffer memory is not cleared by reset.
    assert_eq!(r.fb[0], 3);
}

#[test]
fn page_hook_sees_every_change_before_the_interrupt() {
    let mut r = Rig::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let irq = r.intx.clone();
    r.dev
        .set_page_hook(Box::new(move |p: &[u32; REG_PAGE_DWORDS]| {
            s.lock()
                .unwrap()
                .push((p[(REG_FENCE_COMPLETED / 4) as usize], irq.level()));
        }));
    r.push(&[Command::Fence { value: 7 }]);
    r.doorbell();
    r.run();
    let seen = seen.lock().unwrap();
    // The page showing fence 7 was published while INTx was still low.
    assert!(seen.contains(&(7, false)), "{seen:?}");
    assert_eq!(seen.last().map(|s| s.0), Some(7));
}

#[test]
fn worker_runs_the_ring_off_the_calling_thread() {
    let r = Rig::new();
    let dev = Arc::new(Mutex::new(r.dev));
    let mut mem = r.mem;
    let bytes = encode_buffer(&[
        fill(0, 0, 64, 48, 0x0012_3456),
        Command::Fence { value: 77 },
    ]);
    mem.write(BUFS, &bytes);
    let mut d = Vec::new();
    d.extend(BUFS.to_le_bytes());
    d.extend((bytes.len() as u32).to_le_bytes());
    d.extend(0u32.to_le_bytes());
    mem.write(RING, &d);
    let fb = Arc::new(VecFrame::new(BAR2_SIZE as usize));
    let (tx, rx) = mpsc::channel();
    let worker = Worker::spawn(
        dev.clone(),
        Arc::new(mem),
        fb.clone(),
        Box::new(move |e| {
            let _ = tx.send((e, std::thread::current().name().map(String::from)));
        }),
    )
    .unwrap();
    {
        let mut d = dev.lock().unwrap();
        wr(&mut d, REG_RING_TAIL, 1);
        wr(&mut d, REG_DOORBELL, 1);
    }
    let (thread, fence) = loop {
        let (e, name) = rx.recv_timeout(Duration::from_secs(10)).expect("no fence");
        if let Event::Fence { value } = e {
            break (name, value);
        }
    };
    assert_eq!(fence, 77);
    assert_eq!(thread.as_deref(), Some("vgpu-engine"));
    // Wait for the descriptor to retire, then compare the screenshot.
    for _ in 0..1000 {
        if rd(&dev.lock().unwrap(), REG_RING_HEAD) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rd(&dev.lock().unwrap(), REG_FENCE_COMPLETED), 77);
    let png = screenshot(&dev, &*fb).unwrap();
    let (w, h, rgb) = screenshot::decode_png(&png).unwrap();
    assert_eq!((w, h), (64, 48));
    assert!(rgb.chunks(3).all(|p| p == [0x12, 0x34, 0x56]));
    worker.stop();
}

/// docs/devices/vgpu.md §11, register by register.
#[test]
fn datasheet_worked_example() {
    let mut d = Vgpu::new();
    let irq = Arc::new(FakeIrq::new());
    d.set_intx(irq.clone());
    d.set_bus_master(true);
    let ring_dma = MEM_BASE;
    let cmdbuf_dma = MEM_BASE + 0x800;
    let mut mem = VecMemory::new(MEM_BASE, 0x1000);
    let mut fb = vec![0u8; BAR2_SIZE as usize];
    assert_eq!(rd(&d, 0x000), 0x0001_7ab5);
    let mut ev = wr(&mut d, 0x014, 1 << 1);
    for (off, v) in [(0x030, 640), (0x034, 480), (0x038, 1)] {
        ev.extend(wr(&mut d, off, v));
    }
    let stride = rd(&d, 0x03c);
    assert_eq!(stride, 2560);
    for (off, v) in [(0x040, ring_dma as u32), (0x044, 0), (0x048, 8), (0x014, 1)] {
        ev.extend(wr(&mut d, off, v));
    }
    assert_eq!(rd(&d, 0x010), 0x35);
    ev.extend(wr(&mut d, 0x01c, 0x3));
    let cmd: [u32; 8] = [0x0006_0001, 10, 20, 100, 50, 0x00ff_0000, 0x0002_0004, 1];
    let cmd: Vec<u8> = cmd.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write(cmdbuf_dma, &cmd);
    let mut desc = cmdbuf_dma.to_le_bytes().to_vec();
    desc.extend(32u32.to_le_bytes());
    desc.extend(0u32.to_le_bytes());
    mem.write(ring_dma, &desc);
    ev.extend(wr(&mut d, 0x050, 1));
    ev.extend(wr(&mut d, 0x054, 1));
    assert_eq!(errors(&ev), vec![]);
    d.process(&mem, &mut fb);
    assert!(irq.level());
    let s = rd(&d, 0x018);
    assert_eq!(s, INT_FENCE | INT_IDLE);
    wr(&mut d, 0x018, s);
    assert!(!irq.level());
    assert_eq!((rd(&d, 0x058), rd(&d, 0x04c)), (1, 1));
    let g = d.geometry().unwrap();
    for y in 0..480 {
        for x in 0..640 {
            let inside = (10..110).contains(&x) && (20..70).contains(&y);
            let want = if inside { 0x00ff_0000 } else { 0 };
            assert_eq!(pixel(&fb, &g, x, y), Some(want));
        }
    }
    assert_eq!(d.error(), None);
}

#[path = "fuzz_tests.rs"]
mod fuzz;
