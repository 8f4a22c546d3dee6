//! MSRs vlab sets on every vCPU at reset.
//!
//! | MSR | Index | Value | Why |
//! |-----|-------|-------|-----|
//! | IA32_SYSENTER_CS/ESP/EIP | 0x174–0x176 | 0 | Clean syscall state; the kernel programs them |
//! | STAR, LSTAR, CSTAR, SYSCALL_MASK | 0xC000_0081–84 | 0 | Same |
//! | KERNEL_GS_BASE | 0xC000_0102 | 0 | Same |
//! | IA32_MISC_ENABLE | 0x1A0 | FAST_STRING (bit 0) | `rep movs/stos` fast strings, as firmware leaves it |
//! | IA32_MTRR_DEF_TYPE | 0x2FF | 0x806: E=1, FE=0, default type WB | All RAM write-back |
//!
//! IA32_TSC is deliberately *not* written: KVM starts it at 0 and writing it
//! later would only add skew between vCPUs.
//!
//! MTRR_DEF_TYPE is 0x806 rather than 0xC06: with FE (fixed-range enable,
//! bit 10) set, the fixed-range MTRRs, which nobody initialises, would make
//! the first 1 MiB uncacheable. This is what Firecracker writes.
//!
//! # Refused MSRs
//!
//! A host may refuse an MSR (for example, MSR 0x10a IA32_ARCH_CAPABILITIES is
//! refused on some hosts). `KVM_SET_MSRS` stops at the first refused entry and
//! returns how many it set, so the caller must not treat a short count as
//! fatal. Either keep only indices from `KVM_GET_MSR_INDEX_LIST` with
//! [`retain_supported`] before one `KVM_SET_MSRS`, or set entries one by one
//! and log and skip those that return 0. None of the MSRs above is required
//! for Linux to boot.

use kvm_bindings::kvm_msr_entry;

/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1A0;
/// Fast-string enable bit of IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
/// MTRRs enabled (E), fixed ranges disabled, default memory type WB (6).
pub const MTRR_DEF_TYPE_VALUE: u64 = (1 << 11) | 6;
/// STAR.
pub const MSR_STAR: u32 = 0xC000_0081;
/// LSTAR.
pub const MSR_LSTAR: u32 = 0xC000_0082;
/// CSTAR.
pub const MSR_CSTAR: u32 = 0xC000_0083;
/// SYSCALL_MASK (FMASK).
pub const MSR_SYSCALL_MASK: u32 = 0xC000_0084;
/// KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// IA32_ARCH_CAPABILITIES (not set by vlab; named for the refusal note above).
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10A;

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSR values written at vCPU reset, in a fixed order.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_VALUE),
    ]
}

/// Keeps only the entries whose index appears in `supported`
/// (the result of `KVM_GET_MSR_INDEX_LIST`).
pub fn retain_supported(entries: Vec<kvm_msr_entry>, supported: &[u32]) -> Vec<kvm_msr_entry> {
    entries
        .into_iter()
        .filter(|e| supported.contains(&e.index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msr_values() {
        let m = boot_msrs();
        assert_eq!(m.len(), 10);
        let get = |i| m.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(0x10), None, "TSC untouched");
        assert_eq!(get(MSR_IA32_ARCH_CAPABILITIES), None);
        assert!(m.iter().all(|e| e.reserved == 0));
        let mut idx: Vec<_> = m.iter().map(|e| e.index).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), m.len());
    }

    #[test]
    fn filtering() {
        let kept = retain_supported(boot_msrs(), &[MSR_STAR, MSR_MTRR_DEF_TYPE, 0x10A]);
        let idx: Vec<_> = kept.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![MSR_STAR, MSR_MTRR_DEF_TYPE]);
        assert!(retain_supported(boot_msrs(), &[]).is_empty());
    }
}
