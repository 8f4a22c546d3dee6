//! Checks on the built-in guest kernel image itself (no KVM needed).
//!
//! On kvm_pvm hosts every guest kernel-mode instruction goes through KVM's
//! instruction emulator, which implements SSE *moves* but not SSE
//! arithmetic or logic: one `xorps xmm0, xmm0` (LLVM's idiom for zeroing
//! 16 bytes) ends the VM with an emulation failure. The guest is built to
//! avoid them (opt-level "s", `rep movsb`/`rep stosb` memcpy/memset); this
//! test keeps it that way.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

/// (name, file offset, size, address) of every executable section.
fn exec_sections(elf: &[u8]) -> Vec<(String, usize, usize, u64)> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let shoff = u64_at(0x28) as usize;
    let shentsize = u16_at(0x3a);
    let shnum = u16_at(0x3c);
    let shstrndx = u16_at(0x3e);
    assert!(shoff != 0 && shnum != 0, "guest ELF has no section headers");
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(sh(shstrndx) + 0x18) as usize;
    let mut v = Vec::new();
    for i in 0..shnum {
        let h = sh(i);
        let flags = u64_at(h + 0x08);
        let kind = u32_at(h + 0x04);
        const SHF_EXECINSTR: u64 = 4;
        const SHT_PROGBITS: u32 = 1;
        if kind != SHT_PROGBITS || flags & SHF_EXECINSTR == 0 {
            continue;
        }
        let name_off = strtab + u32_at(h) as usize;
        let name_end = elf[name_off..].iter().position(|b| *b == 0).unwrap() + name_off;
        let name = String::from_utf8_lossy(&elf[name_off..name_end]).into_owned();
        v.push((
            name,
            u64_at(h + 0x18) as usize,
            u64_at(h + 0x20) as usize,
            u64_at(h + 0x10),
        ));
    }
    v
}

fn uses_vector_register(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| {
        i.op_kind(n) == OpKind::Register && {
            let r = i.op_register(n);
            r.is_xmm() || r.is_ymm() || r.is_zmm() || r.is_mm()
        }
    })
}

/// SSE instructions KVM's emulator implements: plain moves.
const ALLOWED: &[Mnemonic] = &[
    Mnemonic::Movups,
    Mnemonic::Movaps,
    Mnemonic::Movupd,
    Mnemonic::Movapd,
    Mnemonic::Movdqu,
    Mnemonic::Movdqa,
    Mnemonic::Movq,
    Mnemonic::Movd,
    Mnemonic::Movntdq,
    Mnemonic::Movntps,
];

#[test]
fn guest_kernel_uses_no_sse_beyond_plain_moves() {
    let elf = std::fs::read(env!("VLAB_GUEST_ELF")).expect("built-in guest ELF");
    let sections = exec_sections(&elf);
    assert!(
        sections.iter().any(|s| s.0 == ".text"),
        "no .text in {sections:?}"
    );
    let mut bad = Vec::new();
    let mut decoded = 0usize;
    for (name, off, size, addr) in &sections {
        // The 32-bit PVH entry and AP trampoline are decoded as 64-bit
        // here; they contain no vector instructions either way.
        let mut d = Decoder::with_ip(64, &elf[*off..off + size], *addr, DecoderOptions::NONE);
        let mut i = Instruction::default();
        while d.can_decode() {
            d.decode_out(&mut i);
            decoded += 1;
            if uses_vector_register(&i) && !ALLOWED.contains(&i.mnemonic()) {
                bad.push(format!("{name} {:#x}: {:?}", i.ip(), i.mnemonic()));
            }
        }
    }
    assert!(decoded > 1000, "decoded only {decoded} instructions");
    assert!(
        bad.is_empty(),
        "SSE instructions KVM's emulator cannot run (fatal on kvm_pvm):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_catches_xorps() {
    // xorps xmm0, xmm0 ; movups [rdi], xmm0
    let code = [0x0f, 0x57, 0xc0, 0x0f, 0x11, 0x07];
    let mut d = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE);
    let flagged: Vec<_> = d
        .iter()
        .filter(|i| uses_vector_register(i) && !ALLOWED.contains(&i.mnemonic()))
        .map(|i| i.mnemonic())
        .collect();
    assert_eq!(flagged, vec![Mnemonic::Xorps]);
}
