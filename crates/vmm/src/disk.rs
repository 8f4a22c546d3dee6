//! `--disk` specifications and building a virtio-blk device from one.
//!
//! `--disk path=IMG[,ro][,format=raw|qcow2][,model=SPEC][,serial=S]`, or
//! just `--disk IMG`. The image is opened with QEMU-compatible locks, so a
//! second VM (vlab or QEMU) that wants to write it is refused; `model=`
//! holds each request's completion until the physical disk the model
//! describes would have finished it (docs/disk-models.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use block::image::{self, Format, ImageError, OpenOptions};
use block::model::vpt::Throttle;
use block::model::{ModelError, ModelSpec};
use devices::virtio::block::policy::ThrottlePolicy;
use devices::virtio::block::{Block, BlockOptions};

/// A disk's timing-model throttle, shared with the device's I/O thread.
pub type SharedThrottle = Arc<Mutex<Throttle>>;

/// One `--disk`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Present (and open) it read-only.
    pub read_only: bool,
    /// The format, or None to probe.
    pub format: Option<Format>,
    /// The timing model (`None`: no throttle).
    pub model: Option<String>,
    /// The GET_ID serial (default: the device name).
    pub serial: Option<String>,
    /// Where to write the timing model's per-request records when the VM
    /// stops (`vlab disk stats FILE` summarises them).
    pub stats: Option<PathBuf>,
}

/// Errors in a `--disk` option or opening its image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The option string is malformed.
    #[error("Invalid --disk {spec:?}: {why}; use --disk path=IMG[,ro][,format=raw|qcow2][,model=hdd:hp97560|hdd:cheetah4lp|ssd|file:PATH][,serial=S][,stats=FILE]")]
    Spec {
        /// The option as given.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// The image cannot be opened (missing, corrupt, locked, ...).
    #[error("{0}")]
    Image(#[from] ImageError),
    /// The model cannot be built.
    #[error("--disk {path}: model: {source}")]
    Model {
        /// The image path.
        path: String,
        /// Why.
        source: ModelError,
    },
    /// The device refused its options (a vlab bug).
    #[error("--disk {0}")]
    Device(String),
}

impl DiskSpec {
    /// Parse one `--disk` value.
    pub fn parse(s: &str) -> Result<DiskSpec, DiskError> {
        let bad = |why: &str| DiskError::Spec {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let mut spec = DiskSpec {
            path: PathBuf::new(),
            read_only: false,
            format: None,
            model: None,
            serial: None,
            stats: None,
        };
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                Some(("path", v)) => spec.path = PathBuf::from(v),
                Some(("format", "raw")) => spec.format = Some(Format::Raw),
                Some(("format", "qcow2")) => spec.format = Some(Format::Qcow2),
                Some(("format", _)) => return Err(bad("format must be raw or qcow2")),
                Some(("model", v)) => {
                    ModelSpec::parse(v).map_err(|e| bad(&e.to_string()))?;
                    spec.model = Some(v.to_string());
                }
                Some(("serial", v)) => {
                    if v.len() > 20 || !v.is_ascii() {
                        return Err(bad("serial must be at most 20 ASCII characters"));
                    }
                    spec.serial = Some(v.to_string());
                }
                Some(("stats", v)) if !v.is_empty() => spec.stats = Some(PathBuf::from(v)),
                Some(("ro", "on" | "true" | "1")) => spec.read_only = true,
                Some((k, _)) => return Err(bad(&format!("unknown key {k:?}"))),
                None if part == "ro" => spec.read_only = true,
                None if i == 0 && !part.is_empty() => spec.path = PathBuf::from(part),
                None => return Err(bad(&format!("unknown option {part:?}"))),
            }
        }
        if spec.path.as_os_str().is_empty() {
            return Err(bad("no image path"));
        }
        if spec.stats.is_some() && spec.model.is_none() {
            return Err(bad("stats= needs a model= to record"));
        }
        Ok(spec)
    }

    /// Open the image (with locks) and build the virtio-blk device and its
    /// throttle, if a model was asked for.
    pub fn open(
        &self,
        name: &str,
        queues: u16,
    ) -> Result<(Block, Option<SharedThrottle>), DiskError> {
        let img = image::open(
            &self.path,
            OpenOptions {
                read_only: self.read_only,
                lock: true,
                format: self.format,
            },
        )?;
        let opts = BlockOptions {
            num_queues: queues,
            serial: self.serial.clone().unwrap_or_default(),
            read_only: self.read_only,
            ..BlockOptions::default()
        };
        let mut blk = Block::new(name, img, opts).map_err(|e| DiskError::Device(e.to_string()))?;
        let model_err = |source| DiskError::Model {
            path: self.path.display().to_string(),
            source,
        };
        let throttle = match &self.model {
            Some(m) => ModelSpec::parse(m)
                .and_then(|spec| spec.build())
                .map_err(model_err)?
                .map(|model| Arc::new(Mutex::new(Throttle::new(model, 1.0)))),
            None => None,
        };
        if let Some(t) = &throttle {
            blk.set_policy(Box::new(ThrottlePolicy::new(t.clone())));
        }
        Ok((blk, throttle))
    }
}

/// Write a throttle's per-request records, one `disk-model key=value ...`
/// line each, plus any changes of k as `disk-model-k ...` lines.
pub fn write_stats(path: &std::path::Path, throttle: &SharedThrottle) -> std::io::Result<()> {
    use std::io::Write;
    let (records, changes) = {
        let mut t = throttle.lock().unwrap_or_else(|p| p.into_inner());
        (t.drain_records(), t.take_k_changes())
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for c in changes {
        writeln!(out, "disk-model-k {c:?}")?;
    }
    for r in records {
        writeln!(out, "{}", r.trace_line())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        let d = DiskSpec::parse("disk.qcow2").unwrap();
        assert_eq!(d.path, PathBuf::from("disk.qcow2"));
        assert!(!d.read_only);
        let d = DiskSpec::parse("path=/a/b.img,ro,format=raw,model=hdd:hp97560,serial=s1").unwrap();
        assert_eq!(d.path, PathBuf::from("/a/b.img"));
        assert!(d.read_only);
        assert_eq!(d.format, Some(Format::Raw));
        assert_eq!(d.model.as_deref(), Some("hdd:hp97560"));
        assert_eq!(d.serial.as_deref(), Some("s1"));
        assert!(DiskSpec::parse("path=x,ro=on").unwrap().read_only);
        let d = DiskSpec::parse("path=x,model=ssd,stats=/tmp/s.txt").unwrap();
        assert_eq!(d.stats, Some(PathBuf::from("/tmp/s.txt")));
    }

    #[test]
    fn bad_specs_are_one_line_errors_with_the_fix() {
        for bad in [
            "",
            "ro",
            "path=x,format=vmdk",
            "path=x,model=floppy",
            "path=x,colour=blue",
            "path=x,serial=this-serial-is-much-too-long",
            "path=x,stats=/tmp/s",
            "x,y",
        ] {
            let e = DiskSpec::parse(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with("Invalid --disk"), "{bad}: {e}");
            assert!(e.contains("use --disk path=IMG"), "{e}");
        }
    }

    #[test]
    fn missing_image_names_the_file() {
        let d = DiskSpec::parse("/nonexistent/vlab.img").unwrap();
        let e = match d.open("vblk0", 1) {
            Ok(_) => panic!("a missing image must not open"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("/nonexistent/vlab.img"), "{e}");
        assert!(!e.contains('\n'));
    }
}
