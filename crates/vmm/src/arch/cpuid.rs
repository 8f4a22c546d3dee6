//! The guest CPUID model.
//!
//! [`build_cpuid`] starts from `KVM_GET_SUPPORTED_CPUID` (what this host and
//! KVM can virtualise) and only ever *clears* hardware feature bits or
//! rewrites topology/identification fields, so the guest is never promised
//! a hardware feature the host lacks. The only bits it sets are
//! architectural facts about the VM (hypervisor bit, HTT for SMP, topology).
//!
//! | Leaf                     | Change                                                               | Why |
//! |--------------------------|-----------------------------------------------------------------------|-----|
//! | 0x1 EBX                  | [31:24] initial APIC id = vCPU index; [23:16] addressable logical ids = 2^⌈log2 n⌉; [15:8] CLFLUSH = 8 (64 B) if the host says 0 | Matches MADT/MP APIC ids |
//! | 0x1 ECX                  | set HYPERVISOR (31); clear DTES64, MONITOR, DS-CPL, VMX, SMX, EST, TM2, xTPR, PDCM; keep TSC-deadline and x2APIC as KVM reports them | No nested virt, no power/perf/debug-store MSRs; kernel detects a VM |
//! | 0x1 EDX                  | HTT (28) = (n > 1); clear DS, ACPI, TM, PBE                           | SMP topology; no thermal/debug-store |
//! | 0x4 (Intel)              | EAX[31:26] = cores - 1; EAX[25:14] = 0 for L1/L2, cores - 1 for L3   | One thread per core, all cores share L3 |
//! | 0x5                      | removed (zeros)                                                       | No MONITOR/MWAIT |
//! | 0x6                      | zeroed except ARAT (EAX bit 2) if supported                          | No thermal/power interfaces; the KVM LAPIC timer always runs |
//! | 0x7.0 EBX                | clear SGX, HLE, RTM, PQM, MPX, PQE, Intel PT                         | Not virtualised / deprecated / migration-unsafe |
//! | 0x7.0 ECX                | clear WAITPKG, SGX_LC, PKS                                           | Needs extra MSR/VMCS support we do not configure |
//! | 0x7.0 EDX                | clear hybrid, PCONFIG, arch LBR, CORE_CAPABILITIES                   | Not virtualised by vlab; speculation-control bits are kept (KVM emulates them) |
//! | 0xA                      | zeroed (PMU version 0)                                                | No vPMU promised |
//! | 0xB, 0x1F                | rewritten: SMT level (1 thread), core level (n cores, shift ⌈log2 n⌉), x2APIC id = vCPU index | One package, n cores |
//! | 0xF, 0x10, 0x12, 0x14, 0x1B, 0x1C, 0x23 | removed                                             | RDT, SGX, PT, PCONFIG, arch LBR, arch PerfMon |
//! | 0x4000_0000              | "KVMKVMKVM\0\0\0", max leaf 0x4000_0001                               | KVM paravirt signature |
//! | 0x4000_0001              | EAX = CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, CLOCKSOURCE_STABLE (masked by what KVM reports); EDX = 0 | kvm-clock only: in-kernel KVM implements those MSRs, nothing else is wired up |
//! | 0x8000_0001 ECX          | clear SVM, IBS, SKINIT, WDT, TOPOEXT, PerfCtr* (AMD)                 | No nested virt, no AMD PMU; topology via 0x8000_0008 |
//! | 0x8000_0007              | keep only EDX bit 8 (invariant TSC)                                  | No power management |
//! | 0x8000_0008              | EAX (address sizes) kept; ECX (AMD) NC = n - 1, ApicIdSize = ⌈log2 n⌉ | Physical address bits must match the host |
//! | 0x8000_000A, 0x8000_001D/1E/1F/20/22/26 | removed                                     | SVM, topology ext, SEV, PQoS, PerfMonV2 |
//!
//! TSC-deadline: kernels before 6.11 (roughly) do not report it in
//! `KVM_GET_SUPPORTED_CPUID` even though they emulate it; callers that see
//! `KVM_CAP_TSC_DEADLINE_TIMER` should call [`set_tsc_deadline`].

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use thiserror::Error;

/// Largest vCPU count the model can describe (8-bit xAPIC ids).
pub const MAX_CPUID_CPUS: u32 = 255;

/// KVM paravirtual features (CPUID 0x4000_0001 EAX).
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
/// Port 0x80 delays are unnecessary.
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
/// New kvm-clock MSRs (0x4b564d00/01).
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// kvm-clock's PVCLOCK_TSC_STABLE_BIT may be trusted.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
/// The paravirtual features vlab advertises.
pub const VLAB_KVM_FEATURES: u32 = KVM_FEATURE_CLOCKSOURCE
    | KVM_FEATURE_NOP_IO_DELAY
    | KVM_FEATURE_CLOCKSOURCE2
    | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

const LEAF1_ECX_CLEAR: u32 = (1 << 2) // DTES64
    | (1 << 3) // MONITOR
    | (1 << 4) // DS-CPL
    | (1 << 5) // VMX
    | (1 << 6) // SMX
    | (1 << 7) // EST
    | (1 << 8) // TM2
    | (1 << 14) // xTPR
    | (1 << 15); // PDCM
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_CLEAR: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31); // DS, ACPI, TM, PBE
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF6_EAX_ARAT: u32 = 1 << 2;
const LEAF7_EBX_CLEAR: u32 = (1 << 2) // SGX
    | (1 << 4) // HLE
    | (1 << 11) // RTM
    | (1 << 12) // PQM
    | (1 << 14) // MPX
    | (1 << 15) // PQE
    | (1 << 25); // Intel PT
const LEAF7_ECX_CLEAR: u32 = (1 << 5) | (1 << 30) | (1 << 31); // WAITPKG, SGX_LC, PKS
const LEAF7_EDX_CLEAR: u32 = (1 << 15) | (1 << 18) | (1 << 19) | (1 << 30); // hybrid, PCONFIG, arch LBR, CORE_CAP
const EXT1_ECX_CLEAR: u32 = (1 << 2) // SVM
    | (1 << 10) // IBS
    | (1 << 12) // SKINIT
    | (1 << 13) // WDT
    | (1 << 22) // TOPOEXT
    | (1 << 23) // PerfCtrExtCore
    | (1 << 24) // PerfCtrExtNB
    | (1 << 28); // PerfCtrExtLLC
const EXT7_EDX_INVTSC: u32 = 1 << 8;

/// Leaves removed entirely (reads return zeros).
const REMOVED_LEAVES: &[u32] = &[
    0x5,
    0xF,
    0x10,
    0x12,
    0x14,
    0x1B,
    0x1C,
    0x23,
    0x8000_000A,
    0x8000_001D,
    0x8000_001E,
    0x8000_001F,
    0x8000_0020,
    0x8000_0022,
    0x8000_0026,
];

/// Errors from building the CPUID table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuidError {
    /// Zero or too many vCPUs.
    #[error("Unsupported vCPU count {0}; use 1 to {max} vCPUs", max = MAX_CPUID_CPUS)]
    CpuCount(u32),
    /// The vCPU index is not below the vCPU count.
    #[error("vCPU index {0} is out of range for {1} vCPUs")]
    CpuIndex(u32, u32),
    /// KVM supplied no leaf 0.
    #[error("Supported CPUID has no leaf 0")]
    NoLeaf0,
    /// Too many entries for a `kvm_cpuid2`.
    #[error("Too many CPUID entries ({0})")]
    TooManyEntries(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

fn vendor(leaf0: &kvm_cpuid_entry2) -> Vendor {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Number of APIC-id bits needed for `n` cores: ⌈log2 n⌉.
fn core_shift(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn topology_leaf(function: u32, cpu_index: u32, num_cpus: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: cpu_index,
        ..Default::default()
    };
    [
        // SMT level: 1 thread per core, next level starts at bit 0.
        entry(0, 0, 1, 1 << 8),
        // Core level: num_cpus cores per package.
        entry(1, core_shift(num_cpus), num_cpus, (2 << 8) | 1),
        // Terminator (level type 0).
        entry(2, 0, 0, 2),
    ]
}

/// Builds the CPUID table of vCPU `cpu_index` out of `num_cpus`, from the
/// host's `KVM_GET_SUPPORTED_CPUID`. See the module table for every change.
pub fn build_cpuid(supported: &CpuId, cpu_index: u32, num_cpus: u32) -> Result<CpuId, CpuidError> {
    if num_cpus == 0 || num_cpus > MAX_CPUID_CPUS {
        return Err(CpuidError::CpuCount(num_cpus));
    }
    if cpu_index >= num_cpus {
        return Err(CpuidError::CpuIndex(cpu_index, num_cpus));
    }
    let src = supported.as_slice();
    let leaf0 = src
        .iter()
        .find(|e| e.function == 0)
        .ok_or(CpuidError::NoLeaf0)?;
    let vendor = vendor(leaf0);
    let shift = core_shift(num_cpus);
    let addressable = 1u32 << shift;

    let host_kvm_features = src
        .iter()
        .find(|e| e.function == KVM_FEATURES_LEAF)
        .map(|e| e.eax);
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(src.len() + 6);
    let mut has_0b = false;
    let mut has_1f = false;

    for e in src {
        let mut e = *e;
        match e.function {
            f if REMOVED_LEAVES.contains(&f) => continue,
            f if (0x4000_0000..0x5000_0000).contains(&f) => continue,
            0xB => {
                has_0b = true;
                continue;
            }
            0x1F => {
                has_1f = true;
                continue;
            }
            0x1 => {
                let clflush = match (e.ebx >> 8) & 0xFF {
                    0 => 8,
                    c => c,
                };
                e.ebx = (cpu_index << 24)
                    | (addressable.min(255) << 16)
                    | (clflush << 8)
                    | (e.ebx & 0xFF);
                e.ecx = (e.ecx & !LEAF1_ECX_CLEAR) | LEAF1_ECX_HYPERVISOR;
                e.edx &= !LEAF1_EDX_CLEAR;
                if num_cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Deterministic cache parameters (cache type != 0 means a real level).
            0x4 if vendor == Vendor::Intel && e.eax & 0x1F != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    (addressable - 1).min(0xFFF)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3FFF) | (sharing << 14) | ((addressable - 1).min(0x3F) << 26);
            }
            0x6 => {
                e.eax &= LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x7 if e.index == 0 => {
                e.ebx &= !LEAF7_EBX_CLEAR;
                e.ecx &= !LEAF7_ECX_CLEAR;
                e.edx &= !LEAF7_EDX_CLEAR;
            }
            0xA => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => e.ecx &= !EXT1_ECX_CLEAR,
            0x8000_0007 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx &= EXT7_EDX_INVTSC;
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                // NC = cores - 1, ApicIdCoreIdSize = shift; keep the rest zero.
                e.ecx = ((shift & 0xF) << 12) | ((num_cpus - 1) & 0xFF);
            }
            _ => {}
        }
        out.push(e);
    }

    if has_0b {
        out.extend(topology_leaf(0xB, cpu_index, num_cpus));
    }
    if has_1f {
        out.extend(topology_leaf(0x1F, cpu_index, num_cpus));
    }
    let kvm_features = host_kvm_features.map_or(VLAB_KVM_FEATURES, |f| f & VLAB_KVM_FEATURES);
    let sig = *b"KVMKVMKVM\0\0\0";
    let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    out.push(kvm_cpuid_entry2 {
        function: KVM_SIGNATURE_LEAF,
        eax: KVM_FEATURES_LEAF,
        ebx: word(0),
        ecx: word(4),
        edx: word(8),
        ..Default::default()
    });
    out.push(kvm_cpuid_entry2 {
        function: KVM_FEATURES_LEAF,
        eax: kvm_features,
        ..Default::default()
    });

    CpuId::from_entries(&out).map_err(|_| CpuidError::TooManyEntries(out.len()))
}

/// Sets or clears the TSC-deadline bit (leaf 1 ECX bit 24). Use it when
/// `KVM_CAP_TSC_DEADLINE_TIMER` is present but the host's supported CPUID
/// omits the bit (older kernels).
pub fn set_tsc_deadline(cpuid: &mut CpuId, on: bool) {
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        if on {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        } else {
            e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn vendor_regs(v: &[u8; 12]) -> (u32, u32, u32) {
        let w = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        (w(0), w(8), w(4)) // ebx, ecx, edx
    }

    fn synthetic(vendor: &[u8; 12]) -> CpuId {
        let (b, c, d) = vendor_regs(vendor);
        CpuId::from_entries(&[
            entry(0, 0, 0x1F, b, c, d),
            // family 6; CLFLUSH 8; VMX|MONITOR|x2APIC|TSC-deadline|PCID; FPU|HTT|DS|TM
            entry(
                1,
                0,
                0x000906EA,
                0x0010_0800,
                (1 << 5) | (1 << 3) | (1 << 21) | (1 << 24) | (1 << 17),
                1 | (1 << 28) | (1 << 21) | (1 << 29),
            ),
            entry(4, 0, 0x1C00_4121, 0, 0, 0), // L1d
            entry(4, 1, 0x1C00_4122, 0, 0, 0), // L1i
            entry(4, 2, 0x1C00_4143, 0, 0, 0), // L2
            entry(4, 3, 0x1C03_C163, 0, 0, 0), // L3
            entry(4, 4, 0, 0, 0, 0),           // end
            entry(5, 0, 64, 64, 3, 0),
            entry(6, 0, 0x77, 2, 9, 0),
            entry(
                7,
                0,
                0,
                (1 << 2) | (1 << 11) | (1 << 5) | (1 << 25),
                (1 << 5) | (1 << 2),
                (1 << 29) | (1 << 26) | (1 << 15),
            ),
            entry(0xA, 0, 0x0730_0805, 0, 0, 0x603),
            entry(0xB, 0, 1, 2, 0x100, 7),
            entry(0xB, 1, 4, 16, 0x201, 7),
            entry(0x12, 0, 1, 0, 0, 0),
            entry(0x1F, 0, 1, 2, 0x100, 7),
            entry(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
            entry(0x4000_0001, 0, 0x0100_7AFB, 0, 0, 0),
            entry(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
            entry(
                0x8000_0001,
                0,
                0,
                0,
                (1 << 2) | (1 << 22) | 1,
                (1 << 29) | (1 << 20),
            ),
            entry(0x8000_0007, 0, 0, 0, 0, 0x100 | 0x7),
            entry(0x8000_0008, 0, 0x3030, 0x1000, 0x4007, 0),
            entry(0x8000_000A, 0, 1, 0, 0, 0),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    #[test]
    fn leaf1_per_vcpu() {
        let s = synthetic(b"GenuineIntel");
        let c = build_cpuid(&s, 3, 6).unwrap();
        let l1 = get(&c, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xFF, 8);
        assert_eq!((l1.ebx >> 8) & 0xFF, 8);
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor");
        assert_ne!(l1.ecx & (1 << 24), 0, "tsc deadline kept");
        assert_ne!(l1.ecx & (1 << 21), 0, "x2apic kept");
        assert_ne!(l1.ecx & (1 << 17), 0, "pcid kept");
        assert_eq!(l1.ecx & ((1 << 5) | (1 << 3)), 0, "vmx/monitor cleared");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.edx & ((1 << 21) | (1 << 29)), 0);
        assert_eq!(l1.eax, 0x000906EA);

        let c1 = build_cpuid(&s, 0, 1).unwrap();
        let l1 = get(&c1, 1, 0).unwrap();
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!((l1.ebx >> 16) & 0xFF, 1);
    }

    #[test]
    fn never_adds_unsupported_hardware_features() {
        let s = synthetic(b"GenuineIntel");
        let c = build_cpuid(&s, 0, 4).unwrap();
        for e in c.as_slice() {
            if e.function == 0x7 {
                let h = get(&s, 7, 0).unwrap();
                assert_eq!(e.ebx & !h.ebx, 0);
                assert_eq!(e.ecx & !h.ecx, 0);
                assert_eq!(e.edx & !h.edx, 0);
                assert_eq!(e.ebx & LEAF7_EBX_CLEAR, 0);
                assert_ne!(e.edx & (1 << 26), 0, "IBRS kept");
                assert_eq!(e.edx & (1 << 15), 0, "hybrid cleared");
            }
        }
        // No TSC-deadline on the host → none in the guest.
        let mut s2 = synthetic(b"GenuineIntel");
        s2.as_mut_slice()[1].ecx &= !LEAF1_ECX_TSC_DEADLINE;
        let mut c2 = build_cpuid(&s2, 0, 1).unwrap();
        assert_eq!(get(&c2, 1, 0).unwrap().ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        set_tsc_deadline(&mut c2, true);
        assert_ne!(get(&c2, 1, 0).unwrap().ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn topology_leaves() {
        let s = synthetic(b"GenuineIntel");
        for (n, shift) in [(1u32, 0u32), (2, 1), (3, 2), (4, 2), (5, 3), (32, 5)] {
            for idx in [0, n - 1] {
                let c = build_cpuid(&s, idx, n).unwrap();
                for leaf in [0xB, 0x1F] {
                    let l0 = get(&c, leaf, 0).unwrap();
                    let l1 = get(&c, leaf, 1).unwrap();
                    let l2 = get(&c, leaf, 2).unwrap();
                    assert_eq!((l0.eax, l0.ebx, l0.ecx, l0.edx), (0, 1, 0x100, idx));
                    assert_eq!((l1.eax, l1.ebx, l1.ecx, l1.edx), (shift, n, 0x201, idx));
                    assert_eq!((l2.ebx, (l2.ecx >> 8) & 0xFF, l2.edx), (0, 0, idx));
                    assert_eq!(l0.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
                    assert_eq!(
                        c.as_slice().iter().filter(|e| e.function == leaf).count(),
                        3
                    );
                }
                let l4: Vec<_> = (0..4).map(|i| get(&c, 4, i).unwrap().eax).collect();
                let cores = (1 << shift) - 1;
                for (i, eax) in l4.iter().enumerate() {
                    assert_eq!(eax >> 26, cores);
                    assert_eq!((eax >> 14) & 0xFFF, if i == 3 { cores } else { 0 });
                    assert_eq!(eax & 0x3FFF, [0x4121, 0x4122, 0x4143, 0x0163][i] & 0x3FFF);
                }
                assert_eq!(get(&c, 4, 4).unwrap().eax, 0);
            }
        }
    }

    #[test]
    fn pmu_power_and_removed_leaves() {
        let c = build_cpuid(&synthetic(b"GenuineIntel"), 0, 2).unwrap();
        let a = get(&c, 0xA, 0).unwrap();
        assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
        let six = get(&c, 6, 0).unwrap();
        assert_eq!(
            (six.eax, six.ebx, six.ecx, six.edx),
            (LEAF6_EAX_ARAT, 0, 0, 0)
        );
        for f in [5, 0x12, 0x8000_000A] {
            assert!(get(&c, f, 0).is_none(), "{f:#x}");
        }
        let e1 = get(&c, 0x8000_0001, 0).unwrap();
        assert_eq!(e1.ecx, 1, "LAHF kept, SVM/TOPOEXT cleared");
        assert_eq!(e1.edx, (1 << 29) | (1 << 20));
        assert_eq!(get(&c, 0x8000_0007, 0).unwrap().edx, 0x100);
        let e8 = get(&c, 0x8000_0008, 0).unwrap();
        assert_eq!((e8.eax, e8.ecx), (0x3030, 0x4007), "Intel: untouched");
    }

    #[test]
    fn kvm_leaves() {
        let c = build_cpuid(&synthetic(b"GenuineIntel"), 0, 1).unwrap();
        let sig = get(&c, 0x4000_0000, 0).unwrap();
        assert_eq!(sig.eax, 0x4000_0001);
        let mut s = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"KVMKVMKVM\0\0\0");
        let f = get(&c, 0x4000_0001, 0).unwrap();
        assert_eq!(f.eax, VLAB_KVM_FEATURES);
        assert_eq!(f.edx, 0);
        assert_eq!(
            c.as_slice()
                .iter()
                .filter(|e| (e.function >> 28) == 4)
                .count(),
            2
        );

        // Host without CLOCKSOURCE2 → masked out.
        let mut s = synthetic(b"GenuineIntel");
        for e in s.as_mut_slice() {
            if e.function == 0x4000_0001 {
                e.eax = KVM_FEATURE_CLOCKSOURCE;
            }
        }
        let c = build_cpuid(&s, 0, 1).unwrap();
        assert_eq!(
            get(&c, 0x4000_0001, 0).unwrap().eax,
            KVM_FEATURE_CLOCKSOURCE
        );
    }

    #[test]
    fn amd_topology() {
        let c = build_cpuid(&synthetic(b"AuthenticAMD"), 1, 6).unwrap();
        let e8 = get(&c, 0x8000_0008, 0).unwrap();
        assert_eq!(e8.eax, 0x3030);
        assert_eq!(e8.ecx, (3 << 12) | 5);
        // Leaf 4 is left alone on AMD.
        assert_eq!(get(&c, 4, 0).unwrap().eax, 0x1C00_4121);
    }

    #[test]
    fn errors() {
        let s = synthetic(b"GenuineIntel");
        assert_eq!(build_cpuid(&s, 0, 0).unwrap_err(), CpuidError::CpuCount(0));
        assert_eq!(
            build_cpuid(&s, 0, 256).unwrap_err(),
            CpuidError::CpuCount(256)
        );
        assert_eq!(
            build_cpuid(&s, 4, 4).unwrap_err(),
            CpuidError::CpuIndex(4, 4)
        );
        let empty = CpuId::new(0).unwrap();
        assert_eq!(build_cpuid(&empty, 0, 1).unwrap_err(), CpuidError::NoLeaf0);
        let full = CpuId::from_entries(&vec![entry(0, 0, 0, 0, 0, 0); 256]).unwrap();
        assert!(matches!(
            build_cpuid(&full, 0, 1),
            Err(CpuidError::TooManyEntries(_))
        ));
    }
}
