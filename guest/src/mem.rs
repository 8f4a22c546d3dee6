//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` for the compiler.
//!
//! The precompiled `compiler_builtins` of the gnu target expects libc to
//! provide them. The copies use `rep movsq`/`rep stosq` plus `rep movsb`/
//! `rep stosb` for the tail: few instructions regardless of length, which
//! matters when kernel code is emulated instruction by instruction
//! (kvm_pvm). KVM's emulator still pays per *iteration* (measured ~3.5 µs
//! per `rep stosb` byte on kvm_pvm), hence the quadword forms; avoid
//! zeroing or copying large buffers at all where possible.

use core::arch::asm;

/// # Safety
/// Standard C `memcpy` contract.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint;
    // DF is clear (kernel invariant). Quadwords first, then the tail.
    unsafe {
        asm!("rep movsq", "mov ecx, {tail:e}", "rep movsb",
             tail = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard C `memmove` contract.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dest is before src or the ranges are disjoint.
        // SAFETY: as for memcpy.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: overlapping with dest after src: copy backwards, then
    // restore DF = 0.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n).wrapping_sub(1) => _,
             inout("rsi") src.add(n).wrapping_sub(1) => _, options(nostack));
    }
    dest
}

/// # Safety
/// Standard C `memset` contract.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let q = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees the range is valid; DF is clear.
    // Quadwords first, then the tail.
    unsafe {
        asm!("rep stosq", "mov ecx, {tail:e}", "rep stosb",
             tail = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") dest => _, in("rax") q,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard C `memcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees `n` readable bytes at `a` and `b`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// Standard C `bcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// A `T` with every byte zero, written with one `rep stosb`.
///
/// `MaybeUninit::zeroed()` is not enough for structs of ~16..256 bytes:
/// LLVM expands the memset inline as `xorps` + `movaps`, which kvm_pvm's
/// instruction emulator cannot execute (docs/guest.md, "SSE"). The asm
/// hides the zeroing from the optimiser.
///
/// # Safety
/// All-zero bytes must be a valid `T`.
pub unsafe fn zeroed<T>() -> T {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let n = core::mem::size_of::<T>();
    // SAFETY: writes exactly size_of::<T>() bytes into `v`; DF is clear.
    // Inline asm, not a call to `memset`: LLVM would recognise the call
    // and expand it inline (with SSE).
    unsafe {
        asm!("rep stosq", "mov ecx, {tail:e}", "rep stosb",
             tail = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") v.as_mut_ptr() => _, in("rax") 0u64,
             options(nostack, preserves_flags));
        // SAFETY: the caller guarantees zero bytes are a valid `T`.
        v.assume_init()
    }
}
