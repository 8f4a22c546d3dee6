//! Completing in user space the instructions KVM's emulator gives up on.
//!
//! On hosts where KVM runs guest supervisor code through its instruction
//! emulator (kvm_pvm, software nested virtualization), some instructions
//! end in `KVM_EXIT_INTERNAL_ERROR` / `KVM_INTERNAL_ERROR_EMULATION`:
//! `int3`, `cmpxchg16b`, `xrstor`, `popcnt`, `clac`. vlab completes those
//! here:
//!
//! * `int3` → #BP is delivered with KVM_SET_VCPU_EVENTS (see
//!   [`inject_exception`] for the RIP convention);
//! * `cmpxchg16b m128` → done atomically on the host mapping of the guest
//!   page (`lock cmpxchg16b`), ZF and RDX:RAX updated, RIP advanced;
//! * `xrstor`/`xrstor64 m` → the requested components
//!   (EDX:EAX & XCR0) are read from the guest's XSAVE area and loaded with
//!   KVM_SET_XSAVE, RIP advanced. Standard and compacted forms are read.
//! * `popcnt r, r/m` → computed, flags set, RIP advanced (Linux 6.1 uses
//!   it once alternatives are patched);
//! * `clac`/`stac` → RFLAGS.AC cleared/set, RIP advanced (SMAP; on every
//!   kernel entry).
//!
//! Architectural faults the instruction would raise (#GP(0) for a
//! misaligned operand, a malformed XSAVE header or reserved MXCSR bits) are
//! injected into the guest. Anything else (another instruction, an operand
//! in unmapped memory) is not handled and the caller reports the crash.
//!
//! Decoding and semantics ([`plan`], [`cmpxchg16b`], [`xrstor`]) are pure
//! and unit-tested; [`complete`] is the thin KVM glue.

use std::sync::atomic::{AtomicU64, Ordering};

use iced_x86::{Code, Decoder, DecoderOptions, Register};
use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;
/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// RFLAGS.ZF.
const RFLAGS_ZF: u64 = 1 << 6;
/// #BP.
pub const BP_VECTOR: u8 = 3;
/// #GP.
pub const GP_VECTOR: u8 = 13;
/// XSAVE component bits.
const XFEATURE_FP: u64 = 1 << 0;
const XFEATURE_SSE: u64 = 1 << 1;
const XFEATURE_YMM: u64 = 1 << 2;
/// XCOMP_BV bit 63: the area is in compacted form.
const XCOMP_BV_COMPACTED: u64 = 1 << 63;
/// Offsets in the XSAVE area.
const XSAVE_LEGACY_SIZE: usize = 512;
const XSAVE_HEADER_SIZE: usize = 64;
const MXCSR_OFFSET: usize = 24;
const MXCSR_MASK_OFFSET: usize = 28;
const XMM_OFFSET: usize = 160;
const XMM_SIZE: usize = 256;
const ST_OFFSET: usize = 32;
/// Size of KVM's (non-XSAVE2) XSAVE buffer.
pub const KVM_XSAVE_SIZE: usize = 4096;
/// MXCSR_MASK default when the saved mask is 0 (SDM 11.6.6).
const MXCSR_MASK_DEFAULT: u32 = 0xffbf;

/// The instructions vlab completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `int3`.
    Int3,
    /// `cmpxchg16b m128`.
    Cmpxchg16b,
    /// `xrstor`/`xrstor64`.
    Xrstor,
    /// `popcnt r, r/m`.
    Popcnt,
    /// `clac`/`stac` (SMAP).
    AcFlag,
    /// `fwait`/`wait`.
    Fwait,
}

/// How many instructions vlab completed, per kind, in one VM (kept in the
/// VM's exit statistics; shown by `--verbose`).
#[derive(Debug, Default)]
pub struct EmulationStats {
    /// `int3` delivered as #BP.
    pub int3: AtomicU64,
    /// `cmpxchg16b` done.
    pub cmpxchg16b: AtomicU64,
    /// `xrstor` done.
    pub xrstor: AtomicU64,
    /// `popcnt` done.
    pub popcnt: AtomicU64,
    /// `clac`/`stac` done.
    pub ac_flag: AtomicU64,
    /// `fwait` completed.
    pub fwait: AtomicU64,
    /// Faults injected instead (any kind).
    pub faults: AtomicU64,
}

impl EmulationStats {
    /// Count one completed instruction.
    pub fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Done(Kind::Int3) => &self.int3,
            Outcome::Done(Kind::Cmpxchg16b) => &self.cmpxchg16b,
            Outcome::Done(Kind::Xrstor) => &self.xrstor,
            Outcome::Done(Kind::Popcnt) => &self.popcnt,
            Outcome::Done(Kind::AcFlag) => &self.ac_flag,
            Outcome::Done(Kind::Fwait) => &self.fwait,
            Outcome::Faulted(..) => &self.faults,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(int3, cmpxchg16b, xrstor, popcnt, faults)`.
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.int3.load(Ordering::Relaxed),
            self.cmpxchg16b.load(Ordering::Relaxed),
            self.xrstor.load(Ordering::Relaxed),
            self.popcnt.load(Ordering::Relaxed),
            self.faults.load(Ordering::Relaxed),
        )
    }
}

/// An exception to deliver to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Vector.
    pub vector: u8,
    /// Error code, for vectors that push one.
    pub error_code: Option<u32>,
}

impl Fault {
    /// #GP(0).
    pub const GP0: Fault = Fault {
        vector: GP_VECTOR,
        error_code: Some(0),
    };
}

/// What to do about the instruction at RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `int3`: deliver #BP; the return address is `next_rip`.
    Breakpoint {
        /// Address of the instruction after `int3`.
        next_rip: u64,
    },
    /// `cmpxchg16b` on the 16 bytes at linear address `linear`.
    Cmpxchg16b {
        /// Linear address of the operand (16-byte aligned).
        linear: u64,
        /// Address of the next instruction.
        next_rip: u64,
    },
    /// `xrstor` from the XSAVE area at `linear`.
    Xrstor {
        /// Linear address of the area (64-byte aligned).
        linear: u64,
        /// EDX:EAX (not yet masked with XCR0).
        requested: u64,
        /// Address of the next instruction.
        next_rip: u64,
    },
    /// `popcnt dst, src`.
    Popcnt {
        /// Destination register (16, 32 or 64 bits).
        dst: Register,
        /// Source operand.
        src: Source,
        /// Address of the next instruction.
        next_rip: u64,
    },
    /// `clac` (`set` false) or `stac` (`set` true): RFLAGS.AC.
    AcFlag {
        /// New value of AC.
        set: bool,
        /// Address of the next instruction.
        next_rip: u64,
    },
    /// `fwait`: raise a pending x87 exception or go on.
    Fwait {
        /// Address of the next instruction.
        next_rip: u64,
    },
    /// The instruction faults; RIP stays.
    Fault(Fault),
}

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A general-purpose register.
    Reg(Register),
    /// Memory at a linear address.
    Mem(u64),
}

/// What [`complete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The instruction was completed (or #BP delivered for `int3`).
    Done(Kind),
    /// The instruction raised an exception, which was injected.
    Faulted(Kind, Fault),
}

/// Why vlab could not complete an instruction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmulateError {
    /// The bytes at RIP are not a valid instruction.
    #[error("the bytes at RIP do not decode as an instruction")]
    Decode,
    /// An instruction vlab does not emulate.
    #[error("vlab does not emulate `{0}`")]
    Unsupported(String),
    /// A linear address has no present mapping.
    #[error("guest linear address {0:#x} is not mapped")]
    Unmapped(u64),
    /// A store target is mapped read-only.
    #[error("guest linear address {0:#x} is not writable")]
    ReadOnly(u64),
    /// A guest-physical address is not RAM.
    #[error("guest physical address {0:#x} is not RAM")]
    NotRam(u64),
    /// An XSAVE component vlab cannot place.
    #[error("XSAVE component {0} does not fit KVM's 4 KiB XSAVE buffer")]
    Component(u32),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> EmulateError {
    move |source| EmulateError::Kvm { what, source }
}

/// Code size of the vCPU: 64 (long mode, CS.L), 32 (CS.D) or 16.
pub fn bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    }
}

/// The value of a register as iced's effective-address callback wants it.
fn reg_value(r: Register, regs: &kvm_regs, sregs: &kvm_sregs, long: bool) -> Option<u64> {
    let full = r.full_register();
    let v = match full {
        Register::RAX => regs.rax,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RBX => regs.rbx,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        Register::FS => return Some(sregs.fs.base),
        Register::GS => return Some(sregs.gs.base),
        // In long mode ES, CS, SS and DS have base 0.
        Register::ES | Register::CS | Register::SS | Register::DS if long => return Some(0),
        Register::ES => return Some(sregs.es.base),
        Register::CS => return Some(sregs.cs.base),
        Register::SS => return Some(sregs.ss.base),
        Register::DS => return Some(sregs.ds.base),
        _ => return None,
    };
    Some(match r.size() {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => v & 0xffff,
        _ => return None,
    })
}

/// Decode the instruction in `bytes` (read at `regs.rip`) and decide what
/// to do. Pure.
pub fn plan(
    bytes: &[u8],
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> Result<(Kind, Plan), EmulateError> {
    let bits = bitness(sregs);
    let mut decoder = Decoder::with_ip(bits, bytes, regs.rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(EmulateError::Decode);
    }
    let mask = match bits {
        64 => u64::MAX,
        32 => 0xffff_ffff,
        _ => 0xffff,
    };
    let next_rip = insn.next_ip() & mask;
    let long = bits == 64;
    let ea = || {
        let operand = (0..insn.op_count())
            .find(|&i| insn.op_kind(i) == iced_x86::OpKind::Memory)
            .unwrap_or(0);
        insn.virtual_address(operand, 0, |r, _, _| reg_value(r, regs, sregs, long))
            .ok_or_else(|| EmulateError::Unsupported(format!("{insn}")))
    };
    match insn.code() {
        Code::Int3 => Ok((Kind::Int3, Plan::Breakpoint { next_rip })),
        Code::Cmpxchg16b_m128 => {
            let linear = ea()?;
            if !linear.is_multiple_of(16) {
                return Ok((Kind::Cmpxchg16b, Plan::Fault(Fault::GP0)));
            }
            Ok((Kind::Cmpxchg16b, Plan::Cmpxchg16b { linear, next_rip }))
        }
        Code::Xrstor_mem | Code::Xrstor64_mem => {
            let linear = ea()?;
            if !linear.is_multiple_of(64) {
                return Ok((Kind::Xrstor, Plan::Fault(Fault::GP0)));
            }
            let requested = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            Ok((
                Kind::Xrstor,
                Plan::Xrstor {
                    linear,
                    requested,
                    next_rip,
                },
            ))
        }
        Code::Popcnt_r16_rm16 | Code::Popcnt_r32_rm32 | Code::Popcnt_r64_rm64 => {
            let src = match insn.op1_kind() {
                iced_x86::OpKind::Register => Source::Reg(insn.op1_register()),
                _ => Source::Mem(ea()?),
            };
            Ok((
                Kind::Popcnt,
                Plan::Popcnt {
                    dst: insn.op0_register(),
                    src,
                    next_rip,
                },
            ))
        }
        // KVM only exits here from kernel code (CPL 0), where clac/stac
        // are valid when the guest's CPUID has SMAP, as the kernel checked.
        Code::Wait => Ok((Kind::Fwait, Plan::Fwait { next_rip })),
        Code::Clac | Code::Stac => Ok((
            Kind::AcFlag,
            Plan::AcFlag {
                set: insn.code() == Code::Stac,
                next_rip,
            },
        )),
        _ => Err(EmulateError::Unsupported(format!("{insn}"))),
    }
}

/// RFLAGS.AC.
const RFLAGS_AC: u64 = 1 << 18;
/// CR0.MP and CR0.TS.
const CR0_MP: u64 = 1 << 1;
const CR0_TS: u64 = 1 << 3;
/// x87 status word: exception summary (an unmasked exception is pending).
const FSW_ES: u16 = 1 << 7;
/// #NM and #MF.
const NM_VECTOR: u8 = 7;
const MF_VECTOR: u8 = 16;

/// What `fwait` does (SDM: WAIT/FWAIT): #NM when CR0.MP and CR0.TS are
/// both set, #MF when an unmasked x87 exception is pending, else nothing.
pub fn fwait_fault(cr0: u64, fsw: u16) -> Option<Fault> {
    if cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
        Some(Fault {
            vector: NM_VECTOR,
            error_code: None,
        })
    } else if fsw & FSW_ES != 0 {
        Some(Fault {
            vector: MF_VECTOR,
            error_code: None,
        })
    } else {
        None
    }
}

/// The 64-bit register behind `r` in `regs`.
fn gpr_mut(regs: &mut kvm_regs, r: Register) -> Option<&mut u64> {
    Some(match r.full_register() {
        Register::RAX => &mut regs.rax,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RBX => &mut regs.rbx,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        _ => return None,
    })
}

/// Arithmetic flags POPCNT writes: OF SF ZF AF CF PF.
const RFLAGS_ARITH: u64 = 0x8d5;

/// `popcnt dst, src`: count the set bits of the source (of `dst`'s
/// width); ZF = (source == 0), OF SF AF CF PF cleared; a 32-bit
/// destination is zero-extended, a 16-bit one keeps the upper bits.
pub fn popcnt(
    regs: &mut kvm_regs,
    mem: &dyn LinearMemory,
    dst: Register,
    src: Source,
    next_rip: u64,
) -> Result<(), EmulateError> {
    let size = dst.size();
    let unsupported = || EmulateError::Unsupported(format!("popcnt to {dst:?}"));
    let value = match src {
        Source::Reg(r) => {
            let v = *gpr_mut(regs, r).ok_or_else(unsupported)?;
            v
        }
        Source::Mem(linear) => {
            let mut b = [0u8; 8];
            mem.read(linear, &mut b[..size])?;
            u64::from_le_bytes(b)
        }
    };
    let (value, count) = match size {
        2 => (value & 0xffff, u64::from((value as u16).count_ones())),
        4 => (value & 0xffff_ffff, u64::from((value as u32).count_ones())),
        8 => (value, u64::from(value.count_ones())),
        _ => return Err(unsupported()),
    };
    let d = gpr_mut(regs, dst).ok_or_else(unsupported)?;
    *d = match size {
        2 => (*d & !0xffff) | count,
        _ => count,
    };
    regs.rflags &= !RFLAGS_ARITH;
    if value == 0 {
        regs.rflags |= RFLAGS_ZF;
    }
    regs.rip = next_rip;
    Ok(())
}

/// Guest memory by linear address, as the emulator needs it.
pub trait LinearMemory {
    /// Read `buf.len()` bytes at `linear`.
    fn read(&self, linear: u64, buf: &mut [u8]) -> Result<(), EmulateError>;
    /// Atomically compare the 16 bytes at `linear` (16-byte aligned) with
    /// `expected` and, if equal, store `new`. Returns the old value.
    fn compare_exchange_u128(
        &self,
        linear: u64,
        expected: u128,
        new: u128,
    ) -> Result<u128, EmulateError>;
}

/// `cmpxchg16b [linear]`: compare RDX:RAX with memory; equal → store
/// RCX:RBX and set ZF; else load memory into RDX:RAX and clear ZF. Other
/// flags are unchanged. RIP is set to `next_rip`. Returns ZF.
pub fn cmpxchg16b(
    regs: &mut kvm_regs,
    mem: &dyn LinearMemory,
    linear: u64,
    next_rip: u64,
) -> Result<bool, EmulateError> {
    let expected = (u128::from(regs.rdx) << 64) | u128::from(regs.rax);
    let new = (u128::from(regs.rcx) << 64) | u128::from(regs.rbx);
    let old = mem.compare_exchange_u128(linear, expected, new)?;
    let equal = old == expected;
    if equal {
        regs.rflags |= RFLAGS_ZF;
    } else {
        regs.rflags &= !RFLAGS_ZF;
        regs.rax = old as u64;
        regs.rdx = (old >> 64) as u64;
    }
    regs.rip = next_rip;
    Ok(equal)
}

/// One XSAVE state component (CPUID leaf 0xD sub-leaf i).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XComponent {
    /// Offset in the standard form (EBX).
    pub offset: u32,
    /// Size in bytes (EAX); 0 if the CPU does not have it.
    pub size: u32,
    /// Aligned to 64 bytes in the compacted form (ECX bit 1).
    pub align64: bool,
}

/// Where each XSAVE component lives; components 0 and 1 live in the
/// legacy region and are not described here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XsaveLayout {
    /// Per component.
    pub components: [XComponent; 64],
}

impl XsaveLayout {
    /// The layout the host CPU reports (what KVM also reports to guests).
    pub fn host() -> &'static XsaveLayout {
        static HOST: std::sync::OnceLock<XsaveLayout> = std::sync::OnceLock::new();
        HOST.get_or_init(|| {
            let mut components = [XComponent::default(); 64];
            for (i, c) in components.iter_mut().enumerate().skip(2) {
                // CPUID leaf 0xD is architectural (a CPU without XSAVE
                // reports zeros).
                let r = core::arch::x86_64::__cpuid_count(0xd, i as u32);
                *c = XComponent {
                    offset: r.ebx,
                    size: r.eax,
                    align64: r.ecx & 2 != 0,
                };
            }
            XsaveLayout { components }
        })
    }

    /// Offsets of the components of `xcomp_bv` in the compacted form.
    fn compacted_offsets(&self, xcomp_bv: u64) -> [usize; 64] {
        let mut offsets = [0usize; 64];
        let mut next = XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE;
        for (i, c) in self.components.iter().enumerate().skip(2) {
            if xcomp_bv & (1 << i) == 0 {
                continue;
            }
            if c.align64 {
                next = next.next_multiple_of(64);
            }
            offsets[i] = next;
            next += c.size as usize;
        }
        offsets
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// `xrstor [linear]` with `requested` = EDX:EAX: the components
/// `requested & xcr0` are read from the guest's XSAVE area (standard or
/// compacted form) into `kvm` (a KVM_GET_XSAVE image, always standard
/// form), or set to their initial state where the area's XSTATE_BV bit is
/// clear; other components are kept. `Ok(Some(fault))` when the
/// instruction faults instead (then nothing changed).
///
/// MXCSR: in the standard form it is loaded from memory whenever SSE or
/// AVX is requested; in the compacted form it belongs to SSE (loaded with
/// it, or reset to 0x1f80 when SSE is initialised).
pub fn xrstor(
    mem: &dyn LinearMemory,
    linear: u64,
    requested: u64,
    xcr0: u64,
    layout: &XsaveLayout,
    kvm: &mut [u8; KVM_XSAVE_SIZE],
) -> Result<Option<Fault>, EmulateError> {
    if !linear.is_multiple_of(64) {
        return Ok(Some(Fault::GP0));
    }
    let mut legacy = [0u8; XSAVE_LEGACY_SIZE];
    mem.read(linear, &mut legacy)?;
    let mut header = [0u8; XSAVE_HEADER_SIZE];
    mem.read(linear.wrapping_add(XSAVE_LEGACY_SIZE as u64), &mut header)?;
    let xstate_bv = le64(&header, 0);
    let xcomp_bv = le64(&header, 8);
    let compacted = xcomp_bv & XCOMP_BV_COMPACTED != 0;
    let bad_header = if compacted {
        xcomp_bv & !XCOMP_BV_COMPACTED & !xcr0 != 0 || xstate_bv & !xcomp_bv != 0
    } else {
        xcomp_bv != 0
    };
    if bad_header || header[16..].iter().any(|b| *b != 0) || xstate_bv & !xcr0 != 0 {
        return Ok(Some(Fault::GP0));
    }
    let rfbm = requested & xcr0;
    let load = xstate_bv & rfbm;
    let (load_mxcsr, mxcsr, mxcsr_from_memory) = if compacted {
        if load & XFEATURE_SSE != 0 {
            (true, le32(&legacy, MXCSR_OFFSET), true)
        } else {
            (rfbm & XFEATURE_SSE != 0, 0x1f80, false)
        }
    } else {
        (
            rfbm & (XFEATURE_SSE | XFEATURE_YMM) != 0,
            le32(&legacy, MXCSR_OFFSET),
            true,
        )
    };
    let mask = match le32(kvm, MXCSR_MASK_OFFSET) {
        0 => MXCSR_MASK_DEFAULT,
        m => m,
    };
    if load_mxcsr && mxcsr_from_memory && mxcsr & !mask != 0 {
        return Ok(Some(Fault::GP0));
    }
    let compacted_at = layout.compacted_offsets(xcomp_bv);
    // Read every component before changing anything.
    let mut parts = Vec::new();
    for i in 2..64u32 {
        if rfbm & (1 << i) == 0 {
            continue;
        }
        let c = layout.components[i as usize];
        let (off, size) = (c.offset as usize, c.size as usize);
        if size == 0 || off < XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE || off + size > KVM_XSAVE_SIZE {
            return Err(EmulateError::Component(i));
        }
        let mut data = vec![0u8; size];
        if load & (1 << i) != 0 {
            let from = if compacted {
                compacted_at[i as usize]
            } else {
                off
            };
            mem.read(linear.wrapping_add(from as u64), &mut data)?;
        }
        parts.push((off, data));
    }

    let mut bv = le64(kvm, XSAVE_LEGACY_SIZE);
    if rfbm & XFEATURE_FP != 0 {
        if load & XFEATURE_FP != 0 {
            kvm[..MXCSR_OFFSET].copy_from_slice(&legacy[..MXCSR_OFFSET]);
            kvm[ST_OFFSET..XMM_OFFSET].copy_from_slice(&legacy[ST_OFFSET..XMM_OFFSET]);
        } else {
            // FCW 0x37f, everything else 0 (FTW abridged 0 = all empty).
            kvm[..MXCSR_OFFSET].fill(0);
            kvm[..2].copy_from_slice(&0x37fu16.to_le_bytes());
            kvm[ST_OFFSET..XMM_OFFSET].fill(0);
        }
    }
    if rfbm & XFEATURE_SSE != 0 {
        let xmm = XMM_OFFSET..XMM_OFFSET + XMM_SIZE;
        if load & XFEATURE_SSE != 0 {
            kvm[xmm.clone()].copy_from_slice(&legacy[xmm]);
        } else {
            kvm[xmm].fill(0);
        }
    }
    for (off, data) in parts {
        kvm[off..off + data.len()].copy_from_slice(&data);
    }
    bv = (bv & !rfbm) | load;
    if load_mxcsr {
        kvm[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&mxcsr.to_le_bytes());
        // KVM takes MXCSR from the buffer only when FP, SSE or YMM is
        // marked present; SSE's data in the buffer is its state (or zeros,
        // its initial state), so marking it present changes nothing else.
        if bv & (XFEATURE_FP | XFEATURE_SSE | XFEATURE_YMM) == 0 {
            bv |= XFEATURE_SSE;
        }
    }
    kvm[XSAVE_LEGACY_SIZE..XSAVE_LEGACY_SIZE + 8].copy_from_slice(&bv.to_le_bytes());
    Ok(None)
}

/// [`LinearMemory`] over a vCPU's page tables and the VM's RAM.
struct VcpuMemory<'a> {
    fd: &'a VcpuFd,
    mem: &'a GuestMemoryMmap,
    paging: bool,
}

impl VcpuMemory<'_> {
    /// Guest-physical address of `linear`; `write` checks writability.
    fn phys(&self, linear: u64, write: bool) -> Result<u64, EmulateError> {
        if !self.paging {
            return Ok(linear & 0xffff_ffff);
        }
        let t = self
            .fd
            .translate_gva(linear)
            .map_err(kvm_err("translate guest address"))?;
        if t.valid == 0 {
            return Err(EmulateError::Unmapped(linear));
        }
        if write && t.writeable == 0 {
            return Err(EmulateError::ReadOnly(linear));
        }
        Ok(t.physical_address)
    }
}

impl LinearMemory for VcpuMemory<'_> {
    fn read(&self, linear: u64, buf: &mut [u8]) -> Result<(), EmulateError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = linear.wrapping_add(done as u64);
            let in_page = (0x1000 - (at & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let p = self.phys(at, false)?;
            self.mem
                .read_slice(&mut buf[done..done + n], GuestAddress(p))
                .map_err(|_| EmulateError::NotRam(p))?;
            done += n;
        }
        Ok(())
    }

    fn compare_exchange_u128(
        &self,
        linear: u64,
        expected: u128,
        new: u128,
    ) -> Result<u128, EmulateError> {
        // 16-byte aligned, so the operand is within one page.
        let p = self.phys(linear, true)?;
        let slice = self
            .mem
            .get_slice(GuestAddress(p), 16)
            .map_err(|_| EmulateError::NotRam(p))?;
        let guard = slice.ptr_guard_mut();
        let ptr = guard.as_ptr();
        if !(ptr as usize).is_multiple_of(16) {
            // Guest RAM is page-aligned in the host, so this cannot happen
            // for an aligned guest address; refuse rather than tear.
            return Err(EmulateError::NotRam(p));
        }
        // SAFETY: `ptr` points at 16 bytes of guest RAM mapped for as long
        // as `guard` lives, and is 16-byte aligned as cmpxchg16b requires.
        Ok(unsafe { lock_cmpxchg16b(ptr, expected, new) })
    }
}

/// `lock cmpxchg16b [ptr]`; returns the old value.
///
/// # Safety
/// `ptr` must be valid for 16 bytes of reads and writes and 16-aligned.
unsafe fn lock_cmpxchg16b(ptr: *mut u8, expected: u128, new: u128) -> u128 {
    let mut lo = expected as u64;
    let mut hi = (expected >> 64) as u64;
    // SAFETY: the caller guarantees `ptr`; RBX is reserved by LLVM, so the
    // new low half is swapped into it and RBX restored afterwards.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b xmmword ptr [{ptr}]",
            "xchg {new_lo}, rbx",
            ptr = in(reg) ptr,
            new_lo = inout(reg) new as u64 => _,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") (new >> 64) as u64,
            options(nostack),
        );
    }
    (u128::from(hi) << 64) | u128::from(lo)
}

/// Deliver exception `fault` to the vCPU with KVM_SET_VCPU_EVENTS, as an
/// exception already being injected (`exception.injected = 1`).
///
/// For #BP (a trap) the caller first sets RIP past the `int3`, so that the
/// handler's return address is the next instruction; for faults RIP stays
/// at the faulting instruction.
pub fn inject_exception(fd: &VcpuFd, fault: Fault) -> Result<(), EmulateError> {
    let mut ev = fd.get_vcpu_events().map_err(kvm_err("get vCPU events"))?;
    ev.exception.injected = 1;
    ev.exception.pending = 0;
    ev.exception.nr = fault.vector;
    ev.exception.has_error_code = u8::from(fault.error_code.is_some());
    ev.exception.error_code = fault.error_code.unwrap_or(0);
    ev.exception_has_payload = 0;
    ev.exception_payload = 0;
    // Only the exception: leave NMI, SIPI, shadow and SMM state alone.
    ev.flags = 0;
    fd.set_vcpu_events(&ev).map_err(kvm_err("set vCPU events"))
}

/// Complete the instruction KVM's emulator failed on, if vlab can.
/// Called after `KVM_EXIT_INTERNAL_ERROR` with `KVM_INTERNAL_ERROR_EMULATION`.
pub fn complete(fd: &VcpuFd, mem: &GuestMemoryMmap) -> Result<Outcome, EmulateError> {
    let mut regs = fd.get_regs().map_err(kvm_err("get registers"))?;
    let sregs = fd.get_sregs().map_err(kvm_err("get special registers"))?;
    let vmem = VcpuMemory {
        fd,
        mem,
        paging: sregs.cr0 & CR0_PG != 0,
    };
    let rip_linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut bytes = [0u8; MAX_INSN_LEN];
    // Read as much as is mapped: the instruction may end before a page
    // that is not present.
    let first = (0x1000 - (rip_linear & 0xfff)) as usize;
    let first = first.min(MAX_INSN_LEN);
    vmem.read(rip_linear, &mut bytes[..first])?;
    let mut len = first;
    if first < MAX_INSN_LEN
        && vmem
            .read(rip_linear + first as u64, &mut bytes[first..])
            .is_ok()
    {
        len = MAX_INSN_LEN;
    }
    let (kind, plan) = plan(&bytes[..len], &regs, &sregs)?;
    let outcome = match plan {
        Plan::Fault(f) => {
            inject_exception(fd, f)?;
            Outcome::Faulted(kind, f)
        }
        Plan::Breakpoint { next_rip } => {
            regs.rip = next_rip;
            fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
            inject_exception(
                fd,
                Fault {
                    vector: BP_VECTOR,
                    error_code: None,
                },
            )?;
            Outcome::Done(kind)
        }
        Plan::Fwait { next_rip } => {
            let fpu = fd.get_fpu().map_err(kvm_err("get FPU"))?;
            match fwait_fault(sregs.cr0, fpu.fsw) {
                Some(f) => {
                    inject_exception(fd, f)?;
                    Outcome::Faulted(kind, f)
                }
                None => {
                    regs.rip = next_rip;
                    fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
                    Outcome::Done(kind)
                }
            }
        }
        Plan::AcFlag { set, next_rip } => {
            if set {
                regs.rflags |= RFLAGS_AC;
            } else {
                regs.rflags &= !RFLAGS_AC;
            }
            regs.rip = next_rip;
            fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
            Outcome::Done(kind)
        }
        Plan::Popcnt { dst, src, next_rip } => {
            popcnt(&mut regs, &vmem, dst, src, next_rip)?;
            fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
            Outcome::Done(kind)
        }
        Plan::Cmpxchg16b { linear, next_rip } => {
            cmpxchg16b(&mut regs, &vmem, linear, next_rip)?;
            fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
            Outcome::Done(kind)
        }
        Plan::Xrstor {
            linear,
            requested,
            next_rip,
        } => {
            let xcrs = fd.get_xcrs().map_err(kvm_err("get XCRs"))?;
            let xcr0 = xcrs
                .xcrs
                .iter()
                .take(xcrs.nr_xcrs as usize)
                .find(|x| x.xcr == 0)
                .map(|x| x.value)
                .unwrap_or(XFEATURE_FP | XFEATURE_SSE);
            let mut xsave: kvm_xsave = fd.get_xsave().map_err(kvm_err("get XSAVE"))?;
            let mut image = [0u8; KVM_XSAVE_SIZE];
            for (chunk, word) in image.chunks_exact_mut(4).zip(xsave.region.iter()) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            match xrstor(
                &vmem,
                linear,
                requested,
                xcr0,
                XsaveLayout::host(),
                &mut image,
            )? {
                Some(f) => {
                    inject_exception(fd, f)?;
                    Outcome::Faulted(kind, f)
                }
                None => {
                    for (chunk, word) in image.chunks_exact(4).zip(xsave.region.iter_mut()) {
                        *word = le32(chunk, 0);
                    }
                    // SAFETY: `xsave` is a full 4 KiB kvm_xsave; vlab never
                    // enables dynamic XSTATE features (AMX), so KVM reads no
                    // more than that.
                    unsafe { fd.set_xsave(&xsave) }.map_err(kvm_err("set XSAVE"))?;
                    regs.rip = next_rip;
                    fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
                    Outcome::Done(kind)
                }
            }
        }
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fwait_is_a_nop_unless_ts_or_a_pending_x87_exception() {
        assert_eq!(fwait_fault(0x8005_0033, 0), None);
        assert_eq!(
            fwait_fault(0x8005_0033 | CR0_TS, 0x0080).map(|f| f.vector),
            Some(NM_VECTOR)
        );
        assert_eq!(
            fwait_fault(0x8005_0031, 0x0080).map(|f| f.vector),
            Some(MF_VECTOR)
        );
        // TS without MP: fwait does not fault on TS.
        assert_eq!(fwait_fault(CR0_TS, 0), None);
        let regs = kvm_regs {
            rip: 0x1000,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.l = 1;
        sregs.efer = 0x500;
        sregs.cr0 = 0x8000_0011;
        let (kind, plan) = plan(&[0x9b], &regs, &sregs).unwrap();
        assert_eq!(kind, Kind::Fwait);
        assert_eq!(plan, Plan::Fwait { next_rip: 0x1001 });
    }

    use super::*;
    use kvm_bindings::kvm_segment;
    use std::cell::RefCell;

    /// Flat memory at linear `base`.
    struct FakeMem {
        base: u64,
        bytes: RefCell<Vec<u8>>,
    }

    impl FakeMem {
        fn new(base: u64, len: usize) -> FakeMem {
            FakeMem {
                base,
                bytes: RefCell::new(vec![0; len]),
            }
        }
        fn range(&self, linear: u64, len: usize) -> Result<std::ops::Range<usize>, EmulateError> {
            let off = linear
                .checked_sub(self.base)
                .ok_or(EmulateError::Unmapped(linear))? as usize;
            if off + len > self.bytes.borrow().len() {
                return Err(EmulateError::Unmapped(linear));
            }
            Ok(off..off + len)
        }
        fn write(&self, linear: u64, data: &[u8]) {
            let r = self.range(linear, data.len()).unwrap();
            self.bytes.borrow_mut()[r].copy_from_slice(data);
        }
        fn get(&self, linear: u64, len: usize) -> Vec<u8> {
            let r = self.range(linear, len).unwrap();
            self.bytes.borrow()[r].to_vec()
        }
    }

    impl LinearMemory for FakeMem {
        fn read(&self, linear: u64, buf: &mut [u8]) -> Result<(), EmulateError> {
            let r = self.range(linear, buf.len())?;
            buf.copy_from_slice(&self.bytes.borrow()[r]);
            Ok(())
        }
        fn compare_exchange_u128(
            &self,
            linear: u64,
            expected: u128,
            new: u128,
        ) -> Result<u128, EmulateError> {
            let r = self.range(linear, 16)?;
            let mut b = self.bytes.borrow_mut();
            let mut v = [0u8; 16];
            v.copy_from_slice(&b[r.clone()]);
            let old = u128::from_le_bytes(v);
            if old == expected {
                b[r].copy_from_slice(&new.to_le_bytes());
            }
            Ok(old)
        }
    }

    fn long_mode() -> kvm_sregs {
        kvm_sregs {
            efer: EFER_LMA | (1 << 8),
            cr0: CR0_PG | 1,
            cs: kvm_segment {
                l: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn prot32() -> kvm_sregs {
        kvm_sregs {
            cr0: 1,
            cs: kvm_segment {
                db: 1,
                ..Default::default()
            },
            ds: kvm_segment {
                base: 0x1000,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn int3_is_a_breakpoint_returning_after_it() {
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            ..Default::default()
        };
        assert_eq!(
            plan(&[0xcc, 0x90], &regs, &long_mode()),
            Ok((
                Kind::Int3,
                Plan::Breakpoint {
                    next_rip: 0xffff_ffff_8100_0001
                }
            ))
        );
        // `int 3` (cd 03) is a different instruction: KVM emulates it.
        assert!(matches!(
            plan(&[0xcd, 0x03], &regs, &long_mode()),
            Err(EmulateError::Unsupported(_))
        ));
        // 32-bit mode wraps at 4 GiB.
        let regs = kvm_regs {
            rip: 0xffff_ffff,
            ..Default::default()
        };
        assert_eq!(
            plan(&[0xcc], &regs, &prot32()),
            Ok((Kind::Int3, Plan::Breakpoint { next_rip: 0 }))
        );
    }

    #[test]
    fn cmpxchg16b_operand_address_is_computed_from_registers() {
        // The instruction Linux 6.1 stopped on: lock cmpxchg16b [rbp+0x20].
        let bytes = [0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20, 0x74, 0x66];
        let regs = kvm_regs {
            rip: 0xffff_ffff_8132_ae50,
            rbp: 0xffff_8880_0123_4560,
            ..Default::default()
        };
        assert_eq!(
            plan(&bytes, &regs, &long_mode()),
            Ok((
                Kind::Cmpxchg16b,
                Plan::Cmpxchg16b {
                    linear: 0xffff_8880_0123_4580,
                    next_rip: 0xffff_ffff_8132_ae56
                }
            ))
        );
        // gs: and a scaled index: cmpxchg16b gs:[rax+rcx*8+0x10].
        let bytes = [0x65, 0x48, 0x0f, 0xc7, 0x4c, 0xc8, 0x10];
        let mut s = long_mode();
        s.gs.base = 0x10_0000;
        s.ds.base = 0x5555; // ignored in long mode
        let regs = kvm_regs {
            rip: 0x1000,
            rax: 0x100,
            rcx: 2,
            ..Default::default()
        };
        assert_eq!(
            plan(&bytes, &regs, &s),
            Ok((
                Kind::Cmpxchg16b,
                Plan::Cmpxchg16b {
                    linear: 0x10_0120,
                    next_rip: 0x1007
                }
            ))
        );
        // RIP-relative: cmpxchg16b [rip+0xf8].
        let bytes = [0x48, 0x0f, 0xc7, 0x0d, 0xf8, 0x00, 0x00, 0x00];
        let regs = kvm_regs {
            rip: 0x2000,
            ..Default::default()
        };
        assert_eq!(
            plan(&bytes, &regs, &long_mode()),
            Ok((
                Kind::Cmpxchg16b,
                Plan::Cmpxchg16b {
                    linear: 0x2100,
                    next_rip: 0x2008
                }
            ))
        );
    }

    #[test]
    fn misaligned_cmpxchg16b_raises_gp0() {
        let bytes = [0x48, 0x0f, 0xc7, 0x0e]; // cmpxchg16b [rsi]
        let regs = kvm_regs {
            rsi: 0x1008,
            ..Default::default()
        };
        assert_eq!(
            plan(&bytes, &regs, &long_mode()),
            Ok((Kind::Cmpxchg16b, Plan::Fault(Fault::GP0)))
        );
    }

    #[test]
    fn cmpxchg16b_swaps_on_match_and_loads_on_mismatch() {
        let m = FakeMem::new(0x1000, 64);
        let mut old = [0u8; 16];
        old[..8].copy_from_slice(&0x1111u64.to_le_bytes());
        old[8..].copy_from_slice(&0x2222u64.to_le_bytes());
        m.write(0x1010, &old);
        let mut regs = kvm_regs {
            rax: 0x1111,
            rdx: 0x2222,
            rbx: 0xaaaa,
            rcx: 0xbbbb,
            rflags: 0x2 | 1, // CF set: must stay
            ..Default::default()
        };
        assert_eq!(cmpxchg16b(&mut regs, &m, 0x1010, 0x77), Ok(true));
        assert_eq!(regs.rflags, 0x2 | 1 | RFLAGS_ZF);
        assert_eq!(regs.rip, 0x77);
        assert_eq!((regs.rax, regs.rdx), (0x1111, 0x2222));
        let got = m.get(0x1010, 16);
        assert_eq!(le64(&got, 0), 0xaaaa);
        assert_eq!(le64(&got, 8), 0xbbbb);

        // Now memory holds bbbb:aaaa; RDX:RAX 2222:1111 does not match.
        regs.rcx = 0xdead;
        assert_eq!(cmpxchg16b(&mut regs, &m, 0x1010, 0x99), Ok(false));
        assert_eq!(regs.rflags & RFLAGS_ZF, 0);
        assert_eq!(regs.rflags & 1, 1);
        assert_eq!((regs.rax, regs.rdx), (0xaaaa, 0xbbbb));
        let got = m.get(0x1010, 16);
        assert_eq!((le64(&got, 0), le64(&got, 8)), (0xaaaa, 0xbbbb));

        assert_eq!(
            cmpxchg16b(&mut regs, &m, 0x9000, 0),
            Err(EmulateError::Unmapped(0x9000))
        );
    }

    #[test]
    fn host_lock_cmpxchg16b_matches_the_semantics() {
        #[repr(align(16))]
        struct A([u8; 16]);
        let mut a = A([0; 16]);
        a.0.copy_from_slice(&5u128.to_le_bytes());
        // SAFETY: `a` is 16 bytes, 16-aligned and exclusively borrowed.
        let old = unsafe { lock_cmpxchg16b(a.0.as_mut_ptr(), 5, 1 << 100) };
        assert_eq!(old, 5);
        assert_eq!(u128::from_le_bytes(a.0), 1 << 100);
        // SAFETY: as above.
        let old = unsafe { lock_cmpxchg16b(a.0.as_mut_ptr(), 5, 9) };
        assert_eq!(old, 1 << 100);
        assert_eq!(u128::from_le_bytes(a.0), 1 << 100);
    }

    #[test]
    fn xrstor_plan_takes_edx_eax_and_checks_alignment() {
        // xrstor64 [rdi] = 48 0f ae 2f; xrstor [rdi] = 0f ae 2f.
        let regs = kvm_regs {
            rip: 0x500,
            rdi: 0x4000,
            rax: 0xffff_ffff_0000_0007,
            rdx: 0x1,
            ..Default::default()
        };
        let want = Plan::Xrstor {
            linear: 0x4000,
            requested: 0x1_0000_0007,
            next_rip: 0x504,
        };
        assert_eq!(
            plan(&[0x48, 0x0f, 0xae, 0x2f], &regs, &long_mode()),
            Ok((Kind::Xrstor, want))
        );
        // 32-bit code with a DS base.
        let regs32 = kvm_regs {
            rip: 0x500,
            rdi: 0x3000,
            rax: 3,
            ..Default::default()
        };
        assert_eq!(
            plan(&[0x0f, 0xae, 0x2f], &regs32, &prot32()),
            Ok((
                Kind::Xrstor,
                Plan::Xrstor {
                    linear: 0x4000,
                    requested: 3,
                    next_rip: 0x503
                }
            ))
        );
        let mut bad = regs;
        bad.rdi = 0x4020;
        assert_eq!(
            plan(&[0x48, 0x0f, 0xae, 0x2f], &bad, &long_mode()),
            Ok((Kind::Xrstor, Plan::Fault(Fault::GP0)))
        );
        // Other instructions are not handled.
        assert!(matches!(
            plan(&[0x0f, 0x0b], &regs, &long_mode()),
            Err(EmulateError::Unsupported(s)) if s.contains("ud2")
        ));
        assert_eq!(
            plan(&[0x0f], &regs, &long_mode()),
            Err(EmulateError::Decode)
        );
    }

    fn layout() -> XsaveLayout {
        let c = |offset, size, align64| XComponent {
            offset,
            size,
            align64,
        };
        let mut components = [XComponent::default(); 64];
        components[2] = c(576, 256, false);
        components[5] = c(1088, 64, false);
        components[9] = c(2688, 8, true);
        XsaveLayout { components }
    }

    const AREA: u64 = 0x10_000;

    /// A guest XSAVE area with recognisable contents.
    fn guest_area(xstate_bv: u64) -> FakeMem {
        let m = FakeMem::new(AREA, 4096);
        let mut legacy = [0u8; 512];
        legacy[0..2].copy_from_slice(&0x27fu16.to_le_bytes()); // FCW
        legacy[4] = 0x80; // FTW: ST7 valid
        legacy[24..28].copy_from_slice(&0x1fa0u32.to_le_bytes()); // MXCSR
        for (i, b) in legacy[ST_OFFSET..XMM_OFFSET].iter_mut().enumerate() {
            *b = 0x40 | (i as u8 & 0x3f);
        }
        for (i, b) in legacy[XMM_OFFSET..XMM_OFFSET + XMM_SIZE]
            .iter_mut()
            .enumerate()
        {
            *b = 0x80 | (i as u8 & 0x7f);
        }
        m.write(AREA, &legacy);
        m.write(AREA + 512, &xstate_bv.to_le_bytes());
        m.write(AREA + 576, &[0xee; 256]); // YMM_Hi128
        m.write(AREA + 2688, &0x5555_5554u32.to_le_bytes()); // PKRU
        m
    }

    /// A KVM image with everything non-initial and XSTATE_BV = 0x207.
    fn kvm_image() -> Box<[u8; KVM_XSAVE_SIZE]> {
        let mut k = Box::new([0x11u8; KVM_XSAVE_SIZE]);
        k[512..576].fill(0);
        k[512..520].copy_from_slice(&0x207u64.to_le_bytes());
        k[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        k[MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4].copy_from_slice(&0xffffu32.to_le_bytes());
        k
    }

    #[test]
    fn xrstor_loads_requested_components_and_keeps_the_rest() {
        let m = guest_area(0x7);
        let mut k = kvm_image();
        // Request x87 + SSE only; XCR0 = x87|SSE|AVX|PKRU.
        let r = xrstor(&m, AREA, 0x3, 0x207, &layout(), &mut k);
        assert_eq!(r, Ok(None));
        assert_eq!(&k[0..2], &0x27fu16.to_le_bytes());
        assert_eq!(k[4], 0x80);
        assert_eq!(le32(&k[..], MXCSR_OFFSET), 0x1fa0);
        assert_eq!(le32(&k[..], MXCSR_MASK_OFFSET), 0xffff, "mask kept");
        assert_eq!(k[ST_OFFSET], 0x40);
        assert_eq!(k[XMM_OFFSET], 0x80);
        assert_eq!(k[XMM_OFFSET + 255], 0x80 | 0x7f);
        // AVX and PKRU not requested: untouched.
        assert!(k[576..832].iter().all(|b| *b == 0x11));
        assert!(k[2688..2696].iter().all(|b| *b == 0x11));
        assert_eq!(le64(&k[..], 512), 0x207);
    }

    #[test]
    fn xrstor_initialises_components_whose_xstate_bv_bit_is_clear() {
        // Area has only SSE and AVX present; request all of XCR0.
        let m = guest_area(0x6);
        let mut k = kvm_image();
        assert_eq!(
            xrstor(&m, AREA, u64::MAX, 0x207, &layout(), &mut k),
            Ok(None)
        );
        // x87 initialised.
        assert_eq!(&k[0..2], &0x37fu16.to_le_bytes());
        assert!(k[2..MXCSR_OFFSET].iter().all(|b| *b == 0));
        assert!(k[ST_OFFSET..XMM_OFFSET].iter().all(|b| *b == 0));
        // SSE and AVX loaded, MXCSR loaded.
        assert_eq!(k[XMM_OFFSET + 1], 0x81);
        assert!(k[576..832].iter().all(|b| *b == 0xee));
        assert_eq!(le32(&k[..], MXCSR_OFFSET), 0x1fa0);
        // PKRU initialised to 0.
        assert!(k[2688..2696].iter().all(|b| *b == 0));
        assert_eq!(le64(&k[..], 512), 0x6);
    }

    #[test]
    fn xrstor_keeps_mxcsr_visible_to_kvm_when_sse_is_initial() {
        // XSTATE_BV = 0 (all initial), request SSE: XMM zero, MXCSR from
        // memory, and SSE marked present so KVM takes the MXCSR.
        let m = guest_area(0);
        let mut k = kvm_image();
        k[512..520].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(xrstor(&m, AREA, 0x2, 0x207, &layout(), &mut k), Ok(None));
        assert!(k[XMM_OFFSET..XMM_OFFSET + XMM_SIZE].iter().all(|b| *b == 0));
        assert_eq!(le32(&k[..], MXCSR_OFFSET), 0x1fa0);
        assert_eq!(le64(&k[..], 512), XFEATURE_SSE);
    }

    #[test]
    fn xrstor_faults_and_refusals() {
        let layout = layout();
        // XSTATE_BV bit outside XCR0 → #GP(0), nothing changed.
        let m = guest_area(0x8);
        let mut k = kvm_image();
        let before = k.clone();
        assert_eq!(
            xrstor(&m, AREA, 3, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        assert_eq!(k, before);
        // Reserved header bytes.
        let m = guest_area(0x3);
        m.write(AREA + 512 + 20, &[1]);
        assert_eq!(
            xrstor(&m, AREA, 3, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        // Reserved MXCSR bits.
        let m = guest_area(0x3);
        m.write(AREA + 24, &0x1_0000u32.to_le_bytes());
        assert_eq!(
            xrstor(&m, AREA, 3, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        // Misaligned.
        assert_eq!(
            xrstor(&m, AREA + 16, 3, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        // Compacted: XSTATE_BV bit not in XCOMP_BV, XCOMP_BV beyond XCR0.
        let m = guest_area(0x7);
        m.write(AREA + 520, &(XCOMP_BV_COMPACTED | 3).to_le_bytes());
        assert_eq!(
            xrstor(&m, AREA, 7, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        m.write(AREA + 520, &(XCOMP_BV_COMPACTED | 0x407).to_le_bytes());
        assert_eq!(
            xrstor(&m, AREA, 7, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        // Standard form with a nonzero XCOMP_BV.
        m.write(AREA + 520, &4u64.to_le_bytes());
        assert_eq!(
            xrstor(&m, AREA, 7, 0x207, &layout, &mut k),
            Ok(Some(Fault::GP0))
        );
        // A component vlab has no layout for.
        let m = guest_area(0x3);
        assert_eq!(
            xrstor(&m, AREA, 1 << 3, 0x20f, &layout, &mut k),
            Err(EmulateError::Component(3))
        );
        // Unmapped area.
        assert_eq!(
            xrstor(&m, 0x40_0000, 3, 0x207, &layout, &mut k),
            Err(EmulateError::Unmapped(0x40_0000))
        );
        assert_eq!(k, before);
    }

    #[test]
    fn xrstor_compacted_form_packs_components_after_the_header() {
        // XCOMP_BV = AVX | opmask | PKRU: AVX at 576 (256 bytes), opmask
        // at 832 (64), PKRU 64-aligned at 896.
        let m = guest_area(0);
        m.write(AREA + 512, &0x224u64.to_le_bytes());
        m.write(AREA + 520, &(XCOMP_BV_COMPACTED | 0x227).to_le_bytes());
        m.write(AREA + 576, &[0xa1; 256]);
        m.write(AREA + 832, &[0xb2; 64]);
        m.write(AREA + 896, &0x1234_5678u32.to_le_bytes());
        let mut k = kvm_image();
        assert_eq!(
            xrstor(&m, AREA, u64::MAX, 0x227, &layout(), &mut k),
            Ok(None)
        );
        assert!(k[576..832].iter().all(|b| *b == 0xa1));
        assert!(k[1088..1152].iter().all(|b| *b == 0xb2));
        assert_eq!(le32(&k[..], 2688), 0x1234_5678);
        // SSE initial: XMM zero and, in the compacted form, MXCSR 0x1f80.
        assert!(k[XMM_OFFSET..XMM_OFFSET + XMM_SIZE].iter().all(|b| *b == 0));
        assert_eq!(le32(&k[..], MXCSR_OFFSET), 0x1f80);
        assert_eq!(&k[0..2], &0x37fu16.to_le_bytes());
        assert_eq!(le64(&k[..], 512), 0x224);
    }

    #[test]
    fn xrstor_compacted_all_initial_like_linux_boot() {
        // Linux 6.1's fpu init: XSTATE_BV 0, XCOMP_BV bit 63 | features.
        let m = guest_area(0);
        m.write(AREA + 520, &(XCOMP_BV_COMPACTED | 0x7).to_le_bytes());
        let mut k = kvm_image();
        assert_eq!(xrstor(&m, AREA, u64::MAX, 0x7, &layout(), &mut k), Ok(None));
        assert!(k[576..832].iter().all(|b| *b == 0));
        assert_eq!(le32(&k[..], MXCSR_OFFSET), 0x1f80);
        assert_eq!(le64(&k[..], 512), 0x200 | XFEATURE_SSE, "PKRU kept");
    }

    #[test]
    fn clac_and_stac_plan_the_ac_flag() {
        let regs = kvm_regs {
            rip: 0x10,
            ..Default::default()
        };
        assert_eq!(
            plan(&[0x0f, 0x01, 0xca, 0xfc], &regs, &long_mode()),
            Ok((
                Kind::AcFlag,
                Plan::AcFlag {
                    set: false,
                    next_rip: 0x13
                }
            ))
        );
        assert_eq!(
            plan(&[0x0f, 0x01, 0xcb], &regs, &long_mode()),
            Ok((
                Kind::AcFlag,
                Plan::AcFlag {
                    set: true,
                    next_rip: 0x13
                }
            ))
        );
    }

    #[test]
    fn stats_count_by_kind() {
        let s = EmulationStats::default();
        s.count(Outcome::Done(Kind::Int3));
        s.count(Outcome::Done(Kind::Cmpxchg16b));
        s.count(Outcome::Done(Kind::Cmpxchg16b));
        s.count(Outcome::Faulted(Kind::Xrstor, Fault::GP0));
        s.count(Outcome::Done(Kind::Popcnt));
        assert_eq!(s.snapshot(), (1, 2, 0, 1, 1));
    }

    #[test]
    fn popcnt_counts_bits_sets_zf_and_clears_the_other_flags() {
        // The instruction Linux 6.1 stopped on next: popcnt rax, rdi.
        let bytes = [0xf3, 0x48, 0x0f, 0xb8, 0xc7];
        let mut regs = kvm_regs {
            rip: 0x1000,
            rdi: 0xf0f0_0000_0000_0001,
            rax: 0x1234,
            rflags: 0x2 | 0x8d5,
            ..Default::default()
        };
        let (kind, p) = plan(&bytes, &regs, &long_mode()).unwrap();
        assert_eq!(kind, Kind::Popcnt);
        let Plan::Popcnt { dst, src, next_rip } = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            (dst, src, next_rip),
            (Register::RAX, Source::Reg(Register::RDI), 0x1005)
        );
        let m = FakeMem::new(0x8000, 64);
        popcnt(&mut regs, &m, dst, src, next_rip).unwrap();
        assert_eq!((regs.rax, regs.rflags, regs.rip), (9, 0x2, 0x1005));

        // popcnt ecx, dword [rsi]: zero source → ZF, upper half cleared.
        regs.rsi = 0x8010;
        regs.rcx = u64::MAX;
        let (_, p) = plan(&[0xf3, 0x0f, 0xb8, 0x0e], &regs, &long_mode()).unwrap();
        let Plan::Popcnt { dst, src, next_rip } = p else {
            panic!("{p:?}")
        };
        assert_eq!(src, Source::Mem(0x8010));
        popcnt(&mut regs, &m, dst, src, next_rip).unwrap();
        assert_eq!((regs.rcx, regs.rflags), (0, 0x2 | RFLAGS_ZF));

        // popcnt dx, bx keeps RDX's upper bits.
        regs.rbx = 0xffff_ffff_0000_0007;
        regs.rdx = 0xaaaa_bbbb_cccc_dddd;
        let (_, p) = plan(&[0x66, 0xf3, 0x0f, 0xb8, 0xd3], &regs, &long_mode()).unwrap();
        let Plan::Popcnt { dst, src, next_rip } = p else {
            panic!("{p:?}")
        };
        popcnt(&mut regs, &m, dst, src, next_rip).unwrap();
        assert_eq!(regs.rdx, 0xaaaa_bbbb_cccc_0003);
        assert_eq!(regs.rflags & RFLAGS_ZF, 0);
    }
}
