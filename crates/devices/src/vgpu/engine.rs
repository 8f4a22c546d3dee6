//! The vgpu device state machine: BAR0 registers, the ring engine and the
//! interrupt logic. Pure: no threads, no PCI, no KVM.
//!
//! * [`Vgpu::read_reg`] reads the register page (no side effects, any width).
//! * [`Vgpu::write_reg`] is the only way the guest changes state.
//! * [`Vgpu::step`] / [`Vgpu::process`] run the command engine over guest
//!   memory ([`DmaRead`]) and the framebuffer (`&mut [u8]`, BAR2's backing).
//!
//! Every call returns the [`Event`]s it caused, for protocol monitors and the
//! I/O trace. After every state change the register page is rebuilt, handed
//! to the page hook (if any) and *then* the interrupt lines are updated, so a
//! guest woken by an interrupt reads an up-to-date page.

use std::sync::Arc;

use super::command::{parse_and_validate, upload_source_len, Command};
use super::raster::{execute, DmaRead, FbGeometry, RasterError};
use super::regs::*;
use crate::irq::Irq;

/// Where MSI messages go; the PCI framework provides the real one.
pub trait MsiSink: Send + Sync {
    /// Send one MSI message (address/data are the framework's business).
    fn signal(&self);
}

impl<F: Fn() + Send + Sync> MsiSink for F {
    fn signal(&self) {
        self()
    }
}

/// What a DMA read was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaKind {
    /// A 16-byte ring descriptor.
    Descriptor,
    /// A command buffer a descriptor points at.
    CommandBuffer,
    /// Pixel data of UPLOAD_IMAGE (the whole span, `(h-1)*stride + w*4`).
    Upload,
}

/// Something the device did, for monitors and traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// DOORBELL written: the engine owns descriptors up to `tail`.
    Doorbell {
        /// The tail handed over.
        tail: u32,
    },
    /// The engine is about to read guest memory (emitted even if it faults).
    DmaRead {
        /// What for.
        kind: DmaKind,
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A descriptor's whole command buffer executed; RING_HEAD moved past it.
    DescriptorDone {
        /// Ring index of the descriptor.
        index: u32,
        /// Command buffer address.
        addr: u64,
        /// Command buffer length.
        len: u32,
    },
    /// A FENCE command executed.
    Fence {
        /// Its value (now in FENCE_COMPLETED).
        value: u32,
    },
    /// Bits became pending and enabled: an MSI was sent or INTx asserted.
    InterruptRaised {
        /// The newly pending, enabled INT_* bits.
        bits: u32,
    },
    /// The driver cleared INT_STATUS bits.
    InterruptAcked {
        /// The bits that were set and are now clear.
        bits: u32,
    },
    /// An error happened (also those not latched because one already was).
    Error {
        /// The code.
        code: ErrorCode,
        /// Its ERROR_ADDR: register offset, descriptor, command or DMA address.
        addr: u64,
    },
    /// A valid mode took effect (or the mode became invalid: `None`).
    ModeChanged {
        /// The new visible framebuffer, if any.
        geometry: Option<FbGeometry>,
    },
    /// CONTROL.RESET: every register is back at its reset value.
    Reset,
}

/// Callback receiving the register page after every change.
pub type PageHook = Box<dyn FnMut(&[u32; REG_PAGE_DWORDS]) + Send>;
/// Callback telling the worker there is work.
pub type WorkHook = Arc<dyn Fn() + Send + Sync>;

/// Register state that CONTROL.RESET restores.
#[derive(Clone, Debug, Default)]
struct State {
    enabled: bool,
    int_status: u32,
    int_mask: u32,
    error: Option<ErrorCode>,
    error_addr: u64,
    error_count: u32,
    /// The latched error belongs to the descriptor at RING_HEAD.
    engine_fault: bool,
    mode_width: u32,
    mode_height: u32,
    mode_format: u32,
    ring_base_lo: u32,
    ring_base_hi: u32,
    ring_size: u32,
    head: u32,
    tail: u32,
    /// RING_TAIL as of the last DOORBELL: the engine's limit.
    doorbell_tail: u32,
    fence_completed: u32,
    scratch: u32,
}

/// The vgpu device model.
pub struct Vgpu {
    s: State,
    bus_master: bool,
    msi_enabled: bool,
    intx: Option<Arc<dyn Irq>>,
    msi: Option<Arc<dyn MsiSink>>,
    intx_level: bool,
    /// INT_STATUS & INT_MASK as of the last interrupt update.
    signalled: u32,
    page: [u32; REG_PAGE_DWORDS],
    page_hook: Option<PageHook>,
    work_hook: Option<WorkHook>,
}

impl Default for Vgpu {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Vgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vgpu")
            .field("state", &self.s)
            .field("bus_master", &self.bus_master)
            .field("msi_enabled", &self.msi_enabled)
            .finish_non_exhaustive()
    }
}

fn dword(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(i * 4..i * 4 + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

impl Vgpu {
    /// A device in its reset state, no interrupt sinks, not bus master.
    pub fn new() -> Self {
        let mut v = Vgpu {
            s: State::default(),
            bus_master: false,
            msi_enabled: false,
            intx: None,
            msi: None,
            intx_level: false,
            signalled: 0,
            page: [0; REG_PAGE_DWORDS],
            page_hook: None,
            work_hook: None,
        };
        v.refresh_page();
        v
    }

    /// The INTx line (level: high while INT_STATUS & INT_MASK != 0 and MSI
    /// is off).
    pub fn set_intx(&mut self, irq: Arc<dyn Irq>) {
        self.intx = Some(irq);
        self.update_irq(&mut Vec::new());
    }

    /// The MSI sink (one message each time a bit becomes pending and enabled
    /// while MSI is on).
    pub fn set_msi(&mut self, msi: Arc<dyn MsiSink>) {
        self.msi = Some(msi);
    }

    /// MSI Enable from the MSI capability: on = MSI, INTx held low.
    pub fn set_msi_enabled(&mut self, on: bool) {
        self.msi_enabled = on;
        self.update_irq(&mut Vec::new());
    }

    /// Bus Master Enable from the PCI command register. Returns events
    /// (pending work may now start or fail).
    pub fn set_bus_master(&mut self, on: bool) -> Vec<Event> {
        self.bus_master = on;
        let mut ev = Vec::new();
        self.finish(&mut ev);
        ev
    }

    /// Called with the register page after every change (under whatever
    /// lock protects the device), before interrupts are signalled.
    pub fn set_page_hook(&mut self, hook: PageHook) {
        let mut hook = hook;
        hook(&self.page);
        self.page_hook = Some(hook);
    }

    /// Called when the engine gains work (doorbell, error cleared, bus
    /// master on): wakes the worker.
    pub fn set_work_hook(&mut self, hook: WorkHook) {
        self.work_hook = Some(hook);
    }

    /// The register page: what every BAR0 read returns.
    pub fn register_page(&self) -> [u32; REG_PAGE_DWORDS] {
        self.page
    }

    /// The visible framebuffer, if a valid mode is set.
    pub fn geometry(&self) -> Option<FbGeometry> {
        if self.s.mode_format != FORMAT_XRGB8888 {
            return None;
        }
        FbGeometry::for_mode(self.s.mode_width, self.s.mode_height)
    }

    /// The latched error, if any.
    pub fn error(&self) -> Option<ErrorCode> {
        self.s.error
    }

    /// True if the engine has descriptors to execute and may run.
    pub fn has_work(&self) -> bool {
        self.s.enabled && self.s.error.is_none() && self.s.head != self.s.doorbell_tail
    }

    fn ring_base(&self) -> u64 {
        (u64::from(self.s.ring_base_hi) << 32) | u64::from(self.s.ring_base_lo)
    }

    fn status(&self) -> u32 {
        let s = &self.s;
        let mut v = 0;
        let bits = [
            (s.enabled, STATUS_ENABLED),
            (self.has_work(), STATUS_ENGINE_BUSY),
            (s.head == s.doorbell_tail, STATUS_RING_EMPTY),
            (s.error.is_some(), STATUS_ERROR),
            (self.geometry().is_some(), STATUS_MODE_SET),
            (self.bus_master, STATUS_BUS_MASTER),
            (s.int_status & s.int_mask != 0, STATUS_INT_PENDING),
        ];
        for (on, bit) in bits {
            if on {
                v |= bit;
            }
        }
        v
    }

    fn refresh_page(&mut self) {
        let s = &self.s;
        let regs = [
            (REG_ID, reset_value(REG_ID)),
            (REG_VERSION, reset_value(REG_VERSION)),
            (REG_FB_SIZE, reset_value(REG_FB_SIZE)),
            (REG_MAX_SIZE, reset_value(REG_MAX_SIZE)),
            (REG_STATUS, self.status()),
            (REG_CONTROL, if s.enabled { CONTROL_ENABLE } else { 0 }),
            (REG_INT_STATUS, s.int_status),
            (REG_INT_MASK, s.int_mask),
            (REG_ERROR_CODE, s.error.map_or(0, ErrorCode::as_u32)),
            (REG_ERROR_ADDR_LO, s.error_addr as u32),
            (REG_ERROR_ADDR_HI, (s.error_addr >> 32) as u32),
            (REG_ERROR_COUNT, s.error_count),
            (REG_MODE_WIDTH, s.mode_width),
            (REG_MODE_HEIGHT, s.mode_height),
            (REG_MODE_FORMAT, s.mode_format),
            (REG_MODE_STRIDE, self.geometry().map_or(0, |g| g.stride)),
            (REG_RING_BASE_LO, s.ring_base_lo),
            (REG_RING_BASE_HI, s.ring_base_hi),
            (REG_RING_SIZE, s.ring_size),
            (REG_RING_HEAD, s.head),
            (REG_RING_TAIL, s.tail),
            (REG_DOORBELL, 0),
            (REG_FENCE_COMPLETED, s.fence_completed),
            (REG_SCRATCH, s.scratch),
        ];
        for (off, v) in regs {
            if let Some(w) = self.page.get_mut((off / 4) as usize) {
                *w = v;
            }
        }
    }

    /// Rebuild the page, publish it, then update the interrupt lines.
    fn finish(&mut self, ev: &mut Vec<Event>) {
        let old = self.page;
        self.refresh_page();
        if old != self.page {
            if let Some(h) = self.page_hook.as_mut() {
                h(&self.page);
            }
        }
        self.update_irq(ev);
        if self.has_work() {
            if let Some(k) = &self.work_hook {
                k();
            }
        }
    }

    fn update_irq(&mut self, ev: &mut Vec<Event>) {
        let pending = self.s.int_status & self.s.int_mask;
        let new_bits = pending & !self.signalled;
        self.signalled = pending;
        let level = pending != 0 && !self.msi_enabled;
        if level != self.intx_level {
            self.intx_level = level;
            if let Some(i) = &self.intx {
                i.set_level(level);
            }
        }
        if new_bits != 0 {
            if self.msi_enabled {
                if let Some(m) = &self.msi {
                    m.signal();
                }
            }
            ev.push(Event::InterruptRaised { bits: new_bits });
        }
    }

    /// Report an error: latch it if none is, count it, raise INT_ERROR.
    fn raise_error(&mut self, code: ErrorCode, addr: u64, engine: bool, ev: &mut Vec<Event>) {
        ev.push(Event::Error { code, addr });
        self.s.error_count = self.s.error_count.saturating_add(1);
        if self.s.error.is_none() {
            self.s.error = Some(code);
            self.s.error_addr = addr;
            self.s.engine_fault = engine;
        }
        self.s.int_status |= INT_ERROR;
    }

    /// Read `width` bytes at `offset` of BAR0: the little-endian bytes of
    /// the register page. Any width 1..=8 and any alignment is answered;
    /// other widths and bytes past the page read 0. No side effects.
    pub fn read_reg(&self, offset: u64, width: usize) -> u64 {
        if !(1..=8).contains(&width) {
            return 0;
        }
        let mut v = 0u64;
        for i in 0..width {
            let byte = offset
                .checked_add(i as u64)
                .and_then(|o| Some((self.page.get(usize::try_from(o / 4).ok()?)?, o % 4)))
                .map_or(0, |(w, sh)| (w >> (8 * sh)) & 0xff);
            v |= u64::from(byte) << (8 * i);
        }
        v
    }

    /// The guest writes `value` (`width` bytes) at `offset` of BAR0.
    pub fn write_reg(&mut self, offset: u64, width: usize, value: u64) -> Vec<Event> {
        let mut ev = Vec::new();
        self.write_inner(offset, width, value, &mut ev);
        self.finish(&mut ev);
        ev
    }

    fn write_inner(&mut self, offset: u64, width: usize, value: u64, ev: &mut Vec<Event>) {
        if width != 4 || !offset.is_multiple_of(4) {
            return self.raise_error(ErrorCode::WrongWidth, offset, false, ev);
        }
        match reg_access(offset) {
            None => return self.raise_error(ErrorCode::UnknownRegister, offset, false, ev),
            Some(RegAccess::ReadOnly) => {
                return self.raise_error(ErrorCode::ReadOnly, offset, false, ev)
            }
            Some(_) => {}
        }
        let v = value as u32;
        let busy = self.s.enabled && self.s.head != self.s.doorbell_tail;
        let err =
            |this: &mut Self, code, ev: &mut Vec<Event>| this.raise_error(code, offset, false, ev);
        match offset {
            REG_CONTROL => self.write_control(v, ev),
            REG_INT_STATUS if v & !INT_VALID != 0 => err(self, ErrorCode::ReservedBits, ev),
            REG_INT_STATUS => {
                let cleared = self.s.int_status & v;
                self.s.int_status &= !v;
                if cleared != 0 {
                    ev.push(Event::InterruptAcked { bits: cleared });
                }
            }
            REG_INT_MASK if v & !INT_VALID != 0 => err(self, ErrorCode::ReservedBits, ev),
            REG_INT_MASK => self.s.int_mask = v,
            REG_MODE_WIDTH | REG_MODE_HEIGHT | REG_MODE_FORMAT if busy => {
                err(self, ErrorCode::BadState, ev)
            }
            REG_MODE_WIDTH | REG_MODE_HEIGHT | REG_MODE_FORMAT => self.write_mode(offset, v, ev),
            REG_RING_BASE_LO | REG_RING_BASE_HI | REG_RING_SIZE if self.s.enabled => {
                err(self, ErrorCode::BadState, ev)
            }
            REG_RING_BASE_LO => self.s.ring_base_lo = v,
            REG_RING_BASE_HI => self.s.ring_base_hi = v,
            REG_RING_SIZE => self.s.ring_size = v,
            REG_RING_TAIL | REG_DOORBELL if !self.s.enabled => err(self, ErrorCode::BadState, ev),
            REG_RING_TAIL if v >= self.s.ring_size => err(self, ErrorCode::BadTail, ev),
            REG_RING_TAIL => self.s.tail = v,
            REG_DOORBELL => {
                self.s.doorbell_tail = self.s.tail;
                ev.push(Event::Doorbell { tail: self.s.tail });
            }
            REG_SCRATCH => self.s.scratch = v,
            _ => err(self, ErrorCode::UnknownRegister, ev),
        }
    }

    fn write_mode(&mut self, offset: u64, v: u32, ev: &mut Vec<Event>) {
        let ok = match offset {
            REG_MODE_WIDTH => v <= MAX_WIDTH,
            REG_MODE_HEIGHT => v <= MAX_HEIGHT,
            _ => v == FORMAT_NONE || v == FORMAT_XRGB8888,
        };
        if !ok {
            return self.raise_error(ErrorCode::BadMode, offset, false, ev);
        }
        let before = self.geometry();
        match offset {
            REG_MODE_WIDTH => self.s.mode_width = v,
            REG_MODE_HEIGHT => self.s.mode_height = v,
            _ => self.s.mode_format = v,
        }
        let geometry = self.geometry();
        if geometry != before {
            ev.push(Event::ModeChanged { geometry });
        }
    }

    fn write_control(&mut self, v: u32, ev: &mut Vec<Event>) {
        if v & !CONTROL_VALID != 0 {
            return self.raise_error(ErrorCode::ReservedBits, REG_CONTROL, false, ev);
        }
        if v & CONTROL_RESET != 0 {
            let had_mode = self.geometry().is_some();
            self.s = State::default();
            ev.push(Event::Reset);
            if had_mode {
                ev.push(Event::ModeChanged { geometry: None });
            }
            return;
        }
        if v & CONTROL_CLEAR_ERROR != 0 && self.s.error.is_some() {
            if self.s.engine_fault && self.s.enabled && self.s.head != self.s.doorbell_tail {
                // Skip the faulting descriptor.
                self.s.head = self.s.head.wrapping_add(1) & self.s.ring_size.wrapping_sub(1);
            }
            self.s.error = None;
            self.s.error_addr = 0;
            self.s.error_count = 0;
            self.s.engine_fault = false;
        }
        let enable = v & CONTROL_ENABLE != 0;
        if enable && !self.s.enabled {
            let size = self.s.ring_size;
            let base = self.ring_base();
            let size_ok = size.is_power_of_two() && (RING_SIZE_MIN..=RING_SIZE_MAX).contains(&size);
            let end_ok = base.checked_add(u64::from(size) * DESC_SIZE).is_some();
            if !size_ok || !base.is_multiple_of(RING_ALIGN) || !end_ok {
                return self.raise_error(ErrorCode::BadRing, REG_CONTROL, false, ev);
            }
            self.s.enabled = true;
            self.s.head = 0;
            self.s.tail = 0;
            self.s.doorbell_tail = 0;
        } else if !enable {
            self.s.enabled = false;
        }
    }

    /// Execute at most one descriptor (the one at RING_HEAD), if there is
    /// work. `fb` is the framebuffer memory (BAR2's backing); `mem` reads
    /// guest memory.
    pub fn step(&mut self, mem: &dyn DmaRead, fb: &mut [u8]) -> Vec<Event> {
        let mut ev = Vec::new();
        if self.has_work() {
            self.step_inner(mem, fb, &mut ev);
        }
        self.finish(&mut ev);
        ev
    }

    /// Run the engine until the ring is drained or an error halts it.
    pub fn process(&mut self, mem: &dyn DmaRead, fb: &mut [u8]) -> Vec<Event> {
        let mut ev = Vec::new();
        // Each step advances RING_HEAD or latches an error; the bound is a
        // belt-and-braces guard against looping forever.
        for _ in 0..=RING_SIZE_MAX {
            if !self.has_work() {
                break;
            }
            ev.extend(self.step(mem, fb));
        }
        ev
    }

    fn step_inner(&mut self, mem: &dyn DmaRead, fb: &mut [u8], ev: &mut Vec<Event>) {
        let index = self.s.head;
        let desc_addr = u64::from(index)
            .checked_mul(DESC_SIZE)
            .and_then(|o| self.ring_base().checked_add(o));
        let Some(desc_addr) = desc_addr else {
            return self.raise_error(ErrorCode::BadRing, self.ring_base(), true, ev);
        };
        if !self.bus_master {
            return self.raise_error(ErrorCode::NoBusMaster, desc_addr, false, ev);
        }
        let mut desc = [0u8; DESC_SIZE as usize];
        ev.push(Event::DmaRead {
            kind: DmaKind::Descriptor,
            addr: desc_addr,
            len: DESC_SIZE,
        });
        if let Err(f) = mem.read(desc_addr, &mut desc) {
            return self.raise_error(ErrorCode::DmaFault, f.addr, true, ev);
        }
        let buf_addr = u64::from(dword(&desc, 0)) | (u64::from(dword(&desc, 1)) << 32);
        let len = dword(&desc, 2);
        let flags = dword(&desc, 3);
        let desc_ok = flags == 0
            && len.is_multiple_of(4)
            && (4..=CMD_BUFFER_MAX).contains(&len)
            && buf_addr.is_multiple_of(4)
            && buf_addr.checked_add(u64::from(len)).is_some();
        if !desc_ok {
            return self.raise_error(ErrorCode::BadDescriptor, desc_addr, true, ev);
        }
        ev.push(Event::DmaRead {
            kind: DmaKind::CommandBuffer,
            addr: buf_addr,
            len: u64::from(len),
        });
        let mut buf = vec![0u8; len as usize];
        if let Err(f) = mem.read(buf_addr, &mut buf) {
            return self.raise_error(ErrorCode::DmaFault, f.addr, true, ev);
        }
        let geom = self.geometry();
        let cmds = match parse_and_validate(&buf, geom.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                let addr = buf_addr.saturating_add(e.offset() as u64);
                return self.raise_error(e.code(), addr, true, ev);
            }
        };
        for (off, cmd) in cmds {
            let cmd_addr = buf_addr.saturating_add(off as u64);
            if let Err((code, addr)) = self.run_command(&cmd, cmd_addr, geom, mem, fb, ev) {
                return self.raise_error(code, addr, true, ev);
            }
        }
        ev.push(Event::DescriptorDone {
            index,
            addr: buf_addr,
            len,
        });
        self.s.head = index.wrapping_add(1) & self.s.ring_size.wrapping_sub(1);
        if self.s.head == self.s.doorbell_tail {
            self.s.int_status |= INT_IDLE;
        }
    }

    fn run_command(
        &mut self,
        cmd: &Command,
        cmd_addr: u64,
        geom: Option<FbGeometry>,
        mem: &dyn DmaRead,
        fb: &mut [u8],
        ev: &mut Vec<Event>,
    ) -> Result<(), (ErrorCode, u64)> {
        match *cmd {
            Command::Nop { .. } => Ok(()),
            Command::Fence { value } => {
                self.s.fence_completed = value;
                self.s.int_status |= INT_FENCE;
                ev.push(Event::Fence { value });
                Ok(())
            }
            _ => {
                let geom = geom.ok_or((ErrorCode::NoMode, cmd_addr))?;
                if let Command::UploadImage {
                    rect,
                    src_addr,
                    src_stride,
                } = *cmd
                {
                    ev.push(Event::DmaRead {
                        kind: DmaKind::Upload,
                        addr: src_addr,
                        len: upload_source_len(&rect, src_stride).unwrap_or(0),
                    });
                }
                execute(fb, &geom, cmd, mem).map_err(|e| match e {
                    RasterError::Dma(f) => (ErrorCode::DmaFault, f.addr),
                    RasterError::BadSource => (ErrorCode::SourceOverflow, cmd_addr),
                    RasterError::BadGeometry | RasterError::OutOfBounds => {
                        (ErrorCode::RectOutOfBounds, cmd_addr)
                    }
                })
            }
        }
    }
}
