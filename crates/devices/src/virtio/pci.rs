//! The modern virtio-pci transport (virtio 1.2 §4.1), as a [`PciDevice`].
//!
//! # PCI function
//!
//! * IDs: vendor 0x1AF4, device 0x1040 + virtio type (block: 0x1042),
//!   revision 1, subsystem 0x1AF4:0x1100; class from the device.
//! * BAR1: 32-bit memory, 4 KiB: MSI-X table at 0, PBA at 0x800; one
//!   vector per queue plus one for configuration changes.
//! * BAR4: 64-bit memory, 16 KiB, one page per structure:
//!
//! | offset | structure | capability `cfg_type` |
//! |--------|-----------|----------------------|
//! | 0x0000 | common configuration (0x3c bytes) | 1 COMMON |
//! | 0x1000 | ISR status (1 byte, read-to-clear) | 3 ISR |
//! | 0x2000 | device configuration | 4 DEVICE |
//! | 0x3000 | notify: queue `q` at `0x3000 + 4 * q` (`notify_off_multiplier` 4, `queue_notify_off` = q) | 2 NOTIFY |
//!
//! plus a `PCI_CFG` capability (type 5) whose `pci_cfg_data` window reaches
//! BAR1/BAR4 through configuration space, and INTA# for drivers without
//! MSI-X.
//!
//! # Registers
//!
//! Every register accepts any width at any offset: reads are assembled
//! byte by byte, writes are merged into each field they touch and then
//! applied in offset order. Read-only fields ignore writes; queue fields
//! of a queue that does not exist read 0 and ignore writes.
//!
//! * Features: [`super::VIRTIO_F_VERSION_1`] always offered and required
//!   (`FEATURES_OK` is refused without it, or with any bit not offered);
//!   `ACCESS_PLATFORM` and `RING_RESET` never offered.
//! * Status: bits are only ever added (a write clearing a bit other than
//!   through 0 is refused); `FEATURES_OK` needs `DRIVER` and acceptable
//!   features; `DRIVER_OK` needs `FEATURES_OK` and activates the device;
//!   `DEVICE_NEEDS_RESET` is set by the device only. Writing 0 resets: the
//!   device's I/O threads are asked to stop and status keeps reading its
//!   old value until they have (the driver polls for 0).
//! * Queues: `queue_size` may be lowered to a power of two; addresses and
//!   size are frozen once enabled; `queue_enable` = 1 validates the queue
//!   (`FEATURES_OK` set, `DRIVER_OK` not yet, size a power of two ≤ max,
//!   aligned non-zero addresses, all three areas in RAM) — a bad queue is
//!   not enabled and sets `DEVICE_NEEDS_RESET`.
//! * Vectors: a vector beyond the MSI-X table reads back as NO_VECTOR.
//!
//! # Interrupts
//!
//! With MSI-X enabled, a queue interrupt sends the queue's vector and a
//! configuration interrupt the configuration vector (NO_VECTOR: nothing).
//! Without, the ISR bit (0 queue, 1 configuration) is set and INTx
//! asserted until the driver reads the ISR.

use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    Activation, VirtioDevice, VirtioInterrupt, STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_SUBSYSTEM_ID, VIRTIO_PCI_VENDOR_ID,
};
use crate::bus::lock;
use crate::dma::{Dma, DmaStats};
use crate::pci::config::{Bar, BarChange, ConfigSpace, PciIds, PCI_CAP_ID_VNDR};
use crate::pci::device::PciDevice;
use crate::pci::msi::MsiSink;
use crate::pci::msix::{MsixCapability, MsixLayout};

/// The BAR holding the virtio structures.
pub const VIRTIO_BAR: usize = 4;
/// Its size.
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// The BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: usize = 1;
/// Its size.
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// Offset of the PBA in [`MSIX_BAR`].
pub const MSIX_PBA_OFFSET: u64 = 0x800;
/// Offset of the common configuration in [`VIRTIO_BAR`].
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR status.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notify area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Size of each structure's region.
pub const REGION_SIZE: u64 = 0x1000;
/// `notify_off_multiplier`: queue `q` is notified at `NOTIFY_OFFSET + 4 * q`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Most queues a device may have (one MSI-X vector each, plus config).
pub const MAX_QUEUES: u16 = 64;

/// `cfg_type`: common configuration.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type`: notifications.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type`: ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type`: device configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type`: BAR access through configuration space.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// Common configuration register offsets.
pub mod common {
    /// le32 device_feature_select.
    pub const DFSELECT: u64 = 0x00;
    /// le32 device_feature (RO).
    pub const DF: u64 = 0x04;
    /// le32 driver_feature_select.
    pub const GFSELECT: u64 = 0x08;
    /// le32 driver_feature.
    pub const GF: u64 = 0x0c;
    /// le16 config_msix_vector.
    pub const MSIX: u64 = 0x10;
    /// le16 num_queues (RO).
    pub const NUMQ: u64 = 0x12;
    /// u8 device_status.
    pub const STATUS: u64 = 0x14;
    /// u8 config_generation (RO).
    pub const CFGGENERATION: u64 = 0x15;
    /// le16 queue_select.
    pub const Q_SELECT: u64 = 0x16;
    /// le16 queue_size.
    pub const Q_SIZE: u64 = 0x18;
    /// le16 queue_msix_vector.
    pub const Q_MSIX: u64 = 0x1a;
    /// le16 queue_enable.
    pub const Q_ENABLE: u64 = 0x1c;
    /// le16 queue_notify_off (RO).
    pub const Q_NOFF: u64 = 0x1e;
    /// le64 queue_desc.
    pub const Q_DESC: u64 = 0x20;
    /// le64 queue_driver (available ring).
    pub const Q_AVAIL: u64 = 0x28;
    /// le64 queue_device (used ring).
    pub const Q_USED: u64 = 0x30;
    /// Size of the structure.
    pub const LEN: u64 = 0x3c;
}

/// Errors building the transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The configuration space refused a BAR or capability (a vlab bug).
    #[error("virtio-pci configuration space: {0}")]
    Config(String),
    /// Queue count out of 1..=MAX_QUEUES.
    #[error("virtio-pci: {0} queues requested; a device has 1 to {MAX_QUEUES}")]
    Queues(u16),
    /// Maximum queue size not a power of two in 1..=32768.
    #[error("virtio-pci: queue size {0} is not a power of two from 1 to 32768")]
    QueueSize(u16),
    /// A kick EventFd could not be created.
    #[error("virtio-pci: cannot create a queue notification eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Counters of one transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioPciStats {
    /// Status writes refused (bits cleared, steps out of order, features
    /// not acceptable, writes while a reset completes).
    pub refused_status: u64,
    /// Queue enables refused (bad configuration, too late).
    pub bad_queue_configs: u64,
    /// Notify writes trapped (not through an ioeventfd).
    pub trapped_kicks: u64,
    /// Notify writes ignored (device not live, bad offset).
    pub ignored_kicks: u64,
    /// Writes ignored because the field is read-only or frozen.
    pub ignored_writes: u64,
    /// Successful activations.
    pub activations: u64,
    /// Resets requested by the driver.
    pub resets: u64,
    /// Why the last activation failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(max: u16) -> Self {
        QueueRegs {
            size: max,
            vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// A virtio device on the PCI bus. Build it with [`VirtioPci::new`]; see
/// the module documentation.
pub struct VirtioPci {
    name: String,
    cfg: ConfigSpace,
    msix: MsixCapability,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    dma: Arc<Dma>,
    me: Weak<Mutex<VirtioPci>>,
    kicks: Vec<Arc<EventFd>>,
    pci_cfg_cap: usize,
    max_size: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    isr: u8,
    active: bool,
    epoch: u64,
    reset_pending: bool,
    stopping: Vec<JoinHandle<()>>,
    stats: VirtioPciStats,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("name", &self.name)
            .field("status", &self.status)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// A vendor-specific virtio capability body (after ID and next pointer).
fn virtio_cap(cfg_type: u8, bar: usize, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 14];
    b[0] = (16 + extra.len()) as u8;
    b[1] = cfg_type;
    b[2] = bar as u8;
    b[6..10].copy_from_slice(&(offset as u32).to_le_bytes());
    b[10..14].copy_from_slice(&(length as u32).to_le_bytes());
    b.extend_from_slice(extra);
    b
}

fn overlaps(off: usize, len: usize, start: usize, n: usize) -> bool {
    off < start + n && start < off.saturating_add(len)
}

impl VirtioPci {
    /// Put `device` behind a virtio-pci function named `name`, reaching
    /// guest memory `mem` and sending MSI-X messages to `msi`. Returns the
    /// shared handle to add to the PCI bus.
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiSink>,
    ) -> Result<Arc<Mutex<VirtioPci>>, VirtioPciError> {
        let nq = device.num_queues();
        if nq == 0 || nq > MAX_QUEUES {
            return Err(VirtioPciError::Queues(nq));
        }
        let max_size = device.queue_max_size();
        if !max_size.is_power_of_two() || max_size > 32768 {
            return Err(VirtioPciError::QueueSize(max_size));
        }
        let err = |e: &dyn std::fmt::Display| VirtioPciError::Config(e.to_string());
        let (class, subclass, prog_if) = device.pci_class();
        let mut cfg = ConfigSpace::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR_ID,
            device: VIRTIO_PCI_DEVICE_ID_BASE + device.device_type() as u16,
            revision: 1,
            class,
            subclass,
            prog_if,
            subsystem_vendor: VIRTIO_PCI_VENDOR_ID,
            subsystem: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        cfg.add_bar(MSIX_BAR, Bar::mem32(MSIX_BAR_SIZE))
            .map_err(|e| err(&e))?;
        cfg.add_bar(VIRTIO_BAR, Bar::mem64(VIRTIO_BAR_SIZE, false))
            .map_err(|e| err(&e))?;
        cfg.set_interrupt_pin(1).map_err(|e| err(&e))?;
        let caps = [
            (VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, Vec::new()),
            (
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                NOTIFY_OFF_MULTIPLIER.to_le_bytes().to_vec(),
            ),
            (VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, Vec::new()),
            (VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, Vec::new()),
        ];
        for (t, off, extra) in caps {
            let body = virtio_cap(t, VIRTIO_BAR, off, REGION_SIZE, &extra);
            let wmask = vec![0u8; body.len()];
            cfg.add_capability(PCI_CAP_ID_VNDR, &body, &wmask)
                .map_err(|e| err(&e))?;
        }
        let body = virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, &[0; 4]);
        let mut wmask = vec![0u8; body.len()];
        wmask[2] = 0xff; // bar
        wmask[6..18].fill(0xff); // offset, length, data
        let pci_cfg_cap = cfg
            .add_capability(PCI_CAP_ID_VNDR, &body, &wmask)
            .map_err(|e| err(&e))?;
        let layout = MsixLayout {
            vectors: nq + 1,
            table_bar: MSIX_BAR,
            table_offset: 0,
            pba_bar: MSIX_BAR,
            pba_offset: MSIX_PBA_OFFSET,
        };
        let msix = MsixCapability::add(&mut cfg, layout, msi).map_err(|e| err(&e))?;
        let kicks = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let dma = Arc::new(Dma::new(name, mem.clone(), cfg.bus_master()));
        let name = name.to_string();
        Ok(Arc::new_cyclic(|me| {
            Mutex::new(VirtioPci {
                name,
                cfg,
                msix,
                device,
                mem,
                dma,
                me: me.clone(),
                kicks,
                pci_cfg_cap,
                max_size,
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                config_vector: VIRTIO_MSI_NO_VECTOR,
                status: 0,
                config_generation: 0,
                queue_select: 0,
                queues: vec![QueueRegs::new(max_size); usize::from(nq)],
                isr: 0,
                active: false,
                epoch: 0,
                reset_pending: false,
                stopping: Vec::new(),
                stats: VirtioPciStats::default(),
            })
        }))
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Where queue `q` is notified: (BAR, offset in it). Register an
    /// ioeventfd with [`VirtioPci::kick_eventfd`] at the BAR's address plus
    /// this offset (any length, no datamatch).
    pub fn notify_address(&self, q: u16) -> Option<(usize, u64)> {
        (q < self.num_queues()).then(|| {
            (
                VIRTIO_BAR,
                NOTIFY_OFFSET + u64::from(q) * u64::from(NOTIFY_OFF_MULTIPLIER),
            )
        })
    }

    /// Queue `q`'s kick EventFd (for `KVM_IOEVENTFD`).
    pub fn kick_eventfd(&self, q: u16) -> Option<Arc<EventFd>> {
        self.kicks.get(usize::from(q)).cloned()
    }

    /// The device status as last accepted.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether the device is live (`DRIVER_OK` accepted, not reset).
    pub fn active(&self) -> bool {
        self.active
    }

    /// The transport's counters.
    pub fn stats(&self) -> VirtioPciStats {
        self.stats.clone()
    }

    /// The DMA counters (data buffers).
    pub fn dma_stats(&self) -> DmaStats {
        self.dma.stats()
    }

    /// Stop the device's I/O threads and wait for them (VM shutdown). Takes
    /// the lock only to collect the threads, so it cannot deadlock with a
    /// thread signalling an interrupt.
    pub fn shutdown(dev: &Arc<Mutex<VirtioPci>>) {
        let handles = {
            let mut d = lock(dev);
            d.stop_device()
        };
        join_all(handles);
    }

    fn stop_device(&mut self) -> Vec<JoinHandle<()>> {
        let mut h = self.device.reset();
        h.append(&mut self.stopping);
        self.active = false;
        self.epoch += 1;
        h
    }

    fn device_features(&self) -> u64 {
        (self.device.features() | VIRTIO_F_VERSION_1)
            & !(VIRTIO_F_ACCESS_PLATFORM | VIRTIO_F_RING_RESET)
    }

    fn selected(&self) -> Option<usize> {
        let q = usize::from(self.queue_select);
        (q < self.queues.len()).then_some(q)
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix.layout().vectors {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn activate(&mut self) {
        let queues = (0..self.queues.len())
            .map(|i| {
                if self.queues[i].enabled {
                    self.build_queue(i)
                } else {
                    None
                }
            })
            .collect();
        self.epoch += 1;
        let act = Activation {
            mem: self.mem.clone(),
            dma: self.dma.clone(),
            features: self.driver_features,
            queues,
            kicks: self.kicks.clone(),
            interrupt: Arc::new(PciInterrupt {
                dev: self.me.clone(),
                epoch: self.epoch,
            }),
        };
        match self.device.activate(act) {
            Ok(()) => {
                self.active = true;
                self.stats.activations += 1;
            }
            Err(e) => {
                self.stats.last_error = Some(e.to_string());
                self.set_needs_reset();
            }
        }
    }

    fn begin_reset(&mut self) {
        self.stats.resets += 1;
        let mut h = self.stop_device();
        self.stopping.append(&mut h);
        self.reset_pending = true;
        self.poll_reset();
    }

    /// Complete a pending reset once the device's threads have finished.
    fn poll_reset(&mut self) {
        if !self.reset_pending || !self.stopping.iter().all(|h| h.is_finished()) {
            return;
        }
        join_all(std::mem::take(&mut self.stopping));
        self.reset_pending = false;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.queue_select = 0;
        self.queues.fill(QueueRegs::new(self.max_size));
        self.isr = 0;
        self.cfg.set_intx(false);
        for k in &self.kicks {
            let _ = k.read(); // drop stale kicks (EAGAIN when none)
        }
    }

    // ---- interrupts ----

    fn set_needs_reset(&mut self) {
        if self.status & STATUS_DEVICE_NEEDS_RESET == 0 {
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            self.raise_config();
        }
    }

    fn raise_config(&mut self) {
        self.isr |= 2;
        if self.msix.enabled(&self.cfg) {
            if self.config_vector != VIRTIO_MSI_NO_VECTOR {
                self.msix.trigger(&self.cfg, self.config_vector);
            }
        } else {
            self.cfg.set_intx(true);
        }
    }

    fn raise_queue(&mut self, q: u16) {
        let Some(r) = self.queues.get(usize::from(q)) else {
            return;
        };
        if self.msix.enabled(&self.cfg) {
            if r.vector != VIRTIO_MSI_NO_VECTOR {
                self.msix.trigger(&self.cfg, r.vector);
            }
        } else {
            self.isr |= 1;
            self.cfg.set_intx(true);
        }
    }

    // ---- PCI_CFG capability ----

    /// (BAR, offset, length) the `PCI_CFG` capability points at, if valid.
    fn pci_cfg_target(&self) -> Option<(usize, u64, usize)> {
        let c = self.pci_cfg_cap;
        let bar = usize::from(self.cfg.read_u8(c + 4));
        let off = u64::from(self.cfg.read_u32(c + 8));
        let len = self.cfg.read_u32(c + 12) as usize;
        let ok = matches!(len, 1 | 2 | 4)
            && off.is_multiple_of(len as u64)
            && (bar == VIRTIO_BAR || bar == MSIX_BAR);
        ok.then_some((bar, off, len))
    }
}

fn join_all(handles: Vec<JoinHandle<()>>) {
    let me = std::thread::current().id();
    for h in handles {
        // The last reference may be dropped by an I/O thread itself (it
        // held the transport for an interrupt): never join oneself.
        if h.thread().id() != me {
            let _ = h.join();
        }
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        join_all(self.stop_device());
    }
}

/// The [`VirtioInterrupt`] handed to the device: raises interrupts through
/// the transport, for the activation it was made for only.
struct PciInterrupt {
    dev: Weak<Mutex<VirtioPci>>,
    epoch: u64,
}

impl PciInterrupt {
    fn with(&self, f: impl FnOnce(&mut VirtioPci)) {
        if let Some(d) = self.dev.upgrade() {
            let mut g = lock(&d);
            if g.epoch == self.epoch && g.active {
                f(&mut g);
            }
        }
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_used(&self, queue: u16) {
        self.with(|d| d.raise_queue(queue))
    }
    fn signal_config(&self) {
        self.with(|d| d.raise_config())
    }
    fn needs_reset(&self) {
        self.with(|d| d.set_needs_reset())
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let win = self.pci_cfg_cap + 16;
        if overlaps(offset, data.len(), win, 4) {
            let mut buf = [0u8; 4];
            if let Some((bar, off, len)) = self.pci_cfg_target() {
                self.bar_read(bar, off, &mut buf[..len]);
            }
            self.cfg.set_bytes(win, &buf);
        }
        self.cfg.read(offset, data)
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let changes = self.cfg.write(offset, data);
        self.msix.config_written(&self.cfg);
        if self.msix.enabled(&self.cfg) && self.cfg.intx_asserted() {
            self.cfg.set_intx(false);
        }
        let win = self.pci_cfg_cap + 16;
        if overlaps(offset, data.len(), win, 4) {
            if let Some((bar, off, len)) = self.pci_cfg_target() {
                let v = self.cfg.read_u32(win).to_le_bytes();
                self.bar_write(bar, off, &v[..len]);
            }
        }
        changes
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar == MSIX_BAR {
            self.msix.bar_read(bar, offset, data);
            return;
        }
        if bar != VIRTIO_BAR {
            return;
        }
        let rel = offset % REGION_SIZE;
        match offset / REGION_SIZE {
            0 => self.common_read(rel, data),
            1 if rel == 0 && !data.is_empty() => {
                data[0] = std::mem::take(&mut self.isr);
                self.cfg.set_intx(false);
            }
            2 => self.device.read_config(rel, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == MSIX_BAR {
            self.msix.bar_write(&self.cfg, bar, offset, data);
            return;
        }
        if bar != VIRTIO_BAR {
            return;
        }
        let rel = offset % REGION_SIZE;
        match offset / REGION_SIZE {
            0 => self.common_write(rel, data),
            2 => self.device.write_config(rel, data),
            3 => {
                let q = rel / u64::from(NOTIFY_OFF_MULTIPLIER);
                let aligned = rel.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER));
                match self.kicks.get(q as usize) {
                    Some(k) if aligned && self.active && !data.is_empty() => {
                        self.stats.trapped_kicks += 1;
                        let _ = k.write(1);
                    }
                    _ => self.stats.ignored_kicks += 1,
                }
            }
            _ => self.stats.ignored_writes += 1,
        }
    }
}

#[path = "pci_common.rs"]
mod regs;

#[cfg(test)]
#[path = "pci_tests.rs"]
pub(crate) mod tests;
