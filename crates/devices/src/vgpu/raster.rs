//! Executing vgpu commands on a framebuffer.
//!
//! The framebuffer is a caller-provided byte slice in XRGB8888: pixel
//! `(x, y)` is the little-endian u32 at byte `y * stride + x * 4`. Nothing is
//! clipped: a rectangle that is not entirely on screen is an error (the
//! engine rejects it in [`super::command::Command::validate`] before any
//! pixel changes; [`execute`] re-checks and refuses rather than indexing out
//! of bounds). Guest memory is read through [`DmaRead`], so the checked DMA
//! path of the PCI framework can plug in later.

use super::command::{upload_source_len, Command, Rect};
use super::regs::{stride_for, BYTES_PER_PIXEL, MAX_HEIGHT, MAX_WIDTH};

/// A DMA read the memory refused: `addr..addr+len` is not (entirely) guest
/// memory the device may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DMA read of {len:#x} bytes at {addr:#x} outside guest memory")]
pub struct DmaFault {
    /// First address of the refused read.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// Reading guest memory on behalf of the device (bus-master DMA).
pub trait DmaRead {
    /// Fill `buf` from guest-physical `addr`, or fail without a partial
    /// promise about `buf`'s contents.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault>;
}

/// The shape of the visible framebuffer (format is always XRGB8888).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FbGeometry {
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Bytes between the starts of two rows.
    pub stride: u32,
}

impl FbGeometry {
    /// The geometry vgpu uses for a `width` x `height` mode (stride from
    /// [`stride_for`]), or `None` if the size is 0 or above the maximum.
    pub fn for_mode(width: u32, height: u32) -> Option<FbGeometry> {
        ((1..=MAX_WIDTH).contains(&width) && (1..=MAX_HEIGHT).contains(&height)).then(|| {
            FbGeometry {
                width,
                height,
                stride: stride_for(width),
            }
        })
    }

    /// Bytes of framebuffer the visible area spans: `stride * height`.
    pub fn bytes(&self) -> u64 {
        u64::from(self.stride) * u64::from(self.height)
    }

    fn check(&self, fb_len: usize) -> Result<(), RasterError> {
        let row = u64::from(self.width) * u64::from(BYTES_PER_PIXEL);
        if row > u64::from(self.stride) || self.bytes() > fb_len as u64 {
            return Err(RasterError::BadGeometry);
        }
        Ok(())
    }

    /// Byte range of the pixels `x..x+w` of row `y`, if inside the screen.
    fn span(&self, x: u32, y: u32, w: u32) -> Option<std::ops::Range<usize>> {
        if y >= self.height || u64::from(x) + u64::from(w) > u64::from(self.width) {
            return None;
        }
        let start = u64::from(y) * u64::from(self.stride) + u64::from(x) * 4;
        let start = usize::try_from(start).ok()?;
        let len = usize::try_from(u64::from(w) * 4).ok()?;
        Some(start..start.checked_add(len)?)
    }
}

/// Why [`execute`] refused or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RasterError {
    /// The framebuffer slice is smaller than the geometry, or stride < row.
    #[error("Framebuffer geometry does not fit the framebuffer memory")]
    BadGeometry,
    /// A rectangle is not entirely inside the screen.
    #[error("Rectangle outside the screen")]
    OutOfBounds,
    /// UPLOAD_IMAGE stride too small or source range wraps.
    #[error("Bad upload source")]
    BadSource,
    /// A guest-memory read failed; rows before it were written.
    #[error(transparent)]
    Dma(#[from] DmaFault),
}

/// Execute one command on `fb`. FENCE and NOP do nothing here (the engine
/// handles fences). `mem` is only read by UPLOAD_IMAGE.
pub fn execute(
    fb: &mut [u8],
    geom: &FbGeometry,
    cmd: &Command,
    mem: &dyn DmaRead,
) -> Result<(), RasterError> {
    geom.check(fb.len())?;
    match *cmd {
        Command::Nop { .. } | Command::Fence { .. } => Ok(()),
        Command::FillRect { rect, color } => fill_rect(fb, geom, &rect, color),
        Command::CopyRect { src_x, src_y, rect } => copy_rect(fb, geom, src_x, src_y, &rect),
        Command::UploadImage {
            rect,
            src_addr,
            src_stride,
        } => upload_image(fb, geom, &rect, src_addr, src_stride, mem),
    }
}

fn check_rect(geom: &FbGeometry, r: &Rect) -> Result<(), RasterError> {
    if r.fits(geom.width, geom.height) {
        Ok(())
    } else {
        Err(RasterError::OutOfBounds)
    }
}

fn fill_rect(fb: &mut [u8], geom: &FbGeometry, r: &Rect, color: u32) -> Result<(), RasterError> {
    check_rect(geom, r)?;
    let px = color.to_le_bytes();
    for y in r.y..r.y.saturating_add(r.h) {
        let span = geom.span(r.x, y, r.w).ok_or(RasterError::OutOfBounds)?;
        let row = fb.get_mut(span).ok_or(RasterError::OutOfBounds)?;
        for p in row.chunks_exact_mut(4) {
            p.copy_from_slice(&px);
        }
    }
    Ok(())
}

fn copy_rect(
    fb: &mut [u8],
    geom: &FbGeometry,
    src_x: u32,
    src_y: u32,
    dst: &Rect,
) -> Result<(), RasterError> {
    let src = Rect {
        x: src_x,
        y: src_y,
        ..*dst
    };
    check_rect(geom, &src)?;
    check_rect(geom, dst)?;
    // Rows move with copy_within (memmove inside a row); walk the rows
    // bottom-up when moving down so no source row is overwritten first.
    let rows: Box<dyn Iterator<Item = u32>> = if dst.y > src.y {
        Box::new((0..dst.h).rev())
    } else {
        Box::new(0..dst.h)
    };
    for i in rows {
        let s = geom
            .span(src.x, src.y.saturating_add(i), src.w)
            .ok_or(RasterError::OutOfBounds)?;
        let d = geom
            .span(dst.x, dst.y.saturating_add(i), dst.w)
            .ok_or(RasterError::OutOfBounds)?;
        if s.end > fb.len() || d.end > fb.len() {
            return Err(RasterError::OutOfBounds);
        }
        fb.copy_within(s, d.start);
    }
    Ok(())
}

fn upload_image(
    fb: &mut [u8],
    geom: &FbGeometry,
    r: &Rect,
    src_addr: u64,
    src_stride: u32,
    mem: &dyn DmaRead,
) -> Result<(), RasterError> {
    check_rect(geom, r)?;
    let row_len = u64::from(r.w) * u64::from(BYTES_PER_PIXEL);
    if u64::from(src_stride) < row_len
        || upload_source_len(r, src_stride)
            .and_then(|l| src_addr.checked_add(l))
            .is_none()
    {
        return Err(RasterError::BadSource);
    }
    let mut row = vec![0u8; usize::try_from(row_len).map_err(|_| RasterError::BadSource)?];
    for i in 0..r.h {
        let addr = u64::from(i)
            .checked_mul(u64::from(src_stride))
            .and_then(|o| src_addr.checked_add(o))
            .ok_or(RasterError::BadSource)?;
        mem.read(addr, &mut row)?;
        let d = geom
            .span(r.x, r.y.saturating_add(i), r.w)
            .ok_or(RasterError::OutOfBounds)?;
        fb.get_mut(d)
            .ok_or(RasterError::OutOfBounds)?
            .copy_from_slice(&row);
    }
    Ok(())
}

/// The pixel at `(x, y)`, if inside the geometry and the slice.
pub fn pixel(fb: &[u8], geom: &FbGeometry, x: u32, y: u32) -> Option<u32> {
    let s = geom.span(x, y, 1)?;
    let b = fb.get(s)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A [`DmaRead`] over a byte vector at guest address `base`: the fake guest
/// memory of tests, and the source for reference renders.
#[derive(Clone, Debug, Default)]
pub struct VecMemory {
    /// Guest address of `bytes[0]`.
    pub base: u64,
    /// The memory contents.
    pub bytes: Vec<u8>,
}

impl VecMemory {
    /// `len` zero bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        VecMemory {
            base,
            bytes: vec![0; len],
        }
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    /// Write `data` at guest address `addr`; false if out of range.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.range(addr, data.len()) {
            Some(r) => {
                self.bytes[r].copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

impl DmaRead for VecMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let fault = DmaFault {
            addr,
            len: buf.len() as u64,
        };
        let r = self.range(addr, buf.len()).ok_or(fault)?;
        buf.copy_from_slice(self.bytes.get(r).ok_or(fault)?);
        Ok(())
    }
}

#[cfg(test)]
#[path = "raster_tests.rs"]
mod tests;
