//! The vgpu command stream: the bytes of one command buffer in guest memory.
//!
//! A command buffer is a sequence of little-endian 32-bit words. Every command
//! starts with a header word:
//!
//! | bits  | field                                             |
//! |-------|---------------------------------------------------|
//! | 7:0   | opcode (`OP_*`)                                   |
//! | 15:8  | reserved, must be 0                               |
//! | 31:16 | length of the command in dwords, header included  |
//!
//! followed by `length - 1` argument words. [`parse`] is pure and total: any
//! byte string yields commands or a [`CommandError`], never a panic, so a
//! fuzz target can call it directly. [`Command::validate`] then checks a
//! parsed command against the current mode.

use super::raster::FbGeometry;
use super::regs::{ErrorCode, BYTES_PER_PIXEL};

/// NOP: `length >= 1`; the argument words are ignored (padding).
pub const OP_NOP: u8 = 0x00;
/// FILL_RECT: x, y, w, h, color.
pub const OP_FILL_RECT: u8 = 0x01;
/// COPY_RECT: src_x, src_y, dst_x, dst_y, w, h.
pub const OP_COPY_RECT: u8 = 0x02;
/// UPLOAD_IMAGE: x, y, w, h, src_addr_lo, src_addr_hi, src_stride.
pub const OP_UPLOAD_IMAGE: u8 = 0x03;
/// FENCE: value.
pub const OP_FENCE: u8 = 0x04;

/// Length in dwords (header included) of FILL_RECT.
pub const FILL_RECT_DWORDS: u16 = 6;
/// Length in dwords (header included) of COPY_RECT.
pub const COPY_RECT_DWORDS: u16 = 7;
/// Length in dwords (header included) of UPLOAD_IMAGE.
pub const UPLOAD_IMAGE_DWORDS: u16 = 8;
/// Length in dwords (header included) of FENCE.
pub const FENCE_DWORDS: u16 = 2;

/// Header bits that must be zero.
pub const HEADER_RESERVED: u32 = 0x0000_ff00;

/// An axis-aligned rectangle in framebuffer pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels (0 is a valid, empty rectangle).
    pub w: u32,
    /// Height in pixels (0 is a valid, empty rectangle).
    pub h: u32,
}

impl Rect {
    /// True if the rectangle lies entirely inside a `width` x `height`
    /// screen (checked arithmetic; empty rectangles must still start inside
    /// or on the edge).
    pub fn fits(&self, width: u32, height: u32) -> bool {
        let right = self.x.checked_add(self.w);
        let bottom = self.y.checked_add(self.h);
        matches!((right, bottom), (Some(r), Some(b)) if r <= width && b <= height)
    }
}

/// One decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Does nothing; `dwords` is its total length.
    Nop {
        /// Length of the command in dwords, header included.
        dwords: u16,
    },
    /// Fill `rect` with `color` (a raw XRGB8888 pixel).
    FillRect {
        /// Destination.
        rect: Rect,
        /// Pixel value written, `0xXXRRGGBB`.
        color: u32,
    },
    /// Copy `w` x `h` pixels from `(src_x, src_y)` to `rect`, as if through
    /// a temporary buffer (overlap behaves like `memmove`).
    CopyRect {
        /// Source left column.
        src_x: u32,
        /// Source top row.
        src_y: u32,
        /// Destination (its w, h are the copy's size).
        rect: Rect,
    },
    /// Copy pixels from guest memory into `rect`; row `r` starts at
    /// `src_addr + r * src_stride`.
    UploadImage {
        /// Destination.
        rect: Rect,
        /// Guest-physical address of the first source pixel.
        src_addr: u64,
        /// Bytes between the starts of two source rows.
        src_stride: u32,
    },
    /// Set FENCE_COMPLETED to `value` and raise INT_FENCE.
    Fence {
        /// The fence value.
        value: u32,
    },
}

/// A malformed or invalid command; `offset` is the byte offset of the
/// command's header in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Opcode not defined.
    #[error("Unknown opcode {opcode:#x} at offset {offset:#x}")]
    UnknownOpcode {
        /// Header offset.
        offset: usize,
        /// The opcode.
        opcode: u8,
    },
    /// Length field 0 or not the one the opcode requires.
    #[error("Bad length {dwords} dwords for opcode {opcode:#x} at offset {offset:#x}")]
    BadLength {
        /// Header offset.
        offset: usize,
        /// The opcode.
        opcode: u8,
        /// The length field.
        dwords: u16,
    },
    /// The command (or its header) runs past the end of the buffer.
    #[error("Command at offset {offset:#x} needs {needed} bytes, {left} left in the buffer")]
    Truncated {
        /// Header offset.
        offset: usize,
        /// Bytes the command needs.
        needed: usize,
        /// Bytes left in the buffer.
        left: usize,
    },
    /// Reserved header bits set.
    #[error("Reserved header bits set at offset {offset:#x}")]
    ReservedBits {
        /// Header offset.
        offset: usize,
    },
    /// A drawing command while no mode is set.
    #[error("Drawing command at offset {offset:#x} with no mode set")]
    NoMode {
        /// Header offset.
        offset: usize,
    },
    /// A rectangle (source or destination) outside the visible framebuffer.
    #[error("Rectangle of the command at offset {offset:#x} is outside the screen")]
    RectOutOfBounds {
        /// Header offset.
        offset: usize,
    },
    /// UPLOAD_IMAGE stride smaller than `w * 4`.
    #[error("Source stride of the upload at offset {offset:#x} is smaller than a row")]
    StrideTooSmall {
        /// Header offset.
        offset: usize,
    },
    /// UPLOAD_IMAGE source range wraps around the address space.
    #[error("Source range of the upload at offset {offset:#x} wraps around")]
    SourceOverflow {
        /// Header offset.
        offset: usize,
    },
}

impl CommandError {
    /// The ERROR_CODE value the device reports.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::UnknownOpcode { .. } => ErrorCode::UnknownOpcode,
            CommandError::BadLength { .. } => ErrorCode::BadLength,
            CommandError::Truncated { .. } => ErrorCode::Truncated,
            CommandError::ReservedBits { .. } => ErrorCode::ReservedBits,
            CommandError::NoMode { .. } => ErrorCode::NoMode,
            CommandError::RectOutOfBounds { .. } => ErrorCode::RectOutOfBounds,
            CommandError::StrideTooSmall { .. } => ErrorCode::StrideTooSmall,
            CommandError::SourceOverflow { .. } => ErrorCode::SourceOverflow,
        }
    }

    /// Byte offset of the faulting command's header in its buffer.
    pub fn offset(&self) -> usize {
        match *self {
            CommandError::UnknownOpcode { offset, .. }
            | CommandError::BadLength { offset, .. }
            | CommandError::Truncated { offset, .. }
            | CommandError::ReservedBits { offset }
            | CommandError::NoMode { offset }
            | CommandError::RectOutOfBounds { offset }
            | CommandError::StrideTooSmall { offset }
            | CommandError::SourceOverflow { offset } => offset,
        }
    }
}

fn header(opcode: u8, dwords: u16) -> u32 {
    (u32::from(dwords) << 16) | u32::from(opcode)
}

impl Command {
    /// The command's opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Command::Nop { .. } => OP_NOP,
            Command::FillRect { .. } => OP_FILL_RECT,
            Command::CopyRect { .. } => OP_COPY_RECT,
            Command::UploadImage { .. } => OP_UPLOAD_IMAGE,
            Command::Fence { .. } => OP_FENCE,
        }
    }

    /// The command's words, header first (what a driver writes).
    pub fn encode(&self) -> Vec<u32> {
        match *self {
            Command::Nop { dwords } => {
                let n = dwords.max(1);
                let mut v = vec![0; usize::from(n)];
                v[0] = header(OP_NOP, n);
                v
            }
            Command::FillRect { rect: r, color } => {
                vec![
                    header(OP_FILL_RECT, FILL_RECT_DWORDS),
                    r.x,
                    r.y,
                    r.w,
                    r.h,
                    color,
                ]
            }
            Command::CopyRect {
                src_x,
                src_y,
                rect: r,
            } => vec![
                header(OP_COPY_RECT, COPY_RECT_DWORDS),
                src_x,
                src_y,
                r.x,
                r.y,
                r.w,
                r.h,
            ],
            Command::UploadImage {
                rect: r,
                src_addr,
                src_stride,
            } => vec![
                header(OP_UPLOAD_IMAGE, UPLOAD_IMAGE_DWORDS),
                r.x,
                r.y,
                r.w,
                r.h,
                src_addr as u32,
                (src_addr >> 32) as u32,
                src_stride,
            ],
            Command::Fence { value } => vec![header(OP_FENCE, FENCE_DWORDS), value],
        }
    }

    /// Check the command against the current mode (`None`: no mode set).
    /// `offset` is only used to build the error.
    pub fn validate(&self, fb: Option<&FbGeometry>, offset: usize) -> Result<(), CommandError> {
        let (rects, upload): (&[Rect], _) = match self {
            Command::Nop { .. } | Command::Fence { .. } => return Ok(()),
            Command::FillRect { rect, .. } => (std::slice::from_ref(rect), None),
            Command::CopyRect { src_x, src_y, rect } => {
                let src = Rect {
                    x: *src_x,
                    y: *src_y,
                    ..*rect
                };
                return validate_rects(fb, &[src, *rect], offset);
            }
            Command::UploadImage {
                rect,
                src_addr,
                src_stride,
            } => (std::slice::from_ref(rect), Some((*src_addr, *src_stride))),
        };
        validate_rects(fb, rects, offset)?;
        if let Some((addr, stride)) = upload {
            let rect = rects.first().copied().unwrap_or_default();
            let row = u64::from(rect.w) * u64::from(BYTES_PER_PIXEL);
            if u64::from(stride) < row {
                return Err(CommandError::StrideTooSmall { offset });
            }
            if upload_source_len(&rect, stride)
                .and_then(|len| addr.checked_add(len))
                .is_none()
            {
                return Err(CommandError::SourceOverflow { offset });
            }
        }
        Ok(())
    }
}

/// Bytes of guest memory an upload of `rect` with `stride` spans:
/// `(h - 1) * stride + w * 4`, 0 for an empty rectangle; `None` on overflow.
pub fn upload_source_len(rect: &Rect, stride: u32) -> Option<u64> {
    if rect.w == 0 || rect.h == 0 {
        return Some(0);
    }
    let row = u64::from(rect.w).checked_mul(u64::from(BYTES_PER_PIXEL))?;
    u64::from(rect.h - 1)
        .checked_mul(u64::from(stride))?
        .checked_add(row)
}

fn validate_rects(
    fb: Option<&FbGeometry>,
    rects: &[Rect],
    offset: usize,
) -> Result<(), CommandError> {
    let fb = fb.ok_or(CommandError::NoMode { offset })?;
    if rects.iter().all(|r| r.fits(fb.width, fb.height)) {
        Ok(())
    } else {
        Err(CommandError::RectOutOfBounds { offset })
    }
}

/// Iterator over the commands of a buffer: yields `(offset, command)` or
/// one error, after which it ends.
#[derive(Clone, Debug)]
pub struct Commands<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

/// Iterate over the commands in `buf`.
pub fn commands(buf: &[u8]) -> Commands<'_> {
    Commands {
        buf,
        offset: 0,
        failed: false,
    }
}

fn word(bytes: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = bytes.get(i * 4..i * 4 + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

impl Commands<'_> {
    fn next_command(&mut self) -> Result<(usize, Command), CommandError> {
        let offset = self.offset;
        let rest = self.buf.get(offset..).unwrap_or_default();
        if rest.len() < 4 {
            return Err(CommandError::Truncated {
                offset,
                needed: 4,
                left: rest.len(),
            });
        }
        let hdr = word(rest, 0);
        let opcode = (hdr & 0xff) as u8;
        let dwords = (hdr >> 16) as u16;
        if hdr & HEADER_RESERVED != 0 {
            return Err(CommandError::ReservedBits { offset });
        }
        let expected = match opcode {
            OP_NOP => None,
            OP_FILL_RECT => Some(FILL_RECT_DWORDS),
            OP_COPY_RECT => Some(COPY_RECT_DWORDS),
            OP_UPLOAD_IMAGE => Some(UPLOAD_IMAGE_DWORDS),
            OP_FENCE => Some(FENCE_DWORDS),
            _ => return Err(CommandError::UnknownOpcode { offset, opcode }),
        };
        if dwords == 0 || expected.is_some_and(|e| e != dwords) {
            return Err(CommandError::BadLength {
                offset,
                opcode,
                dwords,
            });
        }
        let needed = usize::from(dwords) * 4;
        let body = rest.get(..needed).ok_or(CommandError::Truncated {
            offset,
            needed,
            left: rest.len(),
        })?;
        let a = |i: usize| word(body, i);
        let rect = |i: usize| Rect {
            x: a(i),
            y: a(i + 1),
            w: a(i + 2),
            h: a(i + 3),
        };
        let cmd = match opcode {
            OP_FILL_RECT => Command::FillRect {
                rect: rect(1),
                color: a(5),
            },
            OP_COPY_RECT => Command::CopyRect {
                src_x: a(1),
                src_y: a(2),
                rect: rect(3),
            },
            OP_UPLOAD_IMAGE => Command::UploadImage {
                rect: rect(1),
                src_addr: u64::from(a(5)) | (u64::from(a(6)) << 32),
                src_stride: a(7),
            },
            OP_FENCE => Command::Fence { value: a(1) },
            _ => Command::Nop { dwords },
        };
        self.offset = offset.saturating_add(needed);
        Ok((offset, cmd))
    }
}

impl Iterator for Commands<'_> {
    type Item = Result<(usize, Command), CommandError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.buf.len() {
            return None;
        }
        let r = self.next_command();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Parse a whole command buffer (syntax only; see [`Command::validate`]).
pub fn parse(buf: &[u8]) -> Result<Vec<Command>, CommandError> {
    commands(buf).map(|r| r.map(|(_, c)| c)).collect()
}

/// Parse a buffer and validate every command against the mode: what the
/// engine does before executing any command of a buffer.
pub fn parse_and_validate(
    buf: &[u8],
    fb: Option<&FbGeometry>,
) -> Result<Vec<(usize, Command)>, CommandError> {
    commands(buf)
        .map(|r| r.and_then(|(off, c)| c.validate(fb, off).map(|()| (off, c))))
        .collect()
}

/// Little-endian bytes of a list of commands: a ready command buffer.
pub fn encode_buffer(cmds: &[Command]) -> Vec<u8> {
    cmds.iter()
        .flat_map(|c| c.encode())
        .flat_map(u32::to_le_bytes)
        .collect()
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
