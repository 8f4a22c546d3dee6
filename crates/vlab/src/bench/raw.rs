//! The floor: the cheapest exit round trip KVM allows from user space.
//!
//! kvm-ioctls directly, nothing of vlab's: one VM, one 2 MiB memory slot,
//! one vCPU in 32-bit protected mode (flat segments, no paging, no
//! irqchip so `hlt` comes back to us) running hand-assembled code that
//! does N `out dx, eax` to port 0xf5, then N 32-bit stores to the unbacked
//! address 0xd000_0000, then `hlt`. The run loop does nothing but
//! `run()` → match the exit → `run()`; host-side `Instant`s bracket each
//! phase.
//!
//! The loop bodies have the same instructions as the guest kernel's
//! `pio-loop`/`mmio-loop` (`guest/src/tests.rs`, as compiled): PIO is
//! `lea; out; cmp; mov; jne` (5), MMIO is `mov [eax], ecx; inc; cmp; jne`
//! (4). The guest runs them in 64-bit mode with paging; here they run in
//! 32-bit mode without paging (no page walk for the MMIO store).

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Guest RAM size.
const MEM_SIZE: usize = 2 << 20;
/// Where the code goes.
const CODE_ADDR: u64 = 0x1000;
/// The unbacked MMIO address the stores go to.
pub const MMIO_ADDR: u64 = 0xd000_0000;
/// The PIO port.
pub const PORT: u16 = 0xf5;

/// Port whose write ends the loop (the debug-exit port, as in vlab).
const END_PORT: u16 = 0xf4;

/// 32-bit protected-mode code; `esi` holds N.
pub const CODE32: [u8; 33] = [
    0x31, 0xc0, // xor eax, eax
    0x66, 0xba, 0xf5, 0x00, // mov dx, 0xf5
    // pio:
    0x8d, 0x48, 0x01, // lea ecx, [eax+1]
    0xef, // out dx, eax
    0x39, 0xce, // cmp esi, ecx
    0x89, 0xc8, // mov eax, ecx
    0x75, 0xf6, // jne pio
    0x31, 0xc9, // xor ecx, ecx
    0xb8, 0x00, 0x00, 0x00, 0xd0, // mov eax, 0xd0000000
    // mmio:
    0x89, 0x08, // mov [eax], ecx
    0xff, 0xc1, // inc ecx
    0x39, 0xce, // cmp esi, ecx
    0x75, 0xf8, // jne mmio
    0xe6, 0xf4, // out 0xf4, al
];

/// 64-bit code, byte for byte the guest kernel's loops; `r14` holds N.
pub const CODE64: [u8; 38] = [
    0x31, 0xc0, // xor eax, eax
    0x66, 0xba, 0xf5, 0x00, // mov dx, 0xf5
    // pio:
    0x48, 0x8d, 0x48, 0x01, // lea rcx, [rax+1]
    0xef, // out dx, eax
    0x49, 0x39, 0xce, // cmp r14, rcx
    0x48, 0x89, 0xc8, // mov rax, rcx
    0x75, 0xf3, // jne pio
    0x31, 0xc9, // xor ecx, ecx
    0xb8, 0x00, 0x00, 0x00, 0xd0, // mov eax, 0xd0000000
    // mmio:
    0x89, 0x08, // mov [rax], ecx
    0x48, 0xff, 0xc1, // inc rcx
    0x49, 0x39, 0xce, // cmp r14, rcx
    0x75, 0xf6, // jne mmio
    0xe6, 0xf4, // out 0xf4, al
];

/// How the floor's vCPU is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// 64-bit mode with identity paging like the guest kernel's (1 GiB
    /// pages when the host offers them, 0xC000_0000.. uncached); else
    /// 32-bit protected mode without paging.
    pub long_mode: bool,
    /// Create the in-kernel irqchip and PIT as vlab does.
    pub irqchip: bool,
}

/// Host-side time per exit for each phase.
#[derive(Clone, Copy, Debug)]
pub struct RawResult {
    /// ns per PIO exit.
    pub pio_ns: f64,
    /// ns per MMIO exit.
    pub mmio_ns: f64,
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, String> {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses
        // the mapping after drop (the VM that referenced it is dropped
        // first, see `run`).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn e(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> String {
    move |err| format!("raw KVM loop: {what}: {err}")
}

/// Page-table pages (long mode only).
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD_LOW: u64 = 0x4000;
const PD_HOLE: u64 = 0x5000;
const P: u64 = 1;
const RW: u64 = 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const PS: u64 = 1 << 7;

/// Write the identity map: 0..1 GiB (2 MiB pages: only the first is
/// needed) and 3..4 GiB uncached, as 1 GiB pages when `gb_pages`.
fn write_page_tables(mem: &Mapping, gb_pages: bool) {
    let put = |addr: u64, v: u64| {
        assert!(addr as usize + 8 <= mem.len);
        // SAFETY: in bounds (checked above) of our own writable mapping.
        unsafe { ((mem.ptr as *mut u8).add(addr as usize) as *mut u64).write_unaligned(v) };
    };
    put(PML4, PDPT | P | RW);
    if gb_pages {
        put(PDPT, PS | P | RW);
        put(PDPT + 3 * 8, (3 << 30) | PS | PCD | PWT | P | RW);
    } else {
        put(PDPT, PD_LOW | P | RW);
        put(PD_LOW, PS | P | RW);
        put(PDPT + 3 * 8, PD_HOLE | P | RW);
        // 0xd000_0000 is 256 MiB into the 3 GiB page: 2 MiB entry 128.
        put(PD_HOLE + 128 * 8, MMIO_ADDR | PS | PCD | PWT | P | RW);
    }
}

/// Run the floor with `n` (≥ 1) exits per phase.
pub fn run(n: u32, cfg: Config) -> Result<RawResult, String> {
    if n == 0 {
        return Err("raw KVM loop: N must be at least 1".into());
    }
    let code: &[u8] = if cfg.long_mode { &CODE64 } else { &CODE32 };
    // Declared first so it is dropped last, after the VM and vCPU.
    let mem = Mapping::new(MEM_SIZE)?;
    // SAFETY: the mapping is MEM_SIZE writable bytes and the code fits at
    // CODE_ADDR; no one else holds the memory yet.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (mem.ptr as *mut u8).add(CODE_ADDR as usize),
            code.len(),
        )
    };
    let kvm = Kvm::new().map_err(e("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(e("create VM"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(e("set TSS address"))?;
    if cfg.irqchip {
        vm.create_irq_chip().map_err(e("create irqchip"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(e("create PIT"))?;
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping that outlives `vm` (dropped after
    // it, by declaration order).
    unsafe { vm.set_user_memory_region(region) }.map_err(e("set memory region"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(e("create vCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(e("get supported CPUID"))?;
    let gb_pages = cpuid
        .as_slice()
        .iter()
        .any(|c| c.function == 0x8000_0001 && c.edx & (1 << 26) != 0);
    vcpu.set_cpuid2(&cpuid).map_err(e("set CPUID"))?;

    let mut sregs = vcpu.get_sregs().map_err(e("get sregs"))?;
    for (s, code_seg) in [
        (&mut sregs.cs, true),
        (&mut sregs.ds, false),
        (&mut sregs.es, false),
        (&mut sregs.fs, false),
        (&mut sregs.gs, false),
        (&mut sregs.ss, false),
    ] {
        s.base = 0;
        s.limit = 0xffff_ffff;
        s.g = 1;
        s.present = 1;
        s.s = 1;
        s.dpl = 0;
        s.type_ = if code_seg { 0xb } else { 0x3 };
        s.selector = if code_seg { 0x8 } else { 0x10 };
        // A 64-bit code segment has L=1, D=0.
        s.l = u8::from(code_seg && cfg.long_mode);
        s.db = u8::from(!(code_seg && cfg.long_mode));
    }
    if cfg.long_mode {
        write_page_tables(&mem, gb_pages);
        sregs.cr3 = PML4;
        sregs.cr4 |= 1 << 5; // PAE
        sregs.cr0 |= 1 | (1 << 31); // PE | PG
        sregs.efer |= (1 << 8) | (1 << 10); // LME | LMA
    } else {
        sregs.cr0 |= 1; // PE
        sregs.cr0 &= !(1 << 31); // no paging
        sregs.efer = 0;
    }
    vcpu.set_sregs(&sregs).map_err(e("set sregs"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 2,
        rsi: u64::from(n),
        r14: u64::from(n),
        rsp: 0x1000,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(e("set regs"))?;

    let (mut pio, mut mmio) = (0u32, 0u32);
    let t0 = Instant::now();
    let mut t1 = t0;
    let t2 = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT, _)) => pio += 1,
            Ok(VcpuExit::MmioWrite(MMIO_ADDR, _)) => {
                if mmio == 0 {
                    t1 = Instant::now();
                }
                mmio += 1;
            }
            Ok(VcpuExit::IoOut(END_PORT, _)) => break Instant::now(),
            Ok(other) => return Err(format!("raw KVM loop: unexpected exit {other:?}")),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {}
            Err(err) => return Err(format!("raw KVM loop: KVM_RUN: {err}")),
        }
    };
    if pio != n || mmio != n {
        return Err(format!(
            "raw KVM loop: saw {pio} PIO and {mmio} MMIO exits, expected {n} each"
        ));
    }
    let per = |d: std::time::Duration| d.as_nanos() as f64 / f64::from(n);
    Ok(RawResult {
        pio_ns: per(t1 - t0),
        mmio_ns: per(t2 - t1),
    })
}
