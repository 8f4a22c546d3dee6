//! ACPI tables: RSDP, XSDT, FADT, FACS, DSDT, MADT and optionally MCFG.
//!
//! All tables live in `ACPI_START..ACPI_END` (0xE0000..0xF0000, e820
//! reserved); the RSDP sits at [`RSDP_START`] = 0xE0000, where Linux's
//! legacy BIOS-area scan also finds it, and its address is also handed over
//! in `boot_params.acpi_rsdp_addr` / `hvm_start_info.rsdp_paddr`.
//!
//! # Full (not hardware-reduced) ACPI
//!
//! The FADT does **not** set `HW_REDUCED_ACPI`. On x86 Linux a hardware-
//! reduced FADT installs `null_legacy_pic` and skips the PIT timer setup
//! (`acpi_generic_reduced_hw_init`); with no legacy PIC, `nr_legacy_irqs()`
//! is 0 so ISA IRQs (serial IRQ 4, ...) are only wired up when the DSDT
//! describes the devices in `_CRS`, which our (almost empty) DSDT does not.
//! vlab emulates a PC (8259 + PIT + i8042 + CMOS), so it describes one:
//!
//! * `IAPC_BOOT_ARCH` = LEGACY_DEVICES | 8042 | VGA_NOT_PRESENT |
//!   PCIE_ASPM_CONTROLS (CMOS RTC present, MSI allowed for later PCI).
//! * Full ACPI needs PM1a event/control blocks: ACPICA fails
//!   `acpi_enable_subsystem` (and Linux turns the interpreter off) when their
//!   addresses are 0. They are I/O ports [`PM1A_EVT_BLK`] (4 bytes: status,
//!   enable) and [`PM1A_CNT_BLK`] (2 bytes), as on QEMU's ICH9. `SMI_CMD` is 0,
//!   so the OS treats the machine as already in ACPI mode. A device model for
//!   those ports is optional for booting; if one exists, a 16-bit write to
//!   PM1a_CNT with SLP_EN (bit 13) set and SLP_TYP (bits 10..=12) equal to
//!   [`S5_SLP_TYP`] is the guest asking to power off (the DSDT's `\_S5`).
//! * SCI is ISA IRQ [`SCI_IRQ`] = 9, level-triggered active-high (MADT
//!   interrupt source override). Nothing needs to raise it.
//! * Reset register: I/O port 0x64, value 0xFE (the i8042 pulse-reset
//!   command), so `reboot=acpi` and the default reboot path both reach the
//!   i8042 reset vlab already handles.
//! * No PM timer, no GPE blocks, a 64-byte FACS (required without
//!   HW_REDUCED) with no waking vector.
//!
//! The MADT lists one enabled local APIC per vCPU (APIC id = ACPI UID =
//! vCPU index), the IOAPIC (id = number of vCPUs, GSI base 0), overrides
//! IRQ0 → GSI 2 and IRQ9 (SCI) level/high, and LINT1 = NMI on all CPUs.
//! See `irq.rs` for the GSI routing this implies.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR, RSDP_START};
use super::mptable::{checksum, MAX_CPUS};

/// OEM id in every table.
pub const OEM_ID: [u8; 6] = *b"VLAB  ";
/// ISA IRQ (= GSI) of the System Control Interrupt.
pub const SCI_IRQ: u8 = 9;
/// I/O port of the PM1a event block (status at +0, enable at +2).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// Length of the PM1a event block.
pub const PM1A_EVT_LEN: u8 = 4;
/// I/O port of the PM1a control block.
pub const PM1A_CNT_BLK: u16 = 0x604;
/// Length of the PM1a control block.
pub const PM1A_CNT_LEN: u8 = 2;
/// SLP_TYP value of the `\_S5` (soft-off) object in the DSDT.
pub const S5_SLP_TYP: u8 = 5;
/// FADT reset register: I/O port.
pub const RESET_PORT: u16 = 0x64;
/// FADT reset register: value written.
pub const RESET_VALUE: u8 = 0xFE;

const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const FADT_LEN: usize = 276;
const FACS_LEN: usize = 64;

// FADT flags.
const FADT_WBINVD: u32 = 1 << 0;
const FADT_PROC_C1: u32 = 1 << 2;
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_FIX_RTC: u32 = 1 << 6;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
// IA-PC boot architecture flags.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
// GAS address spaces.
const GAS_SYSTEM_IO: u8 = 1;

// MADT.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LAPIC: u8 = 0;
const MADT_IOAPIC: u8 = 1;
const MADT_ISO: u8 = 2;
const MADT_LAPIC_NMI: u8 = 4;
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: active high (01) | level triggered (11 << 2).
const ISO_LEVEL_HIGH: u16 = 0x000D;

/// `\_S5` = Package(4) { 5, 0, 0, 0 } in AML.
const AML_S5: [u8; 13] = [
    0x08, b'_', b'S', b'5', b'_', // NameOp "_S5_"
    0x12, 0x07, 0x04, // PackageOp, PkgLength 7, 4 elements
    0x0A, S5_SLP_TYP, 0x00, 0x00, 0x00, // BytePrefix 5, Zero, Zero, Zero
];

/// Errors from building the ACPI tables.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// Zero or too many vCPUs.
    #[error("Unsupported vCPU count {0}; use 1 to {max} vCPUs", max = MAX_CPUS)]
    CpuCount(u8),
    /// The tables do not fit below `ACPI_END`.
    #[error("ACPI tables do not fit in the reserved area")]
    TooLarge,
    /// Invalid MCFG bus range.
    #[error("Invalid MCFG bus range {0}..={1}")]
    BusRange(u8, u8),
    /// Guest memory write failed.
    #[error("Cannot write ACPI tables to guest memory")]
    Write,
}

/// One PCI Express ECAM window for the MCFG table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mcfg {
    /// Physical base of the ECAM window (bus 0 even if `start_bus` > 0).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

/// A standard 36-byte header followed by `body`, with its checksum set.
fn sdt(signature: &[u8; 4], revision: u8, table_id: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let len = (HEADER_LEN + body.len()) as u32;
    let mut t = Vec::with_capacity(len as usize);
    t.extend_from_slice(signature);
    t.extend_from_slice(&len.to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(table_id);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"VLAB"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// Writes `v` little-endian at `off`.
fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    buf[off..off + v.len()].copy_from_slice(v);
}

/// A Generic Address Structure for an I/O port block.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = bit_width;
    g[3] = access_size;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn dsdt(extra_aml: &[u8]) -> Vec<u8> {
    let mut body = AML_S5.to_vec();
    body.extend_from_slice(extra_aml);
    // Revision 2: 64-bit AML integers.
    sdt(b"DSDT", 2, b"VLABDSDT", &body)
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; FACS_LEN];
    put(&mut f, 0, b"FACS");
    put(&mut f, 4, &(FACS_LEN as u32).to_le_bytes());
    f[32] = 2; // version
    f
}

fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - HEADER_LEN];
    // Offsets below are absolute FADT offsets; `o` converts to body offsets.
    let o = |abs: usize| abs - HEADER_LEN;
    // FIRMWARE_CTRL (36) and DSDT (40) stay 0: the X_ fields are used.
    put(&mut b, o(46), &u16::from(SCI_IRQ).to_le_bytes());
    put(&mut b, o(56), &u32::from(PM1A_EVT_BLK).to_le_bytes());
    put(&mut b, o(64), &u32::from(PM1A_CNT_BLK).to_le_bytes());
    b[o(88)] = PM1A_EVT_LEN;
    b[o(89)] = PM1A_CNT_LEN;
    // P_LVL2_LAT / P_LVL3_LAT > 100 / 1000: C2/C3 not supported.
    put(&mut b, o(96), &101u16.to_le_bytes());
    put(&mut b, o(98), &1001u16.to_le_bytes());
    let iapc = IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_PCIE_ASPM_CONTROLS;
    put(&mut b, o(109), &iapc.to_le_bytes());
    let flags = FADT_WBINVD
        | FADT_PROC_C1
        | FADT_PWR_BUTTON
        | FADT_SLP_BUTTON
        | FADT_FIX_RTC
        | FADT_RESET_REG_SUP;
    put(&mut b, o(112), &flags.to_le_bytes());
    put(&mut b, o(116), &gas_io(RESET_PORT, 8, 1));
    b[o(128)] = RESET_VALUE;
    b[o(131)] = 0; // FADT minor version (ACPI 6.0)
    put(&mut b, o(132), &facs_addr.to_le_bytes());
    put(&mut b, o(140), &dsdt_addr.to_le_bytes());
    put(&mut b, o(148), &gas_io(PM1A_EVT_BLK, PM1A_EVT_LEN * 8, 0));
    put(&mut b, o(172), &gas_io(PM1A_CNT_BLK, PM1A_CNT_LEN * 8, 0));
    put(&mut b, o(268), b"VLABVLAB"); // hypervisor vendor identity
    sdt(b"FACP", 6, b"VLABFACP", &b)
}

fn madt(num_cpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..num_cpus {
        b.extend_from_slice(&[MADT_LAPIC, 8, cpu, cpu]);
        b.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    }
    b.extend_from_slice(&[MADT_IOAPIC, 12, num_cpus, 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                              // IRQ0 → GSI2, flags "conforms to bus" (ISA: edge, active high).
    b.extend_from_slice(&[MADT_ISO, 10, 0, 0]);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    // SCI: IRQ9 → GSI9, level, active high.
    b.extend_from_slice(&[MADT_ISO, 10, 0, SCI_IRQ]);
    b.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    b.extend_from_slice(&ISO_LEVEL_HIGH.to_le_bytes());
    // NMI on LINT1 of every processor (UID 0xFF).
    b.extend_from_slice(&[MADT_LAPIC_NMI, 6, 0xFF, 0, 0, 1]);
    // Revision 5 (ACPI 6.3+); all CPUs are enabled so the online-capable bit is moot.
    sdt(b"APIC", 5, b"VLABAPIC", &b)
}

fn mcfg(m: &Mcfg) -> Result<Vec<u8>, AcpiError> {
    if m.start_bus > m.end_bus {
        return Err(AcpiError::BusRange(m.start_bus, m.end_bus));
    }
    let mut b = vec![0u8; 8]; // reserved
    b.extend_from_slice(&m.base.to_le_bytes());
    b.extend_from_slice(&m.segment.to_le_bytes());
    b.push(m.start_bus);
    b.push(m.end_bus);
    b.extend_from_slice(&[0; 4]);
    Ok(sdt(b"MCFG", 1, b"VLABMCFG", &b))
}

fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    sdt(b"XSDT", 1, b"VLABXSDT", &body)
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Sequential placement of tables in the ACPI area.
struct Writer<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl Writer<'_> {
    fn place(&mut self, table: &[u8], align: u64) -> Result<u64, AcpiError> {
        let addr = self
            .next
            .checked_next_multiple_of(align)
            .ok_or(AcpiError::TooLarge)?;
        let end = addr
            .checked_add(table.len() as u64)
            .ok_or(AcpiError::TooLarge)?;
        if end > ACPI_END.0 {
            return Err(AcpiError::TooLarge);
        }
        self.mem
            .write_slice(table, GuestAddress(addr))
            .map_err(|_| AcpiError::Write)?;
        self.next = end;
        Ok(addr)
    }
}

/// Writes all ACPI tables for `num_cpus` vCPUs and returns the RSDP address.
///
/// `mcfg_window` adds an MCFG table for a PCI Express ECAM window (its
/// region must also be e820-reserved; `layout::e820_map` reserves
/// `PCI_ECAM_START`).
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    mcfg_window: Option<Mcfg>,
) -> Result<GuestAddress, AcpiError> {
    setup_acpi_with_dsdt(mem, num_cpus, mcfg_window, &[])
}

/// [`setup_acpi`] with extra AML appended to the DSDT:
/// `dsdt_aml` is appended to the DSDT's definition block (device objects);
/// pass `&[]` for none. The DSDT always contains `\_S5`.
pub fn setup_acpi_with_dsdt(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    mcfg_window: Option<Mcfg>,
    dsdt_aml: &[u8],
) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(num_cpus));
    }
    let mut w = Writer {
        mem,
        next: RSDP_START.0 + RSDP_LEN as u64,
    };
    let dsdt_addr = w.place(&dsdt(dsdt_aml), 16)?;
    let facs_addr = w.place(&facs(), 64)?;
    let fadt_addr = w.place(&fadt(dsdt_addr, facs_addr), 16)?;
    let madt_addr = w.place(&madt(num_cpus), 16)?;
    let mut tables = vec![fadt_addr, madt_addr];
    if let Some(m) = mcfg_window {
        tables.push(w.place(&mcfg(&m)?, 16)?);
    }
    let xsdt_addr = w.place(&xsdt(&tables), 16)?;
    debug_assert_eq!(RSDP_START, ACPI_START);
    mem.write_slice(&rsdp(xsdt_addr), RSDP_START)
        .map_err(|_| AcpiError::Write)?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::super::mptable::byte_sum;
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Reads a table with a standard header, checking its checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len = u32_at(&read(mem, addr, HEADER_LEN), 4) as usize;
        let t = read(mem, addr, len);
        assert_eq!(
            byte_sum(&t),
            0,
            "checksum of {}",
            String::from_utf8_lossy(&t[..4])
        );
        assert_eq!(&t[10..16], &OEM_ID);
        t
    }

    /// Follows RSDP → XSDT and returns the referenced tables.
    fn walk(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Vec<Vec<u8>> {
        let r = read(mem, rsdp_addr.0, RSDP_LEN);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(byte_sum(&r[..20]), 0);
        assert_eq!(byte_sum(&r), 0);
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(&r, 20), RSDP_LEN as u32);
        let x = table(mem, u64_at(&r, 24));
        assert_eq!(&x[..4], b"XSDT");
        (HEADER_LEN..x.len())
            .step_by(8)
            .map(|off| table(mem, u64_at(&x, off)))
            .collect()
    }

    fn find<'a>(tables: &'a [Vec<u8>], sig: &[u8; 4]) -> &'a Vec<u8> {
        tables.iter().find(|t| &t[..4] == sig).unwrap()
    }

    #[test]
    fn tables_resolve_and_checksum() {
        let m = mem();
        let rsdp_addr = setup_acpi(&m, 2, None).unwrap();
        assert_eq!(rsdp_addr, RSDP_START);
        let tables = walk(&m, rsdp_addr);
        assert_eq!(tables.len(), 2);
        let fadt = find(&tables, b"FACP");
        assert_eq!(fadt.len(), FADT_LEN);
        assert_eq!(fadt[8], 6);
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 0, "not HW-reduced");
        assert_eq!(u32_at(fadt, 40), 0);
        let dsdt = table(&m, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(&dsdt[HEADER_LEN..], &AML_S5);
        let facs_addr = u64_at(fadt, 132);
        assert_eq!(facs_addr % 64, 0);
        let facs = read(&m, facs_addr, FACS_LEN);
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(&facs, 4), 64);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(u32_at(fadt, 56), 0x600);
        assert_eq!(u64_at(fadt, 152), 0x600);
        assert_eq!(u64_at(fadt, 176), 0x604);
        assert_eq!(u64_at(fadt, 120), 0x64);
        assert_eq!(fadt[128], 0xFE);
    }

    fn madt_entries(madt: &[u8]) -> Vec<&[u8]> {
        let mut off = HEADER_LEN + 8;
        let mut v = Vec::new();
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2);
            v.push(&madt[off..off + len]);
            off += len;
        }
        assert_eq!(off, madt.len());
        v
    }

    #[test]
    fn madt_lists_every_cpu() {
        for n in [1u8, 3, 8, MAX_CPUS] {
            let m = mem();
            let tables = walk(&m, setup_acpi(&m, n, None).unwrap());
            let madt = find(&tables, b"APIC");
            assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
            assert_eq!(u32_at(madt, 40), 1);
            let entries = madt_entries(madt);
            let lapics: Vec<_> = entries.iter().filter(|e| e[0] == MADT_LAPIC).collect();
            assert_eq!(lapics.len(), n as usize);
            for (i, e) in lapics.iter().enumerate() {
                assert_eq!((e[2], e[3]), (i as u8, i as u8));
                assert_eq!(u32_at(e, 4), 1);
            }
            let ioapic: Vec<_> = entries.iter().filter(|e| e[0] == MADT_IOAPIC).collect();
            assert_eq!(ioapic.len(), 1);
            assert_eq!(ioapic[0][2], n);
            assert_eq!(u32_at(ioapic[0], 4), IOAPIC_ADDR);
            assert_eq!(u32_at(ioapic[0], 8), 0);
            let isos: Vec<_> = entries
                .iter()
                .filter(|e| e[0] == MADT_ISO)
                .map(|e| (e[3], u32_at(e, 4), u16::from_le_bytes([e[8], e[9]])))
                .collect();
            assert_eq!(isos, vec![(0, 2, 0), (9, 9, 0xD)]);
            assert!(entries
                .iter()
                .any(|e| e == &[MADT_LAPIC_NMI, 6, 0xFF, 0, 0, 1]));
        }
    }

    #[test]
    fn mcfg_and_dsdt_extension() {
        let m = mem();
        let window = Mcfg {
            base: 0xE000_0000,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
        };
        let aml = [0x10, 0x05, b'_', b'S', b'B', b'_']; // Scope(\_SB) {}
        let tables = walk(&m, setup_acpi_with_dsdt(&m, 1, Some(window), &aml).unwrap());
        assert_eq!(tables.len(), 3);
        let mcfg = find(&tables, b"MCFG");
        assert_eq!(mcfg.len(), 60);
        assert_eq!(u64_at(mcfg, 44), 0xE000_0000);
        assert_eq!(&mcfg[52..54], &[0, 0]);
        assert_eq!((mcfg[54], mcfg[55]), (0, 255));
        let dsdt = table(&m, u64_at(find(&tables, b"FACP"), 140));
        assert!(dsdt.ends_with(&aml));
    }

    #[test]
    fn errors() {
        let m = mem();
        assert_eq!(setup_acpi(&m, 0, None), Err(AcpiError::CpuCount(0)));
        assert_eq!(setup_acpi(&m, 33, None), Err(AcpiError::CpuCount(33)));
        let bad = Mcfg {
            base: 0,
            segment: 0,
            start_bus: 5,
            end_bus: 4,
        };
        assert_eq!(setup_acpi(&m, 1, Some(bad)), Err(AcpiError::BusRange(5, 4)));
        assert_eq!(
            setup_acpi_with_dsdt(&m, 1, None, &vec![0; 0x10000]),
            Err(AcpiError::TooLarge)
        );
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(setup_acpi(&small, 1, None), Err(AcpiError::Write));
    }
}
