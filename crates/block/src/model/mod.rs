//! Disk timing models (pure, deterministic, simulated clock).
//!
//! A model answers one question: given a request and the (simulated) time it
//! reached the disk, when would the physical disk have reported it done? The
//! models never read a clock, never sleep and never spawn threads; every time
//! is a caller-supplied nanosecond count. The virtual performance throttle in
//! [`vpt`] turns those answers into release times for a real virtual disk.
//!
//! - [`hdd`]: a rotating disk (Ruemmler–Wilkes seek curve or an extracted
//!   seek table, rotational position, zones, skews, head switches, controller
//!   overheads, a segmented read-ahead buffer) with the HP 97560 and Seagate
//!   Cheetah 4LP profiles.
//! - [`ssd`]: a flash disk (per-op latencies, channels, bandwidth, write
//!   buffer).
//! - [`vpt`]: the throttle (virtual disk clock, scale factor k, records).
//! - [`stats`]: fidelity statistics (percentiles, Ruemmler–Wilkes demerit).
//!
//! See `docs/disk-models.md` for the formulas and the source of every
//! parameter.

pub mod hdd;
pub mod ssd;
pub mod stats;
pub mod vpt;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use hdd::{Hdd, HddParams};
pub use ssd::{Ssd, SsdParams};
pub use vpt::{Record, Throttle, ThrottleConfig, ThrottleStats, Ticket};

/// Bytes in one logical sector (the LBA unit, as in virtio-blk).
pub const SECTOR_BYTES: u64 = 512;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Read,
    Write,
    /// Cache flush: waits for buffered writes to reach the media.
    Flush,
}

/// One request as the disk sees it. `sectors` may be 0 and `lba` may lie
/// beyond the modelled disk; every model accepts any value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub lba: u64,
    pub sectors: u32,
    pub op: Op,
}

impl Request {
    pub fn read(lba: u64, sectors: u32) -> Self {
        Request {
            lba,
            sectors,
            op: Op::Read,
        }
    }
    pub fn write(lba: u64, sectors: u32) -> Self {
        Request {
            lba,
            sectors,
            op: Op::Write,
        }
    }
    pub fn flush() -> Self {
        Request {
            lba: 0,
            sectors: 0,
            op: Op::Flush,
        }
    }
    pub fn is_write(&self) -> bool {
        self.op == Op::Write
    }
}

/// How a model served one request (all times in simulated nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// When the disk started on the request (≥ its arrival: the disk may
    /// still be busy with earlier requests or background writes).
    pub start_ns: u64,
    /// When the disk reports the request complete.
    pub done_ns: u64,
    /// Positioning: seek (or head switch) time.
    pub seek_ns: u64,
    /// Rotational latency before the first sector.
    pub rotate_ns: u64,
    /// Media (and, for hits, bus) transfer time including track switches.
    pub transfer_ns: u64,
    /// Controller overhead.
    pub overhead_ns: u64,
    /// Served from the disk's buffer (read hit, read-ahead stream, or an
    /// immediately reported write).
    pub cache_hit: bool,
}

impl Service {
    /// Time from arrival to completion for a request that arrived at
    /// `arrival_ns`.
    pub fn latency_from(&self, arrival_ns: u64) -> u64 {
        self.done_ns.saturating_sub(arrival_ns)
    }
}

/// A disk timing model. Calls to [`DiskModel::service`] must come in
/// non-decreasing `arrival_ns` order; the model queues internally (a single
/// actuator for a disk, per-channel queues for an SSD).
pub trait DiskModel: Send + std::fmt::Debug {
    /// Short name, e.g. `hdd:hp97560`.
    fn name(&self) -> &str;
    /// The modelled disk's capacity in sectors, if it has one. LBAs beyond
    /// it are still accepted (see the model's documentation).
    fn capacity_sectors(&self) -> Option<u64>;
    /// Serve `req`, which reached the disk at `arrival_ns`, advancing the
    /// model's state (head position, buffer contents, queues).
    fn service(&mut self, req: &Request, arrival_ns: u64) -> Service;
}

/// Errors from parsing a `model=` value or loading a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unknown disk model '{0}' (expected none, hdd:hp97560, hdd:cheetah4lp, ssd or file:PATH)"
    )]
    Unknown(String),
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("invalid model parameters: {0}")]
    Invalid(String),
}

/// A parsed `model=` value.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    /// No timing model: requests complete when the host finishes them.
    None,
    Hp97560,
    Cheetah4Lp,
    Ssd,
    /// A TOML (or, with a `.json` extension, JSON) model file.
    File(PathBuf),
}

impl ModelSpec {
    /// Parse the value of `model=` (the prefix `model=` itself is accepted
    /// and ignored). Names are case-insensitive.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let v = s.trim();
        let v = v.strip_prefix("model=").unwrap_or(v);
        if let Some(path) = v.strip_prefix("file:") {
            if path.is_empty() {
                return Err(ModelError::Unknown(s.to_string()));
            }
            return Ok(ModelSpec::File(PathBuf::from(path)));
        }
        match v.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(ModelSpec::None),
            "hdd:hp97560" | "hp97560" => Ok(ModelSpec::Hp97560),
            "hdd:cheetah4lp" | "cheetah4lp" | "hdd:st34501n" => Ok(ModelSpec::Cheetah4Lp),
            "ssd" | "ssd:generic" => Ok(ModelSpec::Ssd),
            _ => Err(ModelError::Unknown(s.to_string())),
        }
    }

    /// Build the model (reads the file for [`ModelSpec::File`]); `None` for
    /// `model=none`.
    pub fn build(&self) -> Result<Option<Box<dyn DiskModel>>, ModelError> {
        Ok(match self {
            ModelSpec::None => None,
            ModelSpec::Hp97560 => Some(Box::new(Hdd::new(HddParams::hp97560())?)),
            ModelSpec::Cheetah4Lp => Some(Box::new(Hdd::new(HddParams::cheetah4lp())?)),
            ModelSpec::Ssd => Some(Box::new(Ssd::new(SsdParams::generic())?)),
            ModelSpec::File(p) => Some(ModelFile::load(p)?.build()?),
        })
    }
}

impl std::str::FromStr for ModelSpec {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelSpec::parse(s)
    }
}

/// The contents of a model file: `kind = "hdd"` or `kind = "ssd"` followed
/// by that model's parameters (see `docs/disk-models.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelFile {
    Hdd(HddParams),
    Ssd(SsdParams),
}

impl ModelFile {
    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
    /// Parse JSON text.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
    /// The file as TOML (a starting point for a custom model).
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string_pretty(self).map_err(|e| e.to_string())
    }
    /// Read a model file: JSON if the name ends in `.json`, else TOML.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        parsed.map_err(|msg| ModelError::Parse {
            path: path.to_path_buf(),
            msg,
        })
    }
    /// Validate the parameters and build the model.
    pub fn build(self) -> Result<Box<dyn DiskModel>, ModelError> {
        Ok(match self {
            ModelFile::Hdd(p) => Box::new(Hdd::new(p)?),
            ModelFile::Ssd(p) => Box::new(Ssd::new(p)?),
        })
    }
}

/// Time to move `bytes` at `mb_per_s` (10^6 bytes per second), in ns.
pub(crate) fn bytes_ns(bytes: u64, mb_per_s: f64) -> u64 {
    if mb_per_s.is_finite() && mb_per_s > 0.0 {
        (bytes as f64 * 1e3 / mb_per_s).round() as u64
    } else {
        0
    }
}

/// A small deterministic PRNG for tests (xorshift64*).
#[cfg(test)]
pub(crate) struct XorShift(pub u64);

#[cfg(test)]
impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(ModelSpec::parse("none").unwrap(), ModelSpec::None);
        assert_eq!(ModelSpec::parse("hdd:hp97560").unwrap(), ModelSpec::Hp97560);
        assert_eq!(
            ModelSpec::parse("model=hdd:HP97560").unwrap(),
            ModelSpec::Hp97560
        );
        assert_eq!(
            ModelSpec::parse("hdd:cheetah4LP").unwrap(),
            ModelSpec::Cheetah4Lp
        );
        assert_eq!(ModelSpec::parse("ssd").unwrap(), ModelSpec::Ssd);
        assert_eq!(
            ModelSpec::parse("file:/tmp/x.toml").unwrap(),
            ModelSpec::File(PathBuf::from("/tmp/x.toml"))
        );
        assert!(ModelSpec::parse("file:").is_err());
        assert!(ModelSpec::parse("hdd:ibm3380").is_err());
        assert!("tape".parse::<ModelSpec>().is_err());
    }

    #[test]
    fn build_builtins() {
        assert!(ModelSpec::None.build().unwrap().is_none());
        let m = ModelSpec::Hp97560.build().unwrap().unwrap();
        assert_eq!(m.name(), "hdd:hp97560");
        assert_eq!(m.capacity_sectors(), Some(1962 * 19 * 72));
        let m = ModelSpec::Cheetah4Lp.build().unwrap().unwrap();
        assert_eq!(m.capacity_sectors(), Some(8_887_200));
        let m = ModelSpec::Ssd.build().unwrap().unwrap();
        assert_eq!(m.name(), "ssd:generic");
    }

    #[test]
    fn model_file_round_trip_toml_and_json() {
        for f in [
            ModelFile::Hdd(HddParams::hp97560()),
            ModelFile::Hdd(HddParams::cheetah4lp()),
            ModelFile::Ssd(SsdParams::generic()),
        ] {
            let t = f.to_toml().unwrap();
            assert_eq!(ModelFile::from_toml(&t).unwrap(), f, "{t}");
            let j = serde_json::to_string(&f).unwrap();
            assert_eq!(ModelFile::from_json(&j).unwrap(), f);
        }
    }

    #[test]
    fn model_file_load_and_errors() {
        let dir = std::env::temp_dir().join(format!("vlab-model-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("hp.toml");
        std::fs::write(
            &good,
            ModelFile::Hdd(HddParams::hp97560()).to_toml().unwrap(),
        )
        .unwrap();
        let m = ModelSpec::File(good.clone()).build().unwrap().unwrap();
        assert_eq!(m.capacity_sectors(), Some(1962 * 19 * 72));

        let json = dir.join("ssd.json");
        std::fs::write(
            &json,
            serde_json::to_string(&ModelFile::Ssd(SsdParams::generic())).unwrap(),
        )
        .unwrap();
        assert!(ModelSpec::File(json).build().unwrap().is_some());

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "kind = \"hdd\"\ncylinders = 0\n").unwrap();
        assert!(matches!(
            ModelSpec::File(bad).build(),
            Err(ModelError::Parse { .. })
        ));

        // Parses, but the parameters are nonsense.
        let mut p = HddParams::hp97560();
        p.rpm = 0.0;
        let invalid = dir.join("invalid.toml");
        std::fs::write(&invalid, ModelFile::Hdd(p).to_toml().unwrap()).unwrap();
        assert!(matches!(
            ModelSpec::File(invalid).build(),
            Err(ModelError::Invalid(_))
        ));

        assert!(matches!(
            ModelSpec::File(dir.join("missing.toml")).build(),
            Err(ModelError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn documented_model_files_parse_and_build() {
        let doc = include_str!("../../../../docs/disk-models.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert_eq!(blocks.len(), 2);
        for b in blocks {
            let f = ModelFile::from_toml(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
            f.build().unwrap();
        }
    }

    #[test]
    fn unit_helpers() {
        assert_eq!(bytes_ns(512, 10.0), 51_200);
        assert_eq!(bytes_ns(512, 0.0), 0);
    }
}
