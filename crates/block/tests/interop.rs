//! qemu-img interoperability both ways: images vlab writes pass
//! `qemu-img check` and read back identically in qemu-img; images qemu-img
//! (and qemu-io) write read back identically in vlab.

mod common;

use block::image::{self, Format, OpenOptions};
use common::*;

const MIB: u64 = 1 << 20;

fn writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, pattern(1, 512)),
        (4096 + 17, pattern(2, 3000)),
        (65536 - 100, pattern(3, 200)), // crosses a cluster boundary
        (3 * MIB, pattern(4, 300_000)),
        (600 * MIB, pattern(5, 70_000)), // a second L2 table
        (1024 * MIB - 512, pattern(6, 512)),
    ]
}

fn apply(model: &mut [u8], w: &[(u64, Vec<u8>)]) {
    for (off, d) in w {
        model[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
}

#[test]
fn vlab_writes_qemu_reads() {
    let dir = scratch("vlab-writes");
    let p = dir.join("a.qcow2");
    let size = 1024 * MIB;
    image::create_qcow2(&p, size, None).unwrap();
    {
        let mut img = image::open(&p, OpenOptions::default()).unwrap();
        for (off, d) in writes() {
            img.write_at(off, &d).unwrap();
        }
        img.write_zeroes(4096, 65536 * 2).unwrap();
        img.flush().unwrap();
    }
    qemu_check_clean(&p);
    let mut model = vec![0u8; size as usize];
    apply(&mut model, &writes());
    model[4096..4096 + 131072].fill(0);
    assert!(qemu_contents(&p) == model, "qemu-img reads different data");
    let info = run("qemu-img", &["info", p.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("compat: 1.1"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn qemu_writes_vlab_reads_then_writes() {
    let dir = scratch("qemu-writes");
    let p = dir.join("q.qcow2");
    let ps = p.to_str().unwrap();
    for (bits, cluster) in [(16, "65536"), (9, "512")] {
        let _ = std::fs::remove_file(&p);
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster}"),
                ps,
                "64M",
            ],
        );
        // qemu-io: data, a zeroed range (zero flag), a range written then
        // discarded.
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xab 0 1M",
                "-c",
                "write -P 0x5c 10M 3000",
                "-c",
                "write -z 512k 128k",
                ps,
            ],
        );
        let mut img = image::open(&p, OpenOptions::default()).unwrap();
        let mut model = vec![0u8; 64 << 20];
        model[..1 << 20].fill(0xab);
        model[10 << 20..(10 << 20) + 3000].fill(0x5c);
        model[512 << 10..640 << 10].fill(0);
        let mut back = vec![0u8; model.len()];
        img.read_at(0, &mut back).unwrap();
        assert!(
            back == model,
            "cluster_bits {bits}: vlab reads different data"
        );
        let w = vec![
            (100u64, pattern(9, 5000)),
            (20 * MIB + 3, pattern(10, 100_000)),
            (600 << 10, pattern(11, 100)),
        ];
        apply(&mut model, &w);
        for (off, d) in &w {
            img.write_at(*off, d).unwrap();
        }
        img.flush().unwrap();
        drop(img);
        qemu_check_clean(&p);
        assert!(
            qemu_contents(&p) == model,
            "cluster_bits {bits}: qemu-img reads different data"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn qemu_img_clone_works_in_vlab_and_vlab_clone_works_in_qemu() {
    let dir = scratch("clones");
    let master = dir.join("master.qcow2");
    let m = master.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", m, "32M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 32M", m]);
    let master_before = std::fs::read(&master).unwrap();

    // qemu-img's clone, written by vlab.
    let c1 = dir.join("c1.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "master.qcow2",
            "-F",
            "qcow2",
            c1.to_str().unwrap(),
        ],
    );
    // vlab's clone, written by vlab; a second clone open at the same time
    // shares the master read-only.
    let c2 = dir.join("c2.qcow2");
    image::clone_image(&master, &c2).unwrap();
    let mut a = image::open(&c1, OpenOptions::default()).unwrap();
    let mut b = image::open(&c2, OpenOptions::default()).unwrap();
    let mut model = vec![0x11u8; 32 << 20];
    let w = vec![(1000u64, pattern(20, 700)), (5 * MIB, pattern(21, 200_000))];
    apply(&mut model, &w);
    for img in [&mut a, &mut b] {
        assert_eq!(img.virtual_size(), 32 << 20);
        for (off, d) in &w {
            img.write_at(*off, d).unwrap();
        }
        img.flush().unwrap();
        let mut back = vec![0u8; model.len()];
        img.read_at(0, &mut back).unwrap();
        assert!(back == model);
        let info = img.info().unwrap();
        let backing = info.backing.expect("backing");
        assert_eq!(backing.format, Format::Qcow2);
        assert!(info.data_bytes.unwrap() < 1 << 20);
    }
    drop((a, b));
    for c in [&c1, &c2] {
        qemu_check_clean(c);
        assert!(qemu_contents(c) == model);
    }
    assert!(
        std::fs::read(&master).unwrap() == master_before,
        "the master was written"
    );
    let info = run("qemu-img", &["info", c2.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("backing file format: qcow2"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn raw_images_both_ways() {
    let dir = scratch("raw");
    let p = dir.join("r.img");
    image::create_raw(&p, 8 * MIB).unwrap();
    let mut img = image::open(
        &p,
        OpenOptions {
            format: Some(Format::Raw),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    img.write_at(4096, &pattern(30, 10_000)).unwrap();
    img.write_zeroes(8192, 1000).unwrap();
    img.flush().unwrap();
    drop(img);
    let mut model = vec![0u8; 8 << 20];
    apply(&mut model, &[(4096, pattern(30, 10_000))]);
    model[8192..9192].fill(0);
    assert!(qemu_contents(&p) == model);
    std::fs::remove_dir_all(dir).unwrap();
}
