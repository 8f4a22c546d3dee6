//! Kernel image loading: 64-bit ELF (PVH note or Linux `vmlinux`) and Linux
//! bzImage, through linux-loader.
//!
//! The whole image is read into memory first, so a missing, empty,
//! truncated or foreign file is reported with one line naming the file and
//! the fix, before any guest memory is touched.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Where the kernel is loaded (the conventional 1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// ELF header constants.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
/// bzImage: "HdrS" at 0x202, boot protocol version at 0x206.
const BZ_MAGIC_OFFSET: usize = 0x202;
const BZ_MAGIC: &[u8; 4] = b"HdrS";
/// `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point in the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;

/// The kernel formats vlab boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A 64-bit x86 ELF (vlab's guest kernel, Linux `vmlinux`).
    Elf64,
    /// A Linux bzImage.
    BzImage,
}

/// How the loaded kernel wants to be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Xen PVH: 32-bit protected mode, `ebx` = `hvm_start_info`.
    Pvh(GuestAddress),
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64(GuestAddress),
}

/// A kernel in guest memory.
#[derive(Clone, Debug)]
pub struct LoadedKernel {
    /// What kind of file it was.
    pub format: KernelFormat,
    /// The entry point and protocol.
    pub entry: BootEntry,
    /// First guest-physical byte after the kernel.
    pub end: u64,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// Errors loading a kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("Cannot read {what} {path}: {source}; check the path and its permissions")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{what} {path} is a directory; give the path of a file")]
    IsDirectory {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The file is empty.
    #[error("{what} {path} is empty; rebuild it or give another file")]
    Empty {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Neither ELF nor bzImage.
    #[error("Kernel {path} is neither a 64-bit x86 ELF nor a Linux bzImage; give a vmlinux, bzImage or PVH ELF")]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
    },
    /// An ELF, but not 64-bit x86.
    #[error("Kernel {path} is an ELF file but not 64-bit x86-64; vlab boots x86-64 kernels only")]
    WrongElf {
        /// The path given.
        path: PathBuf,
    },
    /// A bzImage without a 64-bit entry point.
    #[error("Kernel {path} is a bzImage without a 64-bit entry point (boot protocol < 2.12 or 32-bit kernel); build a 64-bit kernel")]
    Not64Bit {
        /// The path given.
        path: PathBuf,
    },
    /// linux-loader refused the image (truncated, corrupt, ...).
    #[error("Kernel {path} cannot be loaded ({detail}); the file may be truncated or corrupt")]
    Corrupt {
        /// The path given.
        path: PathBuf,
        /// linux-loader's description.
        detail: String,
    },
}

/// Read a whole file, with errors that name it.
pub fn read_image(what: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    if path.is_dir() {
        return Err(LoadError::IsDirectory {
            what,
            path: path.into(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        what,
        path: path.into(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(LoadError::Empty {
            what,
            path: path.into(),
        });
    }
    Ok(bytes)
}

/// Tell ELF from bzImage by their magic numbers.
pub fn detect_format(image: &[u8], path: &Path) -> Result<KernelFormat, LoadError> {
    if image.starts_with(ELF_MAGIC) {
        let class = image.get(4).copied();
        let machine = image.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if class == Some(ELFCLASS64) && machine == Some(EM_X86_64) {
            return Ok(KernelFormat::Elf64);
        }
        return Err(LoadError::WrongElf { path: path.into() });
    }
    if image.get(BZ_MAGIC_OFFSET..BZ_MAGIC_OFFSET + 4) == Some(&BZ_MAGIC[..]) {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoadError::UnknownFormat { path: path.into() })
}

/// Load `image` (read from `path`) into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let format = detect_format(image, path)?;
    let corrupt = |e: linux_loader::loader::Error| LoadError::Corrupt {
        path: path.into(),
        detail: e.to_string(),
    };
    let mut cursor = Cursor::new(image);
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf64 => {
            let r = Elf::load(mem, None, &mut cursor, himem).map_err(corrupt)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh(addr),
                _ => BootEntry::Linux64(GuestAddress(elf_entry(image))),
            };
            Ok(LoadedKernel {
                format,
                entry,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut cursor, himem).map_err(corrupt)?;
            let hdr = r.setup_header.ok_or_else(|| LoadError::Corrupt {
                path: path.into(),
                detail: "no setup header".into(),
            })?;
            if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadError::Not64Bit { path: path.into() });
            }
            Ok(LoadedKernel {
                format,
                entry: BootEntry::Linux64(GuestAddress(r.kernel_load.0 + STARTUP_64_OFFSET)),
                end: r.kernel_end,
                setup_header: Some(hdr),
            })
        }
    }
}

/// `e_entry` of a 64-bit ELF whose header linux-loader already validated.
/// Linux's `vmlinux` entry is a physical address; strip a kernel-half
/// virtual address down to physical as the 64-bit boot protocol expects.
fn elf_entry(image: &[u8]) -> u64 {
    let e = image
        .get(24..32)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    if e >= 0xffff_ffff_8000_0000 {
        e - 0xffff_ffff_8000_0000
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn formats_are_told_apart_and_junk_is_refused() {
        let p = Path::new("k");
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = ELFCLASS64;
        elf[18] = EM_X86_64 as u8;
        assert_eq!(detect_format(&elf, p).unwrap(), KernelFormat::Elf64);
        elf[4] = 1;
        assert!(matches!(
            detect_format(&elf, p),
            Err(LoadError::WrongElf { .. })
        ));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(BZ_MAGIC);
        assert_eq!(detect_format(&bz, p).unwrap(), KernelFormat::BzImage);
        assert!(matches!(
            detect_format(b"hello world", p),
            Err(LoadError::UnknownFormat { .. })
        ));
        assert!(matches!(
            detect_format(b"\x7fEL", p),
            Err(LoadError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn truncated_elf_is_reported_not_panicked() {
        let mut elf = vec![0u8; 40];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = ELFCLASS64;
        elf[18] = EM_X86_64 as u8;
        let e = load_kernel(&mem(), &elf, Path::new("/x/k")).unwrap_err();
        assert!(matches!(e, LoadError::Corrupt { .. }), "{e}");
        assert!(e.to_string().starts_with("Kernel /x/k cannot be loaded"));
    }

    #[test]
    fn missing_empty_and_directory_files_are_named() {
        let dir = std::env::temp_dir().join(format!("vlab-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = read_image("kernel", &dir).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = read_image("initrd", &empty).unwrap_err();
        assert!(e.to_string().starts_with("initrd "), "{e}");
        assert!(e.to_string().contains("is empty"));
        let e = read_image("kernel", &dir.join("nope")).unwrap_err();
        assert!(e.to_string().contains("Cannot read kernel"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vmlinux_virtual_entry_becomes_physical() {
        let mut elf = vec![0u8; 64];
        elf[24..32].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        assert_eq!(elf_entry(&elf), 0x100_0000);
        elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(elf_entry(&elf), 0x10_0000);
    }
}
