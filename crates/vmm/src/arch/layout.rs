//! Guest physical memory layout of a vlab x86-64 guest.
//!
//! ```text
//! 0x0000_0000 ┬ RAM (e820 RAM)
//!             │   0x0500  boot GDT            (BOOT_GDT_START)
//!             │   0x0540  boot IDT (empty)    (BOOT_IDT_START)
//!             │   0x6000  hvm_start_info       (PVH_INFO_START)
//!             │   0x6040  hvm_modlist_entry[]  (PVH_MODLIST_START)
//!             │   0x7000  zero page            (ZERO_PAGE_START, 4 KiB)
//!             │   0x8000  PVH memory map       (PVH_MEMMAP_START, 4 KiB)
//!             │   0x9000  PML4, 0xA000 PDPT, 0xB000..0xF000 four PDs (identity map 0..4 GiB)
//!             │  0x10000..0x20000  boot stack (BOOT_STACK_POINTER = 0x1FFF0)
//!             │  0x20000  kernel command line  (CMDLINE_START, CMDLINE_MAX bytes)
//! 0x0009_FC00 ┼ reserved: EBDA, VGA hole, BIOS area (e820 reserved)
//!             │  0xE0000  ACPI: RSDP then the other tables (ACPI_START..ACPI_END)
//!             │  0xF0000  MP floating pointer + MP config table (MPTABLE_START)
//! 0x0010_0000 ┼ RAM: kernel loaded here (KERNEL_START), initrd at the top of low RAM
//! 0xC000_0000 ┼ 32-bit MMIO hole (not in e820, except the ECAM window)
//!             │ 0xC000_0000..0xD000_0000  PCI 32-bit BARs     (PCI_MMIO32_START)
//!             │ 0xD000_0000..0xD000_1000  vlab probe page     (PROBE_MMIO_START)
//!             │ 0xE000_0000..0xF000_0000  PCI ECAM, e820 reserved (PCI_ECAM_START)
//!             │ 0xF000_0000..0xFEC0_0000  platform MMIO         (PLATFORM_MMIO_START)
//!             │ 0xFEC0_0000  IOAPIC,  0xFEE0_0000  LAPIC
//!             │ 0xFFFB_C000  KVM identity-map page, 0xFFFB_D000 KVM TSS (3 pages)
//! 0x1_0000_0000 ┴ RAM above 3 GiB continues here
//! ```
//!
//! LAPIC/IOAPIC/KVM-TSS are *not* listed in the e820 map: like Firecracker
//! and Cloud Hypervisor we simply do not describe the hole as RAM, and Linux
//! reserves the APIC windows itself from the MADT/MP table. The ECAM window
//! *is* listed as reserved (as Cloud Hypervisor does) because Linux refuses
//! an MCFG region that is reserved in neither e820 nor ACPI motherboard
//! resources; listing it without an MCFG table is harmless.

use std::fmt;

use thiserror::Error;
use vm_memory::GuestAddress;

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// Boot GDT (up to 8 descriptors; vlab uses 5).
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Boot IDT: a zero-length IDT is loaded; the location is kept for `lidt`.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x540);
/// `hvm_start_info` for the PVH entry point (56 bytes).
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// `hvm_modlist_entry` array (room for 32 entries up to 0x6440).
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6040);
/// Linux zero page (`boot_params`, 4 KiB).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// PVH memory map (`hvm_memmap_table_entry` array, 4 KiB = 170 entries).
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x8000);
/// Maximum number of entries that fit at [`PVH_MEMMAP_START`].
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 0x1000 / 24;
/// Boot page tables: PML4.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Boot page tables: PDPT.
pub const PDPT_START: GuestAddress = GuestAddress(0xA000);
/// Boot page tables: first of four page directories (0xB000..0xF000).
pub const PD_START: GuestAddress = GuestAddress(0xB000);
/// Initial stack pointer for the 64-bit Linux entry (stack in 0x10000..0x20000;
/// Linux switches to its own stack immediately).
pub const BOOT_STACK_POINTER: u64 = 0x1_FFF0;
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Space reserved for the command line, including the NUL terminator.
///
/// 64 KiB is far above what any kernel accepts: x86 Linux's
/// `COMMAND_LINE_SIZE` is 2048 and the bzImage header's `cmdline_size`
/// (boot protocol >= 2.06) states the real limit, which the loader must
/// check as well. This constant only bounds the guest buffer.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the Extended BIOS Data Area; everything from here to 1 MiB is reserved.
pub const EBDA_START: u64 = 0x9_FC00;
/// ACPI tables region: RSDP at its start (found by Linux's 0xE0000 scan too).
pub const ACPI_START: GuestAddress = GuestAddress(0xE_0000);
/// End (exclusive) of the ACPI tables region.
pub const ACPI_END: GuestAddress = GuestAddress(0xF_0000);
/// RSDP address (also passed via `boot_params.acpi_rsdp_addr` / `rsdp_paddr`).
pub const RSDP_START: GuestAddress = ACPI_START;
/// MP floating pointer structure (inside the BIOS ROM area Linux scans).
pub const MPTABLE_START: GuestAddress = GuestAddress(0xF_0000);
/// End (exclusive) of the MP table area.
pub const MPTABLE_END: GuestAddress = GuestAddress(0x10_0000);
/// Kernel load address (1 MiB) and start of high RAM.
pub const KERNEL_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the 32-bit MMIO hole (3 GiB).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End (exclusive) of the 32-bit MMIO hole; RAM resumes here.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// PCI 32-bit BAR window.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// Size of the PCI 32-bit BAR window (256 MiB, up to the probe page).
pub const PCI_MMIO32_SIZE: u64 = PROBE_MMIO_START - PCI_MMIO32_START;
/// vlab's probe page (counts accesses; the exit benchmark's MMIO target).
pub const PROBE_MMIO_START: u64 = 0xD000_0000;
/// PCI Express ECAM (MMCONFIG) window, buses 0..=255 of segment 0.
pub const PCI_ECAM_START: u64 = 0xE000_0000;
/// Size of the ECAM window (256 buses x 1 MiB).
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// Platform MMIO devices (virtio-mmio etc.).
pub const PLATFORM_MMIO_START: u64 = 0xF000_0000;
/// End (exclusive) of the platform MMIO window.
pub const PLATFORM_MMIO_END: u64 = IOAPIC_ADDR as u64;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// Address for `KVM_SET_IDENTITY_MAP_ADDR` (one page).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;
/// Address for `KVM_SET_TSS_ADDR` (three pages).
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;
/// Minimum guest RAM.
pub const MIN_MEM: u64 = 16 * MIB;
/// Maximum guest RAM we accept (1 TiB), well inside 40 physical address bits.
pub const MAX_MEM: u64 = 1 << 40;
/// Guest page size; memory sizes must be a multiple of it.
pub const PAGE_SIZE: u64 = 4096;

/// e820 entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type: reserved.
pub const E820_RESERVED: u32 = 2;

/// Errors from parsing and checking memory sizes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The size string was empty.
    #[error("Memory size is empty; use e.g. --memory 512M")]
    Empty,
    /// The size string could not be parsed.
    #[error(
        "Invalid --memory size '{0}'; use a number with an optional K/M/G/T suffix, e.g. 512M"
    )]
    Invalid(String),
    /// The size was zero.
    #[error("Memory size must not be zero; use e.g. --memory 512M")]
    Zero,
    /// The size overflowed 64 bits.
    #[error("Memory size '{0}' is too large; use a smaller --memory")]
    Overflow(String),
    /// Below [`MIN_MEM`].
    #[error("Guest memory {0} is below the minimum of {min}; use --memory 16M or more", min = Size(MIN_MEM))]
    TooSmall(Size),
    /// Above [`MAX_MEM`].
    #[error("Guest memory {0} is above the maximum of {max}; use a smaller --memory", max = Size(MAX_MEM))]
    TooLarge(Size),
    /// More than the host has.
    #[error("Guest memory {0} exceeds host memory {1}; use a smaller --memory")]
    ExceedsHost(Size, Size),
    /// Not page aligned.
    #[error("Guest memory {0} is not a multiple of 4 KiB; round --memory to whole KiB pages")]
    Unaligned(Size),
}

/// A byte count that displays itself in the largest exact binary unit
/// (or with one decimal in MiB/GiB when not exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, name) in [
            (1u64 << 40, "TiB"),
            (GIB, "GiB"),
            (MIB, "MiB"),
            (KIB, "KiB"),
        ] {
            if b >= unit && b.is_multiple_of(unit) {
                return write!(f, "{} {}", b / unit, name);
            }
        }
        if b >= GIB {
            write!(f, "{:.1} GiB", b as f64 / GIB as f64)
        } else if b >= MIB {
            write!(f, "{:.1} MiB", b as f64 / MIB as f64)
        } else {
            write!(f, "{} bytes", b)
        }
    }
}

/// One entry of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Guest RAM below the MMIO hole for a guest of `mem_size` bytes.
pub fn low_ram_size(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// Guest RAM placed from 4 GiB upward.
pub fn high_ram_size(mem_size: u64) -> u64 {
    mem_size.saturating_sub(MMIO_HOLE_START)
}

/// The KVM memory slots backing `mem_size` bytes of RAM: `[0, min(mem, 3 GiB))`
/// and, for larger guests, `[4 GiB, 4 GiB + mem - 3 GiB)`.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let mut regions = Vec::with_capacity(2);
    let low = low_ram_size(mem_size);
    if low > 0 {
        regions.push((GuestAddress(0), low as usize));
    }
    let high = high_ram_size(mem_size);
    if high > 0 {
        regions.push((GuestAddress(MMIO_HOLE_END), high as usize));
    }
    regions
}

/// The e820 map handed to the guest (sorted, non-overlapping).
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(5);
    let low = low_ram_size(mem_size);
    let base_end = low.min(EBDA_START);
    if base_end > 0 {
        map.push(E820Entry {
            addr: 0,
            size: base_end,
            kind: E820_RAM,
        });
    }
    map.push(E820Entry {
        addr: EBDA_START,
        size: KERNEL_START.0 - EBDA_START,
        kind: E820_RESERVED,
    });
    if low > KERNEL_START.0 {
        map.push(E820Entry {
            addr: KERNEL_START.0,
            size: low - KERNEL_START.0,
            kind: E820_RAM,
        });
    }
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    let high = high_ram_size(mem_size).min(u64::MAX - MMIO_HOLE_END);
    if high > 0 {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: high,
            kind: E820_RAM,
        });
    }
    map
}

/// Parses a memory size: plain bytes or a number with a case-insensitive
/// binary suffix `K`, `KB`, `KiB`, `M`, `MB`, `MiB`, `G`, `GB`, `GiB`, `T`,
/// `TB`, `TiB` (all powers of 1024), or `B`.
pub fn parse_mem_size(s: &str) -> Result<u64, LayoutError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(LayoutError::Empty);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(LayoutError::Invalid(t.to_string()));
    }
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(LayoutError::Invalid(t.to_string())),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| LayoutError::Overflow(t.to_string()))?;
    if n == 0 {
        return Err(LayoutError::Zero);
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| LayoutError::Overflow(t.to_string()))
}

/// Checks a guest RAM size against [`MIN_MEM`], [`MAX_MEM`], page alignment
/// and the host's total (or available) memory `host_total`.
pub fn check_mem_size(size: u64, host_total: u64) -> Result<(), LayoutError> {
    if size < MIN_MEM {
        return Err(LayoutError::TooSmall(Size(size)));
    }
    if size > MAX_MEM {
        return Err(LayoutError::TooLarge(Size(size)));
    }
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(LayoutError::Unaligned(Size(size)));
    }
    if size > host_total {
        return Err(LayoutError::ExceedsHost(Size(size), Size(host_total)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_map(mem: u64) -> Vec<E820Entry> {
        let map = e820_map(mem);
        for w in map.windows(2) {
            assert!(
                w[0].addr + w[0].size <= w[1].addr,
                "overlap/unsorted: {:x?}",
                w
            );
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // The 0x9FC00..1 MiB gap is RAM-backed but reported reserved.
        assert_eq!(ram, mem - (KERNEL_START.0 - EBDA_START));
        let slots: u64 = ram_regions(mem).iter().map(|r| r.1 as u64).sum();
        assert_eq!(slots, mem);
        // Every RAM entry lies inside a memory slot.
        for e in map.iter().filter(|e| e.kind == E820_RAM) {
            assert!(ram_regions(mem)
                .iter()
                .any(|(a, l)| e.addr >= a.0 && e.addr + e.size <= a.0 + *l as u64));
        }
        map
    }

    #[test]
    fn e820_small() {
        for mem in [128 * MIB, 256 * MIB] {
            let map = check_map(mem);
            assert_eq!(map.len(), 4);
            assert_eq!(
                map[0],
                E820Entry {
                    addr: 0,
                    size: 0x9FC00,
                    kind: E820_RAM
                }
            );
            assert_eq!(
                map[1],
                E820Entry {
                    addr: 0x9FC00,
                    size: 0x60400,
                    kind: E820_RESERVED
                }
            );
            assert_eq!(
                map[2],
                E820Entry {
                    addr: MIB,
                    size: mem - MIB,
                    kind: E820_RAM
                }
            );
            assert_eq!(map[3].kind, E820_RESERVED);
            assert_eq!(ram_regions(mem), vec![(GuestAddress(0), mem as usize)]);
        }
    }

    #[test]
    fn e820_3g() {
        let map = check_map(3 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        assert_eq!(ram_regions(3 * GIB).len(), 1);
    }

    #[test]
    fn e820_3_5g() {
        let mem = 3 * GIB + 512 * MIB;
        let map = check_map(mem);
        assert_eq!(map.len(), 5);
        assert_eq!(map[2].addr + map[2].size, 3 * GIB);
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 * GIB,
                size: 512 * MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(
            ram_regions(mem),
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (512 * MIB) as usize)
            ]
        );
    }

    #[test]
    fn e820_8g() {
        let map = check_map(8 * GIB);
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 * GIB,
                size: 5 * GIB,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn e820_degenerate_sizes_do_not_panic() {
        for mem in [0, 1, 0x9FC00, MIB, u64::MAX] {
            let _ = e820_map(mem);
            let _ = ram_regions(mem);
        }
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn parse_sizes() {
        assert_eq!(parse_mem_size("256M"), Ok(256 * MIB));
        assert_eq!(parse_mem_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_mem_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_mem_size("1024K"), Ok(MIB));
        assert_eq!(parse_mem_size("1024kb"), Ok(MIB));
        assert_eq!(parse_mem_size("2g"), Ok(2 * GIB));
        assert_eq!(parse_mem_size(" 1 GiB "), Ok(GIB));
        assert_eq!(parse_mem_size("1t"), Ok(1 << 40));
        assert_eq!(parse_mem_size("16777216"), Ok(16 * MIB));
        assert_eq!(parse_mem_size("4096B"), Ok(4096));
    }

    #[test]
    fn parse_rejects() {
        assert_eq!(parse_mem_size(""), Err(LayoutError::Empty));
        assert_eq!(parse_mem_size("  "), Err(LayoutError::Empty));
        assert_eq!(parse_mem_size("0"), Err(LayoutError::Zero));
        assert_eq!(parse_mem_size("0G"), Err(LayoutError::Zero));
        for bad in [
            "M", "abc", "12X", "1.5G", "-1G", "1G1", "G1", "1 G B", "１G",
        ] {
            assert!(
                matches!(parse_mem_size(bad), Err(LayoutError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_mem_size("99999999999999999999"),
            Err(LayoutError::Overflow(_))
        ));
        assert!(matches!(
            parse_mem_size("17179869184G"),
            Err(LayoutError::Overflow(_))
        ));
    }

    #[test]
    fn check_sizes() {
        let host = 8 * GIB;
        assert_eq!(check_mem_size(MIN_MEM, host), Ok(()));
        assert_eq!(check_mem_size(8 * GIB, host), Ok(()));
        assert_eq!(
            check_mem_size(8 * MIB, host),
            Err(LayoutError::TooSmall(Size(8 * MIB)))
        );
        assert_eq!(
            check_mem_size(16 * GIB, host),
            Err(LayoutError::ExceedsHost(Size(16 * GIB), Size(host)))
        );
        assert_eq!(
            check_mem_size(2 << 40, u64::MAX),
            Err(LayoutError::TooLarge(Size(2 << 40)))
        );
        assert!(matches!(
            check_mem_size(MIN_MEM + 1, host),
            Err(LayoutError::Unaligned(_))
        ));
        let msg = check_mem_size(8 * MIB, host).unwrap_err().to_string();
        assert_eq!(
            msg,
            "Guest memory 8 MiB is below the minimum of 16 MiB; use --memory 16M or more"
        );
        let msg = check_mem_size(16 * GIB, host).unwrap_err().to_string();
        assert_eq!(
            msg,
            "Guest memory 16 GiB exceeds host memory 8 GiB; use a smaller --memory"
        );
    }

    #[test]
    fn size_display() {
        assert_eq!(Size(3 * GIB + 512 * MIB).to_string(), "3584 MiB");
        assert_eq!(Size(GIB + 1).to_string(), "1.0 GiB");
        assert_eq!(Size(100).to_string(), "100 bytes");
        assert_eq!(Size(0).to_string(), "0 bytes");
        assert_eq!(Size(1536 * KIB).to_string(), "1536 KiB");
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START.0, 0x40),
            (BOOT_IDT_START.0, 0x8),
            (PVH_INFO_START.0, 0x40),
            (PVH_MODLIST_START.0, 32 * 32),
            (ZERO_PAGE_START.0, 0x1000),
            (PVH_MEMMAP_START.0, 0x1000),
            (PML4_START.0, 0x1000),
            (PDPT_START.0, 0x1000),
            (PD_START.0, 0x4000),
            (0x1_0000, BOOT_STACK_POINTER + 0x10 - 0x1_0000),
            (CMDLINE_START.0, CMDLINE_MAX as u64),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START);
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} {b:x?}");
            }
        }
        const { assert!(ACPI_END.0 <= MPTABLE_START.0 && MPTABLE_END.0 <= KERNEL_START.0) };
    }
}
