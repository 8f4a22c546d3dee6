//! The common configuration structure of [`VirtioPci`] (virtio 1.2
//! §4.1.4.3): field layout, byte-merged reads and writes, the status state
//! machine and queue validation. A child of `pci` so it shares the
//! transport's private state.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{QueueRegs, VirtioPci};
use crate::virtio::{
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    DfSelect,
    Df,
    GfSelect,
    Gf,
    ConfigMsix,
    NumQueues,
    Status,
    ConfigGen,
    QSelect,
    QSize,
    QMsix,
    QEnable,
    QNotifyOff,
    QDesc,
    QAvail,
    QUsed,
}

/// (offset, width, field) of the common configuration.
const FIELDS: [(u64, u64, Field); 16] = [
    (0x00, 4, Field::DfSelect),
    (0x04, 4, Field::Df),
    (0x08, 4, Field::GfSelect),
    (0x0c, 4, Field::Gf),
    (0x10, 2, Field::ConfigMsix),
    (0x12, 2, Field::NumQueues),
    (0x14, 1, Field::Status),
    (0x15, 1, Field::ConfigGen),
    (0x16, 2, Field::QSelect),
    (0x18, 2, Field::QSize),
    (0x1a, 2, Field::QMsix),
    (0x1c, 2, Field::QEnable),
    (0x1e, 2, Field::QNotifyOff),
    (0x20, 8, Field::QDesc),
    (0x28, 8, Field::QAvail),
    (0x30, 8, Field::QUsed),
];

impl VirtioPci {
    fn field_value(&mut self, f: Field) -> u64 {
        let q = self.selected().map(|i| self.queues[i]);
        let qf = |g: fn(&QueueRegs) -> u64| q.as_ref().map(g).unwrap_or(0);
        match f {
            Field::DfSelect => u64::from(self.device_feature_select),
            Field::Df => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            Field::GfSelect => u64::from(self.driver_feature_select),
            Field::Gf => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            Field::ConfigMsix => u64::from(self.config_vector),
            Field::NumQueues => u64::from(self.num_queues()),
            Field::Status => {
                self.poll_reset();
                u64::from(self.status)
            }
            Field::ConfigGen => u64::from(self.config_generation),
            Field::QSelect => u64::from(self.queue_select),
            Field::QSize => qf(|r| u64::from(r.size)),
            Field::QMsix => qf(|r| u64::from(r.vector)),
            Field::QEnable => qf(|r| u64::from(r.enabled)),
            Field::QNotifyOff => self.selected().map(|i| i as u64).unwrap_or(0),
            Field::QDesc => qf(|r| r.desc),
            Field::QAvail => qf(|r| r.avail),
            Field::QUsed => qf(|r| r.used),
        }
    }

    pub(super) fn common_read(&mut self, off: u64, data: &mut [u8]) {
        let mut cache: Option<(Field, u64)> = None;
        for (i, b) in data.iter_mut().enumerate() {
            let o = off.saturating_add(i as u64);
            *b = match FIELDS.iter().find(|(s, w, _)| o >= *s && o < s + w) {
                Some(&(s, _, f)) => {
                    let v = match cache {
                        Some((cf, v)) if cf == f => v,
                        _ => self.field_value(f),
                    };
                    cache = Some((f, v));
                    (v >> (8 * (o - s))) as u8
                }
                None => 0,
            };
        }
    }

    pub(super) fn common_write(&mut self, off: u64, data: &[u8]) {
        let end = off.saturating_add(data.len() as u64);
        for &(s, w, f) in FIELDS.iter() {
            if !(off < s + w && s < end) {
                continue;
            }
            let mut bytes = self.field_value(f).to_le_bytes();
            for (i, &v) in data.iter().enumerate() {
                let o = off + i as u64;
                if o >= s && o < s + w {
                    bytes[(o - s) as usize] = v;
                }
            }
            self.apply(f, u64::from_le_bytes(bytes));
        }
    }

    fn apply(&mut self, f: Field, v: u64) {
        let q = self.selected();
        let frozen = q.is_none_or(|i| self.queues[i].enabled);
        match f {
            Field::DfSelect => self.device_feature_select = v as u32,
            Field::GfSelect => self.driver_feature_select = v as u32,
            Field::Gf if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                    }
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => self.stats.ignored_writes += 1,
                }
            }
            Field::ConfigMsix => self.config_vector = self.valid_vector(v as u16),
            Field::Status => self.write_status(v as u8),
            Field::QSelect => self.queue_select = v as u16,
            Field::QMsix => match q {
                Some(i) => self.queues[i].vector = self.valid_vector(v as u16),
                None => self.stats.ignored_writes += 1,
            },
            Field::QEnable => match q {
                Some(i) if v == 1 && !self.queues[i].enabled => self.enable_queue(i),
                _ => self.stats.ignored_writes += 1,
            },
            Field::QSize | Field::QDesc | Field::QAvail | Field::QUsed if !frozen => {
                let r = &mut self.queues[q.unwrap_or(0)];
                match f {
                    Field::QSize => r.size = v as u16,
                    Field::QDesc => r.desc = v,
                    Field::QAvail => r.avail = v,
                    _ => r.used = v,
                }
            }
            _ => self.stats.ignored_writes += 1,
        }
    }

    /// A virtio-queue [`Queue`] from queue `i`'s registers, validated.
    pub(super) fn build_queue(&self, i: usize) -> Option<Queue> {
        let r = self.queues.get(i)?;
        if r.desc == 0 || r.avail == 0 || r.used == 0 {
            return None;
        }
        let mut q = Queue::new(self.max_size).ok()?;
        q.try_set_size(r.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(r.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(r.avail)).ok()?;
        q.try_set_used_ring_address(GuestAddress(r.used)).ok()?;
        q.set_ready(true);
        q.set_event_idx(self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0);
        q.is_valid(&self.mem).then_some(q)
    }

    fn enable_queue(&mut self, i: usize) {
        let allowed = self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        if allowed && self.build_queue(i).is_some() {
            self.queues[i].enabled = true;
        } else {
            self.stats.bad_queue_configs += 1;
            self.set_needs_reset();
        }
    }

    fn write_status(&mut self, v: u8) {
        self.poll_reset();
        if self.reset_pending {
            self.stats.refused_status += 1;
            return;
        }
        if v == 0 {
            self.begin_reset();
            return;
        }
        let old = self.status;
        let keep = old & STATUS_DEVICE_NEEDS_RESET;
        let mut new = v & !STATUS_DEVICE_NEEDS_RESET;
        if old & !keep & !new != 0 {
            self.stats.refused_status += 1;
            return;
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            let f = self.driver_features;
            let ok = new & STATUS_DRIVER != 0
                && f & VIRTIO_F_VERSION_1 != 0
                && f & !self.device_features() == 0;
            if !ok {
                new &= !STATUS_FEATURES_OK;
                self.stats.refused_status += 1;
            }
        }
        let activate = added & STATUS_DRIVER_OK != 0;
        if activate && new & STATUS_FEATURES_OK == 0 {
            new &= !STATUS_DRIVER_OK;
            self.stats.refused_status += 1;
        }
        self.status = new | keep;
        if activate && new & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }
}
