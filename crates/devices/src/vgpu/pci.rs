//! vgpu as a PCI function: the thin adapter between the PCI framework and
//! the pure [`Vgpu`] model.
//!
//! - BAR0 (4 KiB, 32-bit MMIO) is the register page: the VMM maps
//!   [`VgpuPci::register_page`] read-only at BAR0, so reads cost a memory
//!   access and writes trap here and go to [`Vgpu::write_reg`].
//! - BAR2 (4 MiB, 64-bit prefetchable) is the framebuffer: the VMM maps the
//!   same host memory the engine draws into; accesses that still trap (the
//!   BAR not mapped yet) are served from the [`FrameMemory`].
//! - Interrupts: INTx (pin A) through the level line given to the model; one
//!   MSI vector through the PCI MSI capability. The model asks for an MSI
//!   with no address: the adapter keeps the message the guest programmed.
//!   The INTx-disable bit is not seen by the model (it drives the line it
//!   was given); drivers that use MSI never enable INTx.
//! - The command register's bus-master bit and the MSI enable are passed to
//!   the model after every configuration write.
//!
//! Lock order: this adapter's mutex (held by the PCI bus) → the model's
//! mutex → the framebuffer. The engine worker takes only the latter two.

use std::sync::{Arc, Mutex};

use crate::bus::lock;
use crate::dma::{Dma, DmaTrace};
use crate::irq::Irq;
use crate::pci::config::{Bar, BarChange, ConfigSpace, PciIds, PCI_COMMAND_MASTER};
use crate::pci::device::PciDevice;
use crate::pci::msi::{MsiCapability, MsiMessage, MsiSink};
use crate::pci::register_page::RegisterPage;

use super::engine::Vgpu;
use super::raster::{DmaFault, DmaRead};
use super::regs::*;
use super::worker::{EventSink, FrameMemory, Worker};
use super::Event;

/// The framebuffer BAR index.
pub const FB_BAR: usize = 2;
/// The register BAR index.
pub const REG_BAR: usize = 0;

/// Guest memory for the engine: the one checked DMA path.
impl DmaRead for Dma {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        Dma::read(self, addr, buf).map_err(|_| DmaFault {
            addr,
            len: buf.len() as u64,
        })
    }
}

/// Errors building the function.
#[derive(Debug, thiserror::Error)]
pub enum VgpuPciError {
    /// The configuration space refused a BAR or capability (a vlab bug).
    #[error("vgpu configuration space: {0}")]
    Config(String),
    /// The engine thread could not start.
    #[error("Cannot start the vgpu engine thread: {0}")]
    Worker(#[from] std::io::Error),
}

/// vgpu on the PCI bus.
pub struct VgpuPci {
    cfg: ConfigSpace,
    msi: MsiCapability,
    msi_message: Arc<Mutex<Option<MsiMessage>>>,
    dev: Arc<Mutex<Vgpu>>,
    page: Arc<RegisterPage>,
    fb: Arc<dyn FrameMemory>,
    events: Arc<Mutex<EventSink>>,
    _worker: Worker,
}

impl VgpuPci {
    /// A vgpu whose engine reads guest memory through `dma` (which must
    /// share this function's bus-master state: build it from
    /// [`VgpuPci::ids`]' config space — see [`VgpuPci::new`]), draws into
    /// `fb`, raises INTx on `intx`, sends MSIs to `msi_sink`, and reports
    /// every model event to `events` (for the monitor and the trace).
    pub fn new(
        name: &str,
        mem: vm_memory::GuestMemoryMmap,
        fb: Arc<dyn FrameMemory>,
        intx: Arc<dyn Irq>,
        msi_sink: Arc<dyn MsiSink>,
        events: EventSink,
    ) -> Result<VgpuPci, VgpuPciError> {
        Self::with_dma_trace(name, mem, fb, intx, msi_sink, events, None)
    }

    /// [`VgpuPci::new`], also showing every DMA the engine makes to
    /// `dma_trace` (for the I/O trace).
    ///
    /// Events are delivered with the model's mutex held, in the model's
    /// order: the sink must not take the model's or this function's lock.
    pub fn with_dma_trace(
        name: &str,
        mem: vm_memory::GuestMemoryMmap,
        fb: Arc<dyn FrameMemory>,
        intx: Arc<dyn Irq>,
        msi_sink: Arc<dyn MsiSink>,
        events: EventSink,
        dma_trace: Option<DmaTrace>,
    ) -> Result<VgpuPci, VgpuPciError> {
        let cfg_err = |e: &dyn std::fmt::Display| VgpuPciError::Config(e.to_string());
        let mut cfg = ConfigSpace::new(Self::ids());
        cfg.add_bar(REG_BAR, Bar::mem32(BAR0_SIZE))
            .map_err(|e| cfg_err(&e))?;
        cfg.add_bar(FB_BAR, Bar::mem64(BAR2_SIZE, true))
            .map_err(|e| cfg_err(&e))?;
        cfg.set_interrupt_pin(1).map_err(|e| cfg_err(&e))?;
        let msi =
            MsiCapability::add(&mut cfg, 1, false, msi_sink.clone()).map_err(|e| cfg_err(&e))?;
        let mut dma = Dma::new(name, mem, cfg.bus_master());
        if let Some(t) = dma_trace {
            dma = dma.with_trace(t);
        }
        let dma = Arc::new(dma);

        let page = RegisterPage::new();
        let mut model = Vgpu::new();
        model.set_intx(intx);
        let msi_message: Arc<Mutex<Option<MsiMessage>>> = Arc::new(Mutex::new(None));
        let m = msi_message.clone();
        model.set_msi(Arc::new(move || {
            if let Some(msg) = *lock(&m) {
                msi_sink.send(msg);
            }
        }));
        let p = page.clone();
        model.set_page_hook(Box::new(move |dwords| {
            for (i, v) in dwords.iter().enumerate() {
                p.set(i * 4, *v);
            }
        }));
        // Publish the reset state before the guest can look.
        for (i, v) in model.register_page().iter().enumerate() {
            page.set(i * 4, *v);
        }
        let dev = Arc::new(Mutex::new(model));
        let events = Arc::new(Mutex::new(events));
        let e = events.clone();
        let worker = Worker::spawn(
            dev.clone(),
            dma,
            fb.clone(),
            Box::new(move |ev| (lock(&e))(ev)),
        )?;
        Ok(VgpuPci {
            cfg,
            msi,
            msi_message,
            dev,
            page,
            fb,
            events,
            _worker: worker,
        })
    }

    /// vgpu's PCI identity.
    pub fn ids() -> PciIds {
        PciIds {
            vendor: VGPU_VENDOR_ID,
            device: VGPU_DEVICE_ID,
            revision: VGPU_REVISION,
            class: VGPU_CLASS,
            subclass: VGPU_SUBCLASS,
            prog_if: VGPU_PROG_IF,
            subsystem_vendor: VGPU_VENDOR_ID,
            subsystem: VGPU_DEVICE_ID,
        }
    }

    /// The model, for screenshots and tests.
    pub fn model(&self) -> Arc<Mutex<Vgpu>> {
        self.dev.clone()
    }

    /// The framebuffer the engine draws into.
    pub fn framebuffer(&self) -> Arc<dyn FrameMemory> {
        self.fb.clone()
    }

    fn emit(sink: &Mutex<EventSink>, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut sink = lock(sink);
        for ev in events {
            (sink)(ev);
        }
    }

    /// Pass bus-master and MSI state to the model.
    fn sync_model(&mut self) {
        let master = self.cfg.command() & PCI_COMMAND_MASTER != 0;
        let msi_on = self.msi.enabled(&self.cfg);
        *lock(&self.msi_message) = if msi_on {
            self.msi.message(&self.cfg, 0)
        } else {
            None
        };
        let mut m = lock(&self.dev);
        m.set_msi_enabled(msi_on);
        let events = m.set_bus_master(master);
        // Under the model lock: in order with the engine's events.
        Self::emit(&self.events, events);
    }
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciDevice for VgpuPci {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let changes = self.cfg.write(offset, data);
        self.msi.config_written(&mut self.cfg);
        self.sync_model();
        changes
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            REG_BAR => {
                let v = lock(&self.dev).read_reg(offset, data.len());
                let bytes = v.to_le_bytes();
                for (d, s) in data
                    .iter_mut()
                    .zip(bytes.iter().chain(std::iter::repeat(&0)))
                {
                    *d = *s;
                }
            }
            FB_BAR => {
                data.fill(0);
                self.fb.with(&mut |fb| {
                    if let Some(src) = usize::try_from(offset)
                        .ok()
                        .and_then(|o| fb.get(o..o.checked_add(data.len())?))
                    {
                        data.copy_from_slice(src);
                    }
                });
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            REG_BAR => {
                let mut m = lock(&self.dev);
                let events = m.write_reg(offset, data.len(), le_value(data));
                // Under the model lock: in order with the engine's events.
                Self::emit(&self.events, events);
            }
            FB_BAR => self.fb.with_mut(&mut |fb| {
                if let Some(dst) = usize::try_from(offset)
                    .ok()
                    .and_then(|o| fb.get_mut(o..o.checked_add(data.len())?))
                {
                    dst.copy_from_slice(data);
                }
            }),
            _ => {}
        }
    }

    fn register_page(&self, bar: usize) -> Option<Arc<RegisterPage>> {
        (bar == REG_BAR).then(|| self.page.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::FakeIrq;
    use crate::pci::config::{PCI_COMMAND, PCI_COMMAND_MEMORY};
    use crate::pci::msi::FakeMsiSink;
    use crate::vgpu::command::{encode_buffer, Command, Rect};
    use crate::vgpu::worker::VecFrame;
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn setup() -> (
        VgpuPci,
        GuestMemoryMmap,
        Arc<FakeIrq>,
        Arc<Mutex<Vec<Event>>>,
    ) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Arc::new(FakeIrq::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let fb: Arc<dyn FrameMemory> = Arc::new(VecFrame::new(BAR2_SIZE as usize));
        let dev = VgpuPci::new(
            "vgpu",
            mem.clone(),
            fb,
            irq.clone(),
            FakeMsiSink::new(),
            Box::new(move |e| s.lock().unwrap().push(e)),
        )
        .unwrap();
        (dev, mem, irq, seen)
    }

    fn w32(d: &mut VgpuPci, off: u64, v: u32) {
        d.bar_write(REG_BAR, off, &v.to_le_bytes());
    }

    fn r32(d: &mut VgpuPci, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.bar_read(REG_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_register_page_agree() {
        let (mut d, _, _, _) = setup();
        let mut id = [0u8; 4];
        d.config_read(0, &mut id);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), VGPU_VENDOR_ID);
        let page = d.register_page(REG_BAR).unwrap();
        assert!(d.register_page(FB_BAR).is_none());
        assert_eq!(page.get(REG_ID as usize), r32(&mut d, REG_ID));
        assert_ne!(r32(&mut d, REG_ID), 0);
    }

    #[test]
    fn draws_through_the_ring_once_bus_master_is_on() {
        let (mut d, mem, irq, seen) = setup();
        // Enable memory decoding and bus mastering.
        let cmd = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        d.config_write(PCI_COMMAND, &cmd.to_le_bytes());
        // One command buffer: fill + fence, at 0x2000; ring at 0x1000.
        let cmds = [
            Command::FillRect {
                rect: Rect {
                    x: 1,
                    y: 1,
                    w: 2,
                    h: 2,
                },
                color: 0x00ff_0000,
            },
            Command::Fence { value: 7 },
        ];
        let buf = encode_buffer(&cmds);
        mem.write_slice(&buf, GuestAddress(0x2000)).unwrap();
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&0x2000u64.to_le_bytes());
        desc[8..12].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        mem.write_slice(&desc, GuestAddress(0x1000)).unwrap();
        w32(&mut d, REG_MODE_WIDTH, 64);
        w32(&mut d, REG_MODE_HEIGHT, 32);
        w32(&mut d, REG_MODE_FORMAT, FORMAT_XRGB8888);
        w32(&mut d, REG_RING_BASE_LO, 0x1000);
        w32(&mut d, REG_RING_BASE_HI, 0);
        w32(&mut d, REG_RING_SIZE, 4);
        w32(&mut d, REG_INT_MASK, INT_FENCE);
        w32(&mut d, REG_CONTROL, CONTROL_ENABLE);
        w32(&mut d, REG_RING_TAIL, 1);
        w32(&mut d, REG_DOORBELL, 1);
        let page = d.register_page(REG_BAR).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while page.get(REG_FENCE_COMPLETED as usize) != 7 {
            assert!(Instant::now() < deadline, "fence never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(irq.level(), "INTx asserted for the fence");
        let stride = r32(&mut d, REG_MODE_STRIDE) as usize;
        let mut px = [0u8; 4];
        d.bar_read(FB_BAR, (stride + 4) as u64, &mut px);
        assert_eq!(u32::from_le_bytes(px), 0x00ff_0000);
        assert!(seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Fence { .. })));
        // Acknowledge: INT_STATUS is write-1-to-clear.
        w32(&mut d, REG_INT_STATUS, INT_FENCE);
        assert!(!irq.level());
    }

    #[test]
    fn odd_bars_and_widths_do_not_panic() {
        let (mut d, _, _, _) = setup();
        for bar in 0..6 {
            for len in [0usize, 1, 2, 3, 4, 8, 16] {
                for off in [0u64, 1, 0xffc, 0xfff, BAR2_SIZE - 1, u64::MAX] {
                    let mut b = vec![0u8; len];
                    d.bar_read(bar, off, &mut b);
                    d.bar_write(bar, off, &b);
                }
            }
        }
    }
}
