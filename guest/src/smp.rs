//! Application processor start-up (INIT-SIPI-SIPI).
//!
//! The BSP copies the real-mode trampoline (`boot.rs`) to a free RAM page
//! below 1 MiB (0x8000 unless that overlaps the start info, memory map or
//! command line), records every CPU's APIC ID in `cpu::CPUS`, and sends
//! INIT, STARTUP, STARTUP to each AP back to back: KVM's and QEMU's LAPICs
//! latch the INIT, so the 10 ms / 200 µs delays of the MP spec are not
//! needed (and would cost real time). Each AP switches to long mode on the
//! BSP's page tables, takes a stack slot and runs [`ap_main`], which
//! looks up its index by APIC ID, sets up its TSS/IDT/GS/LAPIC/kvm-clock,
//! reports in by setting `PerCpu::online`, and halts.

use crate::acpi::Platform;
use crate::boot::{ap_tramp_end, ap_tramp_start, MAX_CPUS};
use crate::cpu::{self, CPUS};
use crate::start_info::StartInfo;
use crate::{apic, io, kvmclock};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Number of CPUs in `cpu::CPUS` that APs may match against.
static NCPUS: AtomicUsize = AtomicUsize::new(1);
/// CPUs that reported in (including the BSP).
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// Preferred trampoline page.
const TRAMPOLINE_PAGE: u64 = 0x8000;
/// How long to wait for APs, in kvm-clock nanoseconds.
const AP_TIMEOUT_NS: u64 = 5_000_000_000;
/// Poll iterations to wait for APs when there is no clock.
const AP_TIMEOUT_SPINS: u64 = 20_000_000;

/// Number of CPUs online (reported in).
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Pick a 4 KiB page below 1 MiB for the trampoline: usable RAM that does
/// not overlap anything the VMM handed us.
fn trampoline_page(info: &StartInfo) -> u64 {
    let reserved = info.reserved_ranges();
    let free = |page: u64| {
        let end = page + 0x1000;
        let in_ram =
            info.memmap.is_empty() || info.ram_regions().any(|r| r.addr <= page && end <= r.end());
        in_ram && reserved.iter().all(|&(s, e)| e <= page || s >= end)
    };
    core::iter::once(TRAMPOLINE_PAGE)
        .chain((0x1000..0x9f000).step_by(0x1000))
        .find(|&p| free(p))
        .unwrap_or(TRAMPOLINE_PAGE)
}

/// Start every AP listed in `plat` and wait until all reported in or the
/// timeout expired. Returns the number of CPUs online.
pub fn start_aps(info: &StartInfo, plat: &Platform) -> usize {
    let n = plat.ncpus;
    if n <= 1 {
        return online();
    }
    for (i, &id) in plat.cpus().iter().enumerate() {
        CPUS[i].apic_id.store(id, Ordering::Relaxed);
    }
    NCPUS.store(n, Ordering::Release);

    let page = trampoline_page(info);
    let src = &raw const ap_tramp_start;
    let len = &raw const ap_tramp_end as usize - src as usize;
    // SAFETY: `page` is free RAM below 1 MiB (identity mapped) and the
    // blob is a few dozen bytes, far less than a page.
    unsafe { core::ptr::copy_nonoverlapping(src, page as usize as *mut u8, len) };

    for &id in &plat.cpus()[1..] {
        apic::send_init(id);
        apic::send_sipi(id, (page >> 12) as u8);
        apic::send_sipi(id, (page >> 12) as u8);
    }

    let t0 = kvmclock::now_ns();
    let mut spins = 0u64;
    while online() < n {
        if kvmclock::available() {
            if kvmclock::now_ns().wrapping_sub(t0) > AP_TIMEOUT_NS {
                break;
            }
        } else {
            spins += 1;
            if spins > AP_TIMEOUT_SPINS {
                break;
            }
        }
        core::hint::spin_loop();
    }
    online()
}

/// Rust entry of an AP, on its own stack (`slot` = stack slot number,
/// not the CPU index). Never returns.
pub extern "C" fn ap_main(slot: u32) -> ! {
    let _ = slot;
    let apic_id = apic::id();
    let n = NCPUS.load(Ordering::Acquire).min(MAX_CPUS);
    let Some(index) = (1..n).find(|&i| CPUS[i].apic_id.load(Ordering::Relaxed) == apic_id) else {
        // Not in the firmware tables: stay parked.
        io::halt_forever();
    };
    cpu::init_this_cpu(index, apic_id);
    apic::enable();
    kvmclock::init_this_cpu();
    CPUS[index].online.store(true, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    io::halt_forever()
}
