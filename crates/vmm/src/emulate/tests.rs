//! Unit tests of the decision and semantics halves (no KVM).

use super::kvm::lock_cmpxchg16b;
use super::xsave::{le32, le64};
use super::*;
use kvm_bindings::kvm_segment;
use std::cell::RefCell;

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

#[test]
fn ldmxcsr_and_stmxcsr_decode_with_their_operand_and_check_reserved_bits() {
    let regs = kvm_regs {
        rip: 0x1000,
        rsp: 0x8000,
        ..Default::default()
    };
    let mut sregs = kvm_sregs::default();
    sregs.cs.l = 1;
    sregs.efer = 0x500;
    sregs.cr0 = 0x8000_0011;
    // ldmxcsr [rsp+4]
    let (kind, p) = plan(&[0x0f, 0xae, 0x54, 0x24, 0x04], &regs, &sregs).unwrap();
    assert_eq!(kind, Kind::Mxcsr);
    assert_eq!(
        p,
        Plan::Ldmxcsr {
            linear: 0x8004,
            next_rip: 0x1005
        }
    );
    // stmxcsr [rsp]
    let (_, p2) = plan(&[0x0f, 0xae, 0x1c, 0x24], &regs, &sregs).unwrap();
    assert_eq!(
        p2,
        Plan::Stmxcsr {
            linear: 0x8000,
            next_rip: 0x1004
        }
    );
    assert_eq!(ldmxcsr_fault(0x1f80), None);
    assert_eq!(ldmxcsr_fault(0x1f80 | 1 << 16), Some(Fault::GP0));
}
