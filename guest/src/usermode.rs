//! Ring-3 excursions: run a few instructions at CPL 3 and come back.
//!
//! What a driver's user-space half does when the kernel has mapped device
//! registers into its address space: poll them with plain loads. On
//! kvm_pvm guest *kernel* code is emulated instruction by instruction,
//! user code runs natively, so only a user-mode loop shows what a read
//! from the register page costs. This module is the minimum for that:
//!
//! * **Segments** (`boot.rs`): user data 0x23 and 64-bit user code 0x2b
//!   (DPL 3). **TSS.RSP0** (`cpu.rs`) is set, though every IDT gate has an
//!   IST stack: an exception in ring 3 lands on IST2 and is reported like
//!   any other (`EXCEPTION ...`, exit 4).
//! * **Pages** (`paging::map_user`): the only U/S = 1 mappings are in the
//!   user window at [`paging::USER_BASE`]: slot [`CODE_SLOT`] = a copy of
//!   the user routines (read-only), [`DATA_SLOT`] = a RAM page for the
//!   user stack (top) and the RAM word of the baseline loop (offset 0),
//!   [`MMIO_SLOT`] = a device register page ([`map_device_page`],
//!   read-only, uncached). The kernel's own pages stay supervisor-only.
//! * **Entry**: `vlab_user_enter(rip, rsp, arg0, arg1)` saves the
//!   callee-saved registers and RSP, then `iretq` to CPL 3 with RFLAGS =
//!   0x2 (IF = 0: no interrupt can land mid-loop, IOPL 0), `rdi` = arg0,
//!   `rsi` = arg1. Other registers are not cleared (the user code is ours).
//! * **Exit**: the user code ends with `ud2`. [`init`] points the #UD
//!   gate (IST2) at `vlab_user_ud`: a #UD from CPL 3 (frame CS.RPL = 3)
//!   ends the excursion, any other goes to the ordinary report. The
//!   handler never returns to ring 3: it records the user RIP, reloads
//!   the saved kernel RSP, restores DS/ES (the `iretq` to CPL 3 nulls
//!   them), pops the callee-saved registers and returns the user's
//!   `rax`/`rdx` to `vlab_user_enter`'s caller. The GS base (this CPU's
//!   `PerCpu`) is rewritten afterwards in case the null selector cleared
//!   it. Why not `syscall` or `int n`: on kvm_pvm a ring-3 `syscall`
//!   arrives at LSTAR still at CPL 3 (a #PF on the supervisor page) and
//!   `int 0x80`/`int 0x81` through a DPL-3 gate fall through to the next
//!   instruction; exceptions are delivered like on hardware, and `ud2`
//!   works the same everywhere.
//!
//! One excursion at a time, on the BSP ([`init`] before the first).
//!
//! The user routine [`poll`] runs: one untimed read (the first touch of a
//! page costs a page-table walk, on kvm_pvm a shadow-page fault of
//! microseconds), `rdtsc`, N x `mov eax, [rdi]; dec rcx; jnz`, `rdtsc`,
//! `ud2` with the TSC ticks in `rax` and the last value read in `rdx`.
//! The kernel converts ticks to ns with kvm-clock's scale
//! ([`crate::kvmclock::tsc_to_ns`]).

use crate::boot::{KERNEL_DS, USER_CS, USER_DS};
use crate::io::wrmsr;
use crate::paging::{self, USER_BASE};
use crate::sync::RacyCell;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// User-window slot of the code page.
pub const CODE_SLOT: usize = 0;
/// User-window slot of the stack / data page.
pub const DATA_SLOT: usize = 1;
/// User-window slot of the device register page.
pub const MMIO_SLOT: usize = 2;

const MSR_GS_BASE: u32 = 0xc000_0101;
/// #UD: `ud2` in ring 3 ends an excursion.
const UD_VECTOR: u8 = 6;

#[repr(C, align(4096))]
struct Page(RacyCell<[u8; 4096]>);

/// The user code page (a copy of `vlab_user_code..vlab_user_code_end`).
static CODE_PAGE: Page = Page(RacyCell::new([0; 4096]));
/// The user stack (top down) and data (offset 0: the RAM word) page.
static DATA_PAGE: Page = Page(RacyCell::new([0; 4096]));

/// Kernel RSP saved by `vlab_user_enter`, reloaded by `vlab_user_ud`.
static KERNEL_RSP: AtomicU64 = AtomicU64::new(0);
/// User RIP of the `ud2` that ended the last excursion.
static EXIT_RIP: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .pushsection .text.vlab_user, "ax"

    /* User code, never executed here: copied to the user code page.
       Position independent. poll: rdi = address, rsi = n >= 1. */
    .balign 16
    .globl vlab_user_code
vlab_user_code:
    mov eax, dword ptr [rdi]    /* untimed: fault the page in first */
    mov rcx, rsi
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r8, rax
2:  mov eax, dword ptr [rdi]
    dec rcx
    jnz 2b
    mov r9d, eax
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r8
    mov edx, r9d
    .globl vlab_user_code_exit
vlab_user_code_exit:
    ud2
    .globl vlab_user_code_end
vlab_user_code_end:

    /* extern "C" fn(rip, rsp, arg0, arg1) -> (rax, rdx) */
    .globl vlab_user_enter
vlab_user_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + {kernel_rsp}], rsp
    push {user_ds}
    push rsi
    push 2
    push {user_cs}
    push rdi
    mov rdi, rdx
    mov rsi, rcx
    iretq

    /* #UD gate (IST2). From ring 3: end the excursion; from ring 0:
       the ordinary report (stub 6 of cpu.rs). Frame: rip, cs, ... */
    .globl vlab_user_ud
vlab_user_ud:
    test byte ptr [rsp + 8], 3
    jz vlab_exc_stubs + 6 * 16
    mov rcx, [rsp]
    mov [rip + {exit_rip}], rcx
    mov rsp, [rip + {kernel_rsp}]
    mov ecx, {kernel_ds}
    mov ds, ecx
    mov es, ecx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
    .popsection
"#,
    kernel_rsp = sym KERNEL_RSP,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    kernel_ds = const KERNEL_DS,
    exit_rip = sym EXIT_RIP,
);

/// `rax` and `rdx` at the user code's `ud2`.
#[repr(C)]
struct Ret {
    rax: u64,
    rdx: u64,
}

extern "C" {
    static vlab_user_code: u8;
    static vlab_user_code_exit: u8;
    static vlab_user_code_end: u8;
    fn vlab_user_enter(rip: u64, rsp: u64, arg0: u64, arg1: u64) -> Ret;
    static vlab_user_ud: u8;
}

/// Hook #UD, copy the user code, map the code and data pages. Call once
/// on the BSP before [`poll`].
pub fn init() {
    let start = &raw const vlab_user_code;
    let len = &raw const vlab_user_code_end as usize - start as usize;
    crate::cpu::set_gate(UD_VECTOR, &raw const vlab_user_ud as u64, 2);
    // SAFETY: moves `len` (< 4096) bytes of our own code into the static
    // code page, which nothing else uses.
    unsafe { core::ptr::copy_nonoverlapping(start, CODE_PAGE.0.get() as *mut u8, len) };
    paging::map_user(CODE_SLOT, CODE_PAGE.0.get() as u64, false, false);
    paging::map_user(DATA_SLOT, DATA_PAGE.0.get() as u64, true, false);
}

/// Map the device page holding `paddr` (uncached, read-only) into the
/// user window; returns the user address of `paddr`.
pub fn map_device_page(paddr: u64) -> u64 {
    paging::map_user(MMIO_SLOT, paddr & !0xfff, false, true) + (paddr & 0xfff)
}

/// Store `v` in the RAM word of the user data page; returns its user
/// address.
pub fn set_ram_word(v: u32) -> u64 {
    // SAFETY: offset 0 of the static data page, 4-byte aligned; ring 3
    // only reads it, and not concurrently.
    unsafe { (DATA_PAGE.0.get() as *mut u32).write_volatile(v) };
    USER_BASE + DATA_SLOT as u64 * 4096
}

/// Result of one [`poll`] excursion.
pub struct Poll {
    /// TSC ticks of the loop, measured in ring 3.
    pub ticks: u64,
    /// The last value read.
    pub value: u32,
}

/// Run `n` (>= 1) x `mov eax, [addr]; dec rcx; jnz` in ring 3; `addr`
/// must be a user address from [`map_device_page`] or [`set_ram_word`]
/// (anything else faults and ends the VM with `EXCEPTION 14`). `None` if
/// ring 3 ended anywhere but at the routine's final `ud2`.
pub fn poll(addr: u64, n: u64) -> Option<Poll> {
    let code = USER_BASE + CODE_SLOT as u64 * 4096;
    let exit = code + (&raw const vlab_user_code_exit as u64 - &raw const vlab_user_code as u64);
    let stack_top = USER_BASE + (DATA_SLOT as u64 + 1) * 4096;
    let gs_base = &crate::cpu::CPUS[crate::cpu::current_index()] as *const _ as u64;
    // SAFETY: `init` hooked #UD and set up the user pages; the user code
    // only reads `addr` and ends with `ud2`, whose handler resumes here
    // with the callee-saved registers restored. The GS base is put back
    // to this CPU's PerCpu block (as `cpu::init_this_cpu` set it).
    let r = unsafe {
        let r = vlab_user_enter(code, stack_top, addr, n.max(1));
        wrmsr(MSR_GS_BASE, gs_base);
        r
    };
    (EXIT_RIP.load(Ordering::Relaxed) == exit).then_some(Poll {
        ticks: r.rax,
        value: r.rdx as u32,
    })
}
