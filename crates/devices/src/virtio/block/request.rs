//! virtio-blk requests (virtio 1.2 §5.2.6): a descriptor chain split into
//! its device-readable and device-writable parts, parsed into a
//! [`Request`], executed on a [`DiskImage`].
//!
//! Framing is not assumed (§2.7.4): the readable descriptors form one byte
//! stream — the 16-byte header, then the payload (write data or
//! discard/write-zeroes segments) — and the writable descriptors another —
//! the read data (or the 20-byte ID), then the status byte, which is the
//! stream's last byte. Every guest buffer is reached through [`Dma`].
//!
//! | problem | result |
//! |---------|--------|
//! | empty chain, loop / bad `next` / descriptor outside RAM (chain cut short), readable after writable | [`RequestError`], no status: used length 0 |
//! | no writable byte for the status | used length 0 |
//! | header shorter than 16 bytes (e.g. in a writable descriptor), payload where none belongs, data not a multiple of 512, bad segment list, buffer outside RAM, sector range past the capacity, write to a read-only disk, image error | `VIRTIO_BLK_S_IOERR` |
//! | unknown type, discard/write-zeroes not negotiated, unknown segment flags, unmap on discard | `VIRTIO_BLK_S_UNSUPP` |

use block::image::DiskImage;
use virtio_queue::desc::split::Descriptor;

use crate::dma::{Dma, DmaError};

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: read the device ID (serial).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Discard/write-zeroes segment flag: the range may be deallocated.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The unit of `sector`.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
pub const HEADER_LEN: u64 = 16;
/// Size of one discard/write-zeroes segment.
pub const SEGMENT_LEN: u64 = 16;
/// Size of the device ID.
pub const ID_LEN: usize = 20;
/// Data is moved between the image and guest memory in pieces of this size.
pub const CHUNK: usize = 128 * 1024;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptor (e.g. a head index past the queue).
    #[error("empty descriptor chain")]
    Empty,
    /// The chain was cut short: a loop, a `next` past the table, or a
    /// descriptor (table) outside guest RAM.
    #[error("descriptor chain is cut short (loop, bad next index or table outside RAM)")]
    Truncated,
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// No device-writable byte for the status.
    #[error("no device-writable byte for the status")]
    NoStatus,
    /// The readable part is shorter than the header.
    #[error("request header is {0} bytes, not 16")]
    ShortHeader(u64),
    /// A buffer lengths do not fit the request type.
    #[error("{what} is {len} bytes")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: u64,
    },
    /// Sector range past the capacity.
    #[error("sectors {sector}+{sectors} are past the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Unknown or not negotiated request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Too many discard/write-zeroes segments.
    #[error("{0} segments, more than the device allows")]
    TooManySegments(u64),
    /// A discard/write-zeroes segment longer than the device allows.
    #[error("segment of {0} sectors, more than the device allows")]
    SegmentTooLarge(u32),
    /// Unknown segment flags, or unmap on a discard.
    #[error("segment flags {0:#x} not supported")]
    BadFlags(u32),
    /// A guest buffer was refused.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The image failed.
    #[error("{0}")]
    Image(String),
}

impl RequestError {
    /// The status byte reported for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::BadFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A descriptor chain split by direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// The device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// The device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Bytes `skip..skip + len` of the stream `segs` describe.
fn sub(segs: &[Segment], mut skip: u64, mut len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        if len == 0 {
            break;
        }
        let l = u64::from(s.len);
        if skip >= l {
            skip -= l;
            continue;
        }
        let take = (l - skip).min(len);
        out.push(Segment {
            addr: s.addr.saturating_add(skip),
            len: take as u32,
        });
        len -= take;
        skip = 0;
    }
    out
}

fn gather(dma: &Dma, segs: &[Segment], buf: &mut [u8]) -> Result<(), DmaError> {
    let mut at = 0;
    for s in segs {
        let n = (s.len as usize).min(buf.len() - at);
        dma.read(s.addr, &mut buf[at..at + n])?;
        at += n;
    }
    Ok(())
}

fn scatter(dma: &Dma, segs: &[Segment], buf: &[u8]) -> Result<u64, DmaError> {
    let mut at = 0;
    for s in segs {
        let n = (s.len as usize).min(buf.len() - at);
        dma.write(s.addr, &buf[at..at + n])?;
        at += n;
    }
    Ok(at as u64)
}

impl Chain {
    /// Split a descriptor chain (as virtio-queue yields it, indirect tables
    /// already followed) by direction.
    pub fn split(descs: impl Iterator<Item = Descriptor>) -> Result<Chain, RequestError> {
        let mut c = Chain::default();
        let mut last_has_next = false;
        let mut any = false;
        for d in descs {
            any = true;
            last_has_next = d.has_next();
            let s = Segment {
                addr: d.addr().0,
                len: d.len(),
            };
            if d.is_write_only() {
                c.writable.push(s);
            } else if c.writable.is_empty() {
                c.readable.push(s);
            } else {
                return Err(RequestError::ReadableAfterWritable);
            }
        }
        if !any {
            return Err(RequestError::Empty);
        }
        if last_has_next {
            return Err(RequestError::Truncated);
        }
        Ok(c)
    }

    /// The guest address of the status byte: the writable stream's last.
    pub fn status_addr(&self) -> Option<u64> {
        let s = self.writable.iter().rev().find(|s| s.len > 0)?;
        s.addr.checked_add(u64::from(s.len) - 1)
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Flush.
    Flush,
    /// Read the ID.
    GetId,
    /// Discard ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
}

/// One discard/write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_*`.
    pub flags: u32,
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The type.
    pub kind: RequestKind,
    /// First sector (reads and writes).
    pub sector: u64,
    /// The data buffers: written for reads and GET_ID, read for writes.
    pub data: Vec<Segment>,
    /// Total data length.
    pub data_len: u64,
    /// Discard/write-zeroes ranges.
    pub ranges: Vec<RangeSegment>,
}

impl Request {
    /// Sectors the request touches (reads/writes: data; ranges: their sum).
    pub fn sectors(&self) -> u64 {
        match self.kind {
            RequestKind::In | RequestKind::Out => self.data_len / SECTOR_SIZE,
            RequestKind::Discard | RequestKind::WriteZeroes => {
                self.ranges.iter().map(|r| u64::from(r.num_sectors)).sum()
            }
            _ => 0,
        }
    }
}

/// The disk as the request path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskParams {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// DISCARD negotiated.
    pub discard: bool,
    /// WRITE_ZEROES negotiated.
    pub write_zeroes: bool,
    /// Longest discard segment, in sectors.
    pub max_discard_sectors: u32,
    /// Most discard segments per request.
    pub max_discard_seg: u32,
    /// Longest write-zeroes segment, in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most write-zeroes segments per request.
    pub max_write_zeroes_seg: u32,
    /// FLUSH not negotiated: make every write durable before completing it.
    pub writethrough: bool,
    /// The device ID (GET_ID).
    pub serial: [u8; ID_LEN],
}

fn check_range(p: &DiskParams, sector: u64, sectors: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= p.capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: p.capacity,
        }),
    }
}

fn sectors_of(what: &'static str, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Length { what, len });
    }
    Ok(len / SECTOR_SIZE)
}

fn no_payload(payload: u64) -> Result<(), RequestError> {
    if payload != 0 {
        return Err(RequestError::Length {
            what: "header",
            len: HEADER_LEN + payload,
        });
    }
    Ok(())
}

/// Read the header (and segment list) of `chain` and validate the request.
/// `chain` must have a status byte ([`Chain::status_addr`]).
pub fn parse(chain: &Chain, dma: &Dma, p: &DiskParams) -> Result<Request, RequestError> {
    let rlen = total(&chain.readable);
    if rlen < HEADER_LEN {
        return Err(RequestError::ShortHeader(rlen));
    }
    let mut hdr = [0u8; HEADER_LEN as usize];
    gather(dma, &chain.readable, &mut hdr)?;
    let t = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let payload_len = rlen - HEADER_LEN;
    let payload = sub(&chain.readable, HEADER_LEN, payload_len);
    let wlen = total(&chain.writable).saturating_sub(1);
    let wdata = sub(&chain.writable, 0, wlen);
    let mut req = Request {
        kind: RequestKind::Flush,
        sector,
        data: Vec::new(),
        data_len: 0,
        ranges: Vec::new(),
    };
    match t {
        VIRTIO_BLK_T_IN => {
            no_payload(payload_len)?;
            check_range(p, sector, sectors_of("read buffer", wlen)?)?;
            req.kind = RequestKind::In;
            (req.data, req.data_len) = (wdata, wlen);
        }
        VIRTIO_BLK_T_OUT => {
            check_range(p, sector, sectors_of("write buffer", payload_len)?)?;
            if p.read_only {
                return Err(RequestError::ReadOnly);
            }
            req.kind = RequestKind::Out;
            (req.data, req.data_len) = (payload, payload_len);
        }
        VIRTIO_BLK_T_FLUSH => no_payload(payload_len)?,
        VIRTIO_BLK_T_GET_ID => {
            no_payload(payload_len)?;
            req.kind = RequestKind::GetId;
            (req.data, req.data_len) = (wdata, wlen);
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = t == VIRTIO_BLK_T_DISCARD;
            let (on, max_seg, max_sectors) = if discard {
                (p.discard, p.max_discard_seg, p.max_discard_sectors)
            } else {
                (
                    p.write_zeroes,
                    p.max_write_zeroes_seg,
                    p.max_write_zeroes_sectors,
                )
            };
            if !on {
                return Err(RequestError::Unsupported(t));
            }
            if payload_len == 0 || !payload_len.is_multiple_of(SEGMENT_LEN) {
                return Err(RequestError::Length {
                    what: "segment list",
                    len: payload_len,
                });
            }
            let n = payload_len / SEGMENT_LEN;
            if n > u64::from(max_seg) {
                return Err(RequestError::TooManySegments(n));
            }
            let mut raw = vec![0u8; payload_len as usize];
            gather(dma, &payload, &mut raw)?;
            for s in raw.chunks_exact(SEGMENT_LEN as usize) {
                let le32 = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
                let r = RangeSegment {
                    sector: u64::from(le32(0)) | u64::from(le32(4)) << 32,
                    num_sectors: le32(8),
                    flags: le32(12),
                };
                let bad = r.flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
                if bad != 0 || (discard && r.flags != 0) {
                    return Err(RequestError::BadFlags(r.flags));
                }
                if r.num_sectors > max_sectors {
                    return Err(RequestError::SegmentTooLarge(r.num_sectors));
                }
                check_range(p, r.sector, u64::from(r.num_sectors))?;
                req.ranges.push(r);
            }
            if p.read_only {
                return Err(RequestError::ReadOnly);
            }
            req.kind = if discard {
                RequestKind::Discard
            } else {
                RequestKind::WriteZeroes
            };
        }
        other => return Err(RequestError::Unsupported(other)),
    }
    Ok(req)
}

fn image(e: block::image::ImageError) -> RequestError {
    RequestError::Image(e.to_string())
}

/// Execute `req` on `disk`, moving data through `dma` and `bounce`.
/// Returns the bytes written to the guest's writable buffers (not counting
/// the status byte) and the outcome.
pub fn execute(
    req: &Request,
    disk: &mut dyn DiskImage,
    dma: &Dma,
    p: &DiskParams,
    bounce: &mut Vec<u8>,
) -> (u64, Result<(), RequestError>) {
    let mut written = 0u64;
    let r = run(req, disk, dma, p, bounce, &mut written);
    (written, r)
}

fn run(
    req: &Request,
    disk: &mut dyn DiskImage,
    dma: &Dma,
    p: &DiskParams,
    bounce: &mut Vec<u8>,
    written: &mut u64,
) -> Result<(), RequestError> {
    let byte = |sector: u64| sector.saturating_mul(SECTOR_SIZE);
    match req.kind {
        RequestKind::In | RequestKind::Out => {
            for s in &req.data {
                dma.check(s.addr, u64::from(s.len))?;
            }
            if bounce.len() < CHUNK {
                bounce.resize(CHUNK, 0);
            }
            let mut off = byte(req.sector);
            for s in &req.data {
                let mut done = 0u64;
                while done < u64::from(s.len) {
                    let n = (u64::from(s.len) - done).min(CHUNK as u64) as usize;
                    let buf = &mut bounce[..n];
                    let addr = s.addr + done;
                    if req.kind == RequestKind::In {
                        disk.read_at(off, buf).map_err(image)?;
                        dma.write(addr, buf)?;
                        *written += n as u64;
                    } else {
                        dma.read(addr, buf)?;
                        disk.write_at(off, buf).map_err(image)?;
                    }
                    off += n as u64;
                    done += n as u64;
                }
            }
            if req.kind == RequestKind::Out && p.writethrough {
                disk.flush().map_err(image)?;
            }
        }
        RequestKind::Flush => disk.flush().map_err(image)?,
        RequestKind::GetId => {
            let n = (req.data_len as usize).min(ID_LEN);
            *written = scatter(dma, &req.data, &p.serial[..n])?;
        }
        RequestKind::Discard | RequestKind::WriteZeroes => {
            for r in &req.ranges {
                let (o, l) = (byte(r.sector), byte(u64::from(r.num_sectors)));
                if req.kind == RequestKind::Discard {
                    disk.discard(o, l).map_err(image)?;
                } else {
                    disk.write_zeroes(o, l).map_err(image)?;
                }
            }
            if p.writethrough {
                disk.flush().map_err(image)?;
            }
        }
    }
    Ok(())
}
