//! Port I/O, MSR, CPUID and other privileged x86 instructions.

use core::arch::asm;

/// Write one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the kernel
    // owns the whole (virtual) machine.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Read one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Write a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Write a 16-bit value to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Read a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Read a 32-bit MMIO register (or any device-visible word).
///
/// # Safety
/// `addr` must be mapped, 4-byte aligned and belong to a device (or memory)
/// whose read side effects the caller accepts.
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

/// Write a 32-bit MMIO register.
///
/// # Safety
/// As for [`mmio_read32`], for writes.
pub unsafe fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u32, value) }
}

/// Write an MSR.
///
/// # Safety
/// The MSR must exist and the value must not break memory safety (e.g.
/// pvclock MSRs make the hypervisor write to the given address).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Result of the CPUID instruction.
#[derive(Clone, Copy)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Execute CPUID for `leaf` (subleaf 0).
pub fn cpuid(leaf: u32) -> Cpuid {
    // SAFETY: CPUID is always available in long mode.
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Read the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged-safe and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Park this CPU forever with interrupts disabled.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Read a `T` from a physical address (identity mapped).
///
/// # Safety
/// `paddr` must be mapped and `size_of::<T>()` bytes there readable.
pub unsafe fn read_phys<T: Copy>(paddr: u64) -> T {
    // SAFETY: guaranteed by the caller; unaligned reads are allowed.
    unsafe { core::ptr::read_unaligned(paddr as usize as *const T) }
}
