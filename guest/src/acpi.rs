//! CPU and interrupt-controller discovery: ACPI MADT, or the Intel MP
//! table as a fallback.
//!
//! ACPI: the RSDP comes from `hvm_start_info.rsdp_paddr`, or a scan of
//! 0xE0000..0xFFFFF for "RSD PTR " on 16-byte boundaries. Revision >= 2
//! RSDPs give the XSDT (64-bit pointers at offset 24), otherwise the RSDT
//! (32-bit pointers at offset 16). The MADT ("APIC") has a 44-byte header
//! (36-byte SDT header + u32 LAPIC address + u32 flags) followed by
//! variable-length entries `{u8 type, u8 len, ...}`:
//! type 0 = processor LAPIC `{acpi_id u8, apic_id u8, flags u32}`,
//! type 1 = IOAPIC, type 5 = LAPIC address override, type 9 = x2APIC.
//! Flag bit 0 = enabled. The first IOAPIC's address (+4) and GSI base (+8)
//! are kept for PCI INTx routing.
//!
//! The MCFG table ("MCFG", 36-byte header + 8 reserved bytes, then 16-byte
//! entries `{base u64, segment u16, start_bus u8, end_bus u8, u32}`) gives
//! the PCI Express ECAM window; the entry for segment 0 is kept.
//!
//! MP table: the "_MP_" floating pointer (0xF0000..0xFFFFF) points at a
//! "PCMP" configuration table whose 20-byte type 0 entries describe
//! processors (byte 1 = APIC ID, byte 3 bit 0 = enabled) and 8-byte type 2
//! entries describe IOAPICs.
//!
//! Checksums are not verified (the VMM is trusted, and every byte read is
//! emulated instruction by instruction on kvm_pvm).

use crate::boot::MAX_CPUS;
use crate::io::read_phys;

/// Read a `T` from a firmware table (or the BIOS area being scanned).
/// Only called with addresses derived from the RSDP / MP pointers, which
/// the VMM places in RAM or ROM below 4 GiB.
fn fw<T: Copy>(paddr: u64) -> T {
    // SAFETY: 0..4 GiB is identity mapped; firmware tables are plain
    // memory (no read side effects) and are never modified.
    unsafe { read_phys(paddr) }
}

/// Make sure a firmware table (SDT header + its length) is mapped: with
/// 2 MiB boot pages only RAM/ACPI regions of the memory map are.
fn map_table(addr: u64) {
    crate::paging::map_identity(addr, addr + 36, false);
    let len = u64::from(fw::<u32>(addr + 4));
    crate::paging::map_identity(addr, addr + len.max(36), false);
}

/// Default xAPIC MMIO base.
pub const DEFAULT_LAPIC_BASE: u64 = 0xfee0_0000;

/// Where the CPU list came from.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Source {
    Acpi = 0,
    MpTable,
    /// Nothing found: assume a single CPU.
    None,
}

/// Platform description from firmware tables.
pub struct Platform {
    pub source: Source,
    /// LAPIC MMIO base address.
    pub lapic_base: u64,
    /// APIC IDs of enabled CPUs, in table order; index 0 is the BSP once
    /// [`Platform::put_bsp_first`] ran.
    pub apic_ids: [u32; MAX_CPUS],
    /// Number of valid entries in `apic_ids`.
    pub ncpus: usize,
    /// Enabled CPUs listed in the tables that did not fit in `MAX_CPUS`.
    pub ncpus_dropped: usize,
    /// Number of IOAPICs listed.
    pub ioapics: usize,
    /// MMIO address of the first IOAPIC (0 if none).
    pub ioapic_base: u64,
    /// First GSI of the first IOAPIC.
    pub ioapic_gsi_base: u32,
    /// ECAM base of PCI segment 0 from the MCFG table (0 if none); the
    /// address of bus `b` is `ecam_base + (b << 20)`.
    pub ecam_base: u64,
    /// First and last bus the ECAM window covers.
    pub ecam_buses: (u8, u8),
}

impl Platform {
    fn new(source: Source) -> Self {
        // Zero-fill with `mem::zeroed` (rep stosq): building
        // the struct field by field makes LLVM zero the counters with
        // `xorps` + `movups`, and kvm_pvm's instruction emulator cannot
        // execute `xorps` (see docs/guest.md, "SSE").
        // SAFETY: all-zero bytes are a valid `Platform` (integers, and
        // `Source::Acpi` has discriminant 0).
        let mut p: Platform = unsafe { crate::mem::zeroed() };
        p.source = source;
        p.lapic_base = DEFAULT_LAPIC_BASE;
        p
    }

    fn add_cpu(&mut self, apic_id: u32) {
        if self.ncpus < MAX_CPUS {
            self.apic_ids[self.ncpus] = apic_id;
            self.ncpus += 1;
        } else {
            self.ncpus_dropped += 1;
        }
    }

    /// The enabled CPUs' APIC IDs.
    pub fn cpus(&self) -> &[u32] {
        &self.apic_ids[..self.ncpus]
    }

    /// Index of `apic_id` in the CPU list.
    pub fn cpu_index(&self, apic_id: u32) -> Option<usize> {
        self.cpus().iter().position(|&id| id == apic_id)
    }

    /// Make sure the BSP (`bsp_apic_id`) is CPU 0, keeping the order of
    /// the others. Adds it if the tables did not list it.
    pub fn put_bsp_first(&mut self, bsp_apic_id: u32) {
        match self.cpu_index(bsp_apic_id) {
            Some(i) => self.apic_ids[..=i].rotate_right(1),
            None => {
                if self.ncpus == MAX_CPUS {
                    self.ncpus -= 1;
                    self.ncpus_dropped += 1;
                }
                self.apic_ids[..=self.ncpus].rotate_right(1);
                self.apic_ids[0] = bsp_apic_id;
                self.ncpus += 1;
            }
        }
    }
}

/// Discover CPUs and interrupt controllers.
pub fn discover(rsdp_paddr: u64) -> Platform {
    let rsdp = if rsdp_paddr != 0 {
        Some(rsdp_paddr)
    } else {
        scan(0xe_0000, 0x10_0000, b"RSD PTR ")
    };
    let (madt, mcfg) = rsdp.map_or((None, None), find_tables);
    if let Some(madt) = madt {
        let mut plat = parse_madt(madt);
        if let Some(mcfg) = mcfg {
            parse_mcfg(mcfg, &mut plat);
        }
        return plat;
    }
    if let Some(mp) = scan(0xf_0000, 0x10_0000, b"_MP_") {
        if let Some(p) = parse_mp(mp) {
            return p;
        }
    }
    Platform::new(Source::None)
}

/// Find `sig` (at most 8 bytes) on a 16-byte boundary in `[start, end)`.
fn scan(start: u64, end: u64, sig: &[u8]) -> Option<u64> {
    (start..end).step_by(16).find(|&a| {
        let v: [u8; 8] = fw(a);
        v[..sig.len()] == *sig
    })
}

/// Follow RSDP -> XSDT/RSDT -> (MADT, MCFG).
fn find_tables(rsdp: u64) -> (Option<u64>, Option<u64>) {
    let mut madt = None;
    let mut mcfg = None;
    crate::paging::map_identity(rsdp, rsdp + 36, false);
    let sig: [u8; 8] = fw(rsdp);
    if &sig != b"RSD PTR " {
        return (None, None);
    }
    let revision: u8 = fw(rsdp + 15);
    let (root, entry_size) = if revision >= 2 {
        (fw::<u64>(rsdp + 24), 8)
    } else {
        (u64::from(fw::<u32>(rsdp + 16)), 4)
    };
    if root == 0 {
        return (None, None);
    }
    map_table(root);
    let len = u64::from(fw::<u32>(root + 4));
    let mut p = root + 36;
    while p + entry_size <= root + len {
        let table = if entry_size == 8 {
            fw::<u64>(p)
        } else {
            u64::from(fw::<u32>(p))
        };
        if table != 0 {
            map_table(table);
            match &fw::<[u8; 4]>(table) {
                b"APIC" => madt = madt.or(Some(table)),
                b"MCFG" => mcfg = mcfg.or(Some(table)),
                _ => {}
            }
        }
        p += entry_size;
    }
    (madt, mcfg)
}

fn parse_mcfg(mcfg: u64, plat: &mut Platform) {
    let len = u64::from(fw::<u32>(mcfg + 4));
    let mut p = mcfg + 44;
    while p + 16 <= mcfg + len {
        let segment: u16 = fw(p + 8);
        if segment == 0 {
            plat.ecam_base = fw(p);
            plat.ecam_buses = (fw(p + 10), fw(p + 11));
            return;
        }
        p += 16;
    }
}

fn parse_madt(madt: u64) -> Platform {
    let mut plat = Platform::new(Source::Acpi);
    let len = u64::from(fw::<u32>(madt + 4));
    plat.lapic_base = u64::from(fw::<u32>(madt + 36));
    let mut p = madt + 44;
    while p + 2 <= madt + len {
        let [typ, elen]: [u8; 2] = fw(p);
        if elen < 2 {
            break;
        }
        match typ {
            0 => {
                let apic_id: u8 = fw(p + 3);
                let flags: u32 = fw(p + 4);
                if flags & 1 != 0 {
                    plat.add_cpu(u32::from(apic_id));
                }
            }
            1 => {
                if plat.ioapics == 0 {
                    plat.ioapic_base = u64::from(fw::<u32>(p + 4));
                    plat.ioapic_gsi_base = fw(p + 8);
                }
                plat.ioapics += 1;
            }
            5 => plat.lapic_base = fw(p + 4),
            9 => {
                let apic_id: u32 = fw(p + 4);
                let flags: u32 = fw(p + 8);
                if flags & 1 != 0 && plat.cpu_index(apic_id).is_none() {
                    plat.add_cpu(apic_id);
                }
            }
            _ => {}
        }
        p += u64::from(elen);
    }
    plat
}

fn parse_mp(fp: u64) -> Option<Platform> {
    let cfg = u64::from(fw::<u32>(fp + 4));
    crate::paging::map_identity(cfg, cfg + 0x1_0000, false);
    if cfg == 0 || fw::<[u8; 4]>(cfg) != *b"PCMP" {
        return None;
    }
    let mut plat = Platform::new(Source::MpTable);
    let count: u16 = fw(cfg + 34);
    plat.lapic_base = u64::from(fw::<u32>(cfg + 36));
    let mut p = cfg + 44;
    for _ in 0..count {
        let typ: u8 = fw(p);
        match typ {
            0 => {
                let [_, apic_id, _, flags]: [u8; 4] = fw(p);
                if flags & 1 != 0 {
                    plat.add_cpu(u32::from(apic_id));
                }
                p += 20;
            }
            2 => {
                if plat.ioapics == 0 {
                    plat.ioapic_base = u64::from(fw::<u32>(p + 4));
                }
                plat.ioapics += 1;
                p += 8;
            }
            1 | 3 | 4 => p += 8,
            _ => break,
        }
    }
    Some(plat)
}
