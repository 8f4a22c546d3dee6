//! vlab-guest: the default guest kernel of the vlab VMM.
//!
//! A tiny `no_std` x86-64 kernel booted through the Xen PVH entry. It
//! prints a banner on COM1, runs the test selected by `test=NAME` on the
//! command line (see `tests.rs` and docs/guest.md) and ends the VM by
//! writing the exit status to the debug-exit port 0xf4.
//!
//! Everything runs in ring 0 on identity-mapped memory (except the short
//! ring-3 excursions of `usermode.rs`); see `boot.rs` for the entry path
//! and memory layout.

#![no_std]
#![no_main]

mod acpi;
mod apic;
mod bench_tests;
mod blk_shared;
mod blk_tests;
mod boot;
mod cpu;
mod devices;
mod edu;
mod io;
mod ioapic;
mod irq;
mod kvmclock;
mod mem;
mod paging;
mod pci;
mod pci_tests;
mod scene_data;
mod serial;
mod smp;
mod start_info;
mod sync;
mod tests;
mod usermode;
mod vgpu;
mod virtio;
mod virtio_blk;

use start_info::StartInfo;

/// Kernel version printed in the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Debug-exit I/O port: writing byte `v` ends the VM with status `v`
/// (QEMU's isa-debug-exit reports `(v << 1) | 1`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Rust entry of the bootstrap CPU, called by `boot.rs` in 64-bit mode
/// with the physical address of `struct hvm_start_info`.
pub extern "C" fn bsp_main(start_info_paddr: u32) -> ! {
    let Some(info) = StartInfo::parse(u64::from(start_info_paddr)) else {
        log!("vlab guest kernel {} cmdline=\"\"", VERSION);
        log!("FAIL bad hvm_start_info magic at {:#x}", start_info_paddr);
        exit(1);
    };
    paging::init(&info);
    log!("vlab guest kernel {} cmdline=\"{}\"", VERSION, info.cmdline);
    let status = tests::run(info);
    exit(status)
}

/// End the VM with exit status `code`.
pub fn exit(code: u8) -> ! {
    io::outb(DEBUG_EXIT_PORT, code);
    io::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    log!("PANIC {}", info.message());
    if let Some(loc) = info.location() {
        log!("panic at {}:{}", loc.file(), loc.line());
    }
    exit(3)
}

/// Never called (panics abort), but unoptimised builds of the precompiled
/// `core` still reference it from their unwind tables.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
