//! Bad images and paths: each is one line naming the file, never a panic.

mod common;

use block::image::{self, OpenOptions};
use common::*;

fn open_err(p: &std::path::Path) -> String {
    let e = image::open(p, OpenOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(!e.contains('\n'), "multi-line: {e}");
    e
}

#[test]
fn bad_paths_and_chains_are_one_line_errors() {
    let dir = scratch("bad");
    let d = dir.to_str().unwrap().to_string();
    assert!(open_err(&dir).contains("is a directory"));
    assert!(open_err(&dir.join("nope.qcow2")).contains("does not exist"));

    // Missing backing file.
    let orphan = dir.join("orphan.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "gone.qcow2",
            "-F",
            "qcow2",
            orphan.to_str().unwrap(),
            "1M",
        ],
    );
    let e = open_err(&orphan);
    assert!(
        e.contains("orphan.qcow2") && e.contains("gone.qcow2") && e.contains("does not exist"),
        "{e}"
    );

    // A cycle: a -> b -> a, and an image backed by itself.
    let (a, b) = (format!("{d}/a.qcow2"), format!("{d}/b.qcow2"));
    run(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", &a, "1M",
        ],
    );
    run(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", &b, "1M",
        ],
    );
    assert!(open_err(std::path::Path::new(&a)).contains("loops back"));
    let selfish = format!("{d}/self.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "self.qcow2",
            "-F",
            "qcow2",
            &selfish,
            "1M",
        ],
    );
    assert!(open_err(std::path::Path::new(&selfish)).contains("loops back"));

    // A backing file that is a directory.
    std::fs::create_dir(dir.join("dir.qcow2")).unwrap();
    let over_dir = dir.join("overdir.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "dir.qcow2",
            "-F",
            "raw",
            over_dir.to_str().unwrap(),
            "1M",
        ],
    );
    assert!(open_err(&over_dir).contains("is a directory"));

    // Truncated header, garbage after the magic.
    let t = dir.join("trunc.qcow2");
    std::fs::write(&t, b"QFI\xfb\0\0\0\x03").unwrap();
    assert!(open_err(&t).contains("truncated"));
    let g = dir.join("garbage.qcow2");
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.extend(pattern(1, 100_000));
    std::fs::write(&g, &bytes).unwrap();
    let e = open_err(&g);
    assert!(e.contains("garbage.qcow2"), "{e}");

    // A good image whose L1 entry points far outside the file: opens, and
    // the guest request gets an I/O error.
    let c = dir.join("l1.qcow2");
    image::create_qcow2(&c, 1 << 20, None).unwrap();
    let mut raw = std::fs::read(&c).unwrap();
    raw[0x30000..0x30008].copy_from_slice(&(0x8000_0000_7000_0000u64).to_be_bytes());
    std::fs::write(&c, &raw).unwrap();
    let mut img = image::open(&c, OpenOptions::default()).unwrap();
    let e = img.read_at(0, &mut [0u8; 512]).unwrap_err().to_string();
    assert!(
        e.contains("l1.qcow2") && e.contains("outside the file"),
        "{e}"
    );
    assert!(img.read_at(u64::MAX - 10, &mut [0u8; 512]).is_err());
    drop(img);
    let r = image::check(&c).unwrap().unwrap();
    assert!(r.corruptions > 0);

    // Refcount table outside the file.
    raw[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(&c, &raw).unwrap();
    assert!(open_err(&c).contains("refcount table"));

    // Creating over an existing image or with a silly size.
    let e = image::create_qcow2(&c, 1 << 20, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    let e = image::create_raw(&dir.join("z.img"), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("size 0"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
