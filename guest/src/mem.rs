//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` for the compiler.
//!
//! The precompiled `compiler_builtins` of the gnu target expects libc to
//! provide them. The copies use `rep movsb`/`rep stosb`: one instruction
//! regardless of length, which matters when kernel code is emulated
//! instruction by instruction (kvm_pvm).

use core::arch::asm;

/// # Safety
/// Standard C `memcpy` contract.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint;
    // DF is clear (kernel invariant).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
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
    // SAFETY: the caller guarantees the range is valid; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
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
