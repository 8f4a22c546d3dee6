//! Loading a real Debian kernel (no KVM needed): the bzImage path of the
//! Linux boot protocol, which a kvm_pvm host cannot run far enough to see
//! (the decompressor alone runs for many minutes under emulation).

use std::path::PathBuf;

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::arch::{boot, layout};
use vmm::loader::{self, BootEntry, KernelFormat};

/// The newest /boot/vmlinuz-*, or a loud failure naming the fix.
fn debian_bzimage() -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    });
    v.sort();
    v.pop()
        .expect("no /boot/vmlinuz-*: install linux-image-amd64 (.ci/run does)")
}

#[test]
fn debian_bzimage_loads_for_the_64_bit_entry_with_a_full_zero_page() {
    let path = debian_bzimage();
    let image = loader::read_image("kernel", &path).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
    let k = loader::load_kernel(&mem, &image, &path).unwrap();
    assert_eq!(k.format, KernelFormat::BzImage);
    assert_eq!(k.entry, BootEntry::Linux64(GuestAddress(0x10_0200)));
    let hdr = k.setup_header.expect("bzImage setup header");
    let version = hdr.version;
    assert!(version >= 0x020c, "boot protocol {version:#x}");
    assert!(k.end > 0x10_0000 + (1 << 20), "kernel end {:#x}", k.end);
    // The protected-mode kernel landed at 1 MiB: its first bytes are the
    // file's bytes after the real-mode setup sectors.
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let pm = (setup_sects + 1) * 512;
    let mut first = [0u8; 64];
    mem.read_slice(&mut first, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(&first[..], &image[pm..pm + 64]);

    let cmdline = "console=ttyS0 reboot=k panic=-1";
    boot::write_cmdline(&mem, layout::CMDLINE_START, cmdline).unwrap();
    let e820 = layout::e820_map(256 << 20);
    let initrd = (GuestAddress(0x800_0000), 0x1234);
    let zp = boot::write_boot_params(
        &mem,
        Some(hdr),
        layout::CMDLINE_START,
        cmdline.len() + 1,
        &e820,
        Some(initrd),
        GuestAddress(0xe_0000),
    )
    .unwrap();
    let bp: boot_params = mem.read_obj(zp).unwrap();
    let h = bp.hdr;
    assert_eq!({ h.type_of_loader }, 0xff);
    assert_eq!({ h.cmd_line_ptr }, layout::CMDLINE_START.0 as u32);
    assert_eq!({ h.ramdisk_image }, 0x800_0000);
    assert_eq!({ h.ramdisk_size }, 0x1234);
    assert_eq!(usize::from(bp.e820_entries), e820.len());
    for (i, e) in e820.iter().enumerate() {
        let z = bp.e820_table[i];
        assert_eq!(
            ({ z.addr }, { z.size }, { z.r#type }),
            (e.addr, e.size, e.kind)
        );
    }
    assert_eq!({ bp.acpi_rsdp_addr }, 0xe_0000);
}
