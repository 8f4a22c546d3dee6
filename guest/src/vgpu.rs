//! vgpu driver (docs/devices/vgpu.md, "Rules a correct driver follows").
//!
//! * PCI 7ab5:0001. BAR0 = the 4 KiB register page (vlab maps it
//!   read-only: reads are plain memory reads, writes trap to the device);
//!   BAR2 = the 4 MiB framebuffer (not touched: the GPU draws).
//! * Probe: ID = 0x0001_7AB5, VERSION major 1, CONTROL.RESET.
//! * Mode: MODE_WIDTH/HEIGHT/FORMAT (XRGB8888) while idle, then read
//!   MODE_STRIDE.
//! * Ring: [`RING_SIZE`] 16-byte descriptors `{u64 buffer, u32 length,
//!   u32 flags = 0}` in a static, 16-byte aligned array (`.bss` is identity
//!   mapped RAM, so physical = virtual); one command buffer per ring slot.
//!   RING_BASE/RING_SIZE while disabled, bus mastering on, CONTROL.ENABLE.
//! * Submit: write the command buffer and descriptor at the tail, compiler
//!   barrier, RING_TAIL = tail + 1 mod size, DOORBELL.
//! * Interrupts: INT_MASK = FENCE | ERROR after the vector is routed
//!   ([`crate::irq`]). On an interrupt: read INT_STATUS, write the same bits
//!   back (W1C), EOI, then look at FENCE_COMPLETED / ERROR_CODE.
//! * Fences are compared with wrap-around (`(completed - want) as i32 >= 0`)
//!   and every wait has a kvm-clock timeout.

use crate::irq::{Deadline, DeviceIrq, IrqMode};
use crate::pci::Function;
use crate::sync::RacyCell;
use crate::tests::Machine;

pub const VENDOR: u16 = 0x7ab5;
pub const DEVICE: u16 = 0x0001;

pub const REG_ID: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_STATUS: u64 = 0x010;
pub const REG_CONTROL: u64 = 0x014;
pub const REG_INT_STATUS: u64 = 0x018;
pub const REG_INT_MASK: u64 = 0x01c;
pub const REG_ERROR_CODE: u64 = 0x020;
pub const REG_ERROR_ADDR_LO: u64 = 0x024;
pub const REG_ERROR_ADDR_HI: u64 = 0x028;
pub const REG_MODE_WIDTH: u64 = 0x030;
pub const REG_MODE_HEIGHT: u64 = 0x034;
pub const REG_MODE_FORMAT: u64 = 0x038;
pub const REG_MODE_STRIDE: u64 = 0x03c;
pub const REG_RING_BASE_LO: u64 = 0x040;
pub const REG_RING_BASE_HI: u64 = 0x044;
pub const REG_RING_SIZE: u64 = 0x048;
pub const REG_RING_HEAD: u64 = 0x04c;
pub const REG_RING_TAIL: u64 = 0x050;
pub const REG_DOORBELL: u64 = 0x054;
pub const REG_FENCE_COMPLETED: u64 = 0x058;
pub const REG_SCRATCH: u64 = 0x05c;

pub const STATUS_ENABLED: u32 = 1 << 0;
pub const STATUS_ENGINE_BUSY: u32 = 1 << 1;
pub const STATUS_RING_EMPTY: u32 = 1 << 2;
pub const STATUS_ERROR: u32 = 1 << 3;
pub const STATUS_MODE_SET: u32 = 1 << 4;
pub const STATUS_INT_PENDING: u32 = 1 << 6;

pub const CONTROL_ENABLE: u32 = 1 << 0;
pub const CONTROL_RESET: u32 = 1 << 1;
pub const CONTROL_CLEAR_ERROR: u32 = 1 << 2;

pub const INT_FENCE: u32 = 1 << 0;
pub const INT_ERROR: u32 = 1 << 1;

pub const FORMAT_XRGB8888: u32 = 1;

const OP_FILL_RECT: u32 = 0x0006_0001;
const OP_COPY_RECT: u32 = 0x0007_0002;
const OP_UPLOAD_IMAGE: u32 = 0x0008_0003;
const OP_FENCE: u32 = 0x0002_0004;

/// Descriptors in the ring.
pub const RING_SIZE: usize = 8;
/// Dwords per command buffer (one per ring slot).
pub const CMD_DWORDS: usize = 2048;
/// Dwords of the image buffer (the scene image).
const IMAGE_DWORDS: usize = (scene::IMAGE_WIDTH * scene::IMAGE_HEIGHT) as usize;

use crate::scene_data as scene;

/// DMA memory: the ring, its command buffers and the upload image.
#[repr(C, align(4096))]
struct DmaArea {
    ring: [[u32; 4]; RING_SIZE],
    cmd: [[u32; CMD_DWORDS]; RING_SIZE],
    image: [u32; IMAGE_DWORDS],
}

static DMA: RacyCell<DmaArea> = RacyCell::new(DmaArea {
    ring: [[0; 4]; RING_SIZE],
    cmd: [[0; CMD_DWORDS]; RING_SIZE],
    image: [0; IMAGE_DWORDS],
});

/// ERROR_CODE names (datasheet §8).
pub fn error_name(code: u32) -> &'static str {
    match code {
        0x00 => "NONE",
        0x01 => "WRONG_WIDTH",
        0x02 => "UNKNOWN_REGISTER",
        0x03 => "READ_ONLY",
        0x04 => "BAD_STATE",
        0x05 => "RESERVED_BITS",
        0x06 => "BAD_MODE",
        0x07 => "BAD_RING",
        0x08 => "BAD_TAIL",
        0x10 => "NO_BUS_MASTER",
        0x11 => "DMA_FAULT",
        0x12 => "BAD_DESCRIPTOR",
        0x20 => "UNKNOWN_OPCODE",
        0x21 => "BAD_LENGTH",
        0x22 => "TRUNCATED",
        0x23 => "NO_MODE",
        0x24 => "RECT_OUT_OF_BOUNDS",
        0x25 => "STRIDE_TOO_SMALL",
        0x26 => "SOURCE_OVERFLOW",
        _ => "?",
    }
}

/// Why an operation failed.
#[derive(Clone, Copy)]
pub enum Error {
    /// No 7ab5:0001 function, or BAR0 unassigned.
    NotFound,
    /// ID or VERSION wrong.
    BadId(u32, u32),
    /// The device latched an error: (ERROR_CODE, ERROR_ADDR).
    Device(u32, u64),
    /// A wait timed out (what, STATUS).
    Timeout(&'static str, u32),
    /// The ring is full.
    RingFull,
    /// Interrupt setup failed.
    Irq(crate::irq::IrqError),
    /// Something else, described.
    Other(&'static str),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Error::NotFound => write!(f, "no vgpu (7ab5:0001) on bus 0"),
            Error::BadId(id, v) => write!(f, "bad ID {:#x} / VERSION {:#x}", id, v),
            Error::Device(c, a) => {
                write!(f, "device error {} ({:#x}) addr={:#x}", error_name(c), c, a)
            }
            Error::Timeout(what, s) => write!(f, "timeout waiting for {} (STATUS={:#x})", what, s),
            Error::RingFull => write!(f, "ring full"),
            Error::Irq(e) => write!(f, "interrupt setup: {:?}", e),
            Error::Other(s) => write!(f, "{}", s),
        }
    }
}

/// Wait timeout for fences and errors.
const TIMEOUT_MS: u64 = 2000;

/// A bound vgpu.
pub struct Vgpu {
    pub f: Function,
    regs: u64,
    irq: Option<DeviceIrq>,
    ring_size: u32,
    tail: u32,
    /// Last fence value handed out.
    pub last_fence: u32,
    /// Interrupts handled (INT_STATUS was not 0).
    pub irqs: u64,
    /// Interrupts taken while INT_STATUS was 0.
    pub spurious: u64,
    /// MODE_STRIDE of the current mode.
    pub stride: u32,
}

/// A command buffer being filled (the buffer of the current tail slot).
pub struct CmdBuf {
    slot: usize,
    len: usize,
}

impl CmdBuf {
    fn push(&mut self, words: &[u32]) {
        assert!(
            self.len + words.len() <= CMD_DWORDS,
            "vgpu command buffer full"
        );
        let buf = cmd_ptr(self.slot);
        for (i, &w) in words.iter().enumerate() {
            // SAFETY: `buf` is this slot's static command buffer, which the
            // device does not own (the slot is at the tail); in bounds by the
            // assert above.
            unsafe { buf.add(self.len + i).write_volatile(w) };
        }
        self.len += words.len();
    }

    pub fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, color: u32) {
        self.push(&[OP_FILL_RECT, x, y, w, h, color]);
    }

    pub fn copy(&mut self, sx: u32, sy: u32, dx: u32, dy: u32, w: u32, h: u32) {
        self.push(&[OP_COPY_RECT, sx, sy, dx, dy, w, h]);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn upload(&mut self, x: u32, y: u32, w: u32, h: u32, src: u64, stride: u32) {
        self.push(&[
            OP_UPLOAD_IMAGE,
            x,
            y,
            w,
            h,
            src as u32,
            (src >> 32) as u32,
            stride,
        ]);
    }

    pub fn fence(&mut self, value: u32) {
        self.push(&[OP_FENCE, value]);
    }
}

fn cmd_ptr(slot: usize) -> *mut u32 {
    // SAFETY: only computes an address inside the static.
    unsafe { (&raw mut (*DMA.get()).cmd[slot]).cast() }
}

fn ring_ptr() -> *mut [u32; 4] {
    // SAFETY: as in `cmd_ptr`.
    unsafe { (&raw mut (*DMA.get()).ring).cast() }
}

/// Guest-physical address of the ring.
pub fn ring_addr() -> u64 {
    ring_ptr() as u64
}

/// Guest-physical address of the scene image, filled from
/// [`scene::image_pixel`].
pub fn scene_image() -> u64 {
    // SAFETY: only this test writes the image buffer, before handing it to
    // the device.
    let img: *mut u32 = unsafe { (&raw mut (*DMA.get()).image).cast() };
    let mut i = 0;
    for y in 0..scene::IMAGE_HEIGHT {
        for x in 0..scene::IMAGE_WIDTH {
            // SAFETY: i < IMAGE_DWORDS.
            unsafe { img.add(i).write_volatile(scene::image_pixel(x, y)) };
            i += 1;
        }
    }
    img as u64
}

impl Vgpu {
    /// Find the device, check ID/VERSION and reset it (rules 3, 4).
    pub fn probe(m: &Machine) -> Result<Vgpu, Error> {
        let fns = crate::pci::scan(&m.plat);
        let f = fns.find(VENDOR, DEVICE).ok_or(Error::NotFound)?;
        let regs = f.map_bar(0, 0x1000).ok_or(Error::NotFound)?;
        // The framebuffer (4 MiB, host memory): mapped for completeness,
        // this driver never touches it (the GPU draws).
        f.map_bar(2, 4 << 20);
        // SAFETY: all-zero bytes are a valid `Vgpu` (integers, `None`, a
        // zeroed `Function`); `rep stosb` avoids SSE zeroing.
        let mut g: Vgpu = unsafe { crate::mem::zeroed() };
        g.f = f;
        g.regs = regs;
        let (id, version) = (g.read(REG_ID), g.read(REG_VERSION));
        if id != u32::from(DEVICE) << 16 | u32::from(VENDOR) || version >> 16 != 1 {
            return Err(Error::BadId(id, version));
        }
        g.write(REG_CONTROL, CONTROL_RESET);
        Ok(g)
    }

    /// Read a register (the mapped register page: no VM exit).
    pub fn read(&self, off: u64) -> u32 {
        // SAFETY: BAR0 lies in the uncached, identity-mapped PCI window;
        // register reads have no side effects.
        unsafe { crate::io::mmio_read32(self.regs + off) }
    }

    /// Write a register (32-bit, aligned: rule 2).
    pub fn write(&self, off: u64, value: u32) {
        // SAFETY: as in `read`; the write traps to the device.
        unsafe { crate::io::mmio_write32(self.regs + off, value) }
    }

    /// A 16-bit register write: a deliberate rule-2 violation (bug tests).
    pub fn write16(&self, off: u64, value: u16) {
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_volatile((self.regs + off) as usize as *mut u16, value) }
    }

    /// (ERROR_CODE, ERROR_ADDR).
    pub fn error(&self) -> (u32, u64) {
        let addr =
            u64::from(self.read(REG_ERROR_ADDR_HI)) << 32 | u64::from(self.read(REG_ERROR_ADDR_LO));
        (self.read(REG_ERROR_CODE), addr)
    }

    fn check_error(&self) -> Result<(), Error> {
        if self.read(REG_STATUS) & STATUS_ERROR != 0 {
            let (c, a) = self.error();
            return Err(Error::Device(c, a));
        }
        Ok(())
    }

    /// CONTROL.CLEAR_ERROR, keeping CONTROL.ENABLE as it is (CONTROL is a
    /// plain RW register: writing CLEAR_ERROR alone would also write
    /// ENABLE = 0 and disable the ring).
    pub fn clear_error(&self) {
        let enable = self.read(REG_CONTROL) & CONTROL_ENABLE;
        self.write(REG_CONTROL, CONTROL_CLEAR_ERROR | enable);
    }

    /// Set a `width` x `height` XRGB8888 mode and read its stride (rule 5).
    pub fn set_mode(&mut self, width: u32, height: u32) -> Result<(), Error> {
        self.write(REG_MODE_WIDTH, width);
        self.write(REG_MODE_HEIGHT, height);
        self.write(REG_MODE_FORMAT, FORMAT_XRGB8888);
        self.check_error()?;
        if self.read(REG_STATUS) & STATUS_MODE_SET == 0 {
            return Err(Error::Other("mode not accepted"));
        }
        self.stride = self.read(REG_MODE_STRIDE);
        Ok(())
    }

    /// Program the ring (`base`, `size` descriptors) while disabled.
    pub fn set_ring(&mut self, base: u64, size: u32) {
        self.write(REG_RING_BASE_LO, base as u32);
        self.write(REG_RING_BASE_HI, (base >> 32) as u32);
        self.write(REG_RING_SIZE, size);
        self.ring_size = size;
    }

    /// CONTROL.ENABLE; fails with the device's error if the ring is bad.
    pub fn enable(&mut self) -> Result<(), Error> {
        self.write(REG_CONTROL, CONTROL_ENABLE);
        self.check_error()?;
        if self.read(REG_STATUS) & STATUS_ENABLED == 0 {
            return Err(Error::Other("ring not enabled"));
        }
        self.tail = 0;
        Ok(())
    }

    /// Route the interrupt and unmask FENCE | ERROR (rule 11).
    pub fn enable_irq(&mut self, m: &Machine, mode: IrqMode) -> Result<(), Error> {
        let irq = DeviceIrq::setup(m, &self.f, mode, 0).map_err(Error::Irq)?;
        self.irq = Some(irq);
        self.write(REG_INT_MASK, INT_FENCE | INT_ERROR);
        Ok(())
    }

    /// The usual bring-up: mode, ring of [`RING_SIZE`], bus master, enable,
    /// interrupts (`irq` = None: polling).
    pub fn start(
        &mut self,
        m: &Machine,
        width: u32,
        height: u32,
        irq: Option<IrqMode>,
    ) -> Result<(), Error> {
        self.set_mode(width, height)?;
        self.set_ring(ring_addr(), RING_SIZE as u32);
        self.f.enable_bus_master();
        self.enable()?;
        if let Some(mode) = irq {
            self.enable_irq(m, mode)?;
        }
        Ok(())
    }

    /// Start a command buffer in the tail slot.
    pub fn begin(&self) -> CmdBuf {
        CmdBuf {
            slot: self.tail as usize,
            len: 0,
        }
    }

    /// A new fence value.
    pub fn next_fence(&mut self) -> u32 {
        self.last_fence = self.last_fence.wrapping_add(1);
        self.last_fence
    }

    /// Hand `buf` to the device: descriptor, barrier, RING_TAIL, DOORBELL.
    pub fn submit(&mut self, buf: CmdBuf) -> Result<(), Error> {
        let addr = cmd_ptr(buf.slot) as u64;
        self.submit_raw(addr, (buf.len * 4) as u32)
    }

    /// Submit a descriptor pointing at `addr` / `len` bytes as is.
    pub fn submit_raw(&mut self, addr: u64, len: u32) -> Result<(), Error> {
        let next = (self.tail + 1) % self.ring_size;
        if next == self.read(REG_RING_HEAD) {
            return Err(Error::RingFull);
        }
        let d = [addr as u32, (addr >> 32) as u32, len, 0];
        // SAFETY: the descriptor at the tail belongs to the driver (rule 9
        // is checked above); `tail < RING_SIZE`.
        unsafe { ring_ptr().add(self.tail as usize).write_volatile(d) };
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        self.tail = next;
        self.write(REG_RING_TAIL, next);
        self.write(REG_DOORBELL, 1);
        Ok(())
    }

    /// FENCE_COMPLETED.
    pub fn fence_completed(&self) -> u32 {
        self.read(REG_FENCE_COMPLETED)
    }

    fn fence_reached(&self, want: u32) -> bool {
        self.fence_completed().wrapping_sub(want) as i32 >= 0
    }

    /// Handle pending interrupts: read INT_STATUS, ack exactly those bits,
    /// EOI (rule 12). Returns the bits, or None if no interrupt arrived.
    fn service(&mut self, deadline: Deadline) -> Option<u32> {
        let n = self.irq.as_mut()?.wait(deadline);
        if n == 0 {
            return None;
        }
        let s = self.read(REG_INT_STATUS);
        if s != 0 {
            self.irqs += n;
            self.write(REG_INT_STATUS, s);
        } else {
            // Not ours (IRQ_NONE in Linux terms): counted apart.
            self.spurious += n;
        }
        crate::apic::eoi();
        Some(s)
    }

    /// Wait for fence `want`: via interrupts if enabled (each interrupt is
    /// acknowledged, then FENCE_COMPLETED and ERROR_CODE are read), else
    /// by polling the register page. An error latched in the device ends
    /// the wait with [`Error::Device`].
    pub fn wait_fence(&mut self, want: u32) -> Result<(), Error> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        if self.irq.is_none() {
            loop {
                self.check_error()?;
                if self.fence_reached(want) {
                    return Ok(());
                }
                if deadline.passed() {
                    return Err(Error::Timeout("fence", self.read(REG_STATUS)));
                }
                core::hint::spin_loop();
            }
        }
        loop {
            match self.service(deadline) {
                Some(s) => {
                    if s & INT_ERROR != 0 {
                        // Still latched (not already handled by the caller).
                        self.check_error()?;
                    }
                    if self.fence_reached(want) {
                        return Ok(());
                    }
                }
                None => {
                    let status = self.read(REG_STATUS);
                    self.check_error()?;
                    let what = if self.fence_reached(want) {
                        "the fence interrupt (fence completed)"
                    } else {
                        "fence"
                    };
                    return Err(Error::Timeout(what, status));
                }
            }
        }
    }

    /// Wait for an error to be latched (engine errors are asynchronous),
    /// handling its interrupt if enabled. Returns (ERROR_CODE, ERROR_ADDR).
    pub fn wait_error(&mut self) -> Result<(u32, u64), Error> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        loop {
            if self.irq.is_some() {
                if self.service(deadline).is_none() && self.read(REG_STATUS) & STATUS_ERROR == 0 {
                    return Err(Error::Timeout("error", self.read(REG_STATUS)));
                }
            } else if deadline.passed() {
                return Err(Error::Timeout("error", self.read(REG_STATUS)));
            }
            if self.read(REG_STATUS) & STATUS_ERROR != 0 {
                return Ok(self.error());
            }
        }
    }

    /// Wait until RING_HEAD reaches the tail (rule 15), by polling.
    pub fn wait_idle(&self) -> Result<(), Error> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        while self.read(REG_STATUS) & STATUS_RING_EMPTY == 0 {
            self.check_error()?;
            if deadline.passed() {
                return Err(Error::Timeout("idle", self.read(REG_STATUS)));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Mask interrupts (rule 11); the mode and framebuffer stay for
    /// screenshots.
    pub fn quiesce(&mut self) {
        self.write(REG_INT_MASK, 0);
    }

    /// Interrupts handled by the wait functions so far.
    pub fn irq_count(&self) -> u64 {
        self.irqs
    }

    /// Interrupts that arrived on the vector in total (handled or not).
    pub fn raw_irq_count(&self) -> u64 {
        self.irq.as_ref().map_or(0, DeviceIrq::count)
    }

    /// Wait for an interrupt and EOI it *without* acknowledging the
    /// device (bug test `no-ack`). Returns the interrupts taken (0 on
    /// timeout).
    pub fn wait_irq_without_ack(&mut self, deadline: Deadline) -> u64 {
        let Some(irq) = self.irq.as_mut() else {
            return 0;
        };
        let n = irq.wait(deadline);
        for _ in 0..n {
            irq.eoi();
        }
        self.irqs += n;
        n
    }

    /// Poll the register page until fence `want` completed.
    pub fn poll_fence(&self, want: u32) -> Result<(), Error> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        while !self.fence_reached(want) {
            self.check_error()?;
            if deadline.passed() {
                return Err(Error::Timeout("fence", self.read(REG_STATUS)));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}

/// Encode the shared scene into batches and run it: each batch (ending
/// with a scene fence) is one command buffer / descriptor / doorbell,
/// followed by a wait for its fence interrupt. Returns the fences done.
pub fn draw_scene(g: &mut Vgpu) -> Result<u32, Error> {
    let image = scene_image();
    let mut buf = g.begin();
    let mut fences = 0;
    for op in scene::SCENE {
        match *op {
            scene::SceneOp::Fill { x, y, w, h, color } => buf.fill(x, y, w, h, color),
            scene::SceneOp::Copy {
                sx,
                sy,
                dx,
                dy,
                w,
                h,
            } => buf.copy(sx, sy, dx, dy, w, h),
            scene::SceneOp::Upload { x, y } => buf.upload(
                x,
                y,
                scene::IMAGE_WIDTH,
                scene::IMAGE_HEIGHT,
                image,
                scene::IMAGE_WIDTH * 4,
            ),
            scene::SceneOp::Fence => {
                let v = g.next_fence();
                buf.fence(v);
                g.submit(buf)?;
                g.wait_fence(v)?;
                fences += 1;
                buf = g.begin();
            }
        }
    }
    Ok(fences)
}
