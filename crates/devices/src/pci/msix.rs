//! MSI-X: the capability (PCI 3.0 §6.8.2) plus its vector table and
//! pending-bit array (PBA), which live in a memory BAR.
//!
//! # Capability (in config space)
//!
//! | offset | size | register | guest access |
//! |--------|------|----------|--------------|
//! | 0x00 | 1 | capability ID (0x11) | RO |
//! | 0x01 | 1 | next pointer | RO |
//! | 0x02 | 2 | message control: 10:0 table size − 1, 14 function mask, 15 enable | bits 14, 15 writable |
//! | 0x04 | 4 | table offset (8-aligned) \| table BIR | RO |
//! | 0x08 | 4 | PBA offset (8-aligned) \| PBA BIR | RO |
//!
//! # Table entry (16 bytes each, in the BAR)
//!
//! | offset | register | guest access |
//! |--------|----------|--------------|
//! | 0x0 | message address low | RW |
//! | 0x4 | message address high | RW |
//! | 0x8 | message data | RW |
//! | 0xc | vector control: bit 0 mask (set at reset) | bit 0 writable |
//!
//! The PBA (one bit per vector, in qwords) is read-only. Table and PBA
//! accept any width at any offset (byte-wise); bytes outside them are not
//! claimed by [`MsixCapability::bar_read`]/[`MsixCapability::bar_write`].
//!
//! A vector raised while masked (its own mask bit or the function mask)
//! sets its pending bit and is sent when unmasked. Unmasking through the
//! table is seen by `bar_write`; through the function mask, by
//! [`MsixCapability::config_written`], which the device calls after each
//! config write.

use std::sync::Arc;

use super::config::{BarKind, ConfigSpace, PCI_CAP_ID_MSIX};
use super::msi::{MsiMessage, MsiOutcome, MsiSink};

/// Message control: table size − 1 (bits 10:0).
pub const PCI_MSIX_FLAGS_QSIZE: u16 = 0x07ff;
/// Message control: function mask.
pub const PCI_MSIX_FLAGS_MASKALL: u16 = 0x4000;
/// Message control: MSI-X enable.
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 0x8000;
/// Offset of message control inside the capability.
pub const PCI_MSIX_FLAGS: usize = 2;
/// Offset of the table offset/BIR register.
pub const PCI_MSIX_TABLE: usize = 4;
/// Offset of the PBA offset/BIR register.
pub const PCI_MSIX_PBA: usize = 8;
/// BIR bits of the table/PBA registers.
pub const PCI_MSIX_BIR_MASK: u32 = 0x7;
/// Size of one table entry.
pub const PCI_MSIX_ENTRY_SIZE: u64 = 16;
/// Offset of the vector control dword in an entry.
pub const PCI_MSIX_ENTRY_VECTOR_CTRL: usize = 12;
/// Vector control: masked.
pub const PCI_MSIX_ENTRY_CTRL_MASKBIT: u32 = 0x1;
/// Most vectors an MSI-X capability can have.
pub const PCI_MSIX_MAX_VECTORS: u16 = 2048;

/// Errors adding an MSI-X capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsixError {
    /// Vectors must be 1..=2048.
    #[error("MSI-X supports 1 to 2048 vectors, not {0}")]
    BadVectorCount(u16),
    /// Table or PBA offset is not 8-byte aligned.
    #[error("MSI-X table and PBA offsets must be 8-byte aligned")]
    Unaligned,
    /// The BAR is not a memory BAR of this function.
    #[error("BAR {0} is not a memory BAR of this function")]
    NotMemoryBar(usize),
    /// Table or PBA do not fit in the BAR, or overlap each other.
    #[error("MSI-X table/PBA do not fit in their BARs or overlap")]
    Layout,
    /// The config space has no room.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
}

/// Where the table and PBA live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (1..=2048).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: usize,
    /// Offset of the table in that BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u64,
}

impl MsixLayout {
    fn table_len(&self) -> u64 {
        u64::from(self.vectors) * PCI_MSIX_ENTRY_SIZE
    }
    fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// An MSI-X capability with its table and PBA.
pub struct MsixCapability {
    offset: usize,
    layout: MsixLayout,
    table: Vec<u8>,
    pba: Vec<u8>,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for MsixCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixCapability")
            .field("offset", &self.offset)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl MsixCapability {
    /// Add an MSI-X capability; the table and PBA BARs must already be
    /// defined memory BARs large enough to hold them.
    pub fn add(
        cfg: &mut ConfigSpace,
        layout: MsixLayout,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, MsixError> {
        let l = layout;
        if l.vectors == 0 || l.vectors > PCI_MSIX_MAX_VECTORS {
            return Err(MsixError::BadVectorCount(l.vectors));
        }
        if (l.table_offset | l.pba_offset) & 7 != 0 {
            return Err(MsixError::Unaligned);
        }
        let fits = |bar: usize, off: u64, len: u64| -> Result<(), MsixError> {
            match cfg.bar(bar) {
                Some(b) if b.kind != BarKind::Io => off
                    .checked_add(len)
                    .filter(|&end| end <= b.size && off <= u64::from(u32::MAX))
                    .map(|_| ())
                    .ok_or(MsixError::Layout),
                _ => Err(MsixError::NotMemoryBar(bar)),
            }
        };
        fits(l.table_bar, l.table_offset, l.table_len())?;
        fits(l.pba_bar, l.pba_offset, l.pba_len())?;
        if l.table_bar == l.pba_bar
            && l.table_offset < l.pba_offset + l.pba_len()
            && l.pba_offset < l.table_offset + l.table_len()
        {
            return Err(MsixError::Layout);
        }
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(l.vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(l.table_offset as u32 | l.table_bar as u32).to_le_bytes());
        body[6..10].copy_from_slice(&(l.pba_offset as u32 | l.pba_bar as u32).to_le_bytes());
        let mut wmask = [0u8; 10];
        wmask[0..2]
            .copy_from_slice(&(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL).to_le_bytes());
        let offset = cfg.add_capability(PCI_CAP_ID_MSIX, &body, &wmask)?;
        let mut table = vec![0u8; l.table_len() as usize];
        for e in table.chunks_exact_mut(PCI_MSIX_ENTRY_SIZE as usize) {
            e[PCI_MSIX_ENTRY_VECTOR_CTRL] = PCI_MSIX_ENTRY_CTRL_MASKBIT as u8;
        }
        Ok(MsixCapability {
            offset,
            layout,
            table,
            pba: vec![0u8; l.pba_len() as usize],
            sink,
        })
    }

    /// The capability's offset in config space.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// The table/PBA layout.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }
    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self, cfg: &ConfigSpace) -> bool {
        self.control(cfg) & PCI_MSIX_FLAGS_ENABLE != 0
    }
    /// Whether the guest set the function mask.
    pub fn function_masked(&self, cfg: &ConfigSpace) -> bool {
        self.control(cfg) & PCI_MSIX_FLAGS_MASKALL != 0
    }
    /// Whether `vector`'s own mask bit is set (true for a bad vector).
    pub fn vector_masked(&self, vector: u16) -> bool {
        self.entry_u32(vector, PCI_MSIX_ENTRY_VECTOR_CTRL)
            .is_none_or(|c| c & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0)
    }
    /// The message programmed for `vector`.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let lo = self.entry_u32(vector, 0)?;
        let hi = self.entry_u32(vector, 4)?;
        let data = self.entry_u32(vector, 8)?;
        Some(MsiMessage {
            address: u64::from(hi) << 32 | u64::from(lo & !3),
            data,
        })
    }
    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba.get(v / 8).is_some_and(|b| b & (1 << (v % 8)) != 0)
    }

    /// The device raises `vector`.
    pub fn trigger(&mut self, cfg: &ConfigSpace, vector: u16) -> MsiOutcome {
        if !self.enabled(cfg) {
            return MsiOutcome::Disabled;
        }
        let Some(msg) = self.message(vector) else {
            return MsiOutcome::InvalidVector;
        };
        if self.function_masked(cfg) || self.vector_masked(vector) {
            self.set_pending(vector, true);
            return MsiOutcome::Pending;
        }
        self.sink.send(msg);
        MsiOutcome::Sent
    }

    /// Call after every guest config write: sends pending vectors that the
    /// function mask no longer holds back.
    pub fn config_written(&mut self, cfg: &ConfigSpace) {
        self.service(cfg);
    }

    /// A guest read in a BAR: answers and returns true if it falls in the
    /// table or the PBA.
    pub fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        let l = self.layout;
        let src = if let Some(o) = inside(
            bar,
            offset,
            data.len(),
            l.table_bar,
            l.table_offset,
            l.table_len(),
        ) {
            self.table.get(o..o + data.len())
        } else if let Some(o) = inside(
            bar,
            offset,
            data.len(),
            l.pba_bar,
            l.pba_offset,
            l.pba_len(),
        ) {
            self.pba.get(o..o + data.len())
        } else {
            None
        };
        match src {
            Some(s) => {
                data.copy_from_slice(s);
                true
            }
            None => false,
        }
    }

    /// A guest write in a BAR: applies it and returns true if it falls in
    /// the table or the PBA (PBA writes are ignored). Unmasking a pending
    /// vector sends it.
    pub fn bar_write(&mut self, cfg: &ConfigSpace, bar: usize, offset: u64, data: &[u8]) -> bool {
        let l = self.layout;
        if let Some(o) = inside(
            bar,
            offset,
            data.len(),
            l.table_bar,
            l.table_offset,
            l.table_len(),
        ) {
            for (i, &v) in data.iter().enumerate() {
                let at = o + i;
                let mask = match at % PCI_MSIX_ENTRY_SIZE as usize {
                    0..=11 => 0xff,
                    PCI_MSIX_ENTRY_VECTOR_CTRL => PCI_MSIX_ENTRY_CTRL_MASKBIT as u8,
                    _ => 0,
                };
                if let Some(b) = self.table.get_mut(at) {
                    *b = (*b & !mask) | (v & mask);
                }
            }
            self.service(cfg);
            return true;
        }
        inside(
            bar,
            offset,
            data.len(),
            l.pba_bar,
            l.pba_offset,
            l.pba_len(),
        )
        .is_some()
    }

    /// Send pending vectors that are no longer masked.
    fn service(&mut self, cfg: &ConfigSpace) {
        if !self.enabled(cfg) || self.function_masked(cfg) {
            return;
        }
        for v in 0..self.layout.vectors {
            if self.pending(v) && !self.vector_masked(v) {
                self.set_pending(v, false);
                if let Some(msg) = self.message(v) {
                    self.sink.send(msg);
                }
            }
        }
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = usize::from(vector);
        if let Some(b) = self.pba.get_mut(v / 8) {
            if on {
                *b |= 1 << (v % 8);
            } else {
                *b &= !(1 << (v % 8));
            }
        }
    }

    fn entry_u32(&self, vector: u16, field: usize) -> Option<u32> {
        let at = usize::from(vector) * PCI_MSIX_ENTRY_SIZE as usize + field;
        let b = self.table.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn control(&self, cfg: &ConfigSpace) -> u16 {
        cfg.read_u16(self.offset + PCI_MSIX_FLAGS)
    }
}

/// The offset inside a region of `len` bytes at `start` of `region_bar` if
/// the access `bar`/`offset`/`n` lies entirely in it.
fn inside(
    bar: usize,
    offset: u64,
    n: usize,
    region_bar: usize,
    start: u64,
    len: u64,
) -> Option<usize> {
    if bar != region_bar {
        return None;
    }
    let o = offset.checked_sub(start)?;
    let end = o.checked_add(n as u64)?;
    (end <= len).then_some(o as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{Bar, PciIds};
    use crate::pci::msi::FakeMsiSink;

    const LAYOUT: MsixLayout = MsixLayout {
        vectors: 3,
        table_bar: 2,
        table_offset: 0x800,
        pba_bar: 2,
        pba_offset: 0xc00,
    };

    fn setup() -> (ConfigSpace, MsixCapability, Arc<FakeMsiSink>) {
        let mut cfg = ConfigSpace::new(PciIds::default());
        cfg.add_bar(2, Bar::mem32(0x1000)).unwrap();
        let sink = FakeMsiSink::new();
        let m = MsixCapability::add(&mut cfg, LAYOUT, sink.clone()).unwrap();
        (cfg, m, sink)
    }

    fn program(m: &mut MsixCapability, cfg: &ConfigSpace, v: u16, addr: u64, data: u32, ctrl: u32) {
        let base = 0x800 + u64::from(v) * 16;
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&addr.to_le_bytes());
        e[8..12].copy_from_slice(&data.to_le_bytes());
        e[12..16].copy_from_slice(&ctrl.to_le_bytes());
        assert!(m.bar_write(cfg, 2, base, &e[0..8]));
        assert!(m.bar_write(cfg, 2, base + 8, &e[8..12]));
        assert!(m.bar_write(cfg, 2, base + 12, &e[12..16]));
    }

    fn set_control(cfg: &mut ConfigSpace, m: &mut MsixCapability, ctrl: u16) {
        cfg.write(m.offset() + PCI_MSIX_FLAGS, &ctrl.to_le_bytes());
        m.config_written(cfg);
    }

    #[test]
    fn capability_registers() {
        let (mut cfg, m, _) = setup();
        let off = m.offset();
        assert_eq!(cfg.find_capability(PCI_CAP_ID_MSIX), Some(off));
        assert_eq!(cfg.read_u16(off + PCI_MSIX_FLAGS), 2);
        assert_eq!(cfg.read_u32(off + PCI_MSIX_TABLE), 0x802);
        assert_eq!(cfg.read_u32(off + PCI_MSIX_PBA), 0xc02);
        cfg.write(off + PCI_MSIX_FLAGS, &[0xff; 10]);
        assert_eq!(cfg.read_u16(off + PCI_MSIX_FLAGS), 0xc002);
        assert_eq!(cfg.read_u32(off + PCI_MSIX_TABLE), 0x802);
    }

    #[test]
    fn table_reset_state_and_write_masks() {
        let (cfg, mut m, _) = setup();
        let mut b = [0u8; 16];
        assert!(m.bar_read(2, 0x810, &mut b));
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert!(m.bar_write(&cfg, 2, 0x810, &[0xff; 16]));
        assert!(m.bar_read(2, 0x810, &mut b));
        assert_eq!(&b[12..], &[1, 0, 0, 0]);
        assert_eq!(m.message(1).unwrap().address, 0xffff_ffff_ffff_fffc);
        // The PBA is read-only; outside table and PBA nothing is claimed;
        // accesses straddling the end of the table are not claimed either.
        assert!(m.bar_write(&cfg, 2, 0xc00, &[0xff; 8]));
        assert!(m.bar_read(2, 0xc00, &mut b[..8]));
        assert_eq!(&b[..8], &[0; 8]);
        assert!(!m.bar_read(2, 0x0, &mut b[..4]));
        assert!(!m.bar_read(2, 0x82e, &mut b[..4]));
        assert!(!m.bar_read(0, 0x800, &mut b[..4]));
        assert!(!m.bar_write(&cfg, 2, u64::MAX, &[0; 4]));
    }

    #[test]
    fn messages_masking_and_pending() {
        let (mut cfg, mut m, sink) = setup();
        program(&mut m, &cfg, 0, 0xfee0_0000, 0x41, 0);
        program(&mut m, &cfg, 2, 0xfee0_1000, 0x42, 1);
        assert_eq!(m.trigger(&cfg, 0), MsiOutcome::Disabled);
        set_control(&mut cfg, &mut m, PCI_MSIX_FLAGS_ENABLE);
        assert_eq!(m.trigger(&cfg, 0), MsiOutcome::Sent);
        assert_eq!(m.trigger(&cfg, 3), MsiOutcome::InvalidVector);
        assert_eq!(m.trigger(&cfg, 2), MsiOutcome::Pending);
        assert!(m.pending(2));
        let mut pba = [0u8; 8];
        m.bar_read(2, 0xc00, &mut pba);
        assert_eq!(pba[0], 0b100);
        assert_eq!(
            sink.take(),
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            }]
        );
        // Unmask vector 2 through the table: it fires.
        m.bar_write(&cfg, 2, 0x82c, &[0]);
        assert!(!m.pending(2));
        assert_eq!(sink.take()[0].data, 0x42);
        // The function mask holds everything back until cleared.
        set_control(
            &mut cfg,
            &mut m,
            PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL,
        );
        assert_eq!(m.trigger(&cfg, 0), MsiOutcome::Pending);
        assert!(sink.take().is_empty());
        set_control(&mut cfg, &mut m, PCI_MSIX_FLAGS_ENABLE);
        assert_eq!(sink.take()[0].data, 0x41);
        assert!(!m.pending(0));
    }

    #[test]
    fn rejects_bad_layouts() {
        let mut cfg = ConfigSpace::new(PciIds::default());
        cfg.add_bar(0, Bar::mem32(0x1000)).unwrap();
        cfg.add_bar(1, Bar::io(16)).unwrap();
        let sink = FakeMsiSink::new();
        let l = |vectors, table_bar, table_offset, pba_bar, pba_offset| MsixLayout {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        };
        for (layout, want) in [
            (l(0, 0, 0, 0, 0x800), MsixError::BadVectorCount(0)),
            (l(2049, 0, 0, 0, 0x800), MsixError::BadVectorCount(2049)),
            (l(1, 0, 4, 0, 0x800), MsixError::Unaligned),
            (l(1, 1, 0, 0, 0x800), MsixError::NotMemoryBar(1)),
            (l(1, 3, 0, 0, 0x800), MsixError::NotMemoryBar(3)),
            (l(1, 0, 0xff8, 0, 0x800), MsixError::Layout),
            (l(4, 0, 0, 0, 0x38), MsixError::Layout),
        ] {
            assert_eq!(
                MsixCapability::add(&mut cfg, layout, sink.clone()).unwrap_err(),
                want
            );
        }
    }
}
