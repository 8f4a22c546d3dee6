//! The qcow2 header: parsing (every field checked against the file),
//! serialising for `create`.

use super::Qcow2Error;

/// `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header vlab writes (with compression type).
pub const V3_HEADER_LEN: u32 = 112;
/// Largest L1 table vlab accepts (QEMU's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table vlab accepts (QEMU's limit).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest virtual size (64 PiB).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 56;
/// Longest backing file name (QEMU's limit).
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// QEMU found the image corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// External data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Compression type field is used.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

/// A parsed, validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2(cluster size), 9..=21.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// L1 table offset.
    pub l1_table_offset: u64,
    /// Refcount table offset.
    pub refcount_table_offset: u64,
    /// Refcount table length in clusters.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Auto-clear feature bits.
    pub autoclear: u64,
    /// log2(refcount bits).
    pub refcount_order: u32,
    /// Header length (72 for version 2).
    pub header_length: u32,
    /// Backing file name as stored.
    pub backing_file: Option<String>,
    /// Backing file format name (header extension).
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

/// `offset..offset+len` is cluster-aligned at the start and inside a file of
/// `file_len` bytes.
pub fn table_ok(offset: u64, len: u64, cluster_size: u64, file_len: u64) -> bool {
    offset.is_multiple_of(cluster_size)
        && offset != 0
        && offset.checked_add(len).is_some_and(|end| end <= file_len)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parse the header from the start of the file. `head` holds the first
    /// bytes of the file (at least one cluster when the file has one);
    /// `file_len` is the file's length.
    pub fn parse(head: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
        if head.len() < V2_HEADER_LEN as usize || file_len < u64::from(V2_HEADER_LEN) {
            return Err(Qcow2Error::Truncated { len: file_len });
        }
        if head[0..4] != MAGIC {
            return Err(Qcow2Error::Corrupt("no qcow2 magic".into()));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Version(version));
        }
        let backing_file_offset = be64(head, 8);
        let backing_file_size = be32(head, 16);
        let cluster_bits = be32(head, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::ClusterBits(cluster_bits));
        }
        let cs = 1u64 << cluster_bits;
        let size = be64(head, 24);
        if be32(head, 32) != 0 {
            return Err(Qcow2Error::Encrypted);
        }
        let mut h = Header {
            version,
            cluster_bits,
            size,
            l1_size: be32(head, 36),
            l1_table_offset: be64(head, 40),
            refcount_table_offset: be64(head, 48),
            refcount_table_clusters: be32(head, 56),
            nb_snapshots: be32(head, 60),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            backing_file: None,
            backing_format: None,
        };
        if version == 3 {
            if head.len() < 104 {
                return Err(Qcow2Error::Truncated { len: file_len });
            }
            h.incompatible = be64(head, 72);
            h.compatible = be64(head, 80);
            h.autoclear = be64(head, 88);
            h.refcount_order = be32(head, 96);
            h.header_length = be32(head, 100);
            if h.header_length < 104 || u64::from(h.header_length) > cs.min(head.len() as u64) {
                return Err(Qcow2Error::HeaderLength(h.header_length));
            }
        }
        // The header, its extensions and the backing name live in cluster 0.
        let cluster0 = &head[..(cs.min(head.len() as u64) as usize)];
        let features = h.parse_extensions(cluster0, backing_file_offset)?;
        h.check_features(&features)?;
        if !(3..=6).contains(&h.refcount_order) {
            return Err(Qcow2Error::RefcountOrder(h.refcount_order));
        }
        if backing_file_offset != 0 {
            if backing_file_size > MAX_BACKING_NAME || backing_file_size == 0 {
                return Err(Qcow2Error::BackingName);
            }
            let end = backing_file_offset.checked_add(u64::from(backing_file_size));
            let name = end
                .filter(|&e| e <= cluster0.len() as u64)
                .map(|e| &cluster0[backing_file_offset as usize..e as usize])
                .ok_or(Qcow2Error::BackingName)?;
            let name = std::str::from_utf8(name).map_err(|_| Qcow2Error::BackingName)?;
            h.backing_file = Some(name.to_string());
        }
        h.check_tables(file_len)?;
        Ok(h)
    }

    /// Walk the header extensions; return the feature name table.
    fn parse_extensions(
        &mut self,
        c0: &[u8],
        backing_off: u64,
    ) -> Result<Vec<(u8, u8, String)>, Qcow2Error> {
        let mut features = Vec::new();
        let mut at = self.header_length as usize;
        // Extensions end at the backing name when there is one.
        let limit = if backing_off != 0 && backing_off < c0.len() as u64 {
            backing_off as usize
        } else {
            c0.len()
        };
        while at + 8 <= limit {
            let ty = be32(c0, at);
            let len = be32(c0, at + 4) as usize;
            at += 8;
            if ty == 0 {
                break;
            }
            let end = at.checked_add(len).filter(|&e| e <= limit).ok_or_else(|| {
                Qcow2Error::Corrupt("header extension runs past cluster 0".into())
            })?;
            let data = &c0[at..end];
            match ty {
                EXT_BACKING_FORMAT => {
                    let f = std::str::from_utf8(data).map_err(|_| Qcow2Error::BackingName)?;
                    self.backing_format = Some(f.trim_end_matches('\0').to_string());
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name: Vec<u8> =
                            e[2..].iter().copied().take_while(|&c| c != 0).collect();
                        features.push((e[0], e[1], String::from_utf8_lossy(&name).into_owned()));
                    }
                }
                _ => {}
            }
            at = end.div_ceil(8) * 8;
        }
        Ok(features)
    }

    fn check_features(&self, names: &[(u8, u8, String)]) -> Result<(), Qcow2Error> {
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        let unknown = self.incompatible & !known;
        if unknown != 0 {
            let mut list = Vec::new();
            for bit in 0..64u8 {
                if unknown & (1 << bit) != 0 {
                    let name = names
                        .iter()
                        .find(|(t, b, _)| *t == 0 && *b == bit)
                        .map(|(_, _, n)| n.clone())
                        .unwrap_or_else(|| format!("bit {bit}"));
                    list.push(name);
                }
            }
            return Err(Qcow2Error::UnknownIncompatible(list.join(", ")));
        }
        if self.incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(Qcow2Error::ExtendedL2);
        }
        if self.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::ExternalData);
        }
        Ok(())
    }

    fn check_tables(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::TooLarge {
                what: "virtual size",
                value: self.size,
            });
        }
        let l2_entries = cs / 8;
        let needed = self.size.div_ceil(cs).div_ceil(l2_entries);
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::TooLarge {
                what: "L1 table",
                value: l1_bytes,
            });
        }
        if u64::from(self.l1_size) < needed {
            return Err(Qcow2Error::Corrupt(format!(
                "L1 table has {} entries, the virtual size needs {needed}",
                self.l1_size
            )));
        }
        if self.l1_size > 0 && !table_ok(self.l1_table_offset, l1_bytes, cs, file_len) {
            return Err(Qcow2Error::BadTable {
                what: "L1 table",
                offset: self.l1_table_offset,
                len: l1_bytes,
            });
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::TooLarge {
                what: "refcount table",
                value: rt_bytes,
            });
        }
        if rt_bytes == 0 || !table_ok(self.refcount_table_offset, rt_bytes, cs, file_len) {
            return Err(Qcow2Error::BadTable {
                what: "refcount table",
                offset: self.refcount_table_offset,
                len: rt_bytes,
            });
        }
        Ok(())
    }

    /// Serialise cluster 0 for a new image: header, backing format
    /// extension, end marker, backing name.
    pub fn to_cluster0(&self) -> Result<Vec<u8>, Qcow2Error> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; cs];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[72..80].copy_from_slice(&self.incompatible.to_be_bytes());
        b[80..88].copy_from_slice(&self.compatible.to_be_bytes());
        b[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
        b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
        b[100..104].copy_from_slice(&V3_HEADER_LEN.to_be_bytes());
        let mut at = V3_HEADER_LEN as usize;
        if let Some(fmt) = &self.backing_format {
            b[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
            at += 8;
            b[at..at + fmt.len()].copy_from_slice(fmt.as_bytes());
            at += fmt.len().div_ceil(8) * 8;
        }
        at += 8; // end-of-extensions marker: type 0, length 0
        if let Some(name) = &self.backing_file {
            if name.is_empty() || name.len() > MAX_BACKING_NAME as usize || at + name.len() > cs {
                return Err(Qcow2Error::BackingName);
            }
            b[8..16].copy_from_slice(&(at as u64).to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b[at..at + name.len()].copy_from_slice(name.as_bytes());
        }
        Ok(b)
    }
}
