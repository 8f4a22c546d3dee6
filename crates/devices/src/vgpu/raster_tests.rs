use super::*;

const W: u32 = 8;
const H: u32 = 6;

fn g() -> FbGeometry {
    // Stride 64 bytes = 16 pixels: 8 pixels of padding per row.
    FbGeometry::for_mode(W, H).unwrap()
}

fn fresh() -> Vec<u8> {
    vec![0; g().bytes() as usize]
}

fn r(x: u32, y: u32, w: u32, h: u32) -> Rect {
    Rect { x, y, w, h }
}

/// The visible pixels, row by row.
fn pixels(fb: &[u8]) -> Vec<Vec<u32>> {
    (0..H)
        .map(|y| (0..W).map(|x| pixel(fb, &g(), x, y).unwrap()).collect())
        .collect()
}

/// A framebuffer where pixel (x, y) = y * 16 + x.
fn numbered() -> Vec<u8> {
    let mut fb = fresh();
    for y in 0..H {
        for x in 0..W {
            let c = Command::FillRect {
                rect: r(x, y, 1, 1),
                color: y * 16 + x,
            };
            execute(&mut fb, &g(), &c, &VecMemory::default()).unwrap();
        }
    }
    fb
}

fn run(fb: &mut [u8], c: Command) -> Result<(), RasterError> {
    execute(fb, &g(), &c, &VecMemory::default())
}

#[test]
fn geometry_uses_the_aligned_stride() {
    assert_eq!(g().stride, 64);
    assert_eq!(g().bytes(), 64 * 6);
    assert_eq!(FbGeometry::for_mode(0, 5), None);
    assert_eq!(FbGeometry::for_mode(1025, 5), None);
    assert_eq!(FbGeometry::for_mode(5, 769), None);
}

#[test]
fn fill_rect_is_pixel_exact_and_leaves_padding_alone() {
    let mut fb = fresh();
    run(
        &mut fb,
        Command::FillRect {
            rect: r(2, 1, 3, 2),
            color: 0x00aa_bbcc,
        },
    )
    .unwrap();
    let p = pixels(&fb);
    for (y, row) in p.iter().enumerate() {
        for (x, &v) in row.iter().enumerate() {
            let inside = (2..5).contains(&x) && (1..3).contains(&y);
            assert_eq!(v, if inside { 0x00aa_bbcc } else { 0 }, "({x},{y})");
        }
    }
    // Little-endian bytes B, G, R, X.
    let off = 64 + 2 * 4;
    assert_eq!(&fb[off..off + 4], &[0xcc, 0xbb, 0xaa, 0x00]);
    // Stride padding (bytes 32..64 of each row) untouched.
    assert!(fb.chunks(64).all(|row| row[32..].iter().all(|&b| b == 0)));
}

#[test]
fn empty_rectangles_do_nothing() {
    let mut fb = numbered();
    let before = fb.clone();
    run(
        &mut fb,
        Command::FillRect {
            rect: r(8, 6, 0, 0),
            color: 1,
        },
    )
    .unwrap();
    run(
        &mut fb,
        Command::CopyRect {
            src_x: 0,
            src_y: 0,
            rect: r(3, 3, 0, 3),
        },
    )
    .unwrap();
    assert_eq!(fb, before);
}

#[test]
fn copy_rect_non_overlapping() {
    let mut fb = numbered();
    run(
        &mut fb,
        Command::CopyRect {
            src_x: 0,
            src_y: 0,
            rect: r(5, 3, 2, 2),
        },
    )
    .unwrap();
    let p = pixels(&fb);
    assert_eq!(p[3][5..7], [0x00, 0x01]);
    assert_eq!(p[4][5..7], [0x10, 0x11]);
    assert_eq!(p[3][4], 0x34);
    assert_eq!(p[5][5], 0x55);
}

/// Expected result of a memmove-like copy on the numbered framebuffer.
fn expected_copy(sx: u32, sy: u32, d: Rect) -> Vec<Vec<u32>> {
    let src = pixels(&numbered());
    let mut out = src.clone();
    for j in 0..d.h {
        for i in 0..d.w {
            out[(d.y + j) as usize][(d.x + i) as usize] = src[(sy + j) as usize][(sx + i) as usize];
        }
    }
    out
}

#[test]
fn overlapping_copies_behave_like_memmove_in_every_direction() {
    let cases = [
        (1, 1, r(2, 2, 5, 4)), // down-right
        (2, 2, r(1, 1, 5, 4)), // up-left
        (0, 1, r(1, 1, 7, 3)), // right, same rows
        (1, 1, r(0, 1, 7, 3)), // left, same rows
        (0, 0, r(0, 1, 8, 5)), // down, full width
        (0, 1, r(0, 0, 8, 5)), // up, full width
        (3, 0, r(0, 2, 5, 4)), // down-left
        (0, 3, r(3, 0, 5, 3)), // up-right
    ];
    for (sx, sy, d) in cases {
        let mut fb = numbered();
        run(
            &mut fb,
            Command::CopyRect {
                src_x: sx,
                src_y: sy,
                rect: d,
            },
        )
        .unwrap();
        assert_eq!(
            pixels(&fb),
            expected_copy(sx, sy, d),
            "({sx},{sy}) -> {d:?}"
        );
    }
}

#[test]
fn upload_image_reads_rows_at_the_source_stride() {
    let mut mem = VecMemory::new(0x1000, 256);
    // 3x2 image, source stride 16 bytes (4 pixels, 1 padding pixel).
    for (i, px) in [1u32, 2, 3, 0xdead, 4, 5, 6].iter().enumerate() {
        mem.write(0x1000 + 4 * i as u64, &px.to_le_bytes());
    }
    let mut fb = fresh();
    let c = Command::UploadImage {
        rect: r(4, 2, 3, 2),
        src_addr: 0x1000,
        src_stride: 16,
    };
    execute(&mut fb, &g(), &c, &mem).unwrap();
    let p = pixels(&fb);
    assert_eq!(p[2][4..7], [1, 2, 3]);
    assert_eq!(p[3][4..7], [4, 5, 6]);
    assert_eq!(p[2][7], 0);
    assert_eq!(p[1][4], 0);
}

#[test]
fn upload_fault_keeps_rows_written_before_it() {
    let mut mem = VecMemory::new(0x1000, 8);
    mem.write(0x1000, &7u32.to_le_bytes());
    let mut fb = fresh();
    let c = Command::UploadImage {
        rect: r(0, 0, 1, 3),
        src_addr: 0x1000,
        src_stride: 8,
    };
    let e = execute(&mut fb, &g(), &c, &mem).unwrap_err();
    assert_eq!(
        e,
        RasterError::Dma(DmaFault {
            addr: 0x1008,
            len: 4
        })
    );
    let p = pixels(&fb);
    assert_eq!((p[0][0], p[1][0], p[2][0]), (7, 0, 0));
}

#[test]
fn out_of_bounds_and_bad_sources_are_refused_without_drawing() {
    let mut fb = numbered();
    let before = fb.clone();
    let bad = [
        Command::FillRect {
            rect: r(7, 0, 2, 1),
            color: 9,
        },
        Command::FillRect {
            rect: r(0, u32::MAX, 1, 2),
            color: 9,
        },
        Command::CopyRect {
            src_x: 7,
            src_y: 0,
            rect: r(0, 0, 2, 1),
        },
        Command::CopyRect {
            src_x: 0,
            src_y: 0,
            rect: r(0, 5, 1, 2),
        },
    ];
    for c in bad {
        assert_eq!(run(&mut fb, c), Err(RasterError::OutOfBounds), "{c:?}");
    }
    let up = Command::UploadImage {
        rect: r(0, 0, 2, 2),
        src_addr: u64::MAX - 4,
        src_stride: 8,
    };
    assert_eq!(run(&mut fb, up), Err(RasterError::BadSource));
    let up = Command::UploadImage {
        rect: r(0, 0, 2, 2),
        src_addr: 0,
        src_stride: 7,
    };
    assert_eq!(run(&mut fb, up), Err(RasterError::BadSource));
    assert_eq!(fb, before);
}

#[test]
fn framebuffer_smaller_than_the_geometry_is_refused() {
    let mut small = vec![0u8; 100];
    let c = Command::FillRect {
        rect: r(0, 0, 1, 1),
        color: 1,
    };
    assert_eq!(run(&mut small, c), Err(RasterError::BadGeometry));
    let weird = FbGeometry {
        width: 8,
        height: 1,
        stride: 4,
    };
    assert_eq!(
        execute(&mut fresh(), &weird, &c, &VecMemory::default()),
        Err(RasterError::BadGeometry)
    );
}

#[test]
fn vec_memory_bounds() {
    let mut m = VecMemory::new(0x100, 16);
    assert!(m.write(0x10c, &[1, 2, 3, 4]));
    assert!(!m.write(0x10d, &[1, 2, 3, 4]));
    assert!(!m.write(0xff, &[1]));
    let mut b = [0u8; 4];
    assert!(m.read(0x10c, &mut b).is_ok());
    assert_eq!(b, [1, 2, 3, 4]);
    assert!(m.read(u64::MAX, &mut b).is_err());
}
