//! Disk parameters: geometry, seek curve, overheads, buffer, write policy.

use serde::{Deserialize, Serialize};

/// A band of cylinders with the same number of sectors per track.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub first_cyl: u32,
    /// Inclusive.
    pub last_cyl: u32,
    pub sectors_per_track: u32,
    /// Sector-0 offset added per head switch within a cylinder (sectors).
    #[serde(default)]
    pub track_skew: u32,
    /// Sector-0 offset added per cylinder switch (sectors).
    #[serde(default)]
    pub cyl_skew: u32,
}

/// Seek time as a function of distance in cylinders (0 for d = 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SeekCurve {
    /// Ruemmler–Wilkes: `a + b·√d` ms for `d < boundary`, `c + e·d` ms
    /// beyond.
    TwoPiece {
        a_ms: f64,
        b_ms: f64,
        c_ms: f64,
        e_ms: f64,
        boundary: u32,
    },
    /// Measured (distance, ms) points, strictly increasing distances;
    /// linear interpolation between points, from (0, 0) below the first,
    /// and the last segment's slope beyond the last.
    Table { points: Vec<(u32, f64)> },
}

impl SeekCurve {
    /// Seek time in milliseconds for a distance of `d` cylinders.
    pub fn seek_ms(&self, d: u32) -> f64 {
        if d == 0 {
            return 0.0;
        }
        match self {
            SeekCurve::TwoPiece {
                a_ms,
                b_ms,
                c_ms,
                e_ms,
                boundary,
            } => {
                let x = f64::from(d);
                if d < *boundary {
                    a_ms + b_ms * x.sqrt()
                } else {
                    c_ms + e_ms * x
                }
            }
            SeekCurve::Table { points } => table_seek(points, d),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && (0.0..=MAX_MS).contains(&v);
        match self {
            SeekCurve::TwoPiece {
                a_ms,
                b_ms,
                c_ms,
                e_ms,
                ..
            } => {
                if ![*a_ms, *b_ms, *c_ms, *e_ms].into_iter().all(ok) {
                    return Err("seek coefficients must be finite and in 0..=1e9 ms".into());
                }
            }
            SeekCurve::Table { points } => {
                if points.is_empty() || points.len() > 100_000 {
                    return Err("seek table needs 1..=100000 points".into());
                }
                if points[0].0 == 0 || points.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err("seek table distances must be ≥ 1 and strictly increasing".into());
                }
                if !points.iter().all(|p| ok(p.1)) {
                    return Err("seek table times must be finite and in 0..=1e9 ms".into());
                }
            }
        }
        Ok(())
    }
}

fn table_seek(points: &[(u32, f64)], d: u32) -> f64 {
    let Some(&(d_last, t_last)) = points.last() else {
        return 0.0;
    };
    let x = f64::from(d);
    let i = points.partition_point(|p| p.0 <= d);
    if i == 0 {
        let (d1, t1) = points[0];
        return t1 * x / f64::from(d1);
    }
    if i == points.len() {
        if points.len() == 1 || d == d_last {
            return t_last;
        }
        let (d0, t0) = points[points.len() - 2];
        let slope = ((t_last - t0) / f64::from(d_last - d0)).max(0.0);
        return t_last + slope * (x - f64::from(d_last));
    }
    let (d0, t0) = points[i - 1];
    let (d1, t1) = points[i];
    t0 + (t1 - t0) * (x - f64::from(d0)) / f64::from(d1 - d0)
}

/// Controller overheads in milliseconds, by operation, buffer hit or miss,
/// and the previous request's direction (DiskSim's eight values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overheads {
    pub read_hit_after_read: f64,
    pub read_hit_after_write: f64,
    pub read_miss_after_read: f64,
    pub read_miss_after_write: f64,
    pub write_hit_after_read: f64,
    pub write_hit_after_write: f64,
    pub write_miss_after_read: f64,
    pub write_miss_after_write: f64,
}

impl Overheads {
    /// The same overhead in every case.
    pub fn uniform(ms: f64) -> Self {
        Overheads {
            read_hit_after_read: ms,
            read_hit_after_write: ms,
            read_miss_after_read: ms,
            read_miss_after_write: ms,
            write_hit_after_read: ms,
            write_hit_after_write: ms,
            write_miss_after_read: ms,
            write_miss_after_write: ms,
        }
    }
    fn all(&self) -> [f64; 8] {
        [
            self.read_hit_after_read,
            self.read_hit_after_write,
            self.read_miss_after_read,
            self.read_miss_after_write,
            self.write_hit_after_read,
            self.write_hit_after_write,
            self.write_miss_after_read,
            self.write_miss_after_write,
        ]
    }
    pub(crate) fn get(&self, write: bool, hit: bool, after_write: bool) -> f64 {
        match (write, hit, after_write) {
            (false, true, false) => self.read_hit_after_read,
            (false, true, true) => self.read_hit_after_write,
            (false, false, false) => self.read_miss_after_read,
            (false, false, true) => self.read_miss_after_write,
            (true, true, false) => self.write_hit_after_read,
            (true, true, true) => self.write_hit_after_write,
            (true, false, false) => self.write_miss_after_read,
            (true, false, true) => self.write_miss_after_write,
        }
    }
}

/// The disk's buffer: `segments` segments of `segment_sectors` each; after a
/// read miss the disk keeps reading up to `readahead_sectors` beyond the
/// request into the segment until another request needs the mechanism.
/// `segments = 0` disables the buffer (no hits, no read-ahead, no
/// immediate reporting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheParams {
    pub segments: u32,
    pub segment_sectors: u32,
    pub readahead_sectors: u32,
}

/// When a write is reported complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritePolicy {
    /// After the data is on the media.
    WriteThrough,
    /// Immediately (after the bus transfer) when the write continues the
    /// previous write; otherwise write-through (DiskSim fast write level 1).
    ImmediateSequential,
    /// Every write immediately; the media write continues in the background
    /// and delays the next request.
    Immediate,
}

/// Everything that defines a disk. See `docs/disk-models.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HddParams {
    pub name: String,
    pub cylinders: u32,
    /// Data heads (surfaces).
    pub heads: u32,
    pub rpm: f64,
    /// Ascending, non-overlapping; cylinders in no zone hold no data.
    pub zones: Vec<Zone>,
    /// Truncate the LBA space to this many sectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_sectors: Option<u64>,
    pub seek: SeekCurve,
    pub head_switch_ms: f64,
    #[serde(default)]
    pub write_settle_ms: f64,
    pub overhead: Overheads,
    /// Interface (bus) rate in 10^6 bytes per second.
    pub bus_mb_s: f64,
    pub cache: CacheParams,
    pub write_policy: WritePolicy,
}

const MAX_MS: f64 = 1e9;

impl HddParams {
    /// Check that the parameters describe a disk the model can run.
    pub fn validate(&self) -> Result<(), String> {
        if self.cylinders == 0 || self.cylinders > 1 << 24 {
            return Err("cylinders must be 1..=2^24".into());
        }
        if self.heads == 0 || self.heads > 1024 {
            return Err("heads must be 1..=1024".into());
        }
        if !(self.rpm.is_finite() && self.rpm >= 1.0 && self.rpm <= 1e6) {
            return Err("rpm must be in 1..=1e6".into());
        }
        if self.zones.is_empty() || self.zones.len() > 4096 {
            return Err("need 1..=4096 zones".into());
        }
        let mut next_free = 0u32;
        for (i, z) in self.zones.iter().enumerate() {
            if z.first_cyl > z.last_cyl || z.last_cyl >= self.cylinders {
                return Err(format!("zone {i}: cylinders out of range"));
            }
            if i > 0 && z.first_cyl < next_free {
                return Err(format!("zone {i}: zones must ascend without overlap"));
            }
            next_free = z.last_cyl.saturating_add(1);
            if z.sectors_per_track == 0 || z.sectors_per_track > 1 << 20 {
                return Err(format!("zone {i}: sectors_per_track must be 1..=2^20"));
            }
        }
        if self.capacity_sectors == Some(0) {
            return Err("capacity_sectors must be ≥ 1".into());
        }
        self.seek.validate()?;
        let ms = self.overhead.all();
        let ok = |v: f64| v.is_finite() && (0.0..=MAX_MS).contains(&v);
        if !ok(self.head_switch_ms) || !ok(self.write_settle_ms) || !ms.into_iter().all(ok) {
            return Err("times must be finite and in 0..=1e9 ms".into());
        }
        if !(self.bus_mb_s.is_finite() && self.bus_mb_s > 1e-6) {
            return Err("bus_mb_s must be positive".into());
        }
        let c = &self.cache;
        if c.segments > 1024 || (c.segments > 0 && c.segment_sectors == 0) {
            return Err("cache: 0..=1024 segments of ≥ 1 sector".into());
        }
        Ok(())
    }
}
