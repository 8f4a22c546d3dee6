//! qcow2 (versions 2 and 3): L1/L2 tables, refcounts, allocation at the end
//! of the file, copy-on-write from a read-only backing image.
//!
//! Crash ordering of an allocating write (see docs/disks.md):
//! 1. new data clusters (with the copied-on-write parts), new L2 tables and
//!    new refcount blocks are written, and refcounts for every new cluster
//!    are raised in existing refcount blocks;
//! 2. fdatasync;
//! 3. refcount table entries for new refcount blocks, then fdatasync;
//! 4. the L2 entries of existing tables and the L1 entries of new tables.
//!
//! A crash between any two writes leaves at most leaked clusters (refcount 1,
//! nothing pointing at them); never a table entry pointing at a cluster whose
//! refcount is 0 or whose contents are not on disk.

mod check;
mod header;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use check::CheckReport;
pub use header::{Header, MAGIC, MAX_VIRTUAL_SIZE};

use super::storage::Storage;
use super::DiskImage;

/// L1/L2 entry: "copied" (refcount exactly 1).
const COPIED: u64 = 1 << 63;
/// L2 entry: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// L2 entry (v3): reads as zeros.
const ZERO: u64 = 1;
/// Host offset bits of L1/L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Host offset bits of a refcount table entry.
const REFT_MASK: u64 = !0x1ff;
/// Cached L2 tables / refcount blocks before the cache is emptied.
const CACHE_TABLES: usize = 64;

/// Everything that can go wrong in the qcow2 layer. The image's path is
/// added by `ImageError::Qcow2`.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// File shorter than a header.
    #[error("is truncated ({len} bytes), not a complete qcow2 image: restore it from a copy or recreate it")]
    Truncated {
        /// File length.
        len: u64,
    },
    /// Not version 2 or 3.
    #[error("qcow2 version {0} is not supported (only 2 and 3): convert it with `qemu-img amend -o compat=1.1`")]
    Version(u32),
    /// Cluster size out of range.
    #[error("cluster_bits {0} is out of range (9 to 21): the header is corrupt, restore the image from a copy")]
    ClusterBits(u32),
    /// Encryption.
    #[error("is encrypted; vlab does not support qcow2 encryption: convert it with `qemu-img convert -O qcow2` to an unencrypted image")]
    Encrypted,
    /// Unknown incompatible features.
    #[error(
        "uses qcow2 features vlab does not know ({0}): convert it with `qemu-img convert -O qcow2`"
    )]
    UnknownIncompatible(String),
    /// Subclusters.
    #[error("uses extended L2 entries (subclusters), which vlab does not support: convert it with `qemu-img convert -O qcow2 -o extended_l2=off`")]
    ExtendedL2,
    /// External data file.
    #[error("keeps its data in an external data file, which vlab does not support: convert it with `qemu-img convert -O qcow2`")]
    ExternalData,
    /// Refcount width.
    #[error("refcount_order {0} is not supported (vlab takes 3 to 6; the default is 4): convert it with `qemu-img amend -o refcount_bits=16`")]
    RefcountOrder(u32),
    /// Header length.
    #[error("header length {0} is invalid: the header is corrupt, restore the image from a copy")]
    HeaderLength(u32),
    /// A table outside the file or misaligned.
    #[error("{what} at offset {offset:#x} ({len} bytes) is misaligned or outside the file: the image is corrupt, try `qemu-img check -r all`")]
    BadTable {
        /// Which table.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// A size beyond vlab's limits.
    #[error("{what} of {value} bytes is beyond vlab's limits: the header is corrupt or the image too large")]
    TooLarge {
        /// What.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// Other corruption.
    #[error("is corrupt: {0}; try `qemu-img check -r all` or restore it from a copy")]
    Corrupt(String),
    /// Compressed cluster.
    #[error("guest offset {0:#x} is in a compressed cluster, which vlab does not read: decompress the image with `qemu-img convert -O qcow2`")]
    Compressed(u64),
    /// Dirty bit set.
    #[error("was not closed cleanly (dirty bit set): repair it with `qemu-img check -r all` before opening it writable")]
    Dirty,
    /// QEMU's corrupt bit.
    #[error(
        "is marked corrupt: repair it with `qemu-img check -r all` before opening it writable"
    )]
    MarkedCorrupt,
    /// Internal snapshots.
    #[error("has {0} internal snapshot(s), which vlab does not write: delete them with `qemu-img snapshot -d` or open the image read-only")]
    Snapshots(u32),
    /// Refcount table full.
    #[error("refcount table is full and vlab does not grow it: convert the image with `qemu-img convert -O qcow2` (64 KiB clusters)")]
    RefcountTableFull,
    /// Backing name.
    #[error("backing file name is empty, too long (over 1023 bytes), not UTF-8 or outside cluster 0: set it with `qemu-img rebase -u -b NAME`")]
    BackingName,
    /// Write to a read-only image.
    #[error("is open read-only")]
    ReadOnly,
    /// I/O.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

type R<T> = Result<T, Qcow2Error>;

/// What an L2 entry says about a guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not in this image: the backing image, or zeros.
    Unallocated,
    /// Reads as zeros; `Some(host)` when a host cluster is still reserved.
    Zero(Option<u64>),
    /// Data at this host offset.
    Data(u64),
    /// Compressed.
    Compressed,
}

/// Bounded cache of tables read from the file, written through.
struct Cache<T> {
    map: HashMap<u64, T>,
}

impl<T> Cache<T> {
    fn new() -> Self {
        Cache {
            map: HashMap::new(),
        }
    }
    fn insert(&mut self, k: u64, v: T) {
        if self.map.len() >= CACHE_TABLES {
            self.map.clear();
        }
        self.map.insert(k, v);
    }
}

/// An open qcow2 image.
pub struct Qcow2Image {
    /// The path, for messages.
    pub(crate) path: String,
    st: Box<dyn Storage>,
    h: Header,
    cs: u64,
    l1: Vec<u64>,
    reftable: Vec<u64>,
    l2_cache: Cache<Vec<u64>>,
    rb_cache: Cache<Vec<u8>>,
    backing: Option<Box<dyn DiskImage>>,
    writable: bool,
    /// File length as far as this image knows (grows with allocation).
    file_len: u64,
    /// Where the next cluster is allocated.
    next_alloc: u64,
}

fn read_u64s(st: &dyn Storage, offset: u64, n: usize) -> R<Vec<u64>> {
    let mut raw = vec![0u8; n * 8];
    st.read_at(offset, &mut raw)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

impl Qcow2Image {
    /// Read the header of `st`. Used by `open` and `info`.
    pub(crate) fn read_header(st: &dyn Storage) -> R<Header> {
        let len = st.len()?;
        let mut head = vec![0u8; 512.min(len) as usize];
        st.read_at(0, &mut head)?;
        if head.len() >= 24 {
            let bits = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
            if (9..=21).contains(&bits) {
                head = vec![0u8; (1u64 << bits).min(len) as usize];
                st.read_at(0, &mut head)?;
            }
        }
        Header::parse(&head, len)
    }

    /// Open a qcow2 image on `st`. `backing` is the already-opened backing
    /// image when the header names one.
    pub(crate) fn open_storage(
        mut st: Box<dyn Storage>,
        writable: bool,
        backing: Option<Box<dyn DiskImage>>,
        path: String,
    ) -> R<Qcow2Image> {
        let mut h = Self::read_header(st.as_ref())?;
        let cs = h.cluster_size();
        if writable {
            if h.incompatible & header::INCOMPAT_CORRUPT != 0 {
                return Err(Qcow2Error::MarkedCorrupt);
            }
            if h.incompatible & header::INCOMPAT_DIRTY != 0 {
                return Err(Qcow2Error::Dirty);
            }
            if h.nb_snapshots != 0 {
                return Err(Qcow2Error::Snapshots(h.nb_snapshots));
            }
        }
        let l1 = read_u64s(st.as_ref(), h.l1_table_offset, h.l1_size as usize)?;
        let rt_len = (u64::from(h.refcount_table_clusters) * cs / 8) as usize;
        let reftable = read_u64s(st.as_ref(), h.refcount_table_offset, rt_len)?;
        if writable && h.version == 3 && h.autoclear != 0 {
            // A writer that does not know an auto-clear feature clears it.
            st.write_at(88, &0u64.to_be_bytes())?;
            st.sync()?;
            h.autoclear = 0;
        }
        let file_len = st.len()?;
        Ok(Qcow2Image {
            path,
            st,
            cs,
            l1,
            reftable,
            l2_cache: Cache::new(),
            rb_cache: Cache::new(),
            backing,
            writable,
            file_len,
            next_alloc: file_len.div_ceil(cs) * cs,
            h,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.h
    }

    fn l2_entries(&self) -> u64 {
        self.cs / 8
    }

    fn load_l2(&mut self, off: u64) -> R<&Vec<u64>> {
        if !self.l2_cache.map.contains_key(&off) {
            if !header::table_ok(off, self.cs, self.cs, self.file_len) {
                return Err(Qcow2Error::BadTable {
                    what: "L2 table",
                    offset: off,
                    len: self.cs,
                });
            }
            let t = read_u64s(self.st.as_ref(), off, self.l2_entries() as usize)?;
            self.l2_cache.insert(off, t);
        }
        self.l2_cache
            .map
            .get(&off)
            .ok_or_else(|| Qcow2Error::Corrupt("L2 cache".into()))
    }

    /// (L1 index, L2 table offset or 0, L2 entry) for guest cluster `gc`.
    fn lookup(&mut self, gc: u64) -> R<(usize, u64, u64)> {
        let l1i = (gc / self.l2_entries()) as usize;
        let l2i = (gc % self.l2_entries()) as usize;
        let l2off = self.l1.get(l1i).copied().unwrap_or(0) & OFFSET_MASK;
        if l2off == 0 {
            return Ok((l1i, 0, 0));
        }
        let e = self.load_l2(l2off)?.get(l2i).copied().unwrap_or(0);
        Ok((l1i, l2off, e))
    }

    fn classify(&self, e: u64) -> R<Mapping> {
        if e & COMPRESSED != 0 {
            return Ok(Mapping::Compressed);
        }
        let host = e & OFFSET_MASK;
        if !host.is_multiple_of(self.cs) {
            return Err(Qcow2Error::Corrupt(format!(
                "data cluster offset {host:#x} is unaligned"
            )));
        }
        let host = (host != 0).then_some(host);
        if self.h.version >= 3 && e & ZERO != 0 {
            return Ok(Mapping::Zero(host));
        }
        Ok(host.map_or(Mapping::Unallocated, Mapping::Data))
    }

    fn mapping(&mut self, gc: u64) -> R<Mapping> {
        let (_, _, e) = self.lookup(gc)?;
        self.classify(e)
    }

    fn read_backing(&mut self, off: u64, buf: &mut [u8]) -> R<()> {
        buf.fill(0);
        if let Some(b) = self.backing.as_mut() {
            let bsize = b.virtual_size();
            if off < bsize {
                let n = buf.len().min((bsize - off) as usize);
                b.read_at(off, &mut buf[..n])
                    .map_err(|e| Qcow2Error::Corrupt(format!("backing image: {e}")))?;
            }
        }
        Ok(())
    }

    pub(crate) fn read(&mut self, mut off: u64, buf: &mut [u8]) -> R<()> {
        let mut done = 0;
        while done < buf.len() {
            let in_c = off % self.cs;
            let n = ((self.cs - in_c) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match self.mapping(off / self.cs)? {
                Mapping::Compressed => return Err(Qcow2Error::Compressed(off)),
                Mapping::Zero(_) => chunk.fill(0),
                Mapping::Unallocated => self.read_backing(off, chunk)?,
                Mapping::Data(host) => self.st.read_at(host + in_c, chunk)?,
            }
            done += n;
            off += n as u64;
        }
        Ok(())
    }

    fn refcount_bytes(&self) -> usize {
        (1usize << self.h.refcount_order) / 8
    }

    fn refs_per_block(&self) -> u64 {
        self.cs / self.refcount_bytes() as u64
    }

    fn load_refblock(&mut self, off: u64) -> R<&Vec<u8>> {
        if !self.rb_cache.map.contains_key(&off) {
            if !header::table_ok(off, self.cs, self.cs, self.file_len) {
                return Err(Qcow2Error::BadTable {
                    what: "refcount block",
                    offset: off,
                    len: self.cs,
                });
            }
            let mut b = vec![0u8; self.cs as usize];
            self.st.read_at(off, &mut b)?;
            self.rb_cache.insert(off, b);
        }
        self.rb_cache
            .map
            .get(&off)
            .ok_or_else(|| Qcow2Error::Corrupt("refcount cache".into()))
    }

    /// Refcount of host cluster number `hc`.
    pub(crate) fn refcount(&mut self, hc: u64) -> R<u64> {
        let idx = (hc / self.refs_per_block()) as usize;
        let i = (hc % self.refs_per_block()) as usize;
        let rb = self.reftable.get(idx).copied().unwrap_or(0) & REFT_MASK;
        if rb == 0 {
            return Ok(0);
        }
        let w = self.refcount_bytes();
        let block = self.load_refblock(rb)?;
        Ok(block[i * w..(i + 1) * w]
            .iter()
            .fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    }

    /// Raise the refcount of clusters `first..first+n` (all in existing
    /// refcount blocks) to 1 and write the changed bytes.
    fn set_refcounts_one(&mut self, first: u64, n: u64) -> R<()> {
        let w = self.refcount_bytes();
        let per = self.refs_per_block();
        let mut hc = first;
        while hc < first + n {
            let idx = (hc / per) as usize;
            let run = (per - hc % per).min(first + n - hc);
            let rb = self.reftable.get(idx).copied().unwrap_or(0) & REFT_MASK;
            let start = (hc % per) as usize * w;
            let end = start + run as usize * w;
            let mut block = self.load_refblock(rb)?.clone();
            for c in block[start..end].chunks_exact_mut(w) {
                c.fill(0);
                c[w - 1] = 1;
            }
            self.st.write_at(rb + start as u64, &block[start..end])?;
            self.rb_cache.insert(rb, block);
            hc += run;
        }
        Ok(())
    }

    /// Reserve `n` clusters at the end of the file and give each refcount 1.
    /// Returns the first cluster's offset. New refcount blocks are placed
    /// after them, written, synced and hooked into the refcount table before
    /// this returns; the caller syncs the raised refcounts itself.
    fn allocate(&mut self, n: u64) -> R<u64> {
        let start = self.next_alloc;
        let per = self.refs_per_block();
        let first = start / self.cs;
        let mut total = n;
        let missing = loop {
            let last = first + total - 1;
            let mut missing = Vec::new();
            for idx in first / per..=last / per {
                match self.reftable.get(idx as usize) {
                    None => return Err(Qcow2Error::RefcountTableFull),
                    Some(&e) if e & REFT_MASK == 0 => missing.push(idx),
                    Some(_) => {}
                }
            }
            if n + missing.len() as u64 == total {
                break missing;
            }
            total = n + missing.len() as u64;
        };
        let end = start
            .checked_add(total * self.cs)
            .filter(|&e| e <= header::MAX_VIRTUAL_SIZE)
            .ok_or(Qcow2Error::TooLarge {
                what: "image file",
                value: start,
            })?;
        self.next_alloc = end;
        // New refcount blocks: one cluster each after the n clusters.
        let w = self.refcount_bytes();
        let mut hooked = Vec::new();
        for (j, &idx) in missing.iter().enumerate() {
            let rb = start + (n + j as u64) * self.cs;
            let mut block = vec![0u8; self.cs as usize];
            for hc in (idx * per).max(first)..((idx + 1) * per).min(first + total) {
                block[(hc % per) as usize * w + w - 1] = 1;
            }
            self.st.write_at(rb, &block)?;
            self.file_len = self.file_len.max(rb + self.cs);
            hooked.push((idx, rb, block));
        }
        // Refcounts in blocks that already exist.
        let mut hc = first;
        while hc < first + total {
            let idx = hc / per;
            let run = ((idx + 1) * per).min(first + total) - hc;
            if !missing.contains(&idx) {
                self.set_refcounts_one(hc, run)?;
            }
            hc += run;
        }
        if !hooked.is_empty() {
            self.st.sync()?;
            for (idx, rb, block) in hooked {
                let at = self.h.refcount_table_offset + idx * 8;
                self.st.write_at(at, &rb.to_be_bytes())?;
                self.reftable[idx as usize] = rb;
                self.rb_cache.insert(rb, block);
            }
        }
        Ok(start)
    }

    pub(crate) fn write(&mut self, mut off: u64, buf: &[u8]) -> R<()> {
        if !self.writable {
            return Err(Qcow2Error::ReadOnly);
        }
        // Clusters that need a new (or re-used zero) host cluster:
        // (guest cluster, full new contents, reserved host cluster).
        let mut pending: Vec<(u64, Vec<u8>, Option<u64>)> = Vec::new();
        let mut done = 0;
        while done < buf.len() {
            let in_c = off % self.cs;
            let n = ((self.cs - in_c) as usize).min(buf.len() - done);
            let gc = off / self.cs;
            let data = &buf[done..done + n];
            match self.mapping(gc)? {
                Mapping::Data(host) => {
                    if host >= self.file_len {
                        return Err(Qcow2Error::Corrupt(format!(
                            "data cluster {host:#x} is beyond the end of the file"
                        )));
                    }
                    self.st.write_at(host + in_c, data)?;
                    self.file_len = self.file_len.max(host + in_c + n as u64);
                }
                Mapping::Compressed => return Err(Qcow2Error::Compressed(off)),
                m => {
                    let mut full = vec![0u8; self.cs as usize];
                    let reserved = match m {
                        Mapping::Zero(h) => h,
                        _ => {
                            if n as u64 != self.cs {
                                self.read_backing(gc * self.cs, &mut full)?;
                            }
                            None
                        }
                    };
                    full[in_c as usize..in_c as usize + n].copy_from_slice(data);
                    pending.push((gc, full, reserved));
                }
            }
            done += n;
            off += n as u64;
        }
        if pending.is_empty() {
            return Ok(());
        }
        self.commit_new_clusters(pending)
    }

    /// Steps 1–4 of the crash ordering for clusters that need a host cluster.
    fn commit_new_clusters(&mut self, pending: Vec<(u64, Vec<u8>, Option<u64>)>) -> R<()> {
        let l2e = self.l2_entries();
        let mut new_tables: Vec<usize> = Vec::new();
        for (gc, _, _) in &pending {
            let l1i = (gc / l2e) as usize;
            let has = self.l1.get(l1i).copied().unwrap_or(0) & OFFSET_MASK != 0;
            if !has && !new_tables.contains(&l1i) {
                if l1i >= self.l1.len() {
                    return Err(Qcow2Error::Corrupt("write beyond the L1 table".into()));
                }
                new_tables.push(l1i);
            }
        }
        let fresh = pending.iter().filter(|p| p.2.is_none()).count() as u64;
        let n = fresh + new_tables.len() as u64;
        let base = self.allocate(n)?;
        // Step 1: data clusters, then new L2 tables (with their entries).
        let mut next = base;
        let mut entries: Vec<(u64, u64)> = Vec::new(); // (guest cluster, host)
        for (gc, data, reserved) in &pending {
            let host = match reserved {
                Some(h) => *h,
                None => {
                    let h = next;
                    next += self.cs;
                    h
                }
            };
            self.st.write_at(host, data)?;
            self.file_len = self.file_len.max(host + self.cs);
            entries.push((*gc, host));
        }
        let mut table_at: HashMap<usize, (u64, Vec<u64>)> = HashMap::new();
        for &l1i in &new_tables {
            table_at.insert(l1i, (next, vec![0u64; l2e as usize]));
            next += self.cs;
        }
        for &(gc, host) in &entries {
            if let Some((_, t)) = table_at.get_mut(&((gc / l2e) as usize)) {
                t[(gc % l2e) as usize] = host | COPIED;
            }
        }
        for (toff, t) in table_at.values() {
            let raw: Vec<u8> = t.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.st.write_at(*toff, &raw)?;
            self.file_len = self.file_len.max(toff + self.cs);
        }
        // Step 2: data, tables and refcounts are durable before anything
        // points at them.
        self.st.sync()?;
        // Step 4: entries in existing L2 tables, then L1 entries.
        for &(gc, host) in &entries {
            let l1i = (gc / l2e) as usize;
            if table_at.contains_key(&l1i) {
                continue;
            }
            let l2off = self.l1[l1i] & OFFSET_MASK;
            let value = host | COPIED;
            self.st
                .write_at(l2off + (gc % l2e) * 8, &value.to_be_bytes())?;
            let mut t = self.load_l2(l2off)?.clone();
            t[(gc % l2e) as usize] = value;
            self.l2_cache.insert(l2off, t);
        }
        for (l1i, (toff, t)) in table_at {
            let value = toff | COPIED;
            self.st.write_at(
                self.h.l1_table_offset + l1i as u64 * 8,
                &value.to_be_bytes(),
            )?;
            self.l1[l1i] = value;
            self.l2_cache.insert(toff, t);
        }
        Ok(())
    }

    /// Zero `len` bytes at `off`: whole clusters by the L2 zero flag where
    /// the L2 table exists (v3), everything else by writing zeros.
    pub(crate) fn zero(&mut self, off: u64, len: u64) -> R<()> {
        if !self.writable {
            return Err(Qcow2Error::ReadOnly);
        }
        let end = off.saturating_add(len);
        let mut pos = off;
        while pos < end {
            let in_c = pos % self.cs;
            let n = (self.cs - in_c).min(end - pos);
            let gc = pos / self.cs;
            let whole = n == self.cs && self.h.version >= 3;
            let (_, l2off, e) = self.lookup(gc)?;
            let m = self.classify(e)?;
            let already = matches!(m, Mapping::Zero(_))
                || (m == Mapping::Unallocated && self.backing.is_none());
            if already {
                // Reads as zeros already.
            } else if whole && l2off != 0 {
                let value = match m {
                    Mapping::Data(h) => h | COPIED | ZERO,
                    _ => ZERO,
                };
                let l2e = self.l2_entries();
                self.st
                    .write_at(l2off + (gc % l2e) * 8, &value.to_be_bytes())?;
                let mut t = self.load_l2(l2off)?.clone();
                t[(gc % l2e) as usize] = value;
                self.l2_cache.insert(l2off, t);
            } else {
                self.write(pos, &vec![0u8; n as usize])?;
            }
            pos += n;
        }
        Ok(())
    }

    pub(crate) fn flush_storage(&mut self) -> R<()> {
        if self.writable {
            self.st.sync()?;
        }
        Ok(())
    }

    /// Bytes of guest data allocated in this image (not its backing).
    pub(crate) fn allocated_data(&self) -> R<u64> {
        let mut n = 0u64;
        for &l1e in &self.l1 {
            let l2off = l1e & OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if !header::table_ok(l2off, self.cs, self.cs, self.file_len) {
                return Err(Qcow2Error::BadTable {
                    what: "L2 table",
                    offset: l2off,
                    len: self.cs,
                });
            }
            let t = match self.l2_cache.map.get(&l2off) {
                Some(t) => t.clone(),
                None => read_u64s(self.st.as_ref(), l2off, self.l2_entries() as usize)?,
            };
            for e in t {
                if let Mapping::Data(_) = self.classify(e)? {
                    n += self.cs;
                }
            }
        }
        Ok(n)
    }

    pub(crate) fn host_allocated(&self) -> R<u64> {
        Ok(self.st.allocated()?)
    }

    pub(crate) fn backing(&self) -> Option<&dyn DiskImage> {
        self.backing.as_deref()
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable
    }
}

/// Create a new qcow2 image in `st`: header cluster, refcount table,
/// one refcount block, the L1 table — qemu-img's layout.
pub(crate) fn create_in(
    st: &mut dyn Storage,
    size: u64,
    backing: Option<(String, String)>,
    cluster_bits: u32,
) -> R<()> {
    let cs = 1u64 << cluster_bits;
    if size > header::MAX_VIRTUAL_SIZE {
        return Err(Qcow2Error::TooLarge {
            what: "virtual size",
            value: size,
        });
    }
    let l1_size = size.div_ceil(cs).div_ceil(cs / 8);
    let l1_bytes = l1_size * 8;
    if l1_bytes > header::MAX_L1_BYTES {
        return Err(Qcow2Error::TooLarge {
            what: "L1 table",
            value: l1_bytes,
        });
    }
    let l1_clusters = l1_bytes.div_ceil(cs).max(1);
    let (backing_file, backing_format) = match backing {
        Some((f, fmt)) => (Some(f), Some(fmt)),
        None => (None, None),
    };
    let h = Header {
        version: 3,
        cluster_bits,
        size,
        l1_size: l1_size as u32,
        l1_table_offset: 3 * cs,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        incompatible: 0,
        compatible: 0,
        autoclear: 0,
        refcount_order: 4,
        header_length: header::V3_HEADER_LEN,
        backing_file,
        backing_format,
    };
    let c0 = h.to_cluster0()?;
    let total = 3 + l1_clusters;
    let mut reftable = vec![0u8; cs as usize];
    reftable[0..8].copy_from_slice(&(2 * cs).to_be_bytes());
    let mut refblock = vec![0u8; cs as usize];
    for c in 0..total as usize {
        refblock[c * 2 + 1] = 1;
    }
    st.write_at(3 * cs, &vec![0u8; (l1_clusters * cs) as usize])?;
    st.write_at(2 * cs, &refblock)?;
    st.write_at(cs, &reftable)?;
    st.write_at(0, &c0)?;
    st.sync()?;
    Ok(())
}
