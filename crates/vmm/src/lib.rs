//! vlab's KVM glue: guest memory, vCPU threads, exit dispatch, boot.
//!
//! Pure parts (boot tables in [`arch`], [`exit::handle_exit`],
//! [`cpu_setup`], [`control`], [`loader`]) are unit-tested without
//! `/dev/kvm`; [`vm`] and [`vcpu`] drive KVM.

pub mod arch;
pub mod control;
pub mod cpu_setup;
pub mod disk;
pub mod doctor;
pub mod emulate;
pub mod exit;
pub mod interrupts;
pub mod kick;
pub mod loader;
pub mod pci;
pub mod trace;
pub mod vcpu;
pub mod vm;
