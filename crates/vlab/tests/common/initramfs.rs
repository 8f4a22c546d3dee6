//! A minimal writer for "newc" cpio archives, the format Linux unpacks as
//! an initramfs (uncompressed is fine).
#![allow(dead_code)]

/// An archive being built.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        self.entry_dev(name, mode, nlink, data, (0, 0));
    }

    fn entry_dev(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("cpio member under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    /// A directory (`name` without a leading slash).
    pub fn dir(&mut self, name: &str) -> &mut Cpio {
        self.entry(name, S_IFDIR | 0o755, 2, &[]);
        self
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Cpio {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, data);
        self
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Cpio {
        self.entry(name, S_IFLNK | 0o777, 1, target.as_bytes());
        self
    }

    /// A character device node.
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> &mut Cpio {
        self.entry_dev(name, S_IFCHR | 0o600, 1, &[], (major, minor));
        self
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new();
        c.dir("bin")
            .file("init", 0o755, b"#!x\n")
            .symlink("sh", "busybox");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // Header 110 bytes + "bin\0" padded to 116.
        assert_eq!(&a[110..114], b"bin\0");
        assert_eq!(&a[116..122], b"070701");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        // mode of the file entry: 0o100755 = 0x81ed.
        assert_eq!(&a[116 + 14..116 + 22], b"000081ed");
    }
}
