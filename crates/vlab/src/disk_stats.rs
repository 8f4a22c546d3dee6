//! `vlab disk stats FILE`: how closely a disk followed its timing model.
//!
//! FILE is what `--disk ...,model=M,stats=FILE` wrote when the VM stopped:
//! one `disk-model key=value ...` line per request. For each request the
//! model said it should take k·T; the guest saw it complete after
//! release − submit. The summary gives the error between the two at p50
//! and p99, and the Ruemmler–Wilkes demerit of the whole distribution.

use std::collections::HashMap;
use std::path::Path;

use block::model::stats::{abs_error_percentiles, demerit_percent, mean, percentile};

/// One request, as far as the summary needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// R, W or F.
    pub op: String,
    /// The model's time, scaled by k (ns).
    pub modelled_ns: f64,
    /// What the guest saw: release − submit (ns).
    pub observed_ns: f64,
    /// The host took longer than the model allowed.
    pub missed: bool,
}

/// Parse one `disk-model` line; None for other or broken lines.
pub fn parse_line(line: &str) -> Option<Row> {
    let rest = line.strip_prefix("disk-model ")?;
    let kv: HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .collect();
    let num = |k: &str| kv.get(k)?.parse::<f64>().ok();
    let submit = num("submit")?;
    let release = num("release")?;
    Some(Row {
        op: kv.get("op")?.to_string(),
        modelled_ns: num("kT")?,
        observed_ns: (release - submit).max(0.0),
        missed: kv.get("missed") == Some(&"1"),
    })
}

/// The summary text for `rows`.
pub fn summarize(rows: &[Row], k_lines: &[String]) -> String {
    let ms = |ns: f64| ns / 1e6;
    let mut s = String::new();
    let n = rows.len();
    let count = |op: &str| rows.iter().filter(|r| r.op == op).count();
    s += &format!(
        "requests: {n} ({} reads, {} writes, {} flushes); {} missed their modelled time\n",
        count("R"),
        count("W"),
        count("F"),
        rows.iter().filter(|r| r.missed).count()
    );
    let modelled: Vec<f64> = rows.iter().map(|r| r.modelled_ns).collect();
    let observed: Vec<f64> = rows.iter().map(|r| r.observed_ns).collect();
    if let (Some(mm), Some(om)) = (mean(&modelled), mean(&observed)) {
        s += &format!(
            "mean latency: modelled {:.3} ms, observed {:.3} ms\n",
            ms(mm),
            ms(om)
        );
    }
    for (name, v) in [("modelled", &modelled), ("observed", &observed)] {
        if let (Some(p50), Some(p99)) = (percentile(v, 50.0), percentile(v, 99.0)) {
            s += &format!("{name}: p50 {:.3} ms, p99 {:.3} ms\n", ms(p50), ms(p99));
        }
    }
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.observed_ns, r.modelled_ns))
        .collect();
    if let Some(e) = abs_error_percentiles(&pairs, &[50.0, 99.0]) {
        let rel: Vec<f64> = rows
            .iter()
            .filter(|r| r.modelled_ns > 0.0)
            .map(|r| (r.observed_ns - r.modelled_ns).abs() / r.modelled_ns * 100.0)
            .collect();
        s += &format!(
            "|observed - modelled|: p50 {:.3} ms, p99 {:.3} ms (p50 {:.2}% of the modelled time)\n",
            ms(e[0]),
            ms(e[1]),
            percentile(&rel, 50.0).unwrap_or(0.0)
        );
    }
    if let Some(d) = demerit_percent(&observed, &modelled) {
        s += &format!("Ruemmler-Wilkes demerit: {d:.2}% of the modelled mean\n");
    }
    for k in k_lines {
        s += &format!("{k}\n");
    }
    s
}

/// Run `vlab disk stats FILE`.
pub fn stats(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "Cannot read disk stats {}: {e}; write one with --disk path=IMG,model=M,stats=FILE",
            path.display()
        )
    })?;
    let mut rows = Vec::new();
    let mut k_lines = Vec::new();
    let mut skipped = 0;
    for line in text.lines() {
        if line.starts_with("disk-model-k ") {
            k_lines.push(line.to_string());
        } else if let Some(r) = parse_line(line) {
            rows.push(r);
        } else if !line.trim().is_empty() {
            skipped += 1;
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "{} has no disk-model records; write one with --disk path=IMG,model=M,stats=FILE",
            path.display()
        ));
    }
    let mut s = summarize(&rows, &k_lines);
    if skipped > 0 {
        s += &format!("({skipped} unreadable line(s) skipped)\n");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(op: &str, submit: u64, kt: u64, release: u64) -> String {
        format!("disk-model id=1 op={op} lba=0 sectors=8 submit={submit} T={kt} k=1.000 kT={kt} V=10 release={release} missed=0 seek=0 rot=0 xfer=0 ovh=0 hit=0")
    }

    #[test]
    fn parses_records_and_ignores_other_lines() {
        let r = parse_line(&line("R", 1000, 500, 1600)).unwrap();
        assert_eq!(r.op, "R");
        assert_eq!((r.modelled_ns, r.observed_ns), (500.0, 600.0));
        assert!(parse_line("garbage").is_none());
        assert!(parse_line("disk-model op=R").is_none());
    }

    #[test]
    fn summary_reports_errors_and_demerit() {
        let rows: Vec<Row> = (0..100)
            .map(|i| parse_line(&line("R", 0, 1_000_000 + i * 1000, 1_010_000 + i * 1000)).unwrap())
            .collect();
        let s = summarize(&rows, &[]);
        assert!(s.contains("requests: 100 (100 reads"), "{s}");
        assert!(s.contains("|observed - modelled|: p50 0.010 ms"), "{s}");
        assert!(s.contains("Ruemmler-Wilkes demerit:"), "{s}");
    }

    #[test]
    fn missing_and_empty_files_are_one_line_errors() {
        let e = stats(Path::new("/nonexistent/stats.txt")).unwrap_err();
        assert!(!e.contains('\n') && e.contains("stats=FILE"), "{e}");
        let p = std::env::temp_dir().join(format!("vlab-ds-{}", std::process::id()));
        std::fs::write(&p, "nothing here\n").unwrap();
        let e = stats(&p).unwrap_err();
        assert!(e.contains("no disk-model records"), "{e}");
        let _ = std::fs::remove_file(p);
    }
}
