//! Initial register state of the boot vCPU for each entry protocol, and the
//! local APIC's LINT pins. Pure functions on kvm-bindings structs, so they
//! are unit-tested without `/dev/kvm`.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};

/// CR0 bits.
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// EFER bits.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selectors in the boot GDT (entries: null, null, code, data, TSS).
pub const BOOT_CS: u16 = 0x10;
/// Data selector in the boot GDT.
pub const BOOT_DS: u16 = 0x18;
/// TSS selector in the boot GDT.
pub const BOOT_TSS: u16 = 0x20;

fn flat_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn boot_tss() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0x67,
        selector: BOOT_TSS,
        type_: 0xb, // 32/64-bit busy TSS
        present: 1,
        s: 0,
        ..Default::default()
    }
}

/// Registers for the PVH entry: 32-bit protected mode, paging off, flat
/// segments, `ebx` = the `hvm_start_info` address (PVH boot ABI).
pub fn pvh_regs(entry: u64, start_info: u64, sregs: &mut kvm_sregs) -> kvm_regs {
    sregs.cs = flat_segment(BOOT_CS, 0xb, false);
    let ds = flat_segment(BOOT_DS, 0x3, false);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = boot_tss();
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    kvm_regs {
        rip: entry,
        rbx: start_info,
        rflags: 2,
        ..Default::default()
    }
}

/// Registers for Linux's 64-bit boot protocol: long mode with the identity
/// page tables at `cr3`, the boot GDT at `gdt`, `rsi` = zero page.
pub fn linux64_regs(
    entry: u64,
    zero_page: u64,
    gdt: (u64, u16),
    cr3: u64,
    sregs: &mut kvm_sregs,
) -> kvm_regs {
    sregs.gdt.base = gdt.0;
    sregs.gdt.limit = gdt.1;
    sregs.cs = flat_segment(BOOT_CS, 0xb, true);
    let ds = flat_segment(BOOT_DS, 0x3, false);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = boot_tss();
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    kvm_regs {
        rip: entry,
        rsi: zero_page,
        rflags: 2,
        ..Default::default()
    }
}

/// The FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// APIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wire LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as firmware
/// does on a PC.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_is_flat_protected_mode_with_start_info_in_ebx() {
        let mut s = kvm_sregs::default();
        let r = pvh_regs(0x10_0040, 0x6000, &mut s);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0040, 0x6000, 2));
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!((s.cs.db, s.cs.l, s.cs.limit), (1, 0, 0xffff_ffff));
        assert_eq!(s.efer, 0);
        assert_eq!((s.tr.type_, s.tr.present), (0xb, 1));
    }

    #[test]
    fn linux64_entry_is_long_mode_with_zero_page_in_rsi() {
        let mut s = kvm_sregs::default();
        let r = linux64_regs(0x10_0200, 0x7000, (0x500, 0x27), 0x9000, &mut s);
        assert_eq!((r.rip, r.rsi), (0x10_0200, 0x7000));
        assert_eq!((s.cs.l, s.cs.db, s.cs.selector), (1, 0, BOOT_CS));
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!((s.cr3, s.gdt.base, s.gdt.limit), (0x9000, 0x500, 0x27));
    }

    #[test]
    fn lint_pins_get_extint_and_nmi_and_keep_other_bits() {
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0x1_0000 | 0x300);
        set_lint(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x1_0000 | 0x700);
        assert_eq!(get_reg(&l, APIC_LVT1), 0x400);
    }
}
