//! A flash disk: pages striped over independent channels, each serving its
//! queue in order (array latency + channel transfer per page), a host link,
//! a controller overhead, and a write buffer that acknowledges writes before
//! they are programmed.

use super::{bytes_ns, DiskModel, ModelError, Op, Request, Service, SECTOR_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// SSD parameters (times in microseconds, rates in 10^6 bytes/s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdParams {
    pub name: String,
    /// Independent channels (each with its own flash and queue).
    pub channels: u32,
    pub page_bytes: u32,
    /// Consecutive pages on one channel before moving to the next.
    pub stripe_pages: u32,
    /// Page read, array to register.
    pub read_us: f64,
    /// Page program, register to array.
    pub program_us: f64,
    /// Block erase; charged as `erase_us / pages_per_block` per page
    /// written (amortised, no garbage-collection model).
    pub erase_us: f64,
    pub pages_per_block: u32,
    /// Per-channel transfer rate between register and controller.
    pub channel_mb_s: f64,
    /// Host interface rate.
    pub host_mb_s: f64,
    /// Controller overhead per request.
    pub overhead_us: f64,
    /// Write buffer size; 0 = write-through.
    pub write_buffer_kib: u32,
}

impl SsdParams {
    /// A generic SLC SSD built from the flash timings in Agrawal et al.,
    /// "Design Tradeoffs for SSD Performance", USENIX ATC 2008, Table 2
    /// (Samsung K9XXG08UXM: page read 25 µs, program 200 µs, block erase
    /// 1.5 ms, 4 KB page, 64 pages per 256 KB block, serial access 100 µs
    /// per 4 KB page = 40.96 MB/s per channel). Channels, overhead, host
    /// link and buffer are assumptions for an illustrative SATA-II drive:
    /// 8 channels, 20 µs, 300 MB/s, 1 MiB.
    pub fn generic() -> Self {
        SsdParams {
            name: "ssd:generic".into(),
            channels: 8,
            page_bytes: 4096,
            stripe_pages: 1,
            read_us: 25.0,
            program_us: 200.0,
            erase_us: 1500.0,
            pages_per_block: 64,
            channel_mb_s: 40.96,
            host_mb_s: 300.0,
            overhead_us: 20.0,
            write_buffer_kib: 1024,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.channels == 0 || self.channels > 4096 {
            return Err("channels must be 1..=4096".into());
        }
        if self.page_bytes < 512 || self.page_bytes > 1 << 24 || self.stripe_pages == 0 {
            return Err("page_bytes must be 512..=16M and stripe_pages ≥ 1".into());
        }
        if self.pages_per_block == 0 {
            return Err("pages_per_block must be ≥ 1".into());
        }
        let ok = |v: f64| v.is_finite() && (0.0..=1e12).contains(&v);
        if ![
            self.read_us,
            self.program_us,
            self.erase_us,
            self.overhead_us,
        ]
        .into_iter()
        .all(ok)
        {
            return Err("latencies must be finite and in 0..=1e12 µs".into());
        }
        let positive = |v: f64| v.is_finite() && v > 1e-6;
        if !positive(self.channel_mb_s) || !positive(self.host_mb_s) {
            return Err("rates must be positive".into());
        }
        Ok(())
    }
}

/// The SSD model. Build with [`Ssd::new`].
#[derive(Clone, Debug)]
pub struct Ssd {
    p: SsdParams,
    /// When each channel finishes its queued work.
    free_at: Vec<u64>,
    /// Buffered writes: (programmed by, bytes).
    buffered: VecDeque<(u64, u64)>,
    buffered_bytes: u64,
}

fn us_ns(us: f64) -> u64 {
    if us.is_finite() && us > 0.0 {
        (us * 1e3).round() as u64
    } else {
        0
    }
}

impl Ssd {
    pub fn new(p: SsdParams) -> Result<Self, ModelError> {
        p.validate().map_err(ModelError::Invalid)?;
        Ok(Ssd {
            free_at: vec![0; p.channels as usize],
            p,
            buffered: VecDeque::new(),
            buffered_bytes: 0,
        })
    }

    pub fn params(&self) -> &SsdParams {
        &self.p
    }

    /// The channel that holds logical page `page`.
    pub fn channel_of(&self, page: u64) -> usize {
        ((page / u64::from(self.p.stripe_pages)) % u64::from(self.p.channels)) as usize
    }

    /// Time one page occupies its channel.
    fn page_ns(&self, write: bool) -> u64 {
        let xfer = bytes_ns(u64::from(self.p.page_bytes), self.p.channel_mb_s);
        if write {
            let erase = self.p.erase_us / f64::from(self.p.pages_per_block);
            us_ns(self.p.program_us) + us_ns(erase) + xfer
        } else {
            us_ns(self.p.read_us) + xfer
        }
    }

    /// Queue the pages of `[lba, lba+sectors)` on their channels from time
    /// `t`; returns when the last one finishes.
    fn schedule(&mut self, lba: u64, sectors: u64, write: bool, t: u64) -> u64 {
        let spp = u64::from(self.p.page_bytes) / SECTOR_BYTES;
        let first = lba / spp;
        let last = lba.saturating_add(sectors.max(1) - 1) / spp;
        let per = self.page_ns(write);
        let nch = self.free_at.len() as u64;
        let stripe = u64::from(self.p.stripe_pages);
        // Pages per channel: whole rounds of the stripe cycle plus the rest.
        // Beyond one full cycle every channel gets the same share, so the
        // count is computed, not iterated (requests may be huge).
        let pages = last - first + 1;
        let cycle = stripe * nch;
        let rounds = pages / cycle;
        let mut counts = vec![rounds * stripe; self.free_at.len()];
        let mut p = first + rounds * cycle;
        while p <= last {
            counts[self.channel_of(p)] += 1;
            p += 1;
        }
        let mut end = t;
        for (ch, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let start = self.free_at[ch].max(t);
            self.free_at[ch] = start.saturating_add(c.saturating_mul(per));
            end = end.max(self.free_at[ch]);
        }
        end
    }
}

impl DiskModel for Ssd {
    fn name(&self) -> &str {
        &self.p.name
    }

    fn capacity_sectors(&self) -> Option<u64> {
        None
    }

    /// Any LBA is accepted (striping is by LBA); a flush waits for the
    /// write buffer to drain.
    fn service(&mut self, req: &Request, arrival_ns: u64) -> Service {
        let t0 = arrival_ns;
        while self.buffered.front().is_some_and(|b| b.0 <= t0) {
            if let Some((_, bytes)) = self.buffered.pop_front() {
                self.buffered_bytes -= bytes;
            }
        }
        let ov = us_ns(self.p.overhead_us);
        let n = u64::from(req.sectors);
        let bytes = n.saturating_mul(SECTOR_BYTES);
        let host = bytes_ns(bytes, self.p.host_mb_s);
        let mut svc = Service {
            start_ns: t0,
            overhead_ns: ov,
            ..Service::default()
        };
        let ready = t0.saturating_add(ov);
        let done = match req.op {
            Op::Flush => {
                // Everything queued on the flash, buffered or not.
                let drained = self.free_at.iter().copied().max().unwrap_or(0);
                self.buffered.clear();
                self.buffered_bytes = 0;
                ready.max(drained)
            }
            _ if n == 0 => ready,
            Op::Read => {
                let media = self.schedule(req.lba, n, false, ready);
                // The host link streams pages as they arrive; the last page
                // still has to cross it.
                let page_host = bytes_ns(u64::from(self.p.page_bytes).min(bytes), self.p.host_mb_s);
                media
                    .saturating_add(page_host)
                    .max(ready.saturating_add(host))
            }
            Op::Write => {
                let cap = u64::from(self.p.write_buffer_kib) * 1024;
                let in_buffer = ready.saturating_add(host);
                let programmed = self.schedule(req.lba, n, true, in_buffer);
                if self.buffered_bytes.saturating_add(bytes) <= cap {
                    self.buffered.push_back((programmed, bytes));
                    self.buffered_bytes += bytes;
                    svc.cache_hit = true;
                    in_buffer
                } else {
                    programmed
                }
            }
        };
        svc.done_ns = done;
        svc.transfer_ns = done.saturating_sub(t0.saturating_add(ov));
        svc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::XorShift;

    fn ssd() -> Ssd {
        Ssd::new(SsdParams::generic()).unwrap()
    }

    #[test]
    fn single_page_read_latency() {
        let mut s = ssd();
        let svc = s.service(&Request::read(0, 8), 0);
        // 20 µs overhead + 25 µs read + 100 µs channel + 13.65 µs host.
        let page = 25_000 + bytes_ns(4096, 40.96);
        assert_eq!(page, 125_000);
        assert_eq!(svc.done_ns, 20_000 + page + bytes_ns(4096, 300.0));
        assert!(!svc.cache_hit);
    }

    #[test]
    fn reads_spread_over_channels_run_in_parallel() {
        let mut s = ssd();
        // 8 pages, one per channel: about the time of one page.
        let par = s.service(&Request::read(0, 64), 0).done_ns;
        let mut s = ssd();
        // 8 pages all on channel 0 (stride 8 pages = 64 sectors).
        let mut serial = 0;
        for i in 0..8 {
            serial = s.service(&Request::read(i * 64, 8), 0).done_ns;
        }
        assert!(par < 300_000, "{par}");
        assert!(serial > 7 * 125_000, "{serial}");
        // And one channel's queue is FIFO: the eighth waited for seven.
        assert!(serial >= 8 * 125_000);
    }

    #[test]
    fn channel_mapping_stripes_by_page() {
        let mut p = SsdParams::generic();
        p.stripe_pages = 2;
        let s = Ssd::new(p).unwrap();
        let chans: Vec<usize> = (0..6).map(|pg| s.channel_of(pg)).collect();
        assert_eq!(chans, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(s.channel_of(16), 0);
    }

    #[test]
    fn bandwidth_bound_for_large_reads() {
        let mut s = ssd();
        // 8 MiB = 2048 pages = 256 per channel.
        let done = s.service(&Request::read(0, 16384), 0).done_ns;
        let per_ch = 256 * 125_000u64;
        assert!(done >= per_ch && done < per_ch + 1_000_000, "{done}");
        // Host link: 8 MiB at 300 MB/s = 27.96 ms < 32 ms of flash.
    }

    #[test]
    fn write_buffer_acks_early_then_fills() {
        let mut s = ssd();
        let svc = s.service(&Request::write(0, 8), 0);
        assert!(svc.cache_hit);
        assert_eq!(svc.done_ns, 20_000 + bytes_ns(4096, 300.0));
        // Fill the 1 MiB buffer with 64 KiB writes at time 0.
        let mut last = svc;
        for i in 1..40u64 {
            last = s.service(&Request::write(i * 128, 128), 0);
        }
        assert!(!last.cache_hit, "buffer should be full");
        assert!(last.done_ns > 1_000_000);
        // A flush waits for everything to be programmed.
        let f = s.service(&Request::flush(), 0);
        assert!(f.done_ns >= last.done_ns);
        // After the flush the buffer is empty again.
        assert!(s.service(&Request::write(0, 8), f.done_ns).cache_hit);
    }

    #[test]
    fn buffer_drains_over_time() {
        let mut s = ssd();
        for i in 0..16u64 {
            s.service(&Request::write(i * 128, 128), 0);
        }
        assert!(!s.service(&Request::write(0, 128), 0).cache_hit);
        assert!(s.service(&Request::write(0, 128), 1_000_000_000).cache_hit);
    }

    #[test]
    fn write_through_without_buffer() {
        let mut p = SsdParams::generic();
        p.write_buffer_kib = 0;
        let mut s = Ssd::new(p).unwrap();
        let svc = s.service(&Request::write(0, 8), 0);
        assert!(!svc.cache_hit);
        let page = 200_000 + us_ns(1500.0 / 64.0) + 100_000;
        assert_eq!(svc.done_ns, 20_000 + bytes_ns(4096, 300.0) + page);
    }

    #[test]
    fn validation() {
        let mut p = SsdParams::generic();
        p.channels = 0;
        assert!(Ssd::new(p).is_err());
        let mut p = SsdParams::generic();
        p.read_us = f64::NAN;
        assert!(Ssd::new(p).is_err());
        let mut p = SsdParams::generic();
        p.host_mb_s = 0.0;
        assert!(Ssd::new(p).is_err());
    }

    #[test]
    fn no_panic_on_random_input() {
        let mut s = ssd();
        let mut r = XorShift(0x5eed);
        let mut t = 0u64;
        for _ in 0..20_000 {
            let lba = match r.below(3) {
                0 => r.next(),
                1 => u64::MAX - r.below(100),
                _ => r.below(1 << 20),
            };
            let sectors = match r.below(4) {
                0 => 0,
                1 => u32::MAX,
                _ => r.below(1024) as u32,
            };
            let op = match r.below(3) {
                0 => Op::Read,
                1 => Op::Write,
                _ => Op::Flush,
            };
            t = t.saturating_add(r.below(1_000_000));
            if r.below(100) == 0 {
                t = u64::MAX - r.below(10);
            }
            let svc = s.service(&Request { lba, sectors, op }, t);
            assert!(svc.done_ns >= svc.start_ns);
        }
    }
}
