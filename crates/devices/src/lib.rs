//! vlab device models and buses.
//!
//! Nothing in this crate talks to KVM: devices are pure register models that
//! see guest accesses through [`bus::BusDevice`] and signal interrupts through
//! [`irq::Irq`]. The `vmm` crate wires them to KVM; tests use fakes.

pub mod bus;
pub mod dma;
pub mod edu;
pub mod irq;
pub mod legacy;
pub mod monitor;
pub mod pci;
pub mod probe;
pub mod vgpu;
pub mod virtio;
