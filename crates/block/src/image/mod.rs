//! Disk images: raw and qcow2 (with read-only backing chains), QEMU-
//! compatible image locks, `check`, and the guest-facing [`DiskImage`]
//! trait. See docs/disks.md.
//!
//! Everything read from an image file is checked before use: a corrupt
//! image gives an [`ImageError`] (one line naming the file and the fix),
//! never a panic.

pub mod lock;
pub mod qcow2;
mod raw;
mod storage;

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

pub use lock::LockError;
pub use qcow2::{CheckReport, Qcow2Error, Qcow2Image};
pub use raw::RawImage;

use storage::{FileStorage, MemStorage, Storage};

/// Longest backing chain vlab follows.
pub const MAX_CHAIN: usize = 16;

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The file is the disk.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl Format {
    /// The name QEMU uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parse a QEMU format name.
    pub fn from_name(s: &str) -> Option<Format> {
        match s {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

/// Everything that can go wrong with an image. Every message is one line
/// naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such file.
    #[error("{path} does not exist: check the path, or create it with `vlab disk create`")]
    NotFound {
        /// The path.
        path: String,
    },
    /// A directory.
    #[error("{path} is a directory, not a disk image: give the path of an image file")]
    IsDirectory {
        /// The path.
        path: String,
    },
    /// Permission denied.
    #[error("{path}: permission denied: fix the file's permissions or open it read-only")]
    Permission {
        /// The path.
        path: String,
    },
    /// Creating over an existing file.
    #[error("{path} already exists: vlab does not overwrite images, remove it first or pick another name")]
    Exists {
        /// The path.
        path: String,
    },
    /// Other I/O errors.
    #[error("{path}: I/O error: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// qcow2 problems.
    #[error("{path} {source}")]
    Qcow2 {
        /// The path.
        path: String,
        /// What is wrong.
        source: Qcow2Error,
    },
    /// Locks.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Missing backing file.
    #[error("{image}: its backing file {backing} does not exist: restore it, or point the image at it with `qemu-img rebase -u -b PATH`")]
    BackingMissing {
        /// The overlay.
        image: String,
        /// The backing file as resolved.
        backing: String,
    },
    /// A loop in the backing chain.
    #[error("{image}: backing chain loops back to {backing}: fix the chain with `qemu-img rebase -u -b PATH`")]
    BackingCycle {
        /// The overlay.
        image: String,
        /// The file seen twice.
        backing: String,
    },
    /// Too many backing levels.
    #[error("{image}: backing chain is deeper than {MAX_CHAIN} images: flatten it with `qemu-img convert`")]
    BackingTooDeep {
        /// The image.
        image: String,
    },
    /// Backing format vlab does not read.
    #[error("{image}: backing format {format:?} is not supported (raw or qcow2): convert the backing file")]
    BackingFormat {
        /// The image.
        image: String,
        /// The format name.
        format: String,
    },
    /// A request beyond the disk.
    #[error("{path}: request at {offset} (+{len} bytes) is beyond the disk's {size} bytes")]
    OutOfRange {
        /// The image.
        path: String,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Virtual size.
        size: u64,
    },
    /// A write to a read-only image.
    #[error("{path} is open read-only")]
    ReadOnly {
        /// The image.
        path: String,
    },
    /// A size vlab cannot create.
    #[error("{path}: size {size} is invalid: give a size from 512 bytes to 64 PiB")]
    BadSize {
        /// The image.
        path: String,
        /// The size.
        size: u64,
    },
}

impl ImageError {
    /// Map an I/O error on `path` to the clearest variant.
    pub fn io(path: &str, e: io::Error) -> ImageError {
        let path = path.to_string();
        match e.kind() {
            ErrorKind::NotFound => ImageError::NotFound { path },
            ErrorKind::PermissionDenied => ImageError::Permission { path },
            ErrorKind::AlreadyExists => ImageError::Exists { path },
            ErrorKind::IsADirectory => ImageError::IsDirectory { path },
            _ => ImageError::Io { path, source: e },
        }
    }

    fn q(path: &str, source: Qcow2Error) -> ImageError {
        ImageError::Qcow2 {
            path: path.to_string(),
            source,
        }
    }
}

/// What `info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Path as opened.
    pub path: String,
    /// Format.
    pub format: Format,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// Bytes the file occupies on the host.
    pub file_bytes: u64,
    /// qcow2: guest data allocated in this image (not its backing).
    pub data_bytes: Option<u64>,
    /// qcow2: cluster size.
    pub cluster_size: Option<u64>,
    /// The backing image.
    pub backing: Option<Box<ImageInfo>>,
}

/// A disk as the guest sees it. Every method takes `&mut self`: an image
/// has one user at a time (wrap it in a `Mutex` to share it). Requests
/// beyond `virtual_size` fail with [`ImageError::OutOfRange`].
pub trait DiskImage: Send {
    /// Read `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError>;
    /// Write `buf` at `offset`. Not durable until [`DiskImage::flush`].
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ImageError>;
    /// Make every completed write durable (fdatasync).
    fn flush(&mut self) -> Result<(), ImageError>;
    /// Make `len` bytes at `offset` read as zeros.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError>;
    /// The guest no longer needs these bytes; they read as zeros afterwards.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError>;
    /// Guest-visible size in bytes.
    fn virtual_size(&self) -> u64;
    /// Format, sizes, backing chain.
    fn info(&self) -> Result<ImageInfo, ImageError>;
    /// Opened read-only.
    fn read_only(&self) -> bool;
}

/// How to open an image.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Open read-only (and take reader locks).
    pub read_only: bool,
    /// Take QEMU-compatible locks (on by default).
    pub lock: bool,
    /// The format, or None to probe (qcow2 magic, else raw). Give it when
    /// known: probing a raw disk a guest wrote a qcow2 header into is unsafe.
    pub format: Option<Format>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            lock: true,
            format: None,
        }
    }
}

fn check_range(path: &str, offset: u64, len: u64, size: u64) -> Result<(), ImageError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ImageError::OutOfRange {
            path: path.to_string(),
            offset,
            len,
            size,
        }),
    }
}

/// The format of an open file, by its first four bytes.
fn probe(file: &File, path: &str) -> Result<Format, ImageError> {
    let mut magic = [0u8; 4];
    FileStorage {
        file: file.try_clone().map_err(|e| ImageError::io(path, e))?,
    }
    .read_at(0, &mut magic)
    .map_err(|e| ImageError::io(path, e))?;
    Ok(if magic == qcow2::MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Open an image and, for qcow2, its whole backing chain (read-only).
pub fn open(path: &Path, opts: OpenOptions) -> Result<Box<dyn DiskImage>, ImageError> {
    open_chain(path, opts, &mut Vec::new())
}

fn open_file(
    path: &Path,
    opts: OpenOptions,
    seen: &mut Vec<PathBuf>,
) -> Result<(File, String), ImageError> {
    let shown = path.display().to_string();
    let md = std::fs::metadata(path).map_err(|e| ImageError::io(&shown, e))?;
    if md.is_dir() {
        return Err(ImageError::IsDirectory { path: shown });
    }
    let canon = std::fs::canonicalize(path).map_err(|e| ImageError::io(&shown, e))?;
    if seen.contains(&canon) {
        let image = seen
            .last()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Err(ImageError::BackingCycle {
            image,
            backing: shown,
        });
    }
    if seen.len() >= MAX_CHAIN {
        return Err(ImageError::BackingTooDeep { image: shown });
    }
    seen.push(canon);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .open(path)
        .map_err(|e| ImageError::io(&shown, e))?;
    if opts.lock {
        lock::lock_image(&file, &shown, !opts.read_only)?;
    }
    Ok((file, shown))
}

fn open_chain(
    path: &Path,
    opts: OpenOptions,
    seen: &mut Vec<PathBuf>,
) -> Result<Box<dyn DiskImage>, ImageError> {
    let (file, shown) = open_file(path, opts, seen)?;
    let format = match opts.format {
        Some(f) => f,
        None => probe(&file, &shown)?,
    };
    if format == Format::Raw {
        return Ok(Box::new(RawImage::new(file, shown, !opts.read_only)?));
    }
    let st = FileStorage { file };
    let h = Qcow2Image::read_header(&st).map_err(|e| ImageError::q(&shown, e))?;
    let backing = match &h.backing_file {
        None => None,
        Some(name) => {
            let bpath = resolve_backing(path, name);
            let format = match h.backing_format.as_deref() {
                None => None,
                Some(f) => Some(
                    Format::from_name(f).ok_or_else(|| ImageError::BackingFormat {
                        image: shown.clone(),
                        format: f.to_string(),
                    })?,
                ),
            };
            if !bpath.exists() {
                return Err(ImageError::BackingMissing {
                    image: shown,
                    backing: bpath.display().to_string(),
                });
            }
            let bopts = OpenOptions {
                read_only: true,
                lock: opts.lock,
                format,
            };
            Some(open_chain(&bpath, bopts, seen)?)
        }
    };
    let img = Qcow2Image::open_storage(Box::new(st), !opts.read_only, backing, shown.clone())
        .map_err(|e| ImageError::q(&shown, e))?;
    Ok(Box::new(img))
}

/// A backing name is relative to the directory of the image naming it.
fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    image
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

fn create_file(path: &Path, size: u64) -> Result<(File, String), ImageError> {
    let shown = path.display().to_string();
    if !(512..=qcow2::MAX_VIRTUAL_SIZE).contains(&size) {
        return Err(ImageError::BadSize { path: shown, size });
    }
    if path.is_dir() {
        return Err(ImageError::IsDirectory { path: shown });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ImageError::io(&shown, e))?;
    Ok((file, shown))
}

/// Create a raw image of `size` bytes (sparse). Refuses to overwrite.
pub fn create_raw(path: &Path, size: u64) -> Result<(), ImageError> {
    let (file, shown) = create_file(path, size)?;
    let r = file.set_len(size).and_then(|_| file.sync_all());
    if let Err(e) = r {
        let _ = std::fs::remove_file(path);
        return Err(ImageError::io(&shown, e));
    }
    Ok(())
}

/// Create a qcow2 v3 image (64 KiB clusters, 16-bit refcounts). `backing`
/// is the backing file name as it will be stored (relative names are
/// relative to the new image's directory) and its format. Refuses to
/// overwrite.
pub fn create_qcow2(
    path: &Path,
    size: u64,
    backing: Option<(&str, Format)>,
) -> Result<(), ImageError> {
    let (file, shown) = create_file(path, size)?;
    let mut st = FileStorage { file };
    let r = qcow2::create_in(
        &mut st,
        size,
        backing.map(|(n, f)| (n.to_string(), f.name().to_string())),
        16,
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(path);
        return Err(ImageError::q(&shown, e));
    }
    Ok(())
}

/// Create `clone` as a qcow2 overlay of `master` (opened read-only to
/// check its whole chain; the overlay stores the master's absolute path
/// and format). The master is never written.
pub fn clone_image(master: &Path, clone: &Path) -> Result<(), ImageError> {
    let m = open(
        master,
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )?;
    let info = m.info()?;
    let shown = master.display().to_string();
    let abs = std::fs::canonicalize(master).map_err(|e| ImageError::io(&shown, e))?;
    let name = abs
        .to_str()
        .ok_or_else(|| ImageError::q(&shown, Qcow2Error::BackingName))?;
    create_qcow2(clone, info.virtual_size, Some((name, info.format)))
}

/// Check an image's refcounts (qcow2; raw images have nothing to check).
pub fn check(path: &Path) -> Result<Option<CheckReport>, ImageError> {
    let opts = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let (file, shown) = open_file(path, opts, &mut Vec::new())?;
    if probe(&file, &shown)? == Format::Raw {
        return Ok(None);
    }
    let mut img =
        Qcow2Image::open_storage(Box::new(FileStorage { file }), false, None, shown.clone())
            .map_err(|e| ImageError::q(&shown, e))?;
    img.check().map(Some).map_err(|e| ImageError::q(&shown, e))
}

/// Fuzz entry point: parse `bytes` as a qcow2 image, read from it, write
/// to it and check it, all in memory. Must never panic.
pub fn fuzz_open(bytes: &[u8]) {
    let st = MemStorage::new(bytes.to_vec());
    let img = Qcow2Image::open_storage(Box::new(st.clone()), true, None, "fuzz".into())
        .or_else(|_| Qcow2Image::open_storage(Box::new(st), false, None, "fuzz".into()));
    let Ok(mut img) = img else { return };
    let size = img.virtual_size();
    let mut buf = vec![0u8; 4096];
    for off in [0, size / 2, size.saturating_sub(4096)] {
        let _ = img.read_at(off, &mut buf);
    }
    let _ = img.write_at(size / 3, &buf[..512.min(size as usize)]);
    let _ = img.write_zeroes(0, size.min(1 << 17));
    let _ = img.check();
    let _ = img.info();
}

impl DiskImage for Qcow2Image {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        check_range(&self.path, offset, buf.len() as u64, self.header().size)?;
        self.read(offset, buf)
            .map_err(|e| ImageError::q(&self.path, e))
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ImageError> {
        check_range(&self.path, offset, buf.len() as u64, self.header().size)?;
        self.write(offset, buf)
            .map_err(|e| ImageError::q(&self.path, e))
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        self.flush_storage()
            .map_err(|e| ImageError::q(&self.path, e))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        check_range(&self.path, offset, len, self.header().size)?;
        self.zero(offset, len)
            .map_err(|e| ImageError::q(&self.path, e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.write_zeroes(offset, len)
    }

    fn virtual_size(&self) -> u64 {
        self.header().size
    }

    fn info(&self) -> Result<ImageInfo, ImageError> {
        let q = |e| ImageError::q(&self.path, e);
        let backing = match self.backing() {
            Some(b) => Some(Box::new(b.info()?)),
            None => None,
        };
        Ok(ImageInfo {
            path: self.path.clone(),
            format: Format::Qcow2,
            virtual_size: self.header().size,
            file_bytes: self.host_allocated().map_err(q)?,
            data_bytes: Some(self.allocated_data().map_err(q)?),
            cluster_size: Some(self.header().cluster_size()),
            backing,
        })
    }

    fn read_only(&self) -> bool {
        !self.writable()
    }
}
