//! Run-time extension of the boot identity map to RAM above 4 GiB.
//!
//! `pvh_start` maps 0..4 GiB. [`map_ram`] maps the rest of RAM (called by
//! the tests that need it, so ordinary boots pay nothing):
//! * with 1 GiB pages: one boot-PDPT entry per GiB (up to 512 GiB);
//! * without: one page directory of 2 MiB pages per GiB from a static
//!   pool (up to [`HIGH_PD_POOL`] GiB above 4 GiB), 512 stores per GiB.
//!   Page directories are filled completely, so the pool needs no zeroing
//!   (mapping addresses past the end of RAM is harmless).

use crate::boot::{PageTable, PDPT};
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
