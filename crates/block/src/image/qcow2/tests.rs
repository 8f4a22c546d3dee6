use super::*;
use crate::image::storage::{MemStorage, SharedMem};

/// A fresh image in memory with small clusters, so tests cross L2-table
/// and refcount-block boundaries quickly.
fn new_image(size: u64, bits: u32) -> MemStorage {
    let mut st = MemStorage::default();
    create_in(&mut st, size, None, bits).unwrap();
    st
}

fn open(st: MemStorage, writable: bool) -> Qcow2Image {
    Qcow2Image::open_storage(Box::new(st), writable, None, "t".into()).unwrap()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn clean(img: &mut Qcow2Image) -> CheckReport {
    let r = img.check().unwrap();
    assert_eq!(r.corruptions, 0, "{:?}", r.messages);
    r
}

#[test]
fn fresh_image_reads_zeros_and_checks_clean() {
    let mut img = open(new_image(1 << 20, 16), false);
    let mut buf = vec![1u8; 8192];
    img.read(1000, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let r = clean(&mut img);
    assert_eq!(r.leaks, 0);
}

#[test]
fn write_read_back_across_clusters_and_tables() {
    let size = 4 << 20;
    let mut img = open(new_image(size, 9), true);
    let mut model = vec![0u8; size as usize];
    for (i, (off, len)) in [
        (0u64, 512usize),
        (100, 3000),
        (40_000, 70_000),
        (size - 700, 700),
        (1 << 20, 512),
        (2 << 20, 300_000),
    ]
    .into_iter()
    .enumerate()
    {
        let d = pattern(i as u64, len);
        img.write(off, &d).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&d);
    }
    let mut back = vec![0u8; size as usize];
    img.read(0, &mut back).unwrap();
    assert!(back == model);
    let r = clean(&mut img);
    assert_eq!(r.leaks, 0);
    // Many refcount blocks were needed with 512-byte clusters.
    assert!(img.reftable.iter().filter(|&&e| e != 0).count() > 1);
}

#[test]
fn reopen_sees_the_same_data() {
    let shared = SharedMem::default();
    shared.0.lock().unwrap().data = new_image(1 << 20, 12).data;
    let d = pattern(7, 20_000);
    {
        let mut img =
            Qcow2Image::open_storage(Box::new(shared.clone()), true, None, "t".into()).unwrap();
        img.write(5000, &d).unwrap();
        img.flush_storage().unwrap();
    }
    let mut img = open(MemStorage::new(shared.bytes()), false);
    let mut back = vec![0u8; d.len()];
    img.read(5000, &mut back).unwrap();
    assert!(back == d);
}

#[test]
fn backing_chain_cow_and_zero_flag() {
    let size = 1 << 20;
    let mut base = open(new_image(size, 12), true);
    let base_data = pattern(1, size as usize);
    base.write(0, &base_data).unwrap();
    let base = open(MemStorage::new(base_data_image(&mut base)), false);

    let mut st = MemStorage::default();
    create_in(&mut st, size, Some(("base".into(), "qcow2".into())), 12).unwrap();
    let mut top =
        Qcow2Image::open_storage(Box::new(st), true, Some(Box::new(base)), "top".into()).unwrap();
    let mut model = base_data.clone();
    // Partial-cluster write: the rest of the cluster comes from the backing.
    top.write(4096 + 100, b"hello").unwrap();
    model[4096 + 100..4096 + 105].copy_from_slice(b"hello");
    // Whole clusters zeroed over a backing: the zero flag (or zero data).
    top.zero(8192, 8192).unwrap();
    model[8192..16384].fill(0);
    top.write(20_000, &[9u8; 100]).unwrap();
    top.zero(16384, 8192).unwrap(); // covers the cluster just written: zero flag
    model[20_000..20_100].fill(9);
    model[16384..24576].fill(0);
    let mut back = vec![0u8; size as usize];
    top.read(0, &mut back).unwrap();
    assert!(back == model);
    assert_eq!(top.allocated_data().unwrap(), 4096);
    clean(&mut top);
}

/// The bytes of an image after its writes (for reopening read-only).
fn base_data_image(img: &mut Qcow2Image) -> Vec<u8> {
    let len = img.st.len().unwrap();
    let mut b = vec![0u8; len as usize];
    img.st.read_at(0, &mut b).unwrap();
    b
}

#[test]
fn zero_flag_is_honoured_on_read() {
    let mut img = open(new_image(1 << 20, 12), true);
    img.write(0, &[0xaa; 4096]).unwrap();
    let (_, l2off, _) = img.lookup(0).unwrap();
    // Set the zero flag by hand, keeping the host cluster.
    let e = img.lookup(0).unwrap().2 | ZERO;
    img.st.write_at(l2off, &e.to_be_bytes()).unwrap();
    let mut img = open(MemStorage::new(base_data_image(&mut img)), true);
    let mut b = [1u8; 4096];
    img.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // Writing re-uses the reserved cluster.
    let len = img.st.len().unwrap();
    img.write(10, b"x").unwrap();
    assert_eq!(img.st.len().unwrap(), len);
    img.read(0, &mut b).unwrap();
    assert_eq!(&b[9..12], b"\0x\0");
    clean(&mut img);
}

#[test]
fn compressed_clusters_are_refused_clearly() {
    let mut img = open(new_image(1 << 20, 12), true);
    img.write(0, &[1; 10]).unwrap();
    let (_, l2off, _) = img.lookup(0).unwrap();
    img.st
        .write_at(l2off, &(COMPRESSED | 0x3000).to_be_bytes())
        .unwrap();
    let mut img = open(MemStorage::new(base_data_image(&mut img)), false);
    let e = img.read(0, &mut [0u8; 10]).unwrap_err().to_string();
    assert!(
        e.contains("compressed") && e.contains("qemu-img convert"),
        "{e}"
    );
}

/// A sequence of operations touching every metadata step: new L2 tables,
/// new refcount blocks, COW, in-place writes, zero flags. `done` gets each
/// operation once its flush returned; `pending` the one in progress.
fn workload(
    img: &mut Qcow2Image,
    done: &mut Vec<(u64, Vec<u8>)>,
    pending: &mut Option<(u64, Vec<u8>)>,
) -> R<()> {
    let ops: [(u64, usize); 7] = [
        (0, 600),
        (300, 100),
        (70_000, 9000),
        (200_000, 512),
        (70_144, 1024),
        (1 << 20, 150_000),
        (5000, 10),
    ];
    for (i, (off, len)) in ops.into_iter().enumerate() {
        if i == 4 {
            *pending = Some((off, vec![0u8; len]));
            img.zero(off, len as u64)?;
        } else {
            let d = pattern(i as u64 + 100, len);
            *pending = Some((off, d.clone()));
            img.write(off, &d)?;
        }
        img.flush_storage()?;
        done.extend(pending.take());
    }
    Ok(())
}

#[test]
fn crash_at_every_write_leaves_a_consistent_image() {
    let size = 2 << 20;
    let base = new_image(size, 9);
    // Count the writes of a full run.
    let shared = SharedMem::default();
    shared.0.lock().unwrap().data = base.data.clone();
    {
        let mut img =
            Qcow2Image::open_storage(Box::new(shared.clone()), true, None, "t".into()).unwrap();
        workload(&mut img, &mut Vec::new(), &mut None).unwrap();
    }
    let total = shared.0.lock().unwrap().writes;
    assert!(total > 20, "{total}");
    assert!(
        shared.bytes().len() > 256 * 512,
        "workload must need a second refcount block"
    );
    for k in 0..=total {
        let shared = SharedMem::default();
        {
            let mut g = shared.0.lock().unwrap();
            g.data = base.data.clone();
            g.fail_at = Some(k);
        }
        let (mut flushed, mut pending) = (Vec::new(), None);
        {
            let mut img =
                Qcow2Image::open_storage(Box::new(shared.clone()), true, None, "t".into()).unwrap();
            let _ = workload(&mut img, &mut flushed, &mut pending);
        }
        // "Reboot": what reached the storage is all there is.
        let mut img = open(MemStorage::new(shared.bytes()), true);
        let r = img.check().unwrap();
        assert_eq!(r.corruptions, 0, "crash before write {k}: {:?}", r.messages);
        // Later writes may overwrite earlier ones: replay the model.
        let mut model = vec![0u8; size as usize];
        for (off, d) in &flushed {
            model[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        for (off, d) in &flushed {
            let mut back = vec![0u8; d.len()];
            img.read(*off, &mut back).unwrap();
            let want = &model[*off as usize..*off as usize + d.len()];
            // The operation in flight may have landed, wholly or in part.
            let newer = |j: usize| {
                let at = *off + j as u64;
                pending.as_ref().and_then(|(po, pd)| {
                    at.checked_sub(*po)
                        .and_then(|r| pd.get(r as usize))
                        .copied()
                })
            };
            let first_bad = (0..d.len()).find(|&j| back[j] != want[j] && Some(back[j]) != newer(j));
            assert!(
                first_bad.is_none(),
                "crash before write {k}: flushed data lost at {off} + {first_bad:?} of {}",
                d.len()
            );
        }
        // And the image still works.
        img.write(0, &[5; 512]).unwrap();
        clean(&mut img);
    }
}

#[test]
fn refcount_table_full_is_an_error_not_a_panic() {
    // 512-byte clusters: one refcount table cluster covers 64 * 256 clusters.
    let size = 16 << 20;
    let mut img = open(new_image(size, 9), true);
    let chunk = vec![7u8; 64 * 1024];
    let mut err = None;
    for i in 0..(size / chunk.len() as u64) {
        if let Err(e) = img.write(i * chunk.len() as u64, &chunk) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("table should fill").to_string();
    assert!(e.contains("refcount table is full"), "{e}");
    let r = clean(&mut img);
    let _ = r.leaks;
}

#[test]
fn corrupt_headers_and_tables_are_errors() {
    let good = new_image(1 << 20, 16).data;
    let mutate = |at: usize, bytes: &[u8]| {
        let mut d = good.clone();
        d[at..at + bytes.len()].copy_from_slice(bytes);
        Qcow2Image::open_storage(Box::new(MemStorage::new(d)), true, None, "t".into())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(mutate(4, &7u32.to_be_bytes()).contains("version 7"));
    assert!(mutate(20, &40u32.to_be_bytes()).contains("cluster_bits 40"));
    assert!(mutate(32, &1u32.to_be_bytes()).contains("encrypted"));
    assert!(mutate(40, &(1u64 << 40).to_be_bytes()).contains("L1 table"));
    assert!(mutate(48, &(u64::MAX - 5).to_be_bytes()).contains("refcount table"));
    assert!(mutate(24, &u64::MAX.to_be_bytes()).contains("virtual size"));
    assert!(mutate(72, &(1u64 << 20).to_be_bytes()).contains("bit 20"));
    assert!(mutate(72, &16u64.to_be_bytes()).contains("extended L2"));
    assert!(mutate(72, &1u64.to_be_bytes()).contains("dirty"));
    assert!(mutate(96, &1u32.to_be_bytes()).contains("refcount_order"));
    let short = Qcow2Image::open_storage(
        Box::new(MemStorage::new(good[..50].to_vec())),
        false,
        None,
        "t".into(),
    );
    assert!(short.err().unwrap().to_string().contains("truncated"));
    // L1 entry pointing outside the file: a guest I/O error, not a panic.
    let mut d = good.clone();
    d[3 << 16..(3 << 16) + 8].copy_from_slice(&(0x7000_0000u64 | COPIED).to_be_bytes());
    let mut img = open(MemStorage::new(d), true);
    let e = img.read(0, &mut [0u8; 512]).unwrap_err().to_string();
    assert!(
        e.contains("L2 table") && e.contains("outside the file"),
        "{e}"
    );
    assert!(img.write(0, &[1; 512]).is_err());
    assert!(img.check().unwrap().corruptions > 0);
}

#[test]
fn mutated_images_never_panic() {
    // A small deterministic fuzz run over header and table bytes.
    let mut img = open(new_image(1 << 20, 12), true);
    img.write(0, &pattern(3, 20_000)).unwrap();
    let good = base_data_image(&mut img);
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..3000 {
        let mut d = good.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let region = [0usize, 4096, 8192, 12288, 16384, 20480][(x % 6) as usize];
            let at = region + ((x >> 8) % 4096) as usize;
            if at < d.len() {
                d[at] = (x >> 40) as u8;
            }
        }
        crate::image::fuzz_open(&d);
    }
    for len in [0, 3, 71, 72, 103, 104, 200, 4095] {
        crate::image::fuzz_open(&good[..len.min(good.len())]);
    }
}
