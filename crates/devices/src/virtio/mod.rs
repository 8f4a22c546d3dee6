//! virtio 1.x devices over the modern virtio-pci transport.
//!
//! | module | what |
//! |--------|------|
//! | [`pci`] | [`pci::VirtioPci`]: the virtio-pci transport (virtio 1.2 §4.1) as a [`crate::pci::device::PciDevice`] |
//! | [`block`] | [`block::Block`]: virtio-blk (virtio 1.2 §5.2), its request parser and its I/O thread |
//!
//! A device behind the transport implements [`VirtioDevice`]: it declares
//! its type, queues, features and configuration space, and on
//! `DRIVER_OK` receives an [`Activation`] — the guest's memory, the checked
//! [`crate::dma::Dma`], the configured [`Queue`]s, one kick [`EventFd`] per
//! queue and a [`VirtioInterrupt`] to signal used buffers through.
//!
//! Kicks: the transport owns one `EventFd` per queue. A trapped write to a
//! queue's notify address writes that `EventFd`; a VMM that registers the
//! same `EventFd` as a KVM ioeventfd at that address gets the same effect
//! without a vCPU exit to user space. Devices only ever read the `EventFd`.
//!
//! Interrupts: the device's I/O thread calls [`VirtioInterrupt`], which
//! takes the transport's lock for the duration of one MSI-X trigger (or
//! ISR/INTx update). The transport never waits for an I/O thread while
//! holding its own lock: a reset only asks the threads to stop, and the
//! device status reads back 0 once they have (virtio 1.2 §4.1.4.3.2: the
//! driver waits for that).
//!
//! See `docs/devices/virtio-blk.md`.

pub mod block;
pub mod pci;

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::dma::Dma;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio-pci device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of vlab's virtio functions (≥ 0x40, as the spec asks of
/// non-transitional devices; QEMU's value).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// virtio device type: block.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// Feature: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature: virtio 1.x (required by the modern transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature: the device is behind an IOMMU (never offered by vlab).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Feature: per-queue reset (not offered by vlab).
pub const VIRTIO_F_RING_RESET: u64 = 1 << 40;

/// Device status: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u8 = 0x01;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 0x02;
/// Device status: the driver is ready; the device is live.
pub const STATUS_DRIVER_OK: u8 = 0x04;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 0x08;
/// Device status: the device hit an error and needs a reset (device-set).
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// "No MSI-X vector" in `config_msix_vector`/`queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Available ring flag: the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The device's I/O thread could not be started.
    #[error("{device}: cannot start its I/O thread: {source}")]
    Thread {
        /// The device.
        device: String,
        /// Why.
        source: std::io::Error,
    },
    /// The activation does not fit the device (a transport bug).
    #[error("{device}: bad activation: {why}")]
    BadActivation {
        /// The device.
        device: String,
        /// What is wrong.
        why: String,
    },
}

/// How a device signals the driver. Implemented by the transport; cheap to
/// call from any thread (it takes the transport's lock briefly).
pub trait VirtioInterrupt: Send + Sync {
    /// Queue `queue` has new used buffers (the device already decided the
    /// driver wants to hear about it: `EVENT_IDX`/`NO_INTERRUPT`).
    fn signal_used(&self, queue: u16);
    /// The device configuration changed.
    fn signal_config(&self);
    /// The device hit an error it cannot recover from: set
    /// `DEVICE_NEEDS_RESET` and send a configuration interrupt.
    fn needs_reset(&self);
}

/// Everything a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory, for virtqueue accesses (descriptor table, rings).
    pub mem: GuestMemoryMmap,
    /// The checked path for every data-buffer access (and the bus-master
    /// state).
    pub dma: Arc<Dma>,
    /// The negotiated features.
    pub features: u64,
    /// Queue `i` as the driver configured it, `None` if it did not enable
    /// it. Validated by the transport: size, alignment, all rings in RAM.
    pub queues: Vec<Option<Queue>>,
    /// Queue `i`'s kick `EventFd` (read it; written by trapped notify
    /// writes or by KVM through an ioeventfd).
    pub kicks: Vec<Arc<EventFd>>,
    /// Where to signal used buffers.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio device behind the transport. The transport calls it with its
/// own lock held: no method may block on the device's I/O threads.
pub trait VirtioDevice: Send {
    /// The virtio device type (e.g. [`VIRTIO_ID_BLOCK`]).
    fn device_type(&self) -> u32;
    /// The PCI class, subclass and programming interface.
    fn pci_class(&self) -> (u8, u8, u8);
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// The largest size of each queue (a power of two ≤ 32768).
    fn queue_max_size(&self) -> u16;
    /// Device features, including the transport features the device
    /// supports ([`VIRTIO_F_VERSION_1`] is always added by the transport).
    fn features(&self) -> u64;
    /// Read the device-specific configuration space (bytes past its end
    /// read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space (default: ignored).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set `DRIVER_OK`: start serving the queues.
    fn activate(&mut self, act: Activation) -> Result<(), VirtioError>;
    /// The driver reset the device: stop serving the queues. Returns the
    /// I/O threads that were asked to stop; the transport completes the
    /// reset once they have finished. Must not block.
    fn reset(&mut self) -> Vec<JoinHandle<()>>;
}
