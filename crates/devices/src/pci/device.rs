//! The [`PciDevice`] trait: what a PCI function model implements.
//!
//! A function is a pure register model that owns
//!
//! * a [`ConfigSpace`] (IDs, BARs, capabilities, command/status, INTx),
//! * its BAR registers, served by `bar_read`/`bar_write`,
//! * optionally a [`RegisterPage`] per memory BAR (read-only mapped into
//!   the guest by the VMM; see [`super::register_page`]),
//! * its interrupts: INTx through the `Arc<dyn Irq>` the PCI bus attaches
//!   to its config space (`ConfigSpace::set_intx`, level semantics), MSI
//!   and MSI-X through [`super::msi::MsiCapability`] /
//!   [`super::msix::MsixCapability`], which hold an `Arc<dyn MsiSink>`,
//! * its DMA through a [`crate::dma::Dma`] built from
//!   `ConfigSpace::bus_master()`.
//!
//! The PCI bus calls the trait with the device's mutex held, one access at
//! a time; `bar` is the BAR index (0–5, the lower index of a 64-bit BAR)
//! and `offset` the offset inside it. Accesses have any width (1–8 bytes,
//! also odd ones) at any offset inside the BAR; an access straddling the
//! end of a BAR is not delivered. Unknown offsets should read 0.

use std::sync::Arc;

use super::config::{BarChange, ConfigSpace};
use super::register_page::RegisterPage;

/// A PCI function model. Only `config`, `config_mut`, `bar_read` and
/// `bar_write` are required.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;

    /// The function's configuration space, mutably.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// The guest reads configuration space (any width, any offset up to
    /// 4 KiB). Override to compute registers on read.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config_mut().read(offset, data)
    }

    /// The guest writes configuration space. Override to react to writes —
    /// a device with MSI/MSI-X calls the capability's `config_written`
    /// after delegating here. Returns the BARs whose address changed.
    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        self.config_mut().write(offset, data)
    }

    /// The guest reads `data.len()` bytes at `offset` in BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// The guest writes `data` at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// The read-only register page backing the first 4 KiB of memory BAR
    /// `bar`, if the device has one. Asked once, when the device is added
    /// to the bus.
    fn register_page(&self, _bar: usize) -> Option<Arc<RegisterPage>> {
        None
    }
}
