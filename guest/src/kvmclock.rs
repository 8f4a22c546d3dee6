//! kvm-clock (pvclock): nanoseconds since VM start, read without exits.
//!
//! Detection: CPUID 0x4000_0000 returns "KVMKVMKVM\0\0\0" in EBX/ECX/EDX
//! and CPUID 0x4000_0001 EAX bit 3 (KVM_FEATURE_CLOCKSOURCE2) is set.
//! Each CPU writes `paddr | 1` of its 32-byte aligned
//! `pvclock_vcpu_time_info` to MSR_KVM_SYSTEM_TIME_NEW (0x4b56_4d01); the
//! hypervisor then keeps it updated:
//! ```text
//!  0 u32 version   (odd while the host updates the record)
//!  4 u32 pad
//!  8 u64 tsc_timestamp
//! 16 u64 system_time (ns)
//! 24 u32 tsc_to_system_mul
//! 28 i8  tsc_shift
//! 29 u8  flags
//! ```
//! `now = system_time + (((tsc - tsc_timestamp) << shift) * mul) >> 32`
//! (right shift when `tsc_shift` is negative), retried until the version
//! is even and unchanged.

use crate::boot::MAX_CPUS;
use crate::cpu::current_index;
use crate::io::{cpuid, rdtsc, wrmsr};
use crate::sync::RacyCell;
use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{fence, AtomicBool, Ordering};

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

#[repr(C, align(32))]
struct PvclockVcpuTimeInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

static PVCLOCK: [RacyCell<PvclockVcpuTimeInfo>; MAX_CPUS] = [const {
    RacyCell::new(PvclockVcpuTimeInfo {
        version: 0,
        pad0: 0,
        tsc_timestamp: 0,
        system_time: 0,
        tsc_to_system_mul: 0,
        tsc_shift: 0,
        flags: 0,
        pad: [0; 2],
    })
}; MAX_CPUS];

static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Does the hypervisor offer kvm-clock (CLOCKSOURCE2)?
pub fn detect() -> bool {
    let sig = cpuid(0x4000_0000);
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&sig.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&sig.ecx.to_le_bytes());
    name[8..].copy_from_slice(&sig.edx.to_le_bytes());
    &name == b"KVMKVMKVM\0\0\0"
        && sig.eax >= 0x4000_0001
        && cpuid(0x4000_0001).eax & KVM_FEATURE_CLOCKSOURCE2 != 0
}

/// Register this CPU's pvclock page if kvm-clock exists. Returns whether
/// the clock is available. Call on each CPU after `cpu::init_this_cpu`.
pub fn init_this_cpu() -> bool {
    if !detect() {
        return false;
    }
    let page = PVCLOCK[current_index()].get() as u64;
    // SAFETY: the record is a static, 32-byte aligned, per-CPU
    // pvclock_vcpu_time_info; the hypervisor writes only those 32 bytes.
    unsafe { wrmsr(MSR_KVM_SYSTEM_TIME_NEW, page | 1) };
    AVAILABLE.store(true, Ordering::Release);
    true
}

/// Is kvm-clock registered?
pub fn available() -> bool {
    AVAILABLE.load(Ordering::Acquire)
}

/// Nanoseconds of kvm-clock time on this CPU (0 if unavailable).
pub fn now_ns() -> u64 {
    if !available() {
        return 0;
    }
    let p = PVCLOCK[current_index()].get();
    loop {
        // SAFETY: `p` is this CPU's static record; the hypervisor updates
        // it concurrently, hence volatile reads and the version protocol.
        let (v1, tsc_ts, sys, mul, shift) = unsafe {
            let v1 = read_volatile(addr_of!((*p).version));
            fence(Ordering::Acquire);
            (
                v1,
                read_volatile(addr_of!((*p).tsc_timestamp)),
                read_volatile(addr_of!((*p).system_time)),
                read_volatile(addr_of!((*p).tsc_to_system_mul)),
                read_volatile(addr_of!((*p).tsc_shift)),
            )
        };
        let tsc = rdtsc();
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let v2 = unsafe { read_volatile(addr_of!((*p).version)) };
        if v1 & 1 != 0 || v1 != v2 {
            continue;
        }
        let mut delta = tsc.wrapping_sub(tsc_ts);
        if shift >= 0 {
            delta <<= shift;
        } else {
            delta >>= -shift;
        }
        return sys.wrapping_add(((u128::from(delta) * u128::from(mul)) >> 32) as u64);
    }
}

/// Convert a TSC difference measured on this CPU to nanoseconds with the
/// current pvclock scale (`tsc_to_system_mul`, `tsc_shift`); 0 without
/// kvm-clock. For intervals timed with `rdtsc` where reading kvm-clock is
/// not possible (ring 3, [`crate::usermode`]).
pub fn tsc_to_ns(delta: u64) -> u64 {
    if !available() {
        return 0;
    }
    let p = PVCLOCK[current_index()].get();
    // SAFETY: this CPU's static record, read volatile (the hypervisor may
    // update it; mul and shift stay consistent enough for a benchmark).
    let (mul, shift) = unsafe {
        (
            read_volatile(addr_of!((*p).tsc_to_system_mul)),
            read_volatile(addr_of!((*p).tsc_shift)),
        )
    };
    let d = if shift >= 0 {
        u128::from(delta) << shift
    } else {
        u128::from(delta >> -shift)
    };
    ((d * u128::from(mul)) >> 32) as u64
}
