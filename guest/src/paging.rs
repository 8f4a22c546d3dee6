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
//!
//! **User window.** Everything above is supervisor-only (U/S = 0 at the
//! PML4 entry already). The only user-accessible addresses are the 2 MiB
//! window at [`USER_BASE`] (PML4 entry 1: 512 GiB, outside the identity
//! map): one PDPT, one page directory, one page table of 4 KiB pages, all
//! with U/S = 1, filled by [`map_user`] with the few pages a ring-3
//! excursion needs ([`crate::usermode`]): its code (read-only), its
//! stack/data page, a device register page (read-only, uncached).

use crate::boot::{PageTable, PD, PDPT, PML4};
use crate::io::cpuid;
use crate::sync::RacyCell;
use core::arch::asm;

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

/// First address of the user window (PML4 entry 1).
pub const USER_BASE: u64 = 512 * GIB;
/// 4 KiB pages in the user window (one page table).
pub const USER_PAGES: usize = 512;

/// Page-table bits: present, writable, user.
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;

static USER_PDPT: PageTable = PageTable(RacyCell::new([0; 512]));
static USER_PD: PageTable = PageTable(RacyCell::new([0; 512]));
static USER_PT: PageTable = PageTable(RacyCell::new([0; 512]));

/// Map the 4 KiB page at `paddr` (page aligned) user-accessible at
/// `USER_BASE + slot * 4096`, read-only unless `writable`, uncached for a
/// device page; returns that address. Replaces what the slot mapped
/// before (with `invlpg`). The table chain is linked on first use. BSP
/// only; the user window is private to [`crate::usermode`].
pub fn map_user(slot: usize, paddr: u64, writable: bool, uncached: bool) -> u64 {
    assert!(slot < USER_PAGES && paddr.is_multiple_of(4096));
    let va = USER_BASE + slot as u64 * 4096;
    let pte = paddr | P | US | if writable { RW } else { 0 } | if uncached { UNCACHED } else { 0 };
    // SAFETY: the three user tables are used only here, on the BSP;
    // PML4 entry 1 is not used by the identity map (which ends at 512
    // GiB). The entries only point at the static user tables or at the
    // page the caller hands over, and `invlpg` drops a stale translation.
    unsafe {
        let pml4 = PML4.0.get();
        if (*pml4)[1] == 0 {
            (*USER_PD.0.get())[0] = USER_PT.0.get() as u64 | P | RW | US;
            (*USER_PDPT.0.get())[0] = USER_PD.0.get() as u64 | P | RW | US;
            (*pml4)[1] = USER_PDPT.0.get() as u64 | P | RW | US;
        }
        (*USER_PT.0.get())[slot] = pte;
        asm!("invlpg [{0}]", in(reg) va, options(nostack, preserves_flags));
    }
    va
}
