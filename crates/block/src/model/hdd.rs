//! A rotating disk: zoned layout with skews, a Ruemmler–Wilkes seek curve
//! (or an extracted seek table), rotational position as a function of
//! absolute simulated time, head and cylinder switches, controller
//! overheads, a segmented read-ahead buffer and write reporting policies.
//!
//! Internally times are picoseconds in `u128` (the platter phase is exact
//! integer arithmetic); the interface is nanoseconds in `u64`.

mod params;
mod profiles;
#[cfg(test)]
mod tests;

pub use params::{CacheParams, HddParams, Overheads, SeekCurve, WritePolicy, Zone};
pub use profiles::{cheetah4lp_two_piece_fit, CHEETAH4LP_SEEK};

use super::{DiskModel, ModelError, Op, Request, Service, SECTOR_BYTES};

/// A physical position: zone index, cylinder, head, sector within track.
/// After a transfer that ends a track the head's `sector` equals the
/// track's length: it is still on that track, and the next access pays the
/// switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chs {
    pub zone: usize,
    pub cyl: u32,
    pub head: u32,
    pub sector: u64,
}

#[derive(Clone, Debug)]
struct ZoneInfo {
    first_cyl: u32,
    last_cyl: u32,
    spt: u64,
    track_skew: u64,
    cyl_skew: u64,
    first_lba: u64,
}

/// A buffer segment holding sectors `[start, end)`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u64,
    end: u64,
    stamp: u64,
}

/// Read-ahead in progress: at `t` the head was at the top of its walk at
/// `pos`, about to read `lba`; it reads on until `limit` into segment `seg`.
/// `lba == limit`: idle, head parked after the last sector read.
#[derive(Clone, Copy, Debug, Default)]
struct ReadAhead {
    t: u128,
    pos: Chs,
    lba: u64,
    limit: u64,
    seg: usize,
}

/// Result of walking the media.
#[derive(Clone, Copy, Debug)]
struct Walk {
    end: u128,
    done: u64,
    rotate: u128,
    transfer: u128,
    end_pos: Chs,
    /// Last loop-top state (time, position, sectors done): resuming a walk
    /// from here reproduces the original timing exactly.
    resume: (u128, Chs, u64),
}

/// The disk model. Build with [`Hdd::new`].
#[derive(Clone, Debug)]
pub struct Hdd {
    p: HddParams,
    zones: Vec<ZoneInfo>,
    capacity: u64,
    rev_ps: u128,
    pos: Chs,
    busy_until: u128,
    prev_write: bool,
    last_write_end: Option<u64>,
    segs: Vec<Segment>,
    ra: Option<ReadAhead>,
    stamp: u64,
}

fn ps(ns: u64) -> u128 {
    u128::from(ns) * 1000
}

fn to_ns(ps: u128) -> u64 {
    u64::try_from(ps.saturating_add(500) / 1000).unwrap_or(u64::MAX)
}

fn ms_ps(ms: f64) -> u128 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1e9).round() as u128
    } else {
        0
    }
}

impl Hdd {
    /// Validate `p` and build a disk at rest: heads on cylinder 0, empty
    /// buffer, platter phase 0 at time 0.
    pub fn new(p: HddParams) -> Result<Self, ModelError> {
        p.validate().map_err(ModelError::Invalid)?;
        let heads = u64::from(p.heads);
        let mut zones = Vec::with_capacity(p.zones.len());
        let mut lba = 0u64;
        for z in &p.zones {
            let spt = u64::from(z.sectors_per_track);
            zones.push(ZoneInfo {
                first_cyl: z.first_cyl,
                last_cyl: z.last_cyl,
                spt,
                track_skew: u64::from(z.track_skew) % spt,
                cyl_skew: u64::from(z.cyl_skew) % spt,
                first_lba: lba,
            });
            lba += u64::from(z.last_cyl - z.first_cyl + 1) * heads * spt;
        }
        let capacity = p.capacity_sectors.map_or(lba, |c| c.min(lba));
        let rev_ps = (60e12 / p.rpm).round() as u128;
        let pos = Chs {
            zone: 0,
            cyl: zones[0].first_cyl,
            head: 0,
            sector: 0,
        };
        Ok(Hdd {
            p,
            zones,
            capacity,
            rev_ps,
            pos,
            busy_until: 0,
            prev_write: false,
            last_write_end: None,
            segs: Vec::new(),
            ra: None,
            stamp: 0,
        })
    }

    pub fn params(&self) -> &HddParams {
        &self.p
    }

    /// One revolution in nanoseconds.
    pub fn rotation_ns(&self) -> u64 {
        to_ns(self.rev_ps)
    }

    /// Seek time for `d` cylinders, in nanoseconds.
    pub fn seek_time_ns(&self, d: u32) -> u64 {
        to_ns(ms_ps(self.p.seek.seek_ms(d)))
    }

    /// Sustained media rate of zone `zone` in 10^6 bytes/s (one track per
    /// revolution, switches excluded).
    pub fn zone_rate_mb_s(&self, zone: usize) -> Option<f64> {
        let z = self.zones.get(zone)?;
        Some(z.spt as f64 * SECTOR_BYTES as f64 * self.p.rpm / 60.0 / 1e6)
    }

    /// Where `lba` lives, or `None` beyond the disk.
    pub fn lba_to_chs(&self, lba: u64) -> Option<Chs> {
        if lba >= self.capacity {
            return None;
        }
        let zi = self.zones.partition_point(|z| z.first_lba <= lba) - 1;
        let z = &self.zones[zi];
        let rel = lba - z.first_lba;
        let track = rel / z.spt;
        let heads = u64::from(self.p.heads);
        Some(Chs {
            zone: zi,
            cyl: z.first_cyl + (track / heads) as u32,
            head: (track % heads) as u32,
            sector: rel % z.spt,
        })
    }

    /// The head's current position.
    pub fn head_position(&self) -> Chs {
        self.pos
    }

    /// First LBA of the track at `c` (ignoring `c.sector`).
    fn track_lba(&self, c: Chs) -> u64 {
        let z = &self.zones[c.zone];
        let track = u64::from(c.cyl - z.first_cyl) * u64::from(self.p.heads) + u64::from(c.head);
        z.first_lba + track * z.spt
    }

    /// Angular slot (0..spt) under which sector `c.sector` passes.
    fn slot(&self, c: Chs) -> u64 {
        let z = &self.zones[c.zone];
        let rel_cyl = u64::from(c.cyl - z.first_cyl);
        let heads = u64::from(self.p.heads);
        let per_cyl = ((heads - 1) * z.track_skew + z.cyl_skew) % z.spt;
        let off = (rel_cyl % z.spt) * per_cyl + u64::from(c.head) * z.track_skew;
        (c.sector + off) % z.spt
    }

    /// Wait from `t` until slot `slot` of `spt` comes under the head. A head
    /// that is late by less than 2 ns (rounding) counts as on time.
    fn rot_wait(&self, t: u128, slot: u64, spt: u64) -> u128 {
        let target = u128::from(slot) * self.rev_ps / u128::from(spt);
        let cur = t % self.rev_ps;
        let wait = (target + self.rev_ps - cur) % self.rev_ps;
        if self.rev_ps - wait < 2000 {
            0
        } else {
            wait
        }
    }

    /// The track after `c`'s: next head, next cylinder, next zone, or back
    /// to LBA 0 past the end of the disk.
    fn next_track(&self, c: Chs) -> Chs {
        let mut n = Chs { sector: 0, ..c };
        n.head += 1;
        if n.head == self.p.heads {
            n.head = 0;
            n.cyl += 1;
            if n.cyl > self.zones[n.zone].last_cyl {
                n.zone += 1;
                if n.zone == self.zones.len() {
                    n.zone = 0;
                }
                n.cyl = self.zones[n.zone].first_cyl;
            }
        }
        if self.track_lba(n) >= self.capacity {
            n = Chs {
                zone: 0,
                cyl: self.zones[0].first_cyl,
                head: 0,
                sector: 0,
            };
        }
        n
    }

    fn switch_ps(&self, from: Chs, to: Chs, write: bool) -> u128 {
        let d = from.cyl.abs_diff(to.cyl);
        if d > 0 {
            let settle = if write { self.p.write_settle_ms } else { 0.0 };
            ms_ps(self.p.seek.seek_ms(d)) + ms_ps(settle)
        } else if from.head != to.head {
            ms_ps(self.p.head_switch_ms)
        } else {
            0
        }
    }

    /// Read or write `n` sectors from `pos`, starting at `t`, switching
    /// heads and cylinders as needed; with `stop`, only as far as the disk
    /// gets by that time.
    fn walk(&self, t: u128, pos: Chs, n: u64, stop: Option<u128>, write: bool) -> Walk {
        let mut w = Walk {
            end: t,
            done: 0,
            rotate: 0,
            transfer: 0,
            end_pos: pos,
            resume: (t, pos, 0),
        };
        let mut first = true;
        while w.done < n {
            w.resume = (w.end, w.end_pos, w.done);
            let c = w.end_pos;
            let spt = self.zones[c.zone].spt;
            if c.sector >= spt {
                // Past the end of the track: switch to the next one.
                let next = self.next_track(c);
                let sw = self.switch_ps(c, next, write);
                if stop.is_some_and(|s| w.end + sw > s) {
                    break;
                }
                w.end += sw;
                w.transfer += sw;
                w.end_pos = next;
                continue;
            }
            let wait = self.rot_wait(w.end, self.slot(c), spt);
            if stop.is_some_and(|s| w.end + wait > s) {
                break;
            }
            w.end += wait;
            if first {
                w.rotate += wait;
            } else {
                w.transfer += wait;
            }
            first = false;
            let k = (n - w.done).min(spt - c.sector);
            let dur = |m: u64| u128::from(m) * self.rev_ps / u128::from(spt);
            let m = match stop {
                Some(s) if w.end + dur(k) > s => {
                    (((s - w.end) * u128::from(spt) / self.rev_ps) as u64).min(k)
                }
                _ => k,
            };
            w.end += dur(m);
            w.transfer += dur(m);
            w.done += m;
            w.end_pos.sector += m;
            if m < k {
                break;
            }
        }
        w
    }

    fn bus_ps(&self, sectors: u64) -> u128 {
        let bytes = sectors.saturating_mul(SECTOR_BYTES) as f64;
        (bytes * 1e6 / self.p.bus_mb_s).round() as u128
    }

    /// Bring the read-ahead up to time `t`: extend its segment, move the
    /// head, and end it if it reached its limit.
    fn advance_readahead(&mut self, t: u128) {
        let Some(ra) = self.ra else { return };
        if t < ra.t {
            return;
        }
        let want = ra.limit.saturating_sub(ra.lba);
        let w = self.walk(ra.t, ra.pos, want, Some(t), false);
        let seg_len = u64::from(self.p.cache.segment_sectors);
        if let Some(s) = self.segs.get_mut(ra.seg) {
            s.end = s.end.max(ra.lba + w.done);
            s.start = s.start.max(s.end.saturating_sub(seg_len));
        }
        self.pos = w.end_pos;
        if w.done >= want {
            // Idle at the limit; resumes if a hit makes room.
            self.ra = Some(ReadAhead {
                t: w.end,
                pos: w.end_pos,
                lba: ra.limit,
                ..ra
            });
        } else {
            let (rt, rpos, rdone) = w.resume;
            self.ra = Some(ReadAhead {
                t: rt,
                pos: rpos,
                lba: ra.lba + rdone,
                ..ra
            });
        }
    }

    /// Put `[start, end)` (its last `segment_sectors`) in the least recently
    /// used segment; returns its index.
    fn fill_segment(&mut self, start: u64, end: u64) -> Option<usize> {
        let nseg = self.p.cache.segments as usize;
        if nseg == 0 {
            return None;
        }
        self.stamp += 1;
        let len = u64::from(self.p.cache.segment_sectors);
        let seg = Segment {
            start: start.max(end.saturating_sub(len)),
            end,
            stamp: self.stamp,
        };
        if self.segs.len() < nseg {
            self.segs.push(seg);
            return Some(self.segs.len() - 1);
        }
        let i = (0..self.segs.len()).min_by_key(|&i| self.segs[i].stamp)?;
        self.segs[i] = seg;
        Some(i)
    }

    fn invalidate(&mut self, start: u64, end: u64) {
        for s in &mut self.segs {
            if s.start < end && start < s.end {
                // Keep the part before the write, if any.
                s.end = s.end.min(start).max(s.start);
            }
        }
    }

    /// The segment holding all of `[lba, end)`, marked most recently used.
    fn full_hit(&mut self, lba: u64, end: u64) -> Option<usize> {
        self.stamp += 1;
        let i = self
            .segs
            .iter()
            .position(|s| s.start <= lba && end <= s.end && s.start < s.end)?;
        self.segs[i].stamp = self.stamp;
        Some(i)
    }

    /// Let the read-ahead continue past a request served from its segment:
    /// up to `readahead_sectors` beyond it, within one segment of the
    /// request's start ("buffer continuous read"). An idle read-ahead
    /// resumes from `t0`.
    fn extend_readahead(&mut self, seg: usize, lba: u64, end: u64, t0: u128) {
        let c = &self.p.cache;
        let limit = end
            .saturating_add(u64::from(c.readahead_sectors))
            .min(lba.saturating_add(u64::from(c.segment_sectors)))
            .min(self.capacity);
        if let Some(ra) = self.ra.as_mut().filter(|ra| ra.seg == seg) {
            if limit > ra.limit {
                if ra.lba >= ra.limit {
                    ra.t = ra.t.max(t0);
                }
                ra.limit = limit;
            }
        }
    }

    fn serve(&mut self, req: &Request, t0: u128) -> (Service, u128) {
        let cap = self.capacity;
        let lba = req.lba % cap;
        let n = u64::from(req.sectors).min(cap);
        let end = lba + n;
        let cache_on = self.p.cache.segments > 0;
        let after_write = self.prev_write;
        self.advance_readahead(t0);
        let hit_seg = if cache_on && req.op == Op::Read && n > 0 {
            self.full_hit(lba, end)
        } else {
            None
        };
        let stream = match self.ra {
            Some(ra) if req.op == Op::Read && hit_seg.is_none() && n > 0 => self
                .segs
                .get(ra.seg)
                .filter(|s| s.start <= lba && lba <= ra.limit && end <= cap)
                .map(|_| (ra.seg, ra)),
            _ => None,
        };
        let mut svc = Service::default();
        let oh = self.p.overhead.clone();
        let ovh = move |hit: bool, write: bool| ms_ps(oh.get(write, hit, after_write));
        let done: u128;
        let mut busy = 0u128;
        match req.op {
            _ if req.op == Op::Flush || (req.op == Op::Write && n == 0) => {
                let ov = ovh(true, true);
                svc.overhead_ns = to_ns(ov);
                done = t0 + ov;
            }
            Op::Read if n == 0 || hit_seg.is_some() => {
                if let Some(seg) = hit_seg {
                    self.extend_readahead(seg, lba, end, t0);
                }
                let ov = ovh(true, false);
                svc.overhead_ns = to_ns(ov);
                svc.cache_hit = true;
                done = t0 + ov + self.bus_ps(n);
            }
            Op::Read if stream.is_some() => {
                // The request continues the read-ahead stream: no seek, no
                // rotational wait; the data arrives as the head reads it.
                let (seg, ra) = stream.unwrap_or((0, ReadAhead::default()));
                self.extend_readahead(seg, lba, end, t0);
                let ra = self.ra.unwrap_or(ra);
                // An idle read-ahead restarts no earlier than this request.
                let from_t = if ra.lba >= ra.limit {
                    ra.t.max(t0)
                } else {
                    ra.t
                };
                let (from_pos, from_lba) = (ra.pos, ra.lba);
                let ov = ovh(true, false);
                let reach = if end <= from_lba {
                    t0
                } else {
                    self.walk(from_t, from_pos, end - from_lba, None, false).end
                };
                done = (t0 + ov + self.bus_ps(n)).max(reach + self.bus_ps(1));
                svc.overhead_ns = to_ns(ov);
                svc.cache_hit = true;
            }
            _ => {
                let write = req.op == Op::Write;
                self.ra = None;
                if write {
                    self.invalidate(lba, end);
                }
                let immediate = cache_on
                    && write
                    && match self.p.write_policy {
                        WritePolicy::WriteThrough => false,
                        WritePolicy::Immediate => true,
                        WritePolicy::ImmediateSequential => self.last_write_end == Some(lba),
                    };
                let ov = ovh(false, write);
                let target = self.lba_to_chs(lba).unwrap_or(self.pos);
                let seek = self.switch_ps(self.pos, target, write);
                let w = self.walk(t0 + ov + seek, target, n, None, write);
                let bus_done = t0 + ov + self.bus_ps(n);
                let media_end = if write { w.end.max(bus_done) } else { w.end };
                self.pos = w.end_pos;
                if immediate {
                    let ovh_hit = ovh(true, true);
                    done = t0 + ovh_hit + self.bus_ps(n);
                    busy = media_end;
                    svc.overhead_ns = to_ns(ovh_hit);
                    svc.cache_hit = true;
                } else {
                    done = if write {
                        media_end
                    } else {
                        (media_end + self.bus_ps(1)).max(bus_done)
                    };
                    svc.overhead_ns = to_ns(ov);
                    svc.seek_ns = to_ns(seek);
                    svc.rotate_ns = to_ns(w.rotate);
                }
                let seg = if n > 0 {
                    self.fill_segment(lba, end)
                } else {
                    None
                };
                if write {
                    self.last_write_end = Some(end);
                } else if let Some(seg) = seg {
                    self.ra = Some(ReadAhead {
                        t: w.end,
                        pos: w.end_pos,
                        lba: end,
                        limit: end,
                        seg,
                    });
                    self.extend_readahead(seg, lba, end, w.end);
                }
            }
        }
        if req.op != Op::Write && req.op != Op::Flush {
            self.last_write_end = None;
        }
        self.prev_write = req.op == Op::Write;
        svc.start_ns = to_ns(t0);
        svc.done_ns = to_ns(done);
        let accounted = svc
            .overhead_ns
            .saturating_add(svc.seek_ns)
            .saturating_add(svc.rotate_ns);
        svc.transfer_ns = svc
            .done_ns
            .saturating_sub(svc.start_ns.saturating_add(accounted));
        (svc, busy.max(done))
    }
}

impl DiskModel for Hdd {
    fn name(&self) -> &str {
        &self.p.name
    }

    fn capacity_sectors(&self) -> Option<u64> {
        Some(self.capacity)
    }

    /// LBAs are taken modulo the capacity; requests longer than the disk
    /// are timed as capacity-long; zero-length requests and flushes cost the
    /// controller overhead (and wait for background writes).
    fn service(&mut self, req: &Request, arrival_ns: u64) -> Service {
        let t0 = ps(arrival_ns).max(self.busy_until);
        let (svc, busy) = self.serve(req, t0);
        self.busy_until = busy;
        svc
    }
}
