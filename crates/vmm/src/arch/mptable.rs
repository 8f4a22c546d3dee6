//! Intel MultiProcessor Specification 1.4 tables.
//!
//! Written at [`MPTABLE_START`] (0xF0000, inside the BIOS area Linux scans):
//! the 16-byte floating pointer "_MP_" followed directly by the "PCMP"
//! configuration table with, in order: one processor entry per vCPU (APIC id
//! = vCPU index, BSP flag on vCPU 0), one ISA bus entry, one IOAPIC entry
//! (id = number of vCPUs, at [`IOAPIC_ADDR`]), I/O interrupt entries for ISA
//! IRQs 0..=15 (IRQ0 → IOAPIC pin 2, IRQ2 (the 8259 cascade) omitted, every
//! other IRQ n → pin n), and local interrupt entries (ExtINT on LINT0, NMI on
//! LINT1, all local APICs).
//!
//! Linux only uses this table when ACPI is absent or disabled (`acpi=off`);
//! the MADT in `acpi.rs` describes the same machine.

use thiserror::Error;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_END, MPTABLE_START};

/// Largest number of vCPUs vlab supports.
pub const MAX_CPUS: u8 = 32;

const MPF_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Local APIC version reported for each processor (integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature; only informative.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX FPU | APIC.
const CPU_FEATURES: u32 = 0x201;

/// Errors from writing the MP table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MptableError {
    /// Zero or too many vCPUs.
    #[error("Unsupported vCPU count {0}; use 1 to {max} vCPUs", max = MAX_CPUS)]
    CpuCount(u8),
    /// The table does not fit in the reserved area.
    #[error("MP table is too large ({0} bytes)")]
    TooLarge(usize),
    /// Guest memory write failed.
    #[error("Cannot write the MP table to guest memory")]
    Write,
}

/// ISA IRQ → IOAPIC input pin mapping used by both the MP table and the MADT
/// (IRQ0 → pin 2; IRQ2 is the cascade and has no pin).
pub fn isa_irq_to_pin(irq: u8) -> Option<u8> {
    match irq {
        0 => Some(2),
        2 => None,
        1..=15 => Some(irq),
        _ => None,
    }
}

/// Sum of bytes modulo 256.
pub(crate) fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// The byte that makes `bytes` (with a zero checksum field) sum to zero.
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(byte_sum(bytes))
}

/// Builds the floating pointer plus configuration table as one byte image,
/// to be placed at guest address `base`.
fn build(num_cpus: u8, base: u32) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let table_addr = base + MPF_SIZE as u32;
    let ioapic_id = num_cpus;

    // Floating pointer structure.
    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.push(1); // length in 16-byte paragraphs
    mpf.push(4); // spec revision 1.4
    mpf.push(0); // checksum
    mpf.extend_from_slice(&[0; 5]); // feature bytes: config table present, no IMCR
    mpf[10] = checksum(&mpf);

    // Configuration table entries.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu); // local APIC id
        entries.push(LAPIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..16u8 {
        if let Some(pin) = isa_irq_to_pin(irq) {
            // flags 0: polarity and trigger conform to the (ISA) bus.
            entries.extend_from_slice(&[
                ENTRY_IO_INTERRUPT,
                INT_TYPE_INT,
                0,
                0,
                0,
                irq,
                ioapic_id,
                pin,
            ]);
            count += 1;
        }
    }
    // Local interrupts to all local APICs (0xFF): ExtINT on LINT0, NMI on LINT1.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xFF, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xFF, 1]);
    count += 2;

    let len = HEADER_SIZE + entries.len();
    let len16 = u16::try_from(len).map_err(|_| MptableError::TooLarge(len))?;
    let mut table = Vec::with_capacity(len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&len16.to_le_bytes());
    table.push(4); // spec revision
    table.push(0); // checksum
    table.extend_from_slice(b"VLAB    "); // OEM id (8)
    table.extend_from_slice(b"VLAB VMM    "); // product id (12)
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let image = build(num_cpus, MPTABLE_START.0 as u32)?;
    let room = (MPTABLE_END.0 - MPTABLE_START.0) as usize;
    if image.len() > room {
        return Err(MptableError::TooLarge(image.len()));
    }
    mem.write_slice(&image, MPTABLE_START)
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    const CPU_ENTRY_SIZE: usize = 20;
    const SMALL_ENTRY_SIZE: usize = 8;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Returns (floating pointer, config table) read back from guest memory.
    fn read_back(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<u8>) {
        let mpf = read(mem, MPTABLE_START.0, MPF_SIZE);
        let addr = u32::from_le_bytes(mpf[4..8].try_into().unwrap()) as u64;
        let hdr = read(mem, addr, HEADER_SIZE);
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        (mpf, read(mem, addr, len))
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 4, 7, MAX_CPUS] {
            let m = mem();
            setup_mptable(&m, n).unwrap();
            let (mpf, table) = read_back(&m);
            assert_eq!(&mpf[0..4], b"_MP_");
            assert_eq!(mpf[8], 1);
            assert_eq!(mpf[9], 4);
            assert_eq!(byte_sum(&mpf), 0);
            assert_eq!(&table[0..4], b"PCMP");
            assert_eq!(byte_sum(&table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            // n CPUs + bus + IOAPIC + 15 ISA IRQs + 2 local interrupts
            assert_eq!(count, n as usize + 1 + 1 + 15 + 2);
            assert_eq!(
                table.len(),
                HEADER_SIZE + n as usize * 20 + (count - n as usize) * 8
            );
            assert_eq!(
                u32::from_le_bytes(table[36..40].try_into().unwrap()),
                LAPIC_ADDR
            );
        }
    }

    #[test]
    fn entries() {
        let m = mem();
        setup_mptable(&m, 4).unwrap();
        let (_, table) = read_back(&m);
        let mut off = HEADER_SIZE;
        let mut cpus = Vec::new();
        let mut irqs = Vec::new();
        let mut locals = Vec::new();
        let mut ioapic = None;
        while off < table.len() {
            let e = &table[off..];
            match e[0] {
                ENTRY_PROCESSOR => {
                    cpus.push((e[1], e[3]));
                    off += CPU_ENTRY_SIZE;
                    continue;
                }
                ENTRY_BUS => assert_eq!(&e[2..8], b"ISA   "),
                ENTRY_IOAPIC => {
                    ioapic = Some((e[1], u32::from_le_bytes(e[4..8].try_into().unwrap())))
                }
                ENTRY_IO_INTERRUPT => irqs.push((e[1], e[5], e[6], e[7])),
                ENTRY_LOCAL_INTERRUPT => locals.push((e[1], e[6], e[7])),
                t => panic!("unknown entry type {t}"),
            }
            off += SMALL_ENTRY_SIZE;
        }
        assert_eq!(off, table.len());
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(ioapic, Some((4, IOAPIC_ADDR)));
        assert_eq!(irqs.len(), 15);
        assert!(irqs.contains(&(INT_TYPE_INT, 0, 4, 2)));
        assert!(irqs.contains(&(INT_TYPE_INT, 4, 4, 4)));
        assert!(!irqs.iter().any(|i| i.1 == 2));
        assert_eq!(
            locals,
            vec![(INT_TYPE_EXTINT, 0xFF, 0), (INT_TYPE_NMI, 0xFF, 1)]
        );
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let m = mem();
        assert_eq!(setup_mptable(&m, 0), Err(MptableError::CpuCount(0)));
        assert_eq!(
            setup_mptable(&m, MAX_CPUS + 1),
            Err(MptableError::CpuCount(MAX_CPUS + 1))
        );
    }

    #[test]
    fn write_failure_is_an_error() {
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(setup_mptable(&small, 1), Err(MptableError::Write));
    }

    #[test]
    fn irq_pins() {
        assert_eq!(isa_irq_to_pin(0), Some(2));
        assert_eq!(isa_irq_to_pin(2), None);
        assert_eq!(isa_irq_to_pin(9), Some(9));
        assert_eq!(isa_irq_to_pin(16), None);
    }
}
