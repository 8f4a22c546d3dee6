//! vgpu, the teaching GPU: a PCI display controller with a register BAR, a
//! linear framebuffer BAR and a DMA command engine fed by a ring in guest
//! memory. The datasheet is `docs/devices/vgpu.md`; every name here is one
//! of its names.
//!
//! The model is pure and independent of the PCI framework and of KVM:
//!
//! * [`regs`]: the BAR0 register map, bits and error codes;
//! * [`command`]: the command-buffer format and its total parser;
//! * [`raster`]: executing commands on a framebuffer byte slice, and the
//!   [`DmaRead`] trait through which guest memory is read;
//! * [`engine`]: [`Vgpu`], the register state machine and ring engine,
//!   returning [`Event`]s for monitors and traces;
//! * [`worker`]: the engine thread that runs off the vCPU threads;
//! * [`screenshot`]: PNG output and the reference renderer.
//!
//! A PCI adapter maps BAR0 accesses to [`Vgpu::read_reg`] /
//! [`Vgpu::write_reg`], forwards Bus Master Enable and MSI Enable with
//! [`Vgpu::set_bus_master`] / [`Vgpu::set_msi_enabled`], and backs BAR2 with
//! a [`FrameMemory`] that it also maps into the guest.

pub mod command;
pub mod engine;
pub mod pci;
pub mod raster;
pub mod regs;
pub mod screenshot;
pub mod worker;

pub use command::{parse, Command, CommandError, Rect};
pub use engine::{DmaKind, Event, MsiSink, Vgpu};
pub use pci::VgpuPci;
pub use raster::{DmaFault, DmaRead, FbGeometry, VecMemory};
pub use regs::ErrorCode;
pub use screenshot::{framebuffer_png, render_reference, screenshot, ScreenshotError};
pub use worker::{FrameMemory, VecFrame, Worker};

#[cfg(test)]
mod tests;
