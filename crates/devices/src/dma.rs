//! The one checked path from a device model to guest memory.
//!
//! Every DMA a device makes goes through a [`Dma`]. Before touching guest
//! memory it checks, in this order:
//!
//! | check | refusal |
//! |-------|---------|
//! | the function's bus-master enable (`PCI_COMMAND_MASTER`), read from the shared [`BusMaster`] | [`DmaError::BusMasterDisabled`] |
//! | `addr + len` does not wrap around 64 bits | [`DmaError::Overflow`] |
//! | the whole range lies in one of the device's allowed windows, if it has any | [`DmaError::OutsideWindow`] |
//! | the whole range is guest RAM (MMIO holes, the ECAM window etc. are not) | [`DmaError::NotRam`] |
//!
//! A refused DMA never touches memory, is counted in [`DmaStats`], is shown
//! to the trace hook, and (except for a disabled bus master, where a real
//! device would not have started a transaction at all) sets the function's
//! *Received Master Abort* status bit through [`BusMaster`], so the guest's
//! driver sees the error in `PCI_STATUS`. The device model gets the
//! [`DmaError`] back and raises its own error status as its register model
//! says.
//!
//! [`BusMaster`] is shared between the function's [`ConfigSpace`] (which
//! updates it when the guest writes the command register) and the `Dma`,
//! so a `Dma` may be used from a worker thread without the device lock.
//!
//! [`ConfigSpace`]: crate::pci::config::ConfigSpace

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::bus::lock;

/// Why a DMA was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// The guest has not set the bus-master enable bit.
    #[error("DMA by {device} refused: bus mastering is disabled (PCI_COMMAND_MASTER clear)")]
    BusMasterDisabled {
        /// The device.
        device: String,
    },
    /// `addr + len` wraps around the 64-bit address space.
    #[error("DMA by {device} refused: {addr:#x}+{len:#x} wraps around")]
    Overflow {
        /// The device.
        device: String,
        /// First address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range is not inside the device's DMA windows.
    #[error("DMA by {device} refused: {addr:#x}+{len:#x} is outside the device's DMA window")]
    OutsideWindow {
        /// The device.
        device: String,
        /// First address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Part of the range is not guest RAM.
    #[error("DMA by {device} refused: {addr:#x}+{len:#x} is not (entirely) guest RAM")]
    NotRam {
        /// The device.
        device: String,
        /// First address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Guest memory reported an error after the checks passed.
    #[error("DMA by {device} at {addr:#x}+{len:#x} failed: {reason}")]
    Memory {
        /// The device.
        device: String,
        /// First address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// vm-memory's message.
        reason: String,
    },
}

/// The bus-master state of one PCI function, shared between its config
/// space and its [`Dma`].
#[derive(Debug, Default)]
pub struct BusMaster {
    enabled: AtomicBool,
    master_abort: AtomicBool,
}

impl BusMaster {
    /// Bus mastering off, no error latched (the reset state).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Whether the function may master the bus.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
    /// Set by the config space when the guest writes `PCI_COMMAND`.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release)
    }
    /// Whether a refused DMA latched *Received Master Abort*.
    pub fn master_abort(&self) -> bool {
        self.master_abort.load(Ordering::Acquire)
    }
    /// Latch *Received Master Abort* (a refused DMA).
    pub fn raise_master_abort(&self) {
        self.master_abort.store(true, Ordering::Release)
    }
    /// Clear the latch (the guest wrote 1 to the status bit).
    pub fn clear_master_abort(&self) {
        self.master_abort.store(false, Ordering::Release)
    }
}

/// Direction of a DMA, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaDir {
    /// The device reads guest memory.
    Read,
    /// The device writes guest memory.
    Write,
}

/// One DMA, allowed or refused, as shown to the trace hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaEvent<'a> {
    /// The device's name.
    pub device: &'a str,
    /// Direction.
    pub dir: DmaDir,
    /// First guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// `Ok` if the DMA was done, the refusal otherwise.
    pub outcome: Result<(), DmaError>,
}

/// A trace hook: sees every DMA (for `--trace`).
pub type DmaTrace = Arc<dyn Fn(&DmaEvent<'_>) + Send + Sync>;

/// Counters of one [`Dma`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// DMAs done.
    pub ok: u64,
    /// DMAs refused.
    pub refused: u64,
    /// The most recent refusal.
    pub last_error: Option<DmaError>,
}

/// A device's checked access to guest memory. Cheap to share (`Arc<Dma>`):
/// all methods take `&self`.
pub struct Dma {
    device: String,
    mem: GuestMemoryMmap,
    bus_master: Arc<BusMaster>,
    windows: Option<Vec<Range<u64>>>,
    trace: Option<DmaTrace>,
    ok: AtomicU64,
    refused: AtomicU64,
    last_error: Mutex<Option<DmaError>>,
}

impl std::fmt::Debug for Dma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dma")
            .field("device", &self.device)
            .field("windows", &self.windows)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Dma {
    /// DMA for `device` into `mem`, allowed while `bus_master` is enabled.
    /// Get `bus_master` from the function's `ConfigSpace::bus_master()`.
    pub fn new(device: &str, mem: GuestMemoryMmap, bus_master: Arc<BusMaster>) -> Self {
        Dma {
            device: device.to_string(),
            mem,
            bus_master,
            windows: None,
            trace: None,
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Restrict DMA to `windows`: every access must lie entirely inside one
    /// of them. An empty list refuses every DMA.
    pub fn with_windows(mut self, windows: impl IntoIterator<Item = Range<u64>>) -> Self {
        self.windows = Some(windows.into_iter().collect());
        self
    }

    /// Show every DMA to `trace`.
    pub fn with_trace(mut self, trace: DmaTrace) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DmaStats {
        DmaStats {
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Whether a DMA of `len` bytes at `addr` would be allowed now, without
    /// doing, counting or tracing it.
    pub fn check(&self, addr: u64, len: u64) -> Result<(), DmaError> {
        let device = || self.device.clone();
        if !self.bus_master.enabled() {
            return Err(DmaError::BusMasterDisabled { device: device() });
        }
        let Some(end) = addr.checked_add(len) else {
            return Err(DmaError::Overflow {
                device: device(),
                addr,
                len,
            });
        };
        if let Some(w) = &self.windows {
            if !w.iter().any(|r| r.start <= addr && end <= r.end) {
                return Err(DmaError::OutsideWindow {
                    device: device(),
                    addr,
                    len,
                });
            }
        }
        let ram = usize::try_from(len)
            .map(|n| n == 0 || self.mem.check_range(GuestAddress(addr), n))
            .unwrap_or(false);
        if !ram {
            return Err(DmaError::NotRam {
                device: device(),
                addr,
                len,
            });
        }
        Ok(())
    }

    /// The device reads `buf.len()` bytes of guest memory at `addr`. On
    /// refusal `buf` is left untouched.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.run(DmaDir::Read, addr, buf.len() as u64, |mem| {
            mem.read_slice(buf, GuestAddress(addr))
        })
    }

    /// The device writes `buf` to guest memory at `addr`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaError> {
        self.run(DmaDir::Write, addr, buf.len() as u64, |mem| {
            mem.write_slice(buf, GuestAddress(addr))
        })
    }

    /// The device reads a plain-data object at `addr`.
    pub fn read_obj<T: ByteValued>(&self, addr: u64) -> Result<T, DmaError> {
        let mut out = None;
        self.run(DmaDir::Read, addr, size_of::<T>() as u64, |mem| {
            out = Some(mem.read_obj::<T>(GuestAddress(addr))?);
            Ok(())
        })?;
        out.ok_or_else(|| DmaError::Memory {
            device: self.device.clone(),
            addr,
            len: size_of::<T>() as u64,
            reason: "zero-sized object".to_string(),
        })
    }

    /// The device writes a plain-data object at `addr`.
    pub fn write_obj<T: ByteValued>(&self, addr: u64, val: T) -> Result<(), DmaError> {
        self.write(addr, val.as_slice())
    }

    fn run(
        &self,
        dir: DmaDir,
        addr: u64,
        len: u64,
        op: impl FnOnce(&GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError>,
    ) -> Result<(), DmaError> {
        let outcome = self.check(addr, len).and_then(|()| {
            if len == 0 {
                return Ok(());
            }
            op(&self.mem).map_err(|e| DmaError::Memory {
                device: self.device.clone(),
                addr,
                len,
                reason: e.to_string(),
            })
        });
        match &outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = Some(e.clone());
                if !matches!(e, DmaError::BusMasterDisabled { .. }) {
                    self.bus_master.raise_master_abort();
                }
            }
        }
        if let Some(t) = &self.trace {
            t(&DmaEvent {
                device: &self.device,
                dir,
                addr,
                len,
                outcome: outcome.clone(),
            });
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// 1 MiB at 0 and 1 MiB at 4 MiB: a hole in between.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(4 * MIB), MIB as usize),
        ])
        .unwrap()
    }

    fn dma() -> (Dma, Arc<BusMaster>) {
        let bm = BusMaster::new();
        bm.set_enabled(true);
        (Dma::new("testdev", mem(), bm.clone()), bm)
    }

    #[test]
    fn allowed_dma_round_trips_and_counts() {
        let (d, bm) = dma();
        d.write(0x1000, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        d.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        d.write_obj(4 * MIB + 8, 0xdead_beef_u32).unwrap();
        assert_eq!(d.read_obj::<u32>(4 * MIB + 8).unwrap(), 0xdead_beef);
        // The last byte of a region, and an empty DMA.
        d.write(MIB - 1, &[7]).unwrap();
        d.read(MIB, &mut []).unwrap();
        let s = d.stats();
        assert_eq!((s.ok, s.refused, s.last_error), (6, 0, None));
        assert!(!bm.master_abort());
    }

    #[test]
    fn refuses_without_bus_master_and_does_not_latch_abort() {
        let (d, bm) = dma();
        bm.set_enabled(false);
        let mut b = [9u8; 4];
        let e = d.read(0x1000, &mut b).unwrap_err();
        assert!(matches!(e, DmaError::BusMasterDisabled { .. }));
        assert_eq!(b, [9; 4]);
        assert!(d.write(0x1000, &[1]).is_err());
        assert!(!bm.master_abort());
        assert_eq!(d.stats().refused, 2);
        assert!(e.to_string().contains("testdev"));
    }

    #[test]
    fn refuses_wrapping_ranges() {
        let (d, bm) = dma();
        let e = d.write(u64::MAX - 1, &[0; 4]).unwrap_err();
        assert!(matches!(e, DmaError::Overflow { len: 4, .. }));
        assert!(bm.master_abort());
    }

    #[test]
    fn refuses_holes_straddles_and_the_end_of_ram() {
        let (d, bm) = dma();
        for (addr, len) in [
            (2 * MIB, 4),            // in the hole
            (MIB - 2, 4),            // straddles the end of region 0
            (4 * MIB - 1, 2),        // straddles the start of region 1
            (5 * MIB, 1),            // just past the end of RAM
            (0xE000_0000, 4),        // MMIO
            (0, (MIB + 1) as usize), // longer than region 0
        ] {
            let mut b = vec![0u8; len];
            let e = d.read(addr, &mut b).unwrap_err();
            assert!(matches!(e, DmaError::NotRam { .. }), "{addr:#x}+{len}: {e}");
        }
        assert!(bm.master_abort());
        bm.clear_master_abort();
        assert!(!bm.master_abort());
        let s = d.stats();
        assert_eq!(s.refused, 6);
        assert!(matches!(s.last_error, Some(DmaError::NotRam { addr, .. }) if addr == 0));
    }

    #[test]
    fn refuses_outside_the_window() {
        let bm = BusMaster::new();
        bm.set_enabled(true);
        let d = Dma::new("win", mem(), bm).with_windows([
            0x1000..0x2000,
            0x2000..0x3000,
            0x8000..0x9000,
        ]);
        d.write(0x1000, &[0; 0x1000]).unwrap();
        d.write(0x8ff0, &[0; 0x10]).unwrap();
        // Every access must fit in one window, even adjacent ones.
        for (addr, len) in [
            (0xfff, 1),
            (0x1fff, 2),
            (0x3000, 1),
            (0x7fff, 2),
            (4 * MIB, 1),
        ] {
            assert!(matches!(
                d.write(addr, &vec![0; len]),
                Err(DmaError::OutsideWindow { .. })
            ));
        }
        let none = Dma::new("none", mem(), BusMaster::new()).with_windows([]);
        none.bus_master.set_enabled(true);
        assert!(matches!(
            none.read_obj::<u8>(0),
            Err(DmaError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn trace_sees_every_dma() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (d, _) = dma();
        let d = d.with_trace(Arc::new(move |e: &DmaEvent<'_>| {
            lock(&s).push((
                e.device.to_string(),
                e.dir,
                e.addr,
                e.len,
                e.outcome.is_ok(),
            ))
        }));
        d.write(0x10, &[1, 2]).unwrap();
        let _ = d.read(3 * MIB, &mut [0; 8]);
        assert_eq!(
            *lock(&seen),
            vec![
                ("testdev".to_string(), DmaDir::Write, 0x10, 2, true),
                ("testdev".to_string(), DmaDir::Read, 3 * MIB, 8, false),
            ]
        );
    }

    #[test]
    fn check_does_not_count() {
        let (d, _) = dma();
        assert!(d.check(0, 16).is_ok());
        assert!(d.check(2 * MIB, 16).is_err());
        assert_eq!(d.stats(), DmaStats::default());
    }
}
