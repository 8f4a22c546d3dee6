//! XSAVE areas: the host layout and `xrstor` semantics (pure).

use super::*;

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

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
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
