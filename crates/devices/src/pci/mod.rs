//! PCI: configuration space, MSI/MSI-X, the device trait, bus 0 with its
//! host bridge (configuration mechanism #1 and ECAM) and BAR decoding.
//!
//! | module | what |
//! |--------|------|
//! | [`config`] | a function's type-0 configuration space: write/RW1C masks, BARs, capabilities, INTx |
//! | [`msi`] | the MSI capability, [`msi::MsiSink`], [`msi::FakeMsiSink`] |
//! | [`msix`] | the MSI-X capability, table and PBA |
//! | [`device`] | the [`device::PciDevice`] trait |
//! | [`register_page`] | read-only register pages mapped into the guest |
//! | [`bus`] | [`bus::PciBus`]: slots, config routing, BAR decoding, BAR assignment |
//! | [`host_bridge`] | the host bridge, [`host_bridge::ConfigIo`] (0xCF8) and [`host_bridge::Ecam`] |
//!
//! Nothing here talks to KVM: interrupts leave through [`crate::irq::Irq`]
//! (INTx) and [`msi::MsiSink`]; DMA goes through [`crate::dma::Dma`].

pub mod bus;
pub mod config;
pub mod device;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub mod register_page;

#[cfg(test)]
mod testdev;
