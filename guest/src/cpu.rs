//! Per-CPU state: the `PerCpu` block addressed through the GS base, the
//! TSS with its interrupt stacks, and the shared IDT.
//!
//! The precompiled `core` for x86_64-unknown-linux-gnu uses the 128-byte
//! red zone below `rsp`, so the CPU must never push an interrupt frame on
//! the interrupted stack: every IDT gate uses an IST stack. Interrupts
//! (timer, spurious) run on IST1 in tiny asm handlers; exceptions run on
//! IST2 and call [`exception_handler`], which reports and ends the VM.
//! Vectors without a gate raise #NP (11), which is reported the same way.
//! An exception in ring 3 ([`crate::usermode`]) is delivered the same way
//! (IST2) and reported too, except #UD, which ends a ring-3 excursion.
//!
//! Device interrupts (vectors [`DEVICE_VECTOR_BASE`]..+[`DEVICE_VECTORS`])
//! only count: the stub increments [`DEVICE_IRQS`]`[v - base]` and returns
//! **without EOI**. The driver, running with interrupts off, sees the count
//! change, acknowledges the device, then calls [`crate::apic::eoi`]. Until
//! then the LAPIC keeps the vector in service, which holds off further
//! interrupts of the same or lower priority (and, for a level-triggered
//! IOAPIC pin, the remote-IRR bit keeps the line from re-firing before the
//! device was acknowledged).

use crate::boot::{FIRST_TSS_SLOT, GDT, KERNEL_CS, MAX_CPUS};
use crate::sync::RacyCell;
use core::arch::{asm, global_asm};
use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// LAPIC timer interrupt vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// LAPIC spurious interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// First vector for device interrupts (MSI or IOAPIC-routed INTx).
pub const DEVICE_VECTOR_BASE: u8 = 0x40;
/// Number of device vectors with a counting stub.
pub const DEVICE_VECTORS: usize = 4;

/// Interrupts taken on each device vector (all CPUs).
pub static DEVICE_IRQS: [AtomicU64; DEVICE_VECTORS] = [const { AtomicU64::new(0) }; DEVICE_VECTORS];

const IST1_SIZE: usize = 1024;
const IST2_SIZE: usize = 8 * 1024;

/// Per-CPU data; the GS base of CPU `i` points at `CPUS[i]`.
#[repr(C)]
pub struct PerCpu {
    /// LAPIC timer ticks (incremented by the asm timer handler at `gs:0`).
    pub ticks: AtomicU64,
    /// CPU index (position in the firmware CPU list, BSP = 0).
    pub index: AtomicU32,
    /// LAPIC ID.
    pub apic_id: AtomicU32,
    /// Set once the CPU finished its initialisation.
    pub online: AtomicBool,
}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            ticks: AtomicU64::new(0),
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
        }
    }
}

/// All CPUs' per-CPU blocks.
pub static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// 64-bit TSS: the IST pointers and RSP0 (ring-3 excursions,
/// [`crate::usermode`]).
#[repr(C, packed(4))]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct IstStacks {
    ist1: [u8; IST1_SIZE],
    ist2: [u8; IST2_SIZE],
}

static TSS: [RacyCell<Tss>; MAX_CPUS] = [const {
    RacyCell::new(Tss {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: 0,
    })
}; MAX_CPUS];

static IST_STACKS: [RacyCell<IstStacks>; MAX_CPUS] = [const {
    RacyCell::new(IstStacks {
        ist1: [0; IST1_SIZE],
        ist2: [0; IST2_SIZE],
    })
}; MAX_CPUS];

/// 256 interrupt gates of 16 bytes.
#[repr(C, align(16))]
struct Idt(RacyCell<[u64; 512]>);
static IDT: Idt = Idt(RacyCell::new([0; 512]));

/// Address of the LAPIC EOI register, read by the asm timer handler.
pub static LAPIC_EOI_ADDR: AtomicU64 = AtomicU64::new(0xfee0_00b0);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

// Exception stubs: 16 bytes each starting at `vlab_exc_stubs`; they push
// a zero error code when the CPU does not, then the vector number.
global_asm!(
    r#"
    .pushsection .text.vlab_isr, "ax"
    .macro EXC vec, err
    .balign 16
    .if \err == 0
    push $0
    .endif
    push $\vec
    jmp vlab_exception_common
    .endm

    .balign 16
    .globl vlab_exc_stubs
vlab_exc_stubs:
    EXC 0,0
    EXC 1,0
    EXC 2,0
    EXC 3,0
    EXC 4,0
    EXC 5,0
    EXC 6,0
    EXC 7,0
    EXC 8,1
    EXC 9,0
    EXC 10,1
    EXC 11,1
    EXC 12,1
    EXC 13,1
    EXC 14,1
    EXC 15,0
    EXC 16,0
    EXC 17,1
    EXC 18,0
    EXC 19,0
    EXC 20,0
    EXC 21,1
    EXC 22,0
    EXC 23,0
    EXC 24,0
    EXC 25,0
    EXC 26,0
    EXC 27,0
    EXC 28,0
    EXC 29,1
    EXC 30,1
    EXC 31,0

vlab_exception_common:
    mov (%rsp), %rdi            /* vector */
    mov 8(%rsp), %rsi           /* error code */
    mov 16(%rsp), %rdx          /* rip */
    and $-16, %rsp
    call {handler}
1:  cli
    hlt
    jmp 1b

    /* LAPIC timer: count the tick in PerCpu.ticks (gs:0), EOI, return. */
    .globl vlab_timer_isr
vlab_timer_isr:
    incq %gs:0
    push %rax
    mov {eoi}(%rip), %rax
    movl $0, (%rax)
    pop %rax
    iretq

    .globl vlab_spurious_isr
vlab_spurious_isr:
    iretq

    /* Device vectors: count, no EOI (the driver acknowledges and EOIs). */
    .balign 16
    .globl vlab_dev_isrs
vlab_dev_isrs:
    lock incq {dev_irqs}(%rip)
    iretq
    .balign 16
    lock incq {dev_irqs}+8(%rip)
    iretq
    .balign 16
    lock incq {dev_irqs}+16(%rip)
    iretq
    .balign 16
    lock incq {dev_irqs}+24(%rip)
    iretq
    .popsection
"#,
    handler = sym exception_handler,
    eoi = sym LAPIC_EOI_ADDR,
    dev_irqs = sym DEVICE_IRQS,
    options(att_syntax)
);

extern "C" {
    static vlab_exc_stubs: u8;
    static vlab_timer_isr: u8;
    static vlab_spurious_isr: u8;
    static vlab_dev_isrs: u8;
}

/// Report a CPU exception and end the VM with status 4.
extern "C" fn exception_handler(vector: u64, err: u64, rip: u64) -> ! {
    static ACTIVE: AtomicBool = AtomicBool::new(false);
    if !ACTIVE.swap(true, Ordering::AcqRel) {
        crate::log!("EXCEPTION {} rip={:#x} err={:#x}", vector, rip, err);
    }
    crate::exit(4)
}

fn gate(handler: u64, ist: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (ist << 32)
        | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
        | (((handler >> 16) & 0xffff) << 48);
    (low, handler >> 32)
}

/// Replace the gate of `vector` (DPL 0, stack IST`ist`). BSP only, while
/// the APs are not running ([`crate::usermode`] hooks #UD).
pub fn set_gate(vector: u8, handler: u64, ist: u64) {
    let (lo, hi) = gate(handler, ist);
    let idt = IDT.0.get();
    let v = usize::from(vector);
    // SAFETY: one 16-byte IDT entry, written by the BSP alone; the CPU
    // reads it only when the vector is raised.
    unsafe {
        (*idt)[2 * v] = lo;
        (*idt)[2 * v + 1] = hi;
    }
}

/// Build the shared IDT. Called once by the BSP before any CPU loads it.
pub fn init_idt() {
    let idt = IDT.0.get();
    let set = |vector: usize, handler: u64, ist: u64| {
        let (lo, hi) = gate(handler, ist);
        // SAFETY: only the BSP writes the IDT, before any CPU loads it.
        unsafe {
            (*idt)[2 * vector] = lo;
            (*idt)[2 * vector + 1] = hi;
        }
    };
    let stubs = &raw const vlab_exc_stubs as u64;
    for v in 0..32 {
        set(v, stubs + 16 * v as u64, 2);
    }
    set(
        usize::from(TIMER_VECTOR),
        &raw const vlab_timer_isr as u64,
        1,
    );
    let dev = &raw const vlab_dev_isrs as u64;
    for i in 0..DEVICE_VECTORS {
        set(usize::from(DEVICE_VECTOR_BASE) + i, dev + 16 * i as u64, 1);
    }
    set(
        usize::from(SPURIOUS_VECTOR),
        &raw const vlab_spurious_isr as u64,
        1,
    );
}

/// Set up this CPU's TSS (IST stacks), load the IDT and point GS at its
/// `PerCpu` block. Must run on CPU `index` exactly once.
pub fn init_this_cpu(index: usize, apic_id: u32) {
    let stacks = IST_STACKS[index].get() as u64;
    let tss = TSS[index].get();
    // SAFETY: each CPU only touches its own TSS slot, before loading it.
    unsafe {
        (*tss).ist[0] = stacks + offset_of!(IstStacks, ist1) as u64 + IST1_SIZE as u64;
        (*tss).ist[1] = stacks + offset_of!(IstStacks, ist2) as u64 + IST2_SIZE as u64;
        // RSP0: where a ring-3 -> ring-0 transition through a gate without
        // IST would switch to. Every gate has an IST (exceptions from user
        // mode land on IST2), so this is a backstop: the top of IST2.
        (*tss).rsp[0] = (*tss).ist[1];
        (*tss).iomap_base = core::mem::size_of::<Tss>() as u16;
    }
    let base = tss as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let slot = FIRST_TSS_SLOT + 2 * index;
    let gdt = GDT.0.get();
    // SAFETY: GDT slots `slot` and `slot + 1` belong to this CPU only.
    unsafe {
        (*gdt)[slot] = low;
        (*gdt)[slot + 1] = base >> 32;
    }
    let idtr = DescriptorPointer {
        limit: (512 * 8 - 1) as u16,
        base: IDT.0.get() as u64,
    };
    let me = &CPUS[index];
    me.index.store(index as u32, Ordering::Relaxed);
    me.apic_id.store(apic_id, Ordering::Relaxed);
    // SAFETY: the TSS descriptor and IDT are valid and static; the GS base
    // points at a static PerCpu that lives forever.
    unsafe {
        asm!("ltr {0:x}", in(reg) (slot * 8) as u16, options(nostack, preserves_flags));
        asm!("lidt [{0}]", in(reg) &idtr, options(readonly, nostack, preserves_flags));
        crate::io::wrmsr(0xc000_0101, me as *const PerCpu as u64); // IA32_GS_BASE
    }
}

/// Index of the calling CPU (valid after [`init_this_cpu`]).
pub fn current_index() -> usize {
    let index: u32;
    // SAFETY: GS points at this CPU's PerCpu; reads a u32 field.
    unsafe {
        asm!("mov {0:e}, gs:[{off}]", out(reg) index, off = const offset_of!(PerCpu, index),
             options(nostack, readonly, preserves_flags));
    }
    index as usize
}

/// Load an empty IDT and execute `ud2`: #UD cannot be delivered, #GP and
/// #DF neither, so the CPU triple faults (the VMM sees a shutdown).
pub fn triple_fault() -> ! {
    let idtr = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: deliberately crashes the VM; nothing runs afterwards.
    unsafe {
        asm!("lidt [{0}]", "ud2", in(reg) &idtr, options(noreturn, nostack));
    }
}
