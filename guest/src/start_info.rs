//! The Xen PVH `struct hvm_start_info` handed over in `ebx` at entry.
//!
//! Layout (xen/include/public/arch-x86/hvm/start_info.h), all little endian:
//! ```text
//!  0 u32 magic = 0x336ec578     4 u32 version (>= 1 has the memmap)
//!  8 u32 flags                 12 u32 nr_modules
//! 16 u64 modlist_paddr         24 u64 cmdline_paddr (NUL-terminated)
//! 32 u64 rsdp_paddr            40 u64 memmap_paddr
//! 48 u32 memmap_entries        52 u32 reserved
//! ```
//! Each memmap entry is `{ u64 addr, u64 size, u32 type, u32 reserved }`
//! with E820 types (1 = RAM).

use crate::io::read_phys;

const MAGIC: u32 = 0x336e_c578;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct RawStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// One memory-map entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub typ: u32,
    pub reserved: u32,
}

impl MemmapEntry {
    /// One past the last byte of the region.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Parsed boot information. The referenced data stays where the VMM put
/// it (the AP trampoline page is chosen so it does not overlap).
pub struct StartInfo {
    /// Physical address of the structure itself.
    pub paddr: u64,
    /// Kernel command line ("" if none).
    pub cmdline: &'static str,
    /// Physical address of the command line (0 if none).
    pub cmdline_paddr: u64,
    /// ACPI RSDP physical address (0 = not provided).
    pub rsdp_paddr: u64,
    /// Memory map (empty for version 0 start info).
    pub memmap: &'static [MemmapEntry],
}

impl StartInfo {
    /// Parse the start info at `paddr`. Returns `None` on a bad magic.
    pub fn parse(paddr: u64) -> Option<StartInfo> {
        // SAFETY: the PVH contract puts a valid hvm_start_info at `paddr`,
        // which is below 4 GiB and therefore identity mapped.
        let raw: RawStartInfo = unsafe { read_phys(paddr) };
        if raw.magic != MAGIC {
            return None;
        }
        // With 2 MiB boot pages only the start info's page is mapped.
        if raw.cmdline_paddr != 0 {
            crate::paging::map_identity(raw.cmdline_paddr, raw.cmdline_paddr + 4096, false);
        }
        if raw.version >= 1 && raw.memmap_paddr != 0 {
            let len = u64::from(raw.memmap_entries) * core::mem::size_of::<MemmapEntry>() as u64;
            crate::paging::map_identity(raw.memmap_paddr, raw.memmap_paddr + len, false);
        }
        let cmdline = if raw.cmdline_paddr != 0 {
            // SAFETY: the VMM provides a NUL-terminated string there.
            unsafe { c_str(raw.cmdline_paddr) }
        } else {
            ""
        };
        let memmap: &'static [MemmapEntry] = if raw.version >= 1 && raw.memmap_paddr != 0 {
            // SAFETY: version >= 1 guarantees `memmap_entries` entries at
            // `memmap_paddr`; the VMM never changes them while we run.
            unsafe {
                core::slice::from_raw_parts(
                    raw.memmap_paddr as usize as *const MemmapEntry,
                    raw.memmap_entries as usize,
                )
            }
        } else {
            &[]
        };
        Some(StartInfo {
            paddr,
            cmdline,
            cmdline_paddr: raw.cmdline_paddr,
            rsdp_paddr: raw.rsdp_paddr,
            memmap,
        })
    }

    /// Total bytes of RAM (type 1) in the memory map.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_regions().map(|e| e.size).sum()
    }

    /// Iterator over RAM regions.
    pub fn ram_regions(&self) -> impl Iterator<Item = &MemmapEntry> {
        self.memmap.iter().filter(|e| e.typ == E820_RAM)
    }

    /// Highest RAM address + 1.
    pub fn ram_end(&self) -> u64 {
        self.ram_regions().map(MemmapEntry::end).max().unwrap_or(0)
    }

    /// Physical ranges that must not be overwritten (start info, memmap,
    /// command line), as `(start, end)` pairs.
    pub fn reserved_ranges(&self) -> [(u64, u64); 3] {
        let mm = self.memmap.as_ptr() as u64;
        let mm_len = core::mem::size_of_val(self.memmap) as u64;
        [
            (
                self.paddr,
                self.paddr + core::mem::size_of::<RawStartInfo>() as u64,
            ),
            (mm, mm + mm_len),
            (
                self.cmdline_paddr,
                self.cmdline_paddr + self.cmdline.len() as u64 + 1,
            ),
        ]
    }
}

/// Borrow a NUL-terminated ASCII string at `paddr` (at most 4 KiB).
///
/// # Safety
/// `paddr` must point to readable memory that is never modified later.
unsafe fn c_str(paddr: u64) -> &'static str {
    let p = paddr as usize as *const u8;
    let mut len = 0;
    // SAFETY: guaranteed by the caller; the scan stops at NUL or 4 KiB.
    while len < 4096 && unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: as above; `len` bytes are readable and stay unchanged.
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    core::str::from_utf8(bytes).unwrap_or("<non-utf8 cmdline>")
}

/// Look up `key=value` in a space separated command line.
pub fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|tok| {
        let (k, v) = tok.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Parse a decimal or `0x` hexadecimal number.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}
