//! Address buses: map guest I/O-port or MMIO ranges to devices.
//!
//! A [`Bus`] is built once while the VM is set up and then shared read-only
//! between vCPU threads; each device sits behind its own mutex, so two vCPUs
//! touching two devices never contend. Accesses nobody claims are counted
//! (per address, bounded) so `--verbose` can show what a guest poked at.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Where an access landed: the device's base address, the offset inside its
/// range and the vCPU that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// First address of the device's range.
    pub base: u64,
    /// Offset of the access inside the range.
    pub offset: u64,
    /// Index of the vCPU that made the access.
    pub vcpu: u32,
}

/// A device on a bus. Accesses may have any length (including odd ones such
/// as 3 or 8 bytes) and any offset inside the device's range; a device must
/// answer all of them without panicking. Unknown offsets read as 0.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `a.offset`.
    fn read(&mut self, a: Access, data: &mut [u8]);
    /// The guest writes `data` at `a.offset`.
    fn write(&mut self, a: Access, data: &[u8]);
}

/// A shared, lockable device as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("Range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the range it collides with.
        other: u64,
    },
    /// A zero-length range or one that wraps around the address space.
    #[error("Range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// The kind of access, for the unknown-access counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// The guest read.
    Read,
    /// The guest wrote.
    Write,
}

/// How many distinct unknown addresses are tracked; accesses to further
/// addresses are only added to the overflow count.
pub const UNKNOWN_TRACKED: usize = 256;

/// Counts of accesses no device claimed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnknownAccesses {
    /// (address, direction, width) -> count, for the first
    /// [`UNKNOWN_TRACKED`] distinct keys.
    pub by_addr: BTreeMap<(u64, Dir, usize), u64>,
    /// Accesses to keys past the tracked limit.
    pub overflow: u64,
}

impl UnknownAccesses {
    /// Total number of unclaimed accesses.
    pub fn total(&self) -> u64 {
        self.by_addr.values().sum::<u64>() + self.overflow
    }

    fn record(&mut self, addr: u64, dir: Dir, width: usize) {
        let key = (addr, dir, width);
        if let Some(n) = self.by_addr.get_mut(&key) {
            *n += 1;
        } else if self.by_addr.len() < UNKNOWN_TRACKED {
            self.by_addr.insert(key, 1);
        } else {
            self.overflow += 1;
        }
    }
}

struct Entry {
    len: u64,
    name: String,
    dev: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by a device.
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
    unknown: Mutex<UnknownAccesses>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_map();
        for (base, e) in &self.ranges {
            l.entry(&format_args!("{base:#x}+{:#x}", e.len), &e.name);
        }
        l.finish()
    }
}

impl Bus {
    /// An empty bus; `name` ("pio", "mmio") appears in reports.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: BTreeMap::new(),
            unknown: Mutex::new(UnknownAccesses::default()),
        }
    }

    /// The bus's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Put `dev` at `base..base+len`.
    pub fn insert(
        &mut self,
        dev: SharedDevice,
        base: u64,
        len: u64,
        name: &str,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // The closest range starting at or below `end - 1` is the only one
        // that can overlap.
        if let Some((&other, e)) = self.ranges.range(..end).next_back() {
            if other + e.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(
            base,
            Entry {
                len,
                name: name.to_string(),
                dev,
            },
        );
        Ok(())
    }

    /// The device covering the whole access `addr..addr+len`, with the
    /// access description.
    fn find(&self, addr: u64, len: usize, vcpu: u32) -> Option<(&Entry, Access)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(len as u64)?;
        (end <= e.len).then_some((e, Access { base, offset, vcpu }))
    }

    /// Dispatch a read. Returns false (and fills `data` with 0xff, as a
    /// floating bus reads) if no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8], vcpu: u32) -> bool {
        match self.find(addr, data.len(), vcpu) {
            Some((e, a)) => {
                lock(&e.dev).read(a, data);
                true
            }
            None => {
                data.fill(0xff);
                lock(&self.unknown).record(addr, Dir::Read, data.len());
                false
            }
        }
    }

    /// Dispatch a write. Returns false if no device claims the whole access;
    /// the write is then dropped and counted.
    pub fn write(&self, addr: u64, data: &[u8], vcpu: u32) -> bool {
        match self.find(addr, data.len(), vcpu) {
            Some((e, a)) => {
                lock(&e.dev).write(a, data);
                true
            }
            None => {
                lock(&self.unknown).record(addr, Dir::Write, data.len());
                false
            }
        }
    }

    /// A snapshot of the unclaimed-access counters.
    pub fn unknown_accesses(&self) -> UnknownAccesses {
        lock(&self.unknown).clone()
    }

    /// The devices on the bus: (base, len, name).
    pub fn devices(&self) -> impl Iterator<Item = (u64, u64, &str)> {
        self.ranges
            .iter()
            .map(|(b, e)| (*b, e.len, e.name.as_str()))
    }
}

/// Lock a mutex, recovering the data if a previous holder panicked: a device
/// model bug on one vCPU must not take down every other vCPU with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with the offset.
    #[derive(Default)]
    struct Probe {
        last: Option<(Access, Vec<u8>)>,
    }
    impl BusDevice for Probe {
        fn read(&mut self, a: Access, data: &mut [u8]) {
            data.fill(a.offset as u8);
            self.last = Some((a, data.to_vec()));
        }
        fn write(&mut self, a: Access, data: &[u8]) {
            self.last = Some((a, data.to_vec()));
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, SharedDevice) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let d: SharedDevice = p.clone();
        (p, d)
    }

    #[test]
    fn routes_to_the_right_device_with_offset_and_vcpu() {
        let mut bus = Bus::new("pio");
        let (a, da) = probe();
        let (b, db) = probe();
        bus.insert(da, 0x3f8, 8, "serial").unwrap();
        bus.insert(db, 0x400, 0x10, "other").unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x3fd, &mut buf, 3));
        assert_eq!(buf, [5, 5]);
        let (acc, _) = a.lock().unwrap().last.clone().unwrap();
        assert_eq!(
            acc,
            Access {
                base: 0x3f8,
                offset: 5,
                vcpu: 3
            }
        );
        assert!(bus.write(0x40f, &[9], 1));
        assert_eq!(b.lock().unwrap().last.as_ref().unwrap().1, vec![9]);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new("mmio");
        bus.insert(probe().1, 0x1000, 0x100, "a").unwrap();
        for (base, len) in [(0x1000, 1), (0xf00, 0x101), (0x10ff, 0x10), (0x0, 0x2000)] {
            assert!(matches!(
                bus.insert(probe().1, base, len, "b"),
                Err(BusError::Overlap { .. })
            ));
        }
        assert!(bus.insert(probe().1, 0x1100, 0x100, "c").is_ok());
        assert!(bus.insert(probe().1, 0xf00, 0x100, "d").is_ok());
        assert_eq!(
            bus.insert(probe().1, 5, 0, "e"),
            Err(BusError::BadRange { base: 5, len: 0 })
        );
        assert!(matches!(
            bus.insert(probe().1, u64::MAX, 2, "f"),
            Err(BusError::BadRange { .. })
        ));
    }

    #[test]
    fn unknown_and_straddling_accesses_are_counted_not_routed() {
        let mut bus = Bus::new("pio");
        let (p, d) = probe();
        bus.insert(d, 0x10, 4, "dev").unwrap();
        let mut buf = [0u8; 4];
        // Straddles the end of the device.
        assert!(!bus.read(0x12, &mut buf, 0));
        assert_eq!(buf, [0xff; 4]);
        assert!(!bus.write(0x80, &[1], 0));
        assert!(!bus.write(0x80, &[1], 0));
        assert!(!bus.read(u64::MAX, &mut buf, 0));
        assert!(p.lock().unwrap().last.is_none());
        let u = bus.unknown_accesses();
        assert_eq!(u.total(), 4);
        assert_eq!(u.by_addr[&(0x80, Dir::Write, 1)], 2);
    }

    #[test]
    fn unknown_tracking_is_bounded() {
        let bus = Bus::new("mmio");
        for a in 0..(UNKNOWN_TRACKED as u64 + 10) {
            bus.write(a * 8, &[0], 0);
        }
        let u = bus.unknown_accesses();
        assert_eq!(u.by_addr.len(), UNKNOWN_TRACKED);
        assert_eq!(u.overflow, 10);
    }
}
