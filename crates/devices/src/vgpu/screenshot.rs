//! Screenshots (PNG) and the reference renderer used by end-to-end tests.

use std::sync::Mutex;

use super::command::Command;
use super::engine::Vgpu;
use super::raster::{execute, DmaRead, FbGeometry, RasterError};
use super::worker::FrameMemory;
use crate::bus::lock;

/// Why a screenshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ScreenshotError {
    /// No valid mode is set, so there is no visible framebuffer.
    #[error("vgpu has no mode set: nothing to capture")]
    NoMode,
    /// Width/height 0, stride smaller than a row, or memory too small.
    #[error("Framebuffer geometry {width}x{height} stride {stride} does not fit {len} bytes")]
    BadGeometry {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Row stride in bytes.
        stride: u32,
        /// Bytes of framebuffer memory.
        len: usize,
    },
    /// The PNG encoder failed.
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Encode the visible part of an XRGB8888 framebuffer as an 8-bit RGB PNG
/// (the X byte is dropped).
pub fn framebuffer_png(
    fb: &[u8],
    width: u32,
    height: u32,
    stride: u32,
) -> Result<Vec<u8>, ScreenshotError> {
    let bad = || ScreenshotError::BadGeometry {
        width,
        height,
        stride,
        len: fb.len(),
    };
    let row = u64::from(width) * 4;
    let span = u64::from(stride) * u64::from(height);
    if width == 0 || height == 0 || row > u64::from(stride) || span > fb.len() as u64 {
        return Err(bad());
    }
    let mut rgb = Vec::with_capacity((u64::from(width) * u64::from(height) * 3) as usize);
    for y in 0..height as usize {
        let start = y * stride as usize;
        let line = fb.get(start..start + row as usize).ok_or_else(bad)?;
        for px in line.chunks_exact(4) {
            // Little-endian 0xXXRRGGBB: bytes B, G, R, X.
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&rgb)?;
        w.finish()?;
    }
    Ok(out)
}

/// Screenshot of a running device: reads the mode under the device lock,
/// releases it, then encodes the framebuffer under the framebuffer's lock
/// (the worker's lock order is device → framebuffer, never the reverse).
pub fn screenshot(dev: &Mutex<Vgpu>, fb: &dyn FrameMemory) -> Result<Vec<u8>, ScreenshotError> {
    let geom = lock(dev).geometry().ok_or(ScreenshotError::NoMode)?;
    let mut out = Err(ScreenshotError::NoMode);
    fb.with(&mut |bytes| out = framebuffer_png(bytes, geom.width, geom.height, geom.stride));
    out
}

/// Render `cmds` with the model's own raster code into a fresh (zeroed)
/// framebuffer of `geom.bytes()` bytes: what a correct guest must produce.
/// FENCE and NOP are ignored; the first failing command's error is returned.
pub fn render_reference(
    geom: &FbGeometry,
    cmds: &[Command],
    mem: &dyn DmaRead,
) -> Result<Vec<u8>, RasterError> {
    let len = usize::try_from(geom.bytes()).map_err(|_| RasterError::BadGeometry)?;
    let mut fb = vec![0u8; len];
    for c in cmds {
        execute(&mut fb, geom, c, mem)?;
    }
    Ok(fb)
}

/// Decode a PNG written by [`framebuffer_png`] back to `(width, height,
/// RGB bytes)`; for tests comparing screenshots.
pub fn decode_png(data: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let dec = png::Decoder::new(std::io::Cursor::new(data));
    let mut r = dec.read_info().ok()?;
    let mut buf = vec![0; r.output_buffer_size()?];
    let info = r.next_frame(&mut buf).ok()?;
    buf.truncate(info.buffer_size());
    Some((info.width, info.height, buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vgpu::command::Rect;
    use crate::vgpu::raster::VecMemory;

    #[test]
    fn png_round_trips_pixels_and_drops_x() {
        let geom = FbGeometry::for_mode(3, 2).unwrap();
        let cmds = [
            Command::FillRect {
                rect: Rect {
                    x: 0,
                    y: 0,
                    w: 3,
                    h: 2,
                },
                color: 0xff11_2233,
            },
            Command::FillRect {
                rect: Rect {
                    x: 2,
                    y: 1,
                    w: 1,
                    h: 1,
                },
                color: 0x00ab_cdef,
            },
        ];
        let fb = render_reference(&geom, &cmds, &VecMemory::default()).unwrap();
        let png = framebuffer_png(&fb, geom.width, geom.height, geom.stride).unwrap();
        let (w, h, rgb) = decode_png(&png).unwrap();
        assert_eq!((w, h), (3, 2));
        let mut expect = [0x11u8, 0x22, 0x33].repeat(6);
        expect[15..18].copy_from_slice(&[0xab, 0xcd, 0xef]);
        assert_eq!(rgb, expect);
    }

    #[test]
    fn bad_geometry_is_an_error_not_a_panic() {
        for (w, h, s, len) in [
            (0, 1, 4, 64),
            (2, 1, 4, 64),
            (1, 17, 4, 64),
            (1, 1, u32::MAX, 4),
        ] {
            assert!(matches!(
                framebuffer_png(&vec![0; len], w, h, s),
                Err(ScreenshotError::BadGeometry { .. })
            ));
        }
    }
}
