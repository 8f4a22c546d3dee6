//! `vlab disk`: create, clone, inspect and check disk images.
//!
//! Exit codes: 0 done (for `check`: clean, or leaked clusters only, with a
//! note); 2 `check` found corruption; 254 bad input (one line on stderr).

use std::path::{Path, PathBuf};

use block::image::{self, Format, ImageInfo, OpenOptions};
use clap::Subcommand;

use crate::EXIT_USAGE;

/// `vlab disk` subcommands.
#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Create an empty image (never overwrites).
    Create {
        /// raw or qcow2.
        #[arg(long, value_name = "FORMAT", default_value = "qcow2")]
        format: String,
        /// The new image.
        path: PathBuf,
        /// Virtual size, e.g. 10G, 512M, 1048576 (a multiple of 512).
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Create CLONE as a copy-on-write qcow2 overlay of MASTER (never written).
    Clone {
        /// The master image (raw or qcow2).
        master: PathBuf,
        /// The new clone.
        clone: PathBuf,
    },
    /// Show format, virtual size, allocated bytes and the backing chain.
    Info {
        /// The image.
        path: PathBuf,
    },
    /// Check a qcow2 image's metadata and refcounts.
    Check {
        /// The image.
        path: PathBuf,
    },
    /// Summarise a timing model's per-request records (written by
    /// `vlab run --disk path=IMG,model=M,stats=FILE`): modelled vs observed.
    Stats {
        /// The stats file.
        file: PathBuf,
    },
}

/// Exit code when `check` finds corruption (as `qemu-img check`).
const EXIT_CORRUPT: u8 = 2;

/// Run a `vlab disk` command; returns the exit code.
pub fn disk(cmd: DiskCommand) -> u8 {
    match run(cmd) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("vlab: {msg}");
            EXIT_USAGE
        }
    }
}

fn run(cmd: DiskCommand) -> Result<u8, String> {
    let e = |e: image::ImageError| e.to_string();
    match cmd {
        DiskCommand::Create { format, path, size } => {
            let size = parse_size(&size)?;
            match Format::from_name(&format) {
                Some(Format::Raw) => image::create_raw(&path, size).map_err(e)?,
                Some(Format::Qcow2) => image::create_qcow2(&path, size, None).map_err(e)?,
                None => return Err(format!("Invalid --format {format:?}: give raw or qcow2")),
            }
            println!("created {} ({format}, {})", path.display(), human(size));
        }
        DiskCommand::Clone { master, clone } => {
            image::clone_image(&master, &clone).map_err(e)?;
            println!("cloned {} -> {}", master.display(), clone.display());
        }
        DiskCommand::Info { path } => {
            let img = image::open(
                &path,
                OpenOptions {
                    read_only: true,
                    ..OpenOptions::default()
                },
            )
            .map_err(e)?;
            print!("{}", render_info(&img.info().map_err(e)?));
        }
        DiskCommand::Check { path } => return check(&path),
        DiskCommand::Stats { file } => print!("{}", crate::disk_stats::stats(&file)?),
    }
    Ok(0)
}

fn check(path: &Path) -> Result<u8, String> {
    let Some(r) = image::check(path).map_err(|e| e.to_string())? else {
        println!("{}: raw image, no metadata to check", path.display());
        return Ok(0);
    };
    for m in &r.messages {
        println!("{m}");
    }
    if r.corruptions > 0 {
        println!(
            "{}: {} corruption(s), {} leaked cluster(s): the image is corrupt; repair a copy with `qemu-img check -r all`",
            path.display(),
            r.corruptions,
            r.leaks
        );
        return Ok(EXIT_CORRUPT);
    }
    if r.leaks > 0 {
        println!(
            "{}: no errors; {} leaked cluster(s) (harmless space left by an interrupted write; `qemu-img check -r leaks` reclaims it)",
            path.display(),
            r.leaks
        );
    } else {
        println!(
            "{}: no errors were found ({} clusters in use)",
            path.display(),
            r.used_clusters
        );
    }
    Ok(0)
}

fn render_info(info: &ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nformat: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        info.path,
        info.format.name(),
        human(info.virtual_size),
        info.virtual_size,
        human(info.file_bytes)
    );
    if let Some(cs) = info.cluster_size {
        s += &format!("cluster size: {cs}\n");
    }
    if let Some(d) = info.data_bytes {
        s += &format!("allocated in this image: {} ({d} bytes)\n", human(d));
    }
    let mut b = info.backing.as_deref();
    if b.is_some() {
        s += "backing chain:\n";
    }
    while let Some(i) = b {
        s += &format!(
            "  {} ({}, {})\n",
            i.path,
            i.format.name(),
            human(i.virtual_size)
        );
        b = i.backing.as_deref();
    }
    s
}

fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.3} {}", UNITS[u]).replace(".000 ", " ")
    }
}

/// Parse 10G, 512M, 4K, 1T or a byte count (binary units); a multiple of
/// 512 from 512 bytes to 64 PiB.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("Invalid size {s:?}: give e.g. 10G, 512M or a byte count, a multiple of 512");
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        Some('P') => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let size = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if size == 0 || !size.is_multiple_of(512) || size > image::qcow2::MAX_VIRTUAL_SIZE {
        return Err(bad());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "0", "-1G", "12Q", "1000", "99999999999999P", "G"] {
            let e = parse_size(bad).unwrap_err();
            assert!(
                e.contains("Invalid size") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(100), "100 bytes");
        assert_eq!(human(1536), "1.500 KiB");
    }
}
