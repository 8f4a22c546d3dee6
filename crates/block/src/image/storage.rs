//! Where image bytes live: a host file, or memory (fuzzing and the
//! crash-ordering tests, which inject failures at chosen writes).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Positioned byte storage under an image format.
pub(crate) trait Storage: Send {
    /// Read up to `buf.len()` bytes; bytes past the end read as zero.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write all of `buf` at `offset`, growing the storage if needed.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Make every completed write durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Bytes the storage occupies on the host (st_blocks for a file).
    fn allocated(&self) -> io::Result<u64>;
}

/// A host file.
pub(crate) struct FileStorage {
    pub(crate) file: File,
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocated(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.blocks().saturating_mul(512))
    }
}

/// Storage in memory, with failure injection: writes are numbered from 0;
/// `fail_at = Some(n)` makes write number n (and every later write and
/// sync) fail, as if the process died right before it.
#[derive(Default, Clone)]
pub(crate) struct MemStorage {
    pub(crate) data: Vec<u8>,
    pub(crate) writes: usize,
    pub(crate) fail_at: Option<usize>,
}

impl MemStorage {
    pub(crate) fn new(data: Vec<u8>) -> Self {
        MemStorage {
            data,
            writes: 0,
            fail_at: None,
        }
    }

    fn dead(&self) -> bool {
        self.fail_at.is_some_and(|n| self.writes >= n)
    }
}

/// Largest in-memory image (keeps fuzzing from allocating wildly).
const MEM_MAX: u64 = 1 << 30;

impl Storage for MemStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let len = self.data.len() as u64;
        if offset < len {
            let start = offset as usize;
            let n = buf.len().min(self.data.len() - start);
            buf[..n].copy_from_slice(&self.data[start..start + n]);
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("injected failure"));
        }
        self.writes += 1;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MEM_MAX)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write too far"))?;
        if end as usize > self.data.len() {
            self.data.resize(end as usize, 0);
        }
        self.data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }

    fn allocated(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}

/// A storage shared with a test, so the test can look at the bytes after
/// the image is dropped.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct SharedMem(pub(crate) std::sync::Arc<std::sync::Mutex<MemStorage>>);

#[cfg(test)]
impl SharedMem {
    fn with<T>(&self, f: impl FnOnce(&mut MemStorage) -> T) -> T {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.with(|m| m.data.clone())
    }
}

#[cfg(test)]
impl Storage for SharedMem {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|m| m.read_at(offset, buf))
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.with(|m| m.write_at(offset, buf))
    }
    fn sync(&mut self) -> io::Result<()> {
        self.with(|m| m.sync())
    }
    fn len(&self) -> io::Result<u64> {
        self.with(|m| m.len())
    }
    fn allocated(&self) -> io::Result<u64> {
        self.with(|m| m.allocated())
    }
}
