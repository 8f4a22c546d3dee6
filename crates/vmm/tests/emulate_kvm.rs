//! KVM tests for the instructions KVM's emulator may hand back to vlab
//! (`int3`, `cmpxchg16b`): hand-assembled 64-bit code in long mode with
//! vlab's identity page tables. On a host where KVM runs guest kernel code
//! natively these instructions never leave the guest; on a software host
//! (kvm_pvm) they reach `vmm::emulate`. Either way the guest must see the
//! architectural result. They need /dev/kvm and fail loudly without it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::arch::boot;
use vmm::control::StopReason;
use vmm::cpu_setup;
use vmm::vm::{MachineOptions, Vm};

/// Where the test code is placed.
const CODE: u64 = 0x10_0000;
/// The #BP handler.
const HANDLER: u64 = 0x10_1000;
/// The IDT (16-byte long-mode gates).
const IDT: u64 = 0x3000;
/// Results the guest stores.
const RESULT: u64 = 0x2000;
/// Top of the guest stack.
const STACK_TOP: u64 = 0x8_0000;
/// What the guest writes to the debug-exit port when it is done.
const DONE: u8 = 0x42;

/// A 64-bit interrupt gate (P, DPL 0, type 0xE) to `target` via CS 0x10.
fn gate64(target: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(target as u16).to_le_bytes());
    g[2..4].copy_from_slice(&cpu_setup::BOOT_CS.to_le_bytes());
    g[5] = 0x8e;
    g[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
    g
}

/// Run `code` at [`CODE`] in long mode with a #BP handler at [`HANDLER`];
/// `setup` may prepare memory. Returns the stop reason and the memory.
fn run_long_mode(
    code: &[u8],
    handler: &[u8],
    setup: impl FnOnce(&GuestMemoryMmap),
) -> (StopReason, GuestMemoryMmap) {
    let opts = MachineOptions {
        pci_devices: Vec::new(),
        disks: Vec::new(),
        cpus: 1,
        mem_size: 64 << 20,
        irqchip: true,
        register_pages: true,
    };
    let vm = Vm::new(&opts, Box::new(std::io::sink()))
        .unwrap_or_else(|e| panic!("this test needs a usable /dev/kvm: {e}"));
    let mem = vm.memory().clone();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    mem.write_slice(handler, GuestAddress(HANDLER)).unwrap();
    mem.write_slice(&gate64(HANDLER), GuestAddress(IDT + 16 * 3))
        .unwrap();
    setup(&mem);
    let gdt = boot::write_boot_gdt(&mem).unwrap();
    let cr3 = boot::write_identity_page_tables(&mem).unwrap();
    let mut sregs = vm.boot_sregs().unwrap();
    let mut regs = cpu_setup::linux64_regs(CODE, 0, gdt, cr3, &mut sregs);
    regs.rsp = STACK_TOP;
    sregs.idt.base = IDT;
    sregs.idt.limit = 16 * 32 - 1;
    vm.set_boot_regs(&regs, &sregs).unwrap();
    let running = vm.start().unwrap();
    let buses = running.handles().buses.clone();
    let reason = running.wait();
    // On kvm_pvm KVM's emulator fails on these instructions and vlab
    // completes them; on hardware KVM the CPU runs them natively.
    let done = buses.stats.emulated.snapshot();
    if !vmm::doctor::KvmFlavour::detect().is_hardware() {
        assert!(
            done.0 + done.1 + done.2 + done.3 > 0,
            "kvm_pvm host but vlab's fallback never ran: {done:?}"
        );
    }
    (reason, mem)
}

/// `mov al, DONE; out 0xf4, al; jmp $`.
const EXIT: [u8; 6] = [0xb0, DONE, 0xe6, 0xf4, 0xeb, 0xfe];

fn read_u64(mem: &GuestMemoryMmap, at: u64) -> u64 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn int3_reaches_the_guest_bp_handler_with_the_next_rip() {
    // Main: int3; then (after the handler's iretq) store a marker and exit.
    let mut code = vec![0xcc]; // int3
    code.extend([0xc7, 0x04, 0x25, 0x0c, 0x20, 0x00, 0x00]); // mov dword [0x200c], 0x600d
    code.extend(0x600du32.to_le_bytes());
    code.extend(EXIT);
    // Handler: save the return RIP and CS from the frame, mark, iretq.
    let mut handler = vec![0x48, 0x8b, 0x04, 0x24]; // mov rax, [rsp]
    handler.extend([0x48, 0x89, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00]); // mov [0x2000], rax
    handler.extend([0xc7, 0x04, 0x25, 0x08, 0x20, 0x00, 0x00]); // mov dword [0x2008], 0xb9b9
    handler.extend(0xb9b9u32.to_le_bytes());
    handler.extend([0x48, 0xcf]); // iretq
    let (reason, mem) = run_long_mode(&code, &handler, |_| {});
    let ret = read_u64(&mem, RESULT);
    let marks: [u32; 2] = [
        mem.read_obj(GuestAddress(RESULT + 8)).unwrap(),
        mem.read_obj(GuestAddress(RESULT + 12)).unwrap(),
    ];
    assert_eq!(
        reason,
        StopReason::GuestExit(DONE),
        "handler return RIP {ret:#x}, marks {marks:x?}"
    );
    assert_eq!(marks, [0xb9b9, 0x600d], "handler or continuation missing");
    assert_eq!(ret, CODE + 1, "#BP must return after the int3");
}

#[test]
fn cmpxchg16b_swaps_then_reports_the_current_value() {
    const OP: u64 = 0x2040;
    let mut code = Vec::new();
    for (reg, v) in [(0xc0u8, 1u32), (0xc2, 2), (0xc3, 3), (0xc1, 4)] {
        code.extend([0x48, 0xc7, reg]); // mov r64, imm32 (rax, rdx, rbx, rcx)
        code.extend(v.to_le_bytes());
    }
    let cmpxchg = [0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x25, 0x40, 0x20, 0x00, 0x00]; // lock cmpxchg16b [0x2040]
    code.extend(cmpxchg);
    code.extend([0x0f, 0x94, 0x04, 0x25, 0x60, 0x20, 0x00, 0x00]); // setz [0x2060]
    code.extend(cmpxchg);
    code.extend([0x0f, 0x94, 0x04, 0x25, 0x61, 0x20, 0x00, 0x00]); // setz [0x2061]
    code.extend([0x48, 0x89, 0x04, 0x25, 0x68, 0x20, 0x00, 0x00]); // mov [0x2068], rax
    code.extend([0x48, 0x89, 0x14, 0x25, 0x70, 0x20, 0x00, 0x00]); // mov [0x2070], rdx
    code.extend(EXIT);
    let (reason, mem) = run_long_mode(&code, &EXIT, |m| {
        m.write_obj(1u64, GuestAddress(OP)).unwrap();
        m.write_obj(2u64, GuestAddress(OP + 8)).unwrap();
        m.write_slice(&[0xff, 0xff], GuestAddress(0x2060)).unwrap();
    });
    assert_eq!(reason, StopReason::GuestExit(DONE));
    assert_eq!(
        (read_u64(&mem, OP), read_u64(&mem, OP + 8)),
        (3, 4),
        "first cmpxchg16b must store RCX:RBX"
    );
    let zf: [u8; 2] = mem.read_obj(GuestAddress(0x2060)).unwrap();
    assert_eq!(
        zf,
        [1, 0],
        "ZF after the matching, then the failing compare"
    );
    assert_eq!(
        (read_u64(&mem, 0x2068), read_u64(&mem, 0x2070)),
        (3, 4),
        "failing compare must load memory into RDX:RAX"
    );
}
