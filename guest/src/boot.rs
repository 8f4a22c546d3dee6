//! Assembly entry points: the PVH 32-bit entry of the bootstrap CPU, the
//! real-mode trampoline of the application processors, the GDT, the boot
//! page tables and the per-CPU kernel stacks.
//!
//! # PVH boot contract
//! The VMM finds the `XEN_ELFNOTE_PHYS32_ENTRY` note (in `.note.Xen`) and
//! enters `pvh_start` in 32-bit protected mode, paging off, flat 4 GiB
//! segments, `ebx` = physical address of `struct hvm_start_info`.
//!
//! `pvh_start` builds an identity map: with 1 GiB pages (CPUID 0x8000_0001
//! EDX[26]) all of the low 4 GiB, 0xC000_0000..0x1_0000_0000 uncached
//! (PCD|PWT) for MMIO; with 2 MiB pages only the kernel image, the start
//! info's 2 MiB page and the IOAPIC/LAPIC pages (the rest is mapped on
//! demand by [`crate::paging`]: 2048 emulated stores would cost ~10 ms on
//! kvm_pvm). It then
//! enables PAE + EFER.LME + paging, enters 64-bit mode, enables SSE (the
//! precompiled `core` uses it) and calls [`crate::bsp_main`].
//!
//! The page tables live in `.bss` and rely on the loader handing us zeroed
//! memory, so only the entries that are needed are written (a handful of
//! stores either way).
//!
//! # AP trampoline
//! `ap_tramp_start..ap_tramp_end` is position independent 16-bit code that
//! [`crate::smp`] copies to a free page below 1 MiB; the SIPI vector is that
//! page number. It loads the kernel GDT (the GDTR copy inside the blob holds
//! an absolute address), enters protected mode and far-jumps straight into
//! `ap_tramp32` in the kernel image, which enables long mode with the BSP's
//! page tables. `ap_entry64` grabs a stack slot with an atomic increment and
//! calls [`crate::smp::ap_main`] with that slot number.

use crate::sync::RacyCell;
use core::arch::global_asm;

/// Maximum number of CPUs supported (stacks, TSSs, GDT slots are static).
pub const MAX_CPUS: usize = 64;
/// Size of each CPU's kernel stack.
pub const STACK_SIZE: usize = 16 * 1024;

/// GDT selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// GDT selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;
/// GDT selector (RPL 3) of the user data segment (DPL 3).
pub const USER_DS: u16 = 0x20 | 3;
/// GDT selector (RPL 3) of the 64-bit user code segment (DPL 3).
pub const USER_CS: u16 = 0x28 | 3;
/// GDT index of the first TSS descriptor (each TSS takes two slots).
pub const FIRST_TSS_SLOT: usize = 6;
/// Number of GDT entries.
pub const GDT_LEN: usize = FIRST_TSS_SLOT + 2 * MAX_CPUS;

/// One 4 KiB page-table page (512 entries).
#[repr(C, align(4096))]
pub struct PageTable(pub RacyCell<[u64; 512]>);

/// The global descriptor table: null, code64 (0x08), data (0x10),
/// code32 (0x18, AP trampoline), user data (0x20, DPL 3), user code64
/// (0x28, DPL 3; ring-3 excursions, [`crate::usermode`]), then one
/// 16-byte TSS descriptor per CPU. The user pair is in the order `sysret`
/// expects (data, then code), should `syscall` ever be used.
#[repr(C, align(16))]
pub struct Gdt(pub RacyCell<[u64; GDT_LEN]>);

/// Boot PML4: entry 0 points at [`PDPT`].
pub static PML4: PageTable = PageTable(RacyCell::new([0; 512]));
/// Boot PDPT covering 512 GiB; entries 0..4 are set by `pvh_start`, the
/// rest are filled at run time for RAM above 4 GiB (1 GiB pages only).
pub static PDPT: PageTable = PageTable(RacyCell::new([0; 512]));
/// Page directories for the 2 MiB-page fallback (first 4 GiB only),
/// contiguous: entry `n` of the 2048 maps `n * 2 MiB`.
pub static PD: [PageTable; 4] = [const { PageTable(RacyCell::new([0; 512])) }; 4];

/// See [`Gdt`]. Written at run time only in the TSS slots.
pub static GDT: Gdt = Gdt(RacyCell::new(gdt_init()));

const fn gdt_init() -> [u64; GDT_LEN] {
    let mut g = [0u64; GDT_LEN];
    g[1] = 0x00af_9a00_0000_ffff; // 64-bit code, DPL 0
    g[2] = 0x00cf_9200_0000_ffff; // flat data
    g[3] = 0x00cf_9a00_0000_ffff; // 32-bit code
    g[4] = 0x00cf_f200_0000_ffff; // flat data, DPL 3
    g[5] = 0x00af_fa00_0000_ffff; // 64-bit code, DPL 3
    g
}

extern "C" {
    /// Start of the AP real-mode trampoline blob (copied below 1 MiB).
    pub static ap_tramp_start: u8;
    /// End of the AP real-mode trampoline blob.
    pub static ap_tramp_end: u8;
}

// CR0 = PE | MP | ET | NE | WP | PG (EM and TS clear: SSE usable).
// CR4 = PAE | OSFXSR | OSXMMEXCPT (no OSXSAVE: we never use xsave).
// PTE bits: P=1, RW=2, PWT=8, PCD=0x10, PS=0x80.
global_asm!(
    r#"
    .set CR0_VALUE, 0x80010033
    .set CR4_VALUE, 0x620
    .set MSR_EFER, 0xC0000080
    .set EFER_LME, 0x100

    /* CR3 <- PML4, CR4 <- PAE|SSE bits, EFER.LME, CR0 <- PG|PE|...  */
    .macro ENABLE_LONG_MODE
    mov ${pml4}, %eax
    mov %eax, %cr3
    mov $CR4_VALUE, %eax
    mov %eax, %cr4
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov $CR0_VALUE, %eax
    mov %eax, %cr0
    .endm

    /* Flat data segments, null FS/GS (GS base is set later via MSR). */
    .macro LOAD_DATA_SEGMENTS
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    .endm

    /* ---------------- Xen PVH ELF note ---------------- */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4
    .popsection

    /* ---------------- BSP 32-bit entry ---------------- */
    .pushsection .text.entry32, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi              /* hvm_start_info, kept until Rust */

    /* 1 GiB pages supported? (edi = 1 if so) */
    xor %edi, %edi
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 1f
    mov $0x80000001, %eax
    cpuid
    bt $26, %edx
    jnc 1f
    inc %edi
1:
    movl $({pdpt} + 3), {pml4}
    test %edi, %edi
    jz 2f

    /* 1 GiB pages: 4 PDPT entries, the last one uncached (MMIO hole). */
    movl $0x00000083, {pdpt}
    movl $0x40000083, {pdpt} + 8
    movl $0x80000083, {pdpt} + 16
    movl $0xC000009B, {pdpt} + 24
    jmp 4f

2:  /* 2 MiB pages: the 4 page directories form one 2048-entry array
       (entry n maps n * 2 MiB). Map only the kernel image (0 up to
       __image_end), the start info's page and the IOAPIC/LAPIC page
       (uncached); `paging::init` maps RAM from the memory map and drivers
       map their MMIO (`paging::map_mmio`). */
    movl $({pd} + 0x0003), {pdpt}
    movl $({pd} + 0x1003), {pdpt} + 8
    movl $({pd} + 0x2003), {pdpt} + 16
    movl $({pd} + 0x3003), {pdpt} + 24
    mov ${pd}, %edi
    mov $0x83, %eax
    mov $__image_end + 0x1fffff, %ecx
    shr $21, %ecx
3:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    dec %ecx
    jnz 3b
    mov %esi, %eax              /* start info page */
    shr $21, %eax
    mov %esi, %ecx
    and $0xffe00000, %ecx
    or $0x83, %ecx
    mov %ecx, {pd}(,%eax,8)
    movl $0xFEC0009B, {pd} + (0xFEC00000 >> 21) * 8
    movl $0xFEE0009B, {pd} + (0xFEE00000 >> 21) * 8

4:  lgdt vlab_gdtr
    ENABLE_LONG_MODE
    ljmp $0x08, $bsp_entry64

    /* AP: 32-bit protected-mode part (runs in the kernel image). */
ap_tramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    ENABLE_LONG_MODE
    ljmp $0x08, $ap_entry64

    .code64
bsp_entry64:
    LOAD_DATA_SEGMENTS
    lea vlab_stacks + {stack_size}(%rip), %rsp
    mov %esi, %edi              /* arg0: hvm_start_info paddr */
    call {bsp_main}
5:  cli
    hlt
    jmp 5b

ap_entry64:
    LOAD_DATA_SEGMENTS
    mov $1, %eax
    lock xadd %eax, vlab_next_stack_slot(%rip)
    cmp ${max_cpus}, %eax
    jae 5b                      /* more CPUs than slots: park */
    lea 1(%rax), %rcx
    imul ${stack_size}, %rcx
    lea vlab_stacks(%rip), %rsp
    add %rcx, %rsp
    mov %eax, %edi              /* arg0: stack slot */
    call {ap_main}
    jmp 5b
    .popsection

    /* ---------------- AP real-mode trampoline (copied) ---------------- */
    .pushsection .text.ap_tramp, "ax"
    .code16
    .globl ap_tramp_start
    .globl ap_tramp_end
ap_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl ap_tramp_gdtr - ap_tramp_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $ap_tramp32
    .balign 8
ap_tramp_gdtr:
    .short {gdt_limit}
    .long {gdt}
ap_tramp_end:
    .code64
    .popsection

    /* ---------------- GDTR and stack-slot counter ---------------- */
    .pushsection .data.vlab_boot, "aw"
    .balign 8
    .short 0, 0, 0
vlab_gdtr:                      /* base field is 8-byte aligned */
    .short {gdt_limit}
    .quad {gdt}
    .balign 4
vlab_next_stack_slot:
    .long 1                     /* slot 0 is the BSP's */
    .popsection

    /* ---------------- per-CPU kernel stacks (NOBITS) ---------------- */
    .pushsection .bss.vlab_stacks, "aw", @nobits
    .balign 16
vlab_stacks:
    .skip {max_cpus} * {stack_size}
    .popsection
"#,
    bsp_main = sym crate::bsp_main,
    ap_main = sym crate::smp::ap_main,
    pml4 = sym PML4,
    pdpt = sym PDPT,
    pd = sym PD,
    gdt = sym GDT,
    gdt_limit = const GDT_LEN * 8 - 1,
    max_cpus = const MAX_CPUS,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);
