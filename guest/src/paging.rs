//! Run-time extension of the boot identity map.
//!
//! **Below 4 GiB.** With 1 GiB pages `pvh_start` maps all of 0..4 GiB
//! (3..4 GiB uncached) and [`map_identity`] has nothing to do. With 2 MiB
//! pages it maps only the kernel image, the start info and the
//! IOAPIC/LAPIC page; then [`init`] maps RAM (and ACPI) regions from the
//! memory map, and whoever touches anything else maps it first:
//! firmware tables (`acpi.rs`), the ECAM window (`pci.rs`), device BARs
//! ([`map_mmio`], uncached), the benchmark page of `mmio-loop`. Each 2 MiB
//! page is one store into the contiguous 2048-entry page-directory array.
//!
//! **Above 4 GiB.** [`map_ram`] maps the rest of RAM (called by
//! the tests that need it, so ordinary boots pay nothing):
//! * with 1 GiB pages: one boot-PDPT entry per GiB (up to 512 GiB);
//! * without: one page directory of 2 MiB pages per GiB from a static
//!   pool (up to [`HIGH_PD_POOL`] GiB above 4 GiB), 512 stores per GiB.
//!   Page directories are filled completely, so the pool needs no zeroing
//!   (mapping addresses past the end of RAM is harmless).

use crate::boot::{PageTable, PD, PDPT};
use crate::io::cpuid;
use crate::sync::RacyCell;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// Present | writable | large page (1 GiB in a PDPTE, 2 MiB in a PDE).
const LARGE_RW: u64 = 0x83;
/// Present | writable (pointer to the next level).
const TABLE_RW: u64 = 0x03;
/// GiB above 4 GiB that can be mapped with 2 MiB pages.
pub const HIGH_PD_POOL: usize = 28;

static HIGH_PD: [PageTable; HIGH_PD_POOL] =
    [const { PageTable(RacyCell::new([0; 512])) }; HIGH_PD_POOL];

/// Page-table bits: page-level write-through and cache disable.
const UNCACHED: u64 = 0x18;
/// Entries of the boot page directories (2 MiB pages below 4 GiB).
const LOW_PDES: u64 = 2048;

/// Did `pvh_start` map 0..4 GiB with 1 GiB pages?
fn boot_used_1g_pages() -> bool {
    // SAFETY: reads one boot PDPT entry (written before any Rust code).
    unsafe { (*PDPT.0.get())[0] & 0x80 != 0 }
}

/// Identity map `[start, end)` below 4 GiB with 2 MiB pages (write-back,
/// or uncached for MMIO) where nothing is mapped yet. Addresses at or
/// above 4 GiB are ignored (see [`map_ram`]). BSP only, before the APs
/// start or for addresses no other CPU uses yet (entries only go from
/// not-present to present, so no TLB flush is needed).
pub fn map_identity(start: u64, end: u64, uncached: bool) {
    if start >= end || start >= 4 * GIB || boot_used_1g_pages() {
        return;
    }
    let first = start / MIB2;
    let last = ((end - 1) / MIB2).min(LOW_PDES - 1);
    let pd = PD.as_ptr() as *mut u64;
    let flags = LARGE_RW | if uncached { UNCACHED } else { 0 };
    for n in first..=last {
        // SAFETY: `n < 2048`, inside the four contiguous boot page
        // directories; only present bits are added (see above).
        unsafe {
            let e = pd.add(n as usize);
            if *e & 1 == 0 {
                *e = (n * MIB2) | flags;
            }
        }
    }
}

/// Map an MMIO range (a BAR, the ECAM window, an APIC) uncached.
pub fn map_mmio(start: u64, size: u64) {
    map_identity(start, start.saturating_add(size), true);
}

/// Map every RAM, ACPI-data and ACPI-NVS region of the memory map below
/// 4 GiB (one store per 2 MiB: 128 for 256 MiB of RAM).
pub fn init(info: &crate::start_info::StartInfo) {
    for e in info.memmap {
        if matches!(e.typ, 1 | 3 | 4) {
            map_identity(e.addr, e.end(), false);
        }
    }
}

/// Does the CPU support 1 GiB pages (CPUID 0x8000_0001 EDX bit 26)?
pub fn has_1g_pages() -> bool {
    cpuid(0x8000_0000).eax >= 0x8000_0001 && cpuid(0x8000_0001).edx & (1 << 26) != 0
}

/// Identity map RAM up to `ram_end` (exclusive). Returns the end of the
/// identity mapped range (at least 4 GiB). Call on the BSP only, before
/// any CPU touches memory above 4 GiB.
pub fn map_ram(ram_end: u64) -> u64 {
    let want = ram_end.div_ceil(GIB).min(512) as usize;
    if want <= 4 {
        return 4 * GIB;
    }
    let pdpt = PDPT.0.get();
    if has_1g_pages() {
        for gib in 4..want {
            // SAFETY: only the BSP edits the page tables, and entries 4..
            // were not present before, so no TLB entry can be stale.
            unsafe { (*pdpt)[gib] = (gib as u64 * GIB) | LARGE_RW };
        }
        return want as u64 * GIB;
    }
    let have = want.min(4 + HIGH_PD_POOL);
    for gib in 4..have {
        let pd = HIGH_PD[gib - 4].0.get();
        let base = gib as u64 * GIB;
        // SAFETY: as above; the pool page directory is used only here and
        // is fully initialised before the PDPT entry points at it.
        unsafe {
            for (i, e) in (*pd).iter_mut().enumerate() {
                *e = (base + i as u64 * MIB2) | LARGE_RW;
            }
            (*pdpt)[gib] = pd as u64 | TABLE_RW;
        }
    }
    have as u64 * GIB
}
