use super::*;

fn bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn r(x: u32, y: u32, w: u32, h: u32) -> Rect {
    Rect { x, y, w, h }
}

fn geom() -> FbGeometry {
    FbGeometry::for_mode(64, 48).unwrap()
}

#[test]
fn every_command_round_trips_through_encode_and_parse() {
    let cmds = vec![
        Command::Nop { dwords: 3 },
        Command::FillRect {
            rect: r(1, 2, 3, 4),
            color: 0x00ff_8000,
        },
        Command::CopyRect {
            src_x: 5,
            src_y: 6,
            rect: r(7, 8, 9, 10),
        },
        Command::UploadImage {
            rect: r(0, 0, 2, 2),
            src_addr: 0x1_2345_6780,
            src_stride: 64,
        },
        Command::Fence { value: 42 },
    ];
    let buf = encode_buffer(&cmds);
    assert_eq!(buf.len(), (3 + 6 + 7 + 8 + 2) * 4);
    assert_eq!(parse(&buf).unwrap(), cmds);
    let offsets: Vec<usize> = commands(&buf).map(|c| c.unwrap().0).collect();
    assert_eq!(offsets, vec![0, 12, 36, 64, 96]);
    assert_eq!(parse(&[]).unwrap(), vec![]);
}

#[test]
fn header_layout_is_opcode_low_byte_length_high_half() {
    assert_eq!(Command::Fence { value: 7 }.encode(), vec![0x0002_0004, 7]);
    assert_eq!(
        parse(&bytes(&[0x0001_0000])).unwrap(),
        vec![Command::Nop { dwords: 1 }]
    );
}

#[test]
fn unknown_opcode() {
    let e = parse(&bytes(&[0x0002_0004, 1, 0x0001_0099])).unwrap_err();
    assert_eq!(
        e,
        CommandError::UnknownOpcode {
            offset: 8,
            opcode: 0x99
        }
    );
    assert_eq!(e.code(), ErrorCode::UnknownOpcode);
}

#[test]
fn zero_and_wrong_lengths() {
    for hdr in [
        0x0000_0000u32,
        0x0000_0004,
        0x0003_0004,
        0x0005_0001,
        0x0008_0002,
        0x0007_0003,
    ] {
        let e = parse(&bytes(&[hdr, 0, 0, 0, 0, 0, 0, 0, 0, 0])).unwrap_err();
        assert!(
            matches!(e, CommandError::BadLength { offset: 0, .. }),
            "{hdr:#x}: {e:?}"
        );
        assert_eq!(e.code(), ErrorCode::BadLength);
    }
}

#[test]
fn truncated_header_and_body() {
    assert_eq!(
        parse(&[1, 0, 2]).unwrap_err(),
        CommandError::Truncated {
            offset: 0,
            needed: 4,
            left: 3
        }
    );
    // A FILL_RECT with only 3 of its 6 dwords.
    let e = parse(&bytes(&[0x0006_0001, 0, 0])).unwrap_err();
    assert_eq!(
        e,
        CommandError::Truncated {
            offset: 0,
            needed: 24,
            left: 12
        }
    );
    // A NOP claiming 0xffff dwords.
    assert!(matches!(
        parse(&bytes(&[0xffff_0000])),
        Err(CommandError::Truncated { .. })
    ));
    // Trailing partial word after a good command.
    let mut b = bytes(&[0x0002_0004, 1]);
    b.push(0);
    assert_eq!(parse(&b).unwrap_err().offset(), 8);
    assert_eq!(parse(&b).unwrap_err().code(), ErrorCode::Truncated);
}

#[test]
fn reserved_header_bits() {
    let e = parse(&bytes(&[0x0002_0104, 1])).unwrap_err();
    assert_eq!(e, CommandError::ReservedBits { offset: 0 });
    assert_eq!(e.code(), ErrorCode::ReservedBits);
}

#[test]
fn iterator_stops_after_the_first_error() {
    let b = bytes(&[0x0001_0077, 0x0002_0004, 1]);
    let items: Vec<_> = commands(&b).collect();
    assert_eq!(items.len(), 1);
    assert!(items[0].is_err());
}

#[test]
fn validation_needs_a_mode_for_drawing_only() {
    let fill = Command::FillRect {
        rect: r(0, 0, 1, 1),
        color: 0,
    };
    assert_eq!(
        fill.validate(None, 12).unwrap_err(),
        CommandError::NoMode { offset: 12 }
    );
    assert_eq!(CommandError::NoMode { offset: 0 }.code(), ErrorCode::NoMode);
    assert!(Command::Fence { value: 1 }.validate(None, 0).is_ok());
    assert!(Command::Nop { dwords: 1 }.validate(None, 0).is_ok());
}

#[test]
fn rectangles_must_be_inside_the_screen() {
    let g = geom();
    let ok = [
        r(0, 0, 64, 48),
        r(63, 47, 1, 1),
        r(64, 48, 0, 0),
        r(10, 10, 0, 5),
    ];
    for rect in ok {
        let c = Command::FillRect { rect, color: 0 };
        assert!(c.validate(Some(&g), 0).is_ok(), "{rect:?}");
    }
    let bad = [
        r(0, 0, 65, 1),
        r(0, 0, 1, 49),
        r(64, 0, 1, 1),
        r(65, 0, 0, 0),
        r(u32::MAX, 0, 2, 1),
        r(0, u32::MAX, 1, u32::MAX),
    ];
    for rect in bad {
        let c = Command::FillRect { rect, color: 0 };
        let e = c.validate(Some(&g), 4).unwrap_err();
        assert_eq!(e, CommandError::RectOutOfBounds { offset: 4 }, "{rect:?}");
        assert_eq!(e.code(), ErrorCode::RectOutOfBounds);
    }
    // COPY_RECT checks the source as well as the destination.
    let copy = Command::CopyRect {
        src_x: 60,
        src_y: 0,
        rect: r(0, 0, 8, 1),
    };
    assert!(copy.validate(Some(&g), 0).is_err());
    let copy = Command::CopyRect {
        src_x: 0,
        src_y: 0,
        rect: r(60, 0, 8, 1),
    };
    assert!(copy.validate(Some(&g), 0).is_err());
}

#[test]
fn upload_stride_and_source_range() {
    let g = geom();
    let up = |src_addr, src_stride| Command::UploadImage {
        rect: r(0, 0, 4, 3),
        src_addr,
        src_stride,
    };
    assert!(up(0x1000, 16).validate(Some(&g), 0).is_ok());
    let e = up(0x1000, 15).validate(Some(&g), 8).unwrap_err();
    assert_eq!(e, CommandError::StrideTooSmall { offset: 8 });
    assert_eq!(e.code(), ErrorCode::StrideTooSmall);
    // (h-1)*stride + w*4 = 2*16 + 16 = 48 bytes; the end address
    // (src_addr + 48) must not wrap.
    assert!(up(u64::MAX - 48, 16).validate(Some(&g), 0).is_ok());
    let e = up(u64::MAX - 47, 16).validate(Some(&g), 0).unwrap_err();
    assert_eq!(e, CommandError::SourceOverflow { offset: 0 });
    assert_eq!(e.code(), ErrorCode::SourceOverflow);
    assert_eq!(upload_source_len(&r(0, 0, 4, 3), 16), Some(48));
    assert_eq!(upload_source_len(&r(0, 0, 0, 3), 16), Some(0));
}

#[test]
fn parse_and_validate_reports_the_faulting_offset() {
    let g = geom();
    let buf = encode_buffer(&[
        Command::Fence { value: 1 },
        Command::FillRect {
            rect: r(0, 0, 100, 1),
            color: 0,
        },
    ]);
    let e = parse_and_validate(&buf, Some(&g)).unwrap_err();
    assert_eq!(e, CommandError::RectOutOfBounds { offset: 8 });
}
