//! The thin KVM glue: guest memory as the vCPU sees it, exception
//! injection, and [`complete`].

use super::xsave::le32;
use super::*;

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

impl VcpuMemory<'_> {
    /// Write `buf` at `linear` (within one page).
    fn write_small(&self, linear: u64, buf: &[u8]) -> Result<(), EmulateError> {
        let p = self.phys(linear, true)?;
        if (linear & 0xfff) as usize + buf.len() > 0x1000 {
            return Err(EmulateError::Unsupported("operand crosses a page".into()));
        }
        self.mem
            .write_slice(buf, GuestAddress(p))
            .map_err(|_| EmulateError::NotRam(p))
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
pub(super) unsafe fn lock_cmpxchg16b(ptr: *mut u8, expected: u128, new: u128) -> u128 {
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
        Plan::Ldmxcsr { linear, next_rip } => {
            let mut b = [0u8; 4];
            vmem.read(linear, &mut b)?;
            let value = u32::from_le_bytes(b);
            match ldmxcsr_fault(value) {
                Some(f) => {
                    inject_exception(fd, f)?;
                    Outcome::Faulted(kind, f)
                }
                None => {
                    let mut fpu = fd.get_fpu().map_err(kvm_err("get FPU"))?;
                    fpu.mxcsr = value;
                    fd.set_fpu(&fpu).map_err(kvm_err("set FPU"))?;
                    regs.rip = next_rip;
                    fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
                    Outcome::Done(kind)
                }
            }
        }
        Plan::Stmxcsr { linear, next_rip } => {
            let fpu = fd.get_fpu().map_err(kvm_err("get FPU"))?;
            vmem.write_small(linear, &fpu.mxcsr.to_le_bytes())?;
            regs.rip = next_rip;
            fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
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
