//! Boot information writers: PVH `hvm_start_info`, the Linux zero page,
//! initrd placement, the boot GDT and the identity-mapped page tables.
//!
//! # Entry states (what the caller programs into the vCPU)
//!
//! * **Linux 64-bit boot protocol** (vmlinux ELF entry, or bzImage at
//!   `code32_start + 0x200`): call [`write_boot_gdt`] and
//!   [`write_identity_page_tables`];
//!   CR3 = returned value, CR4 = [`X86_CR4_PAE`], CR0 = [`X86_CR0_PE`] |
//!   [`X86_CR0_PG`] (| ET/NE as desired), EFER = [`EFER_LME`] | [`EFER_LMA`];
//!   CS = 0x10 from GDT entry [`GDT_CODE64`], DS/ES/FS/GS/SS = 0x18 from
//!   [`GDT_DATA`], TR = 0x20 from [`GDT_TSS`] (see [`kvm_segment_from_gdt`]);
//!   GDTR = the (base, limit) returned by [`write_boot_gdt`] (0x500, 0x27),
//!   IDTR = [`BOOT_IDT_START`] limit 0;
//!   RSI = zero page address, RSP = [`BOOT_STACK_POINTER`], RFLAGS = 2.
//! * **PVH** (32-bit protected mode, paging off): CR0 = `X86_CR0_PE` (ET),
//!   CS = a 32-bit flat code segment (the selector value is unspecified by
//!   PVH; [`GDT_CODE32`] = 0x08 matches the in-memory GDT), data segments
//!   from `GDT_DATA`, TR from `GDT_TSS`, EBX = `hvm_start_info` address,
//!   RFLAGS = 2. No page tables needed; Linux's PVH entry loads its own GDT.
//!
//! The GDT satisfies the Linux 64-bit boot protocol: `__BOOT_CS` (0x10) is
//! flat 64-bit code and `__BOOT_DS` (0x18) is flat read/write data.

use kvm_bindings::kvm_segment;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    low_ram_size, E820Entry, Size, BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX, PAGE_SIZE,
    PDPT_START, PD_START, PML4_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};

pub use super::layout::BOOT_STACK_POINTER;

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// GDT index of the null descriptor.
pub const GDT_NULL: usize = 0;
/// GDT index of the 32-bit code segment (selector 0x08; usable for PVH).
pub const GDT_CODE32: usize = 1;
/// GDT index of the 64-bit code segment (selector 0x10 = Linux `__BOOT_CS`).
pub const GDT_CODE64: usize = 2;
/// GDT index of the flat data segment (selector 0x18 = Linux `__BOOT_DS`).
pub const GDT_DATA: usize = 3;
/// GDT index of the TSS descriptor (selector 0x20).
pub const GDT_TSS: usize = 4;

/// The boot GDT: null, code32, code64, data, busy TSS (base 0, limit 0x67).
pub const GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xC09B, 0, 0xFFFFF), // P, S, code exec/read accessed; G, D
    gdt_entry(0xA09B, 0, 0xFFFFF), // P, S, code exec/read accessed; G, L
    gdt_entry(0xC093, 0, 0xFFFFF), // P, S, data read/write accessed; G, B
    gdt_entry(0x008B, 0, 0x67),    // P, busy 32-bit TSS
];

/// Page-table flags.
const PTE_PRESENT: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PDE_PS: u64 = 1 << 7;
/// Number of page directories: identity map of 0..4 GiB with 2 MiB pages.
const NUM_PDS: u64 = 4;

/// Boot protocol constants.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xAA55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xFF;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const VID_MODE_NORMAL: u16 = 0xFFFF;
const HEAP_END_PTR: u16 = 0xFE00;
/// `initrd_addr_max` implied by boot protocols older than 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37FF_FFFF;

/// Errors from writing boot information.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootError {
    /// The e820 map is empty.
    #[error("Memory map is empty")]
    EmptyMemoryMap,
    /// The e820 map has too many entries.
    #[error("Memory map has {0} entries; at most {1} fit")]
    TooManyE820(usize, usize),
    /// The command line is too long.
    #[error("Kernel command line is {0} bytes; the kernel accepts at most {1}; shorten it")]
    CmdlineTooLong(usize, usize),
    /// An address handed to the kernel in a 32-bit field is above 4 GiB.
    #[error("Boot address {0:#x} is above 4 GiB")]
    AddressAbove4G(u64),
    /// The initrd does not fit.
    #[error("Initrd ({size}) does not fit in guest RAM between {low:#x} and {high:#x}; give the guest more memory with --memory")]
    InitrdTooLarge {
        /// Initrd size.
        size: Size,
        /// Lowest usable address (kernel end).
        low: u64,
        /// Highest usable address (exclusive).
        high: u64,
    },
    /// linux-loader's PVH configurator failed.
    #[error("Cannot write PVH boot info: {0}")]
    Pvh(linux_loader::configurator::Error),
    /// Guest memory write failed.
    #[error("Cannot write boot data to guest memory at {0:#x}")]
    Write(u64),
}

/// Encodes a segment descriptor from access/flags bits (`flags` holds the
/// access byte in bits 0..8 and the flag nibble in bits 12..16), base and
/// 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xFF00_0000) << (56 - 24))
        | ((flags as u64 & 0xF0FF) << 40)
        | ((limit as u64 & 0x000F_0000) << (48 - 16))
        | ((base as u64 & 0x00FF_FFFF) << 16)
        | (limit as u64 & 0x0000_FFFF)
}

/// The `kvm_segment` (hidden part of a segment register) for GDT entry
/// `index` of `entry`.
pub fn kvm_segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let limit = ((entry & 0x000F_0000_0000_0000) >> 32 | (entry & 0xFFFF)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry & 0xFF00_0000_0000_0000) >> 32) | ((entry & 0x0000_00FF_FFFF_0000) >> 16),
        // KVM wants the byte-granular limit.
        limit: if g == 1 { (limit << 12) | 0xFFF } else { limit },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xF) as u8,
        s: ((entry >> 44) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        present: ((entry >> 47) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        db: ((entry >> 54) & 1) as u8,
        g,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// Writes [`GDT`] at [`BOOT_GDT_START`] and an empty IDT at
/// [`BOOT_IDT_START`]; returns the GDTR value `(base, limit)`.
pub fn write_boot_gdt(mem: &GuestMemoryMmap) -> Result<(u64, u16), BootError> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, BOOT_GDT_START)
        .map_err(|_| BootError::Write(BOOT_GDT_START.0))?;
    mem.write_obj(0u64, BOOT_IDT_START)
        .map_err(|_| BootError::Write(BOOT_IDT_START.0))?;
    Ok((BOOT_GDT_START.0, (bytes.len() - 1) as u16))
}

/// Writes identity page tables mapping 0..4 GiB with 2 MiB pages
/// (PML4 → one PDPT → four PDs) and returns the CR3 value.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    // PML4, PDPT and the PDs are contiguous pages: 0x9000, 0xA000, 0xB000...
    debug_assert_eq!(PDPT_START.0, PML4_START.0 + PAGE_SIZE);
    debug_assert_eq!(PD_START.0, PDPT_START.0 + PAGE_SIZE);
    let mut tables = vec![0u64; (2 + NUM_PDS as usize) * 512];
    tables[0] = PDPT_START.0 | PTE_PRESENT | PTE_RW;
    for i in 0..NUM_PDS {
        tables[512 + i as usize] = (PD_START.0 + i * PAGE_SIZE) | PTE_PRESENT | PTE_RW;
    }
    for (n, pde) in tables[1024..].iter_mut().enumerate() {
        *pde = ((n as u64) << 21) | PTE_PRESENT | PTE_RW | PDE_PS;
    }
    let bytes: Vec<u8> = tables.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, PML4_START)
        .map_err(|_| BootError::Write(PML4_START.0))?;
    Ok(PML4_START.0)
}

/// Picks the initrd load address: page-aligned, as high as possible below
/// both the MMIO hole (top of low RAM) and `initrd_addr_max` (the bzImage
/// header field: highest byte the initrd may occupy; 0 means the pre-2.03
/// default 0x37FFFFFF), and not below `kernel_end` (first byte after the
/// kernel).
pub fn initrd_addr(
    mem_size: u64,
    initrd_size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<GuestAddress, BootError> {
    let max = if initrd_addr_max == 0 {
        DEFAULT_INITRD_ADDR_MAX
    } else {
        initrd_addr_max
    };
    let high = low_ram_size(mem_size).min(max.saturating_add(1));
    let low = kernel_end;
    let too_large = || BootError::InitrdTooLarge {
        size: Size(initrd_size),
        low,
        high,
    };
    let start = high.checked_sub(initrd_size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if start < low {
        return Err(too_large());
    }
    Ok(GuestAddress(start))
}

fn check_e820(e820: &[E820Entry], max: usize) -> Result<(), BootError> {
    if e820.is_empty() {
        return Err(BootError::EmptyMemoryMap);
    }
    if e820.len() > max {
        return Err(BootError::TooManyE820(e820.len(), max));
    }
    Ok(())
}

/// Writes `hvm_start_info` at [`PVH_INFO_START`] (version 1, with the memory
/// map at [`PVH_MEMMAP_START`] and, for an initrd, one module entry at
/// [`PVH_MODLIST_START`]) and returns its address (the guest's EBX).
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    e820: &[E820Entry],
    rsdp: GuestAddress,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<GuestAddress, BootError> {
    check_e820(e820, PVH_MEMMAP_MAX_ENTRIES)?;
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline_addr.0,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP_START.0,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let module = initrd.map(|(addr, size)| hvm_modlist_entry {
        paddr: addr.0,
        size,
        ..Default::default()
    });
    if module.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START.0;
    }
    let mut params = BootParams::new(&info, PVH_INFO_START);
    params.set_sections(&memmap, PVH_MEMMAP_START);
    if let Some(m) = module {
        params.set_modules(&[m], PVH_MODLIST_START);
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Pvh)?;
    Ok(PVH_INFO_START)
}

fn low32(addr: u64) -> Result<u32, BootError> {
    u32::try_from(addr).map_err(|_| BootError::AddressAbove4G(addr))
}

/// Fills and writes the Linux zero page (`boot_params`) at
/// [`ZERO_PAGE_START`] and returns its address (the guest's RSI).
///
/// `header` is the bzImage's setup header (from linux-loader's
/// `KernelLoaderResult::setup_header`) or `None` for a vmlinux ELF, in which
/// case a minimal valid header is synthesised. `cmdline_size` *includes*
/// the terminating NUL (as [`write_cmdline`] writes it); the text length is
/// checked against the header's `cmdline_size` (protocol 2.06+) and
/// [`CMDLINE_MAX`]. `rsdp` goes to `acpi_rsdp_addr` (boot protocol 2.14+).
/// Fields set: `type_of_loader` = 0xFF, `loadflags` |= CAN_USE_HEAP,
/// `heap_end_ptr` = 0xFE00, `vid_mode` = 0xFFFF, `cmd_line_ptr`,
/// `ramdisk_image`/`ramdisk_size`, `e820_table`/`e820_entries`; everything
/// else of a bzImage header is kept.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_addr: GuestAddress,
    cmdline_size: usize,
    e820: &[E820Entry],
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<GuestAddress, BootError> {
    let cmdline_len = cmdline_size.saturating_sub(1);
    check_e820(e820, E820_MAX_ENTRIES_ZEROPAGE)?;
    let mut hdr = match header {
        Some(h) => h,
        None => setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            loadflags: LOADED_HIGH,
            kernel_alignment: KERNEL_MIN_ALIGNMENT,
            cmdline_size: (CMDLINE_MAX - 1) as u32,
            ..Default::default()
        },
    };
    let version = hdr.version;
    let kernel_max = hdr.cmdline_size as usize;
    let limit = if header.is_some() && version >= 0x0206 && kernel_max > 0 {
        kernel_max.min(CMDLINE_MAX - 1)
    } else {
        CMDLINE_MAX - 1
    };
    if cmdline_len > limit {
        return Err(BootError::CmdlineTooLong(cmdline_len, limit));
    }
    let cmdline_end = cmdline_addr.0.saturating_add(cmdline_len as u64);
    low32(cmdline_end)?;

    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = HEAP_END_PTR;
    hdr.vid_mode = VID_MODE_NORMAL;
    hdr.cmd_line_ptr = low32(cmdline_addr.0)?;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = low32(addr.0)?;
        hdr.ramdisk_size = low32(size)?;
        low32(addr.0.saturating_add(size))?;
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.acpi_rsdp_addr = rsdp.0;
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, ZERO_PAGE_START)
        .map_err(|_| BootError::Write(ZERO_PAGE_START.0))?;
    Ok(ZERO_PAGE_START)
}

/// Writes the command line plus a NUL at `addr`, checking [`CMDLINE_MAX`].
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    cmdline: impl AsRef<[u8]>,
) -> Result<(), BootError> {
    let cmdline = cmdline.as_ref();
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len(), CMDLINE_MAX - 1));
    }
    let mut bytes = cmdline.to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, addr)
        .map_err(|_| BootError::Write(addr.0))
}

#[cfg(test)]
mod tests {
    use super::super::layout::{e820_map, CMDLINE_START, GIB, MIB, MMIO_HOLE_START, RSDP_START};
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn gdt_encoding() {
        assert_eq!(GDT[GDT_CODE64], 0x00AF_9B00_0000_FFFF);
        assert_eq!(GDT[GDT_CODE32], 0x00CF_9B00_0000_FFFF);
        assert_eq!(GDT[GDT_DATA], 0x00CF_9300_0000_FFFF);
        assert_eq!(GDT[GDT_TSS], 0x0000_8B00_0000_0067);
        let cs = kvm_segment_from_gdt(GDT[GDT_CODE64], GDT_CODE64);
        assert_eq!(
            (cs.selector, cs.base, cs.limit, cs.type_),
            (0x10, 0, 0xFFFF_FFFF, 0xB)
        );
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.unusable),
            (1, 0, 1, 1, 1, 0)
        );
        let cs32 = kvm_segment_from_gdt(GDT[GDT_CODE32], GDT_CODE32);
        assert_eq!((cs32.selector, cs32.l, cs32.db), (0x08, 0, 1));
        let ds = kvm_segment_from_gdt(GDT[GDT_DATA], GDT_DATA);
        assert_eq!(
            (ds.selector, ds.type_, ds.limit, ds.db),
            (0x18, 3, 0xFFFF_FFFF, 1)
        );
        let tr = kvm_segment_from_gdt(GDT[GDT_TSS], GDT_TSS);
        assert_eq!(
            (tr.selector, tr.type_, tr.limit, tr.s, tr.g, tr.present),
            (0x20, 0xB, 0x67, 0, 0, 1)
        );
        let null = kvm_segment_from_gdt(GDT[GDT_NULL], GDT_NULL);
        assert_eq!(null.unusable, 1);
        let odd = kvm_segment_from_gdt(gdt_entry(0x4093, 0x1234_5678, 0xABCDE), 7);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xABCDE, 0));
    }

    #[test]
    fn gdt_in_memory() {
        let m = mem();
        assert_eq!(write_boot_gdt(&m).unwrap(), (0x500, 0x27));
        for (i, e) in GDT.iter().enumerate() {
            assert_eq!(
                m.read_obj::<u64>(GuestAddress(BOOT_GDT_START.0 + 8 * i as u64))
                    .unwrap(),
                *e
            );
        }
        assert_eq!(m.read_obj::<u64>(BOOT_IDT_START).unwrap(), 0);
        assert!(BOOT_GDT_START.0 + 8 * GDT.len() as u64 <= BOOT_IDT_START.0);
    }

    /// Walks the guest page tables like the MMU (2 MiB pages).
    fn translate(m: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = m
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 0x1FF) * 8))
            .unwrap();
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = m
            .read_obj(GuestAddress((pml4e & !0xFFF) + ((va >> 30) & 0x1FF) * 8))
            .unwrap();
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = m
            .read_obj(GuestAddress((pdpte & !0xFFF) + ((va >> 21) & 0x1FF) * 8))
            .unwrap();
        if pde & 1 == 0 {
            return None;
        }
        assert_ne!(pde & PDE_PS, 0);
        Some((pde & !0x1F_FFFF & 0x000F_FFFF_FFFF_F000) | (va & 0x1F_FFFF))
    }

    #[test]
    fn identity_page_tables() {
        let m = mem();
        let cr3 = write_identity_page_tables(&m).unwrap();
        assert_eq!(cr3, PML4_START.0);
        for va in [
            0,
            0x7000,
            0x10_0000,
            0x1234_5678,
            GIB,
            3 * GIB - 1,
            4 * GIB - 1,
        ] {
            assert_eq!(translate(&m, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&m, cr3, 4 * GIB), None);
        assert_eq!(translate(&m, cr3, 1 << 39), None);
        let pde: u64 = m.read_obj(PD_START).unwrap();
        assert_eq!(pde, 0x83);
    }

    #[test]
    fn initrd_placement() {
        let end = 16 * MIB;
        // Top of RAM, page aligned.
        let a = initrd_addr(64 * MIB, 5 * MIB + 123, end, 0x7FFF_FFFF).unwrap();
        assert_eq!(a.0, (64 * MIB - 5 * MIB - 123) & !0xFFF);
        assert!(a.0 + 5 * MIB + 123 <= 64 * MIB);
        // Capped by the MMIO hole for big guests.
        let a = initrd_addr(8 * GIB, 10 * MIB, end, u64::from(u32::MAX)).unwrap();
        assert_eq!(a.0, MMIO_HOLE_START - 10 * MIB);
        // Capped by initrd_addr_max (inclusive).
        let a = initrd_addr(2 * GIB, MIB, end, 0x37FF_FFFF).unwrap();
        assert_eq!(a.0, 0x3800_0000 - MIB);
        assert_eq!(initrd_addr(2 * GIB, MIB, end, 0).unwrap(), a);
        // Does not fit above the kernel.
        let err = initrd_addr(32 * MIB, 20 * MIB, end, u64::from(u32::MAX)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Initrd (20 MiB) does not fit in guest RAM between 0x1000000 and 0x2000000; \
             give the guest more memory with --memory"
        );
        assert!(initrd_addr(32 * MIB, u64::MAX, end, u64::from(u32::MAX)).is_err());
        assert!(initrd_addr(0, 1, 0, 0).is_err());
    }

    #[test]
    fn pvh_start_info() {
        let m = mem();
        let e820 = e820_map(64 * MIB);
        let initrd = (GuestAddress(0x300_0000), 0x12345);
        let addr =
            write_pvh_start_info(&m, CMDLINE_START, &e820, RSDP_START, Some(initrd)).unwrap();
        assert_eq!(addr, PVH_INFO_START);
        let info: hvm_start_info = m.read_obj(addr).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START.0);
        assert_eq!(info.rsdp_paddr, RSDP_START.0);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries as usize, e820.len());
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(
            (module.paddr, module.size, module.cmdline_paddr),
            (0x300_0000, 0x12345, 0)
        );
        for (i, e) in e820.iter().enumerate() {
            let got: hvm_memmap_table_entry = m
                .read_obj(GuestAddress(info.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!((got.addr, got.size, got.type_), (e.addr, e.size, e.kind));
        }

        let m = mem();
        write_pvh_start_info(&m, CMDLINE_START, &e820, RSDP_START, None).unwrap();
        let info: hvm_start_info = m.read_obj(PVH_INFO_START).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));

        assert_eq!(
            write_pvh_start_info(&m, CMDLINE_START, &[], RSDP_START, None),
            Err(BootError::EmptyMemoryMap)
        );
        let huge = vec![e820[0]; 171];
        assert_eq!(
            write_pvh_start_info(&m, CMDLINE_START, &huge, RSDP_START, None),
            Err(BootError::TooManyE820(171, 170))
        );
    }

    #[test]
    fn zero_page() {
        let m = mem();
        let e820 = e820_map(64 * MIB);
        write_cmdline(&m, CMDLINE_START, b"console=ttyS0").unwrap();
        let initrd = Some((GuestAddress(0x300_0000), 0x1000));
        let addr =
            write_boot_params(&m, None, CMDLINE_START, 14, &e820, initrd, RSDP_START).unwrap();
        assert_eq!(addr, ZERO_PAGE_START);
        let p: boot_params = m.read_obj(addr).unwrap();
        let h = p.hdr;
        assert_eq!({ h.boot_flag }, 0xAA55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.type_of_loader }, 0xFF);
        assert_eq!({ h.loadflags }, LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!({ h.heap_end_ptr }, 0xFE00);
        assert_eq!({ h.vid_mode }, 0xFFFF);
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!({ h.ramdisk_image }, 0x300_0000);
        assert_eq!({ h.ramdisk_size }, 0x1000);
        assert_eq!({ p.acpi_rsdp_addr }, 0xE0000);
        assert_eq!(p.e820_entries as usize, e820.len());
        for (i, e) in e820.iter().enumerate() {
            let got = p.e820_table[i];
            assert_eq!(
                ({ got.addr }, { got.size }, { got.r#type }),
                (e.addr, e.size, e.kind)
            );
        }
        let mut cmd = [0u8; 14];
        m.read_slice(&mut cmd, CMDLINE_START).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let m = mem();
        let bz = setup_header {
            version: 0x020F,
            cmdline_size: 2047,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            ..Default::default()
        };
        let e820 = e820_map(64 * MIB);
        write_boot_params(
            &m,
            Some(bz),
            CMDLINE_START,
            2048,
            &e820,
            None,
            GuestAddress(0),
        )
        .unwrap();
        let p: boot_params = m.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ p.hdr.code32_start }, 0x10_0000);
        assert_eq!({ p.hdr.version }, 0x020F);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
        assert_eq!(
            write_boot_params(
                &m,
                Some(bz),
                CMDLINE_START,
                2049,
                &e820,
                None,
                GuestAddress(0)
            ),
            Err(BootError::CmdlineTooLong(2048, 2047))
        );
    }

    #[test]
    fn zero_page_errors() {
        let m = mem();
        let e820 = e820_map(64 * MIB);
        assert_eq!(
            write_boot_params(&m, None, CMDLINE_START, 0, &[], None, RSDP_START),
            Err(BootError::EmptyMemoryMap)
        );
        assert!(matches!(
            write_boot_params(
                &m,
                None,
                CMDLINE_START,
                0,
                &vec![e820[0]; 129],
                None,
                RSDP_START
            ),
            Err(BootError::TooManyE820(129, 128))
        ));
        assert_eq!(
            write_boot_params(&m, None, GuestAddress(5 * GIB), 0, &e820, None, RSDP_START),
            Err(BootError::AddressAbove4G(5 * GIB))
        );
        assert_eq!(
            write_boot_params(
                &m,
                None,
                CMDLINE_START,
                0,
                &e820,
                Some((GuestAddress(5 * GIB), 1)),
                RSDP_START
            ),
            Err(BootError::AddressAbove4G(5 * GIB))
        );
        assert!(matches!(
            write_boot_params(
                &m,
                None,
                CMDLINE_START,
                CMDLINE_MAX + 1,
                &e820,
                None,
                RSDP_START
            ),
            Err(BootError::CmdlineTooLong(..))
        ));
        assert!(write_cmdline(&m, CMDLINE_START, vec![b'a'; CMDLINE_MAX]).is_err());
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(
            write_identity_page_tables(&small),
            Err(BootError::Write(PML4_START.0))
        );
        assert_eq!(
            write_boot_params(&small, None, CMDLINE_START, 0, &e820, None, RSDP_START),
            Err(BootError::Write(ZERO_PAGE_START.0))
        );
    }
}
