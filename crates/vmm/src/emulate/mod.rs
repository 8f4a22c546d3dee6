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
    /// `ldmxcsr`/`stmxcsr` (and their VEX forms).
    Mxcsr,
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
    /// `ldmxcsr`/`stmxcsr` completed.
    pub mxcsr: AtomicU64,
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
            Outcome::Done(Kind::Mxcsr) => &self.mxcsr,
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
    /// `ldmxcsr m32`: load MXCSR from `linear`.
    Ldmxcsr {
        /// Linear address of the operand.
        linear: u64,
        /// Address of the next instruction.
        next_rip: u64,
    },
    /// `stmxcsr m32`: store MXCSR at `linear`.
    Stmxcsr {
        /// Linear address of the operand.
        linear: u64,
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
        Code::Ldmxcsr_m32 | Code::VEX_Vldmxcsr_m32 => Ok((
            Kind::Mxcsr,
            Plan::Ldmxcsr {
                linear: ea()?,
                next_rip,
            },
        )),
        Code::Stmxcsr_m32 | Code::VEX_Vstmxcsr_m32 => Ok((
            Kind::Mxcsr,
            Plan::Stmxcsr {
                linear: ea()?,
                next_rip,
            },
        )),
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

/// `ldmxcsr` of `value`: #GP(0) if it sets a reserved bit (SDM: bits
/// outside MXCSR_MASK; vlab uses the architectural default mask).
pub fn ldmxcsr_fault(value: u32) -> Option<Fault> {
    (value & !MXCSR_MASK_DEFAULT != 0).then_some(Fault::GP0)
}

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

mod kvm;
mod xsave;

pub use kvm::{complete, inject_exception};
pub use xsave::{xrstor, XComponent, XsaveLayout};

#[cfg(test)]
mod tests;
