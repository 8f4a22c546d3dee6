//! Pure x86-64 boot tables for vlab: memory layout, MP table, ACPI, CPUID,
//! MSRs, GSI routing and boot-protocol structures.
//!
//! Nothing here touches `/dev/kvm`; every writer takes guest memory and
//! returns addresses/values that the vCPU setup code programs into KVM.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod irq;
pub mod layout;
pub mod mptable;
pub mod msr;

pub use acpi::{setup_acpi, setup_acpi_with_dsdt, AcpiError, Mcfg};
pub use boot::{
    initrd_addr, kvm_segment_from_gdt, write_boot_gdt, write_boot_params, write_cmdline,
    write_identity_page_tables, write_pvh_start_info, BootError,
};
pub use cpuid::{build_cpuid, set_tsc_deadline, CpuidError};
pub use irq::{legacy_irq_routes, legacy_irq_routing, IrqChip, IrqError, IrqRoute};
pub use layout::{
    check_mem_size, e820_map, parse_mem_size, ram_regions, E820Entry, LayoutError, Size,
};
pub use mptable::{setup_mptable, MptableError, MAX_CPUS};
pub use msr::{boot_msrs, retain_supported};
