//! Image locks compatible with QEMU's (block/file-posix.c): open file
//! description (OFD) byte-range locks on the image file itself.
//!
//! Each permission bit `b` (consistent read 0, write 1, write-unchanged 2,
//! resize 3) has two lock bytes: `100 + b` is read-locked by everyone who
//! *holds* the permission, `200 + b` by everyone who does *not share* it.
//! Opening takes our own read locks first, then tests (F_OFD_GETLK with a
//! write lock) that nobody else holds a byte that conflicts: someone who
//! does not share a permission we want (200 + b) or someone who holds a
//! permission we do not share (100 + b). The locks go away when the file
//! is closed.

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// Permission bits, as QEMU numbers them.
const PERM_CONSISTENT_READ: u32 = 0;
const PERM_WRITE: u32 = 1;
const PERM_WRITE_UNCHANGED: u32 = 2;
const PERM_RESIZE: u32 = 3;
const PERM_BITS: u32 = 4;
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
/// First "holds permission" byte.
const PERM_BASE: i64 = 100;
/// First "does not share permission" byte.
const SHARED_BASE: i64 = 200;

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds a conflicting lock.
    #[error("{path} is in use by another process (vlab or QEMU) that conflicts on the \"{perm}\" lock: stop that VM first, or open the image read-only if it is a shared master")]
    Conflict {
        /// The image.
        path: String,
        /// The permission in conflict.
        perm: &'static str,
    },
    /// fcntl failed.
    #[error("{path}: cannot take image locks ({source}): the file system must support OFD locks (local disks and tmpfs do)")]
    Fcntl {
        /// The image.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Permissions (held, shared) of an opener, as QEMU's qcow2 asks for them
/// on its file: a writer holds read+write+write-unchanged+resize and
/// shares read+write-unchanged; a reader (e.g. a backing file) holds read
/// and shares read+write-unchanged.
fn perms(writable: bool) -> (u32, u32) {
    let shared = (1 << PERM_CONSISTENT_READ) | (1 << PERM_WRITE_UNCHANGED);
    if writable {
        let held = (1 << PERM_CONSISTENT_READ)
            | (1 << PERM_WRITE)
            | (1 << PERM_WRITE_UNCHANGED)
            | (1 << PERM_RESIZE);
        (held, shared)
    } else {
        (1 << PERM_CONSISTENT_READ, shared)
    }
}

fn flock(ty: i32, byte: i64) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

fn fcntl(file: &File, cmd: i32, fl: &mut libc::flock) -> std::io::Result<()> {
    // SAFETY: the fd is open for the duration of the call and `fl` points
    // at a valid flock the kernel may read and write.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Take QEMU-compatible locks on `file` for a reader or a writer. The
/// locks live as long as `file` stays open.
pub fn lock_image(file: &File, path: &str, writable: bool) -> Result<(), LockError> {
    let r = try_lock(file, path, writable);
    if r.is_err() {
        // Drop whatever we took; the file may stay open a while.
        for byte in (PERM_BASE..PERM_BASE + 4).chain(SHARED_BASE..SHARED_BASE + 4) {
            let _ = fcntl(file, libc::F_OFD_SETLK, &mut flock(libc::F_UNLCK, byte));
        }
    }
    r
}

fn try_lock(file: &File, path: &str, writable: bool) -> Result<(), LockError> {
    let (held, shared) = perms(writable);
    let err = |source| LockError::Fcntl {
        path: path.to_string(),
        source,
    };
    for b in 0..PERM_BITS {
        let (perm_byte, shared_byte) = (PERM_BASE + i64::from(b), SHARED_BASE + i64::from(b));
        let want = |on: bool| if on { libc::F_RDLCK } else { libc::F_UNLCK };
        fcntl(
            file,
            libc::F_OFD_SETLK,
            &mut flock(want(held & (1 << b) != 0), perm_byte),
        )
        .map_err(err)?;
        fcntl(
            file,
            libc::F_OFD_SETLK,
            &mut flock(want(shared & (1 << b) == 0), shared_byte),
        )
        .map_err(err)?;
    }
    for b in 0..PERM_BITS {
        // Someone who does not share a permission we hold.
        if held & (1 << b) != 0 {
            let mut fl = flock(libc::F_WRLCK, SHARED_BASE + i64::from(b));
            fcntl(file, libc::F_OFD_GETLK, &mut fl).map_err(err)?;
            if i32::from(fl.l_type) != libc::F_UNLCK {
                return Err(LockError::Conflict {
                    path: path.to_string(),
                    perm: PERM_NAMES[b as usize],
                });
            }
        }
        // Someone who holds a permission we do not share.
        if shared & (1 << b) == 0 {
            let mut fl = flock(libc::F_WRLCK, PERM_BASE + i64::from(b));
            fcntl(file, libc::F_OFD_GETLK, &mut fl).map_err(err)?;
            if i32::from(fl.l_type) != libc::F_UNLCK {
                return Err(LockError::Conflict {
                    path: path.to_string(),
                    perm: PERM_NAMES[b as usize],
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vlab-lock-{}-{name}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        p
    }

    fn open(p: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn two_writers_conflict_and_readers_share() {
        let p = tmpfile("a");
        let w1 = open(&p);
        lock_image(&w1, "img", true).unwrap();
        let w2 = open(&p);
        let e = lock_image(&w2, "img", true).unwrap_err().to_string();
        assert!(e.contains("img is in use") && !e.contains('\n'), "{e}");
        // A reader does not share "write", so it cannot join a writer.
        let r = open(&p);
        assert!(lock_image(&r, "img", false).is_err());
        drop((w1, w2, r));
        let r1 = open(&p);
        let r2 = open(&p);
        lock_image(&r1, "img", false).unwrap();
        lock_image(&r2, "img", false).unwrap();
        let w = open(&p);
        assert!(lock_image(&w, "img", true).is_err());
        drop((r1, r2));
        lock_image(&w, "img", true).unwrap();
        std::fs::remove_file(p).unwrap();
    }
}
