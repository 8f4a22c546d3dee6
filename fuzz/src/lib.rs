//! Shared helpers for vlab's fuzz targets: turn fuzzer bytes into a
//! sequence of guest accesses.

/// One guest access decoded from fuzzer input.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// Which target the access goes to (target-specific meaning).
    pub target: u8,
    /// Write (true) or read.
    pub write: bool,
    /// Offset or address.
    pub offset: u64,
    /// Width in bytes: 0–8.
    pub width: usize,
    /// Value for writes (little-endian, truncated to `width`).
    pub value: u64,
}

/// Decode `data` into accesses, 12 bytes each: target, flags/width,
/// 2-byte offset (scaled by `offset_span`), 8-byte value.
pub fn ops(data: &[u8], offset_span: u64) -> impl Iterator<Item = Op> + '_ {
    data.chunks_exact(12).map(move |c| {
        let off = u64::from(u16::from_le_bytes([c[2], c[3]]));
        Op {
            target: c[0],
            write: c[1] & 0x80 != 0,
            width: usize::from(c[1] & 0x0f).min(8),
            offset: if offset_span > 0x1_0000 {
                (off * (offset_span / 0x1_0000)) | u64::from(c[4] & 3)
            } else {
                off % offset_span.max(1)
            },
            value: u64::from_le_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]),
        }
    })
}
