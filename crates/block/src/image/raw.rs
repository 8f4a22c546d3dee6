//! Raw images: the file is the disk.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;

use super::{DiskImage, Format, ImageError, ImageInfo};

/// An open raw image.
pub struct RawImage {
    file: File,
    path: String,
    size: u64,
    writable: bool,
}

impl RawImage {
    pub(crate) fn new(file: File, path: String, writable: bool) -> Result<RawImage, ImageError> {
        let size = file.metadata().map_err(|e| ImageError::io(&path, e))?.len();
        Ok(RawImage {
            file,
            path,
            size,
            writable,
        })
    }

    fn io(&self, e: std::io::Error) -> ImageError {
        ImageError::io(&self.path, e)
    }
}

impl DiskImage for RawImage {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        super::check_range(&self.path, offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(|e| self.io(e))
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ImageError> {
        if !self.writable {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
            });
        }
        super::check_range(&self.path, offset, buf.len() as u64, self.size)?;
        self.file.write_all_at(buf, offset).map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        if self.writable {
            self.file.sync_data().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        if !self.writable {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
            });
        }
        super::check_range(&self.path, offset, len, self.size)?;
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        // No hole punching here: write zeros.
        let zeros = vec![0u8; 1 << 20];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], pos)
                .map_err(|e| self.io(e))?;
            pos += n as u64;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.write_zeroes(offset, len)
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn info(&self) -> Result<ImageInfo, ImageError> {
        let md = self.file.metadata().map_err(|e| self.io(e))?;
        Ok(ImageInfo {
            path: self.path.clone(),
            format: Format::Raw,
            virtual_size: self.size,
            file_bytes: md.blocks().saturating_mul(512),
            data_bytes: None,
            cluster_size: None,
            backing: None,
        })
    }

    fn read_only(&self) -> bool {
        !self.writable
    }
}
