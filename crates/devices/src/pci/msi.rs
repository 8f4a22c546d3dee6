//! MSI: the message-signalled-interrupt capability (PCI 3.0 §6.8.1), the
//! [`MsiSink`] that delivers messages, and a fake sink for tests.
//!
//! # Capability layout (64-bit address, optional per-vector masking)
//!
//! | offset | size | register | guest access |
//! |--------|------|----------|--------------|
//! | 0x00 | 1 | capability ID (0x05) | RO |
//! | 0x01 | 1 | next pointer | RO |
//! | 0x02 | 2 | message control: bit 0 enable, 3:1 multiple message capable, 6:4 multiple message enable, 7 64-bit, 8 per-vector masking | enable and MME writable |
//! | 0x04 | 4 | message address, low (bits 1:0 read 0) | RW |
//! | 0x08 | 4 | message address, high | RW |
//! | 0x0c | 2 | message data | RW |
//! | 0x10 | 4 | mask bits (with masking) | RW for implemented vectors |
//! | 0x14 | 4 | pending bits (with masking) | RO |
//!
//! The registers live in the function's [`ConfigSpace`]; [`MsiCapability`]
//! only remembers where and how many vectors, so every method takes the
//! config space. Vector `v` of `2^MME` enabled vectors sends the message
//! data with its low MME bits replaced by `v`. A vector raised while masked
//! sets its pending bit and is sent when the guest unmasks it — the device
//! must call [`MsiCapability::config_written`] after each config write
//! (typically from its `PciDevice::config_write`).

use std::sync::{Arc, Mutex};

use super::config::{ConfigSpace, PCI_CAP_ID_MSI};
use crate::bus::lock;

/// Message control: MSI enable.
pub const PCI_MSI_FLAGS_ENABLE: u16 = 0x1;
/// Message control: multiple message capable (log2 of vectors), bits 3:1.
pub const PCI_MSI_FLAGS_QMASK: u16 = 0xe;
/// Message control: multiple message enable (log2), bits 6:4.
pub const PCI_MSI_FLAGS_QSIZE: u16 = 0x70;
/// Message control: 64-bit address capable.
pub const PCI_MSI_FLAGS_64BIT: u16 = 0x80;
/// Message control: per-vector masking capable.
pub const PCI_MSI_FLAGS_MASKBIT: u16 = 0x100;
/// Offset of message control inside the capability.
pub const PCI_MSI_FLAGS: usize = 2;
/// Offset of the low address dword.
pub const PCI_MSI_ADDRESS_LO: usize = 4;
/// Offset of the high address dword.
pub const PCI_MSI_ADDRESS_HI: usize = 8;
/// Offset of the message data (64-bit layout).
pub const PCI_MSI_DATA_64: usize = 12;
/// Offset of the mask bits (64-bit layout).
pub const PCI_MSI_MASK_64: usize = 16;
/// Offset of the pending bits (64-bit layout).
pub const PCI_MSI_PENDING_64: usize = 20;

/// One MSI/MSI-X message: a dword write of `data` to `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (0xFEEx_xxxx on x86).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where messages go: KVM (`KVM_SIGNAL_MSI` or an irqfd on an MSI route)
/// in the VMM, [`FakeMsiSink`] in tests.
pub trait MsiSink: Send + Sync {
    /// Deliver one message.
    fn send(&self, msg: MsiMessage);
}

/// An [`MsiSink`] for tests: records every message.
#[derive(Debug, Default)]
pub struct FakeMsiSink {
    sent: Mutex<Vec<MsiMessage>>,
}

impl FakeMsiSink {
    /// An empty sink.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Remove and return the messages sent so far.
    pub fn take(&self) -> Vec<MsiMessage> {
        std::mem::take(&mut *lock(&self.sent))
    }
}

impl MsiSink for FakeMsiSink {
    fn send(&self, msg: MsiMessage) {
        lock(&self.sent).push(msg);
    }
}

/// What happened to a raised vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiOutcome {
    /// The message was sent.
    Sent,
    /// The vector is masked: its pending bit is set.
    Pending,
    /// MSI (or MSI-X) is disabled: nothing sent; the device may use INTx.
    Disabled,
    /// The vector is not enabled (out of range): nothing sent.
    InvalidVector,
}

/// Errors adding an MSI capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsiError {
    /// Vectors must be 1, 2, 4, 8, 16 or 32.
    #[error("MSI supports 1, 2, 4, 8, 16 or 32 vectors, not {0}")]
    BadVectorCount(u32),
    /// The config space has no room.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
}

/// An MSI capability in a config space. See the module documentation.
pub struct MsiCapability {
    offset: usize,
    vectors: u32,
    masking: bool,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for MsiCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiCapability")
            .field("offset", &self.offset)
            .field("vectors", &self.vectors)
            .field("masking", &self.masking)
            .finish_non_exhaustive()
    }
}

impl MsiCapability {
    /// Add an MSI capability with `vectors` vectors (a power of two up to
    /// 32), 64-bit addresses and optional per-vector masking.
    pub fn add(
        cfg: &mut ConfigSpace,
        vectors: u32,
        per_vector_mask: bool,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, MsiError> {
        if !vectors.is_power_of_two() || vectors > 32 {
            return Err(MsiError::BadVectorCount(vectors));
        }
        let mmc = vectors.trailing_zeros() as u16;
        let mut flags = PCI_MSI_FLAGS_64BIT | (mmc << 1);
        if per_vector_mask {
            flags |= PCI_MSI_FLAGS_MASKBIT;
        }
        let len = if per_vector_mask { 22 } else { 14 };
        let mut body = vec![0u8; len];
        let mut wmask = vec![0u8; len];
        body[0..2].copy_from_slice(&flags.to_le_bytes());
        let ctrl_w = PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE;
        wmask[0..2].copy_from_slice(&ctrl_w.to_le_bytes());
        wmask[2..6].copy_from_slice(&0xffff_fffc_u32.to_le_bytes());
        wmask[6..10].fill(0xff);
        wmask[10..12].fill(0xff);
        if per_vector_mask {
            let m = if vectors == 32 {
                u32::MAX
            } else {
                (1u32 << vectors) - 1
            };
            wmask[14..18].copy_from_slice(&m.to_le_bytes());
        }
        let offset = cfg.add_capability(PCI_CAP_ID_MSI, &body, &wmask)?;
        Ok(MsiCapability {
            offset,
            vectors,
            masking: per_vector_mask,
            sink,
        })
    }

    /// The capability's offset in config space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the guest enabled MSI.
    pub fn enabled(&self, cfg: &ConfigSpace) -> bool {
        self.control(cfg) & PCI_MSI_FLAGS_ENABLE != 0
    }

    /// Number of vectors the guest enabled (MME, capped at what we offer).
    pub fn enabled_vectors(&self, cfg: &ConfigSpace) -> u32 {
        let mme = (self.control(cfg) & PCI_MSI_FLAGS_QSIZE) >> 4;
        (1u32 << mme.min(5)).min(self.vectors)
    }

    /// The message for `vector`, if it is one of the enabled vectors.
    pub fn message(&self, cfg: &ConfigSpace, vector: u32) -> Option<MsiMessage> {
        let n = self.enabled_vectors(cfg);
        if vector >= n {
            return None;
        }
        let lo = cfg.read_u32(self.offset + PCI_MSI_ADDRESS_LO) & !3;
        let hi = cfg.read_u32(self.offset + PCI_MSI_ADDRESS_HI);
        let data = u32::from(cfg.read_u16(self.offset + PCI_MSI_DATA_64));
        Some(MsiMessage {
            address: u64::from(hi) << 32 | u64::from(lo),
            data: (data & !(n - 1)) | vector,
        })
    }

    /// Whether `vector` is masked by its mask bit.
    pub fn masked(&self, cfg: &ConfigSpace, vector: u32) -> bool {
        self.masking
            && vector < 32
            && cfg.read_u32(self.offset + PCI_MSI_MASK_64) & (1 << vector) != 0
    }

    /// The pending bits (0 without per-vector masking).
    pub fn pending(&self, cfg: &ConfigSpace) -> u32 {
        if self.masking {
            cfg.read_u32(self.offset + PCI_MSI_PENDING_64)
        } else {
            0
        }
    }

    /// The device raises `vector`.
    pub fn trigger(&self, cfg: &mut ConfigSpace, vector: u32) -> MsiOutcome {
        if !self.enabled(cfg) {
            return MsiOutcome::Disabled;
        }
        let Some(msg) = self.message(cfg, vector) else {
            return MsiOutcome::InvalidVector;
        };
        if self.masked(cfg, vector) {
            let p = self.pending(cfg) | 1 << vector;
            cfg.set_u32(self.offset + PCI_MSI_PENDING_64, p);
            return MsiOutcome::Pending;
        }
        self.sink.send(msg);
        MsiOutcome::Sent
    }

    /// Call after every guest config write: sends pending vectors the
    /// guest has unmasked, and drops pending bits when MSI is disabled.
    pub fn config_written(&self, cfg: &mut ConfigSpace) {
        let pending = self.pending(cfg);
        if pending == 0 {
            return;
        }
        if !self.enabled(cfg) {
            cfg.set_u32(self.offset + PCI_MSI_PENDING_64, 0);
            return;
        }
        let mut left = pending;
        for v in 0..32 {
            if pending & (1 << v) != 0 && !self.masked(cfg, v) {
                left &= !(1 << v);
                if let Some(msg) = self.message(cfg, v) {
                    self.sink.send(msg);
                }
            }
        }
        cfg.set_u32(self.offset + PCI_MSI_PENDING_64, left);
    }

    fn control(&self, cfg: &ConfigSpace) -> u16 {
        cfg.read_u16(self.offset + PCI_MSI_FLAGS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::PciIds;

    fn setup(vectors: u32, masking: bool) -> (ConfigSpace, MsiCapability, Arc<FakeMsiSink>) {
        let mut cfg = ConfigSpace::new(PciIds::default());
        let sink = FakeMsiSink::new();
        let msi = MsiCapability::add(&mut cfg, vectors, masking, sink.clone()).unwrap();
        (cfg, msi, sink)
    }

    fn program(cfg: &mut ConfigSpace, off: usize, addr: u64, data: u16, ctrl: u16) {
        cfg.write(off + PCI_MSI_ADDRESS_LO, &(addr as u32).to_le_bytes());
        cfg.write(
            off + PCI_MSI_ADDRESS_HI,
            &((addr >> 32) as u32).to_le_bytes(),
        );
        cfg.write(off + PCI_MSI_DATA_64, &data.to_le_bytes());
        cfg.write(off + PCI_MSI_FLAGS, &ctrl.to_le_bytes());
    }

    #[test]
    fn capability_layout_and_read_only_bits() {
        let (mut cfg, msi, _) = setup(4, true);
        let off = msi.offset();
        assert_eq!(cfg.find_capability(PCI_CAP_ID_MSI), Some(off));
        let ctrl = cfg.read_u16(off + PCI_MSI_FLAGS);
        assert_eq!(ctrl, PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT | (2 << 1));
        // MMC, 64BIT and MASKBIT are read-only; address bits 1:0 read 0.
        cfg.write(off + PCI_MSI_FLAGS, &[0xff, 0xff]);
        assert_eq!(cfg.read_u16(off + PCI_MSI_FLAGS), ctrl | 0x71);
        cfg.write(off + PCI_MSI_ADDRESS_LO, &[0xff; 4]);
        assert_eq!(cfg.read_u32(off + PCI_MSI_ADDRESS_LO), 0xffff_fffc);
        // Only 4 mask bits exist; pending bits are read-only.
        cfg.write(off + PCI_MSI_MASK_64, &[0xff; 8]);
        assert_eq!(cfg.read_u32(off + PCI_MSI_MASK_64), 0xf);
        assert_eq!(cfg.read_u32(off + PCI_MSI_PENDING_64), 0);
    }

    #[test]
    fn messages_per_vector_and_disabled_state() {
        let (mut cfg, msi, sink) = setup(4, false);
        let off = msi.offset();
        assert_eq!(msi.trigger(&mut cfg, 0), MsiOutcome::Disabled);
        // Enable with MME = 2 (4 vectors).
        program(&mut cfg, off, 0x1_fee0_1000, 0x4123, 0x21);
        assert!(msi.enabled(&cfg));
        assert_eq!(msi.enabled_vectors(&cfg), 4);
        assert_eq!(msi.trigger(&mut cfg, 3), MsiOutcome::Sent);
        assert_eq!(msi.trigger(&mut cfg, 4), MsiOutcome::InvalidVector);
        assert_eq!(
            sink.take(),
            vec![MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4123
            }]
        );
        // MME larger than offered is capped; MME 0 gives one vector.
        cfg.write(off + PCI_MSI_FLAGS, &0x51u16.to_le_bytes());
        assert_eq!(msi.enabled_vectors(&cfg), 4);
        cfg.write(off + PCI_MSI_FLAGS, &0x01u16.to_le_bytes());
        assert_eq!(msi.message(&cfg, 0).unwrap().data, 0x4123);
        assert_eq!(msi.trigger(&mut cfg, 1), MsiOutcome::InvalidVector);
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let (mut cfg, msi, sink) = setup(2, true);
        let off = msi.offset();
        program(&mut cfg, off, 0xfee0_0000, 0x30, 0x11);
        cfg.write(off + PCI_MSI_MASK_64, &[0x2, 0, 0, 0]);
        assert_eq!(msi.trigger(&mut cfg, 1), MsiOutcome::Pending);
        assert_eq!(msi.trigger(&mut cfg, 0), MsiOutcome::Sent);
        assert_eq!(msi.pending(&cfg), 0x2);
        assert_eq!(sink.take().len(), 1);
        cfg.write(off + PCI_MSI_MASK_64, &[0, 0, 0, 0]);
        msi.config_written(&mut cfg);
        assert_eq!(msi.pending(&cfg), 0);
        assert_eq!(
            sink.take(),
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x31
            }]
        );
        // Disabling MSI drops pending vectors.
        cfg.write(off + PCI_MSI_MASK_64, &[1, 0, 0, 0]);
        assert_eq!(msi.trigger(&mut cfg, 0), MsiOutcome::Pending);
        cfg.write(off + PCI_MSI_FLAGS, &[0, 0]);
        msi.config_written(&mut cfg);
        assert_eq!(msi.pending(&cfg), 0);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn rejects_bad_vector_counts() {
        let mut cfg = ConfigSpace::new(PciIds::default());
        for n in [0, 3, 64] {
            assert!(matches!(
                MsiCapability::add(&mut cfg, n, false, FakeMsiSink::new()),
                Err(MsiError::BadVectorCount(_))
            ));
        }
        assert!(MsiCapability::add(&mut cfg, 32, true, FakeMsiSink::new()).is_ok());
    }
}
