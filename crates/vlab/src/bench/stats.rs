//! The pure parts of `vlab bench`: medians, ratios, parsing the guest's
//! output, formatting the table. No KVM, no timing.

use std::fmt::Write as _;

/// The median of `xs` (mean of the middle two for an even count); None when
/// empty. NaNs sort last.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// `vlab / peer` when both exist and the peer is positive.
pub fn ratio(vlab: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (vlab, peer) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// A ratio as `1.03×`, two significant digits below 0.1 (`0.0031×`);
/// `n/a` when missing.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r > 0.0 && r < 0.1 => {
            let decimals = (1.0 - r.log10().floor()).clamp(2.0, 9.0) as usize;
            format!("{r:.decimals$}×")
        }
        Some(r) => format!("{r:.2}×"),
        None => "n/a".to_string(),
    }
}

/// The guest's `vlab-guest: loop done n=<N> ns=<ns>` line: `(N, ns)`.
pub fn parse_loop_line(out: &str) -> Option<(u64, u64)> {
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("vlab-guest: loop done ")?;
        let mut n = None;
        let mut ns = None;
        for tok in rest.split_whitespace() {
            if let Some(v) = tok.strip_prefix("n=") {
                n = v.parse().ok();
            } else if let Some(v) = tok.strip_prefix("ns=") {
                ns = v.parse().ok();
            }
        }
        Some((n?, ns?))
    })
}

/// The `key=value` fields of the guest's first `vlab-guest: <head> ...`
/// line (`head` is the first word: `vgpu-fill`, ...).
pub struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    /// Find the line.
    pub fn find(out: &'a str, head: &str) -> Option<Fields<'a>> {
        out.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("vlab-guest: ")?;
            let mut words = rest.split_whitespace();
            if words.next()? != head {
                return None;
            }
            Some(Fields(words.filter_map(|w| w.split_once('=')).collect()))
        })
    }
    /// A decimal field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
    }
}

/// How a row's values are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds, shown as ns.
    Ns,
    /// Nanoseconds, shown as ms.
    NsAsMs,
    /// KiB, shown as MiB.
    KibAsMib,
    /// Megabytes (10^6 bytes) per second.
    MBps,
    /// Events per second.
    PerSec,
    /// A plain count, one decimal.
    Count,
    /// A percentage, two decimals.
    Percent,
}

/// What a row must reach.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// vlab / peer must not exceed this.
    AtMost(f64),
    /// peer / vlab must reach this: vlab is that many times cheaper.
    CheaperBy(f64),
    /// vlab's own figure: no peer, no ratio, no target.
    None,
    /// vlab / peer shown, no target (a comparison, not a goal).
    Ratio,
    /// vlab's own figure must not exceed this (in the row's unit); no
    /// ratio.
    Below(f64),
}

/// Format a value in `unit` (`n/a` when missing).
pub fn fmt_value(v: Option<f64>, unit: Unit) -> String {
    match v {
        None => "n/a".to_string(),
        Some(v) => match unit {
            Unit::Ns if v < 1.0 => format!("{v:.2} ns"),
            Unit::Ns => format!("{v:.0} ns"),
            Unit::NsAsMs => format!("{:.1} ms", v / 1e6),
            Unit::KibAsMib => format!("{:.1} MiB", v / 1024.0),
            Unit::MBps => format!("{v:.0} MB/s"),
            Unit::PerSec => format!("{v:.0}/s"),
            Unit::Count => format!("{v:.1}"),
            Unit::Percent => format!("{v:.2}%"),
        },
    }
}

/// One table row: every run's figure for vlab and for its peer.
#[derive(Clone, Debug)]
pub struct Row {
    /// What is measured (and against whom).
    pub metric: String,
    /// Stable key for the JSON output.
    pub key: &'static str,
    /// The peer's name.
    pub peer: &'static str,
    /// vlab's figures, one per run.
    pub vlab: Vec<f64>,
    /// The peer's figures, one per run (empty: not measured).
    pub peer_runs: Vec<f64>,
    /// How the values are shown.
    pub unit: Unit,
    /// What the ratio must reach.
    pub target: Target,
}

/// The peer column of a row with [`Target::None`].
pub const VLAB_ONLY: &str = "n/a (vlab only)";

impl Row {
    /// vlab's median.
    pub fn vlab_median(&self) -> Option<f64> {
        median(&self.vlab)
    }
    /// The peer's median.
    pub fn peer_median(&self) -> Option<f64> {
        median(&self.peer_runs)
    }
    /// Median ratio: vlab/peer for [`Target::AtMost`], peer/vlab for
    /// [`Target::CheaperBy`], none without a target.
    pub fn ratio(&self) -> Option<f64> {
        match self.target {
            Target::AtMost(_) | Target::Ratio => ratio(self.vlab_median(), self.peer_median()),
            Target::CheaperBy(_) => ratio(self.peer_median(), self.vlab_median()),
            Target::None | Target::Below(_) => None,
        }
    }
    /// `yes`/`no`/`n/a` (`—` without a target).
    pub fn met(&self) -> &'static str {
        match (self.target, self.ratio()) {
            (Target::None | Target::Ratio, _) => "—",
            (Target::Below(t), _) => match self.vlab_median() {
                Some(v) if v <= t => "yes",
                Some(_) => "no",
                None => "n/a",
            },
            (Target::AtMost(t), Some(r)) if r <= t => "yes",
            (Target::CheaperBy(t), Some(r)) if r >= t => "yes",
            (_, Some(_)) => "no",
            (_, None) => "n/a",
        }
    }
    fn ratio_text(&self) -> String {
        match self.target {
            Target::AtMost(_) | Target::Ratio => fmt_ratio(self.ratio()),
            Target::CheaperBy(_) => match self.ratio() {
                Some(r) => format!("{r:.1}× cheaper"),
                None => "n/a".to_string(),
            },
            Target::None | Target::Below(_) => "—".to_string(),
        }
    }
    fn target_text(&self) -> String {
        match self.target {
            Target::AtMost(t) => format!("≤ {t:.2}×"),
            Target::CheaperBy(t) => format!("≥ {t:.0}×"),
            Target::Below(t) => format!("≤ {}", fmt_value(Some(t), self.unit)),
            Target::None | Target::Ratio => "—".to_string(),
        }
    }
    fn peer_text(&self) -> String {
        match self.target {
            Target::None | Target::Below(_) if self.peer_runs.is_empty() => VLAB_ONLY.to_string(),
            _ => fmt_value(self.peer_median(), self.unit),
        }
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| metric | vlab (median) | peer (median) | ratio | target | met |\n");
    s.push_str("|---|---:|---:|---:|---:|:---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.metric,
            fmt_value(r.vlab_median(), r.unit),
            r.peer_text(),
            r.ratio_text(),
            r.target_text(),
            r.met()
        );
    }
    s
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_string(),
    }
}

fn json_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| json_num(Some(*x))).collect();
    format!("[{}]", items.join(", "))
}

/// The results as a JSON document.
pub fn json(header: &[(&str, String)], rows: &[Row]) -> String {
    let mut s = String::from("{\n");
    for (k, v) in header {
        let _ = writeln!(s, "  {}: {},", json_str(k), json_str(v));
    }
    s.push_str("  \"rows\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let unit = match r.unit {
            Unit::Ns | Unit::NsAsMs => "ns",
            Unit::KibAsMib => "KiB",
            Unit::MBps => "MB/s",
            Unit::PerSec => "1/s",
            Unit::Count => "count",
            Unit::Percent => "%",
        };
        let (target, kind) = match r.target {
            Target::AtMost(t) => (Some(t), "vlab/peer at most"),
            Target::CheaperBy(t) => (Some(t), "peer/vlab at least"),
            Target::None => (None, "none"),
            Target::Ratio => (None, "vlab/peer, no target"),
            Target::Below(t) => (Some(t), "vlab at most"),
        };
        let _ = write!(
            s,
            "    {{\"key\": {}, \"metric\": {}, \"peer\": {}, \"unit\": {}, \
             \"vlab_median\": {}, \"peer_median\": {}, \"ratio\": {}, \"target\": {}, \
             \"target_kind\": {}, \"vlab_runs\": {}, \"peer_runs\": {}}}",
            json_str(r.key),
            json_str(&r.metric),
            json_str(r.peer),
            json_str(unit),
            json_num(r.vlab_median()),
            json_num(r.peer_median()),
            json_num(r.ratio()),
            json_num(target),
            json_str(kind),
            json_list(&r.vlab),
            json_list(&r.peer_runs),
        );
        s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // One wild outlier does not move it.
        assert_eq!(median(&[10.0, 11.0, 1e9, 12.0, 9.0]), Some(11.0));
    }

    #[test]
    fn ratios_format_with_two_decimals_or_na() {
        assert_eq!(fmt_ratio(ratio(Some(1.5), Some(1.0))), "1.50×");
        assert_eq!(fmt_ratio(ratio(Some(1.0), Some(3.0))), "0.33×");
        assert_eq!(fmt_ratio(Some(0.0031)), "0.0031×");
        assert_eq!(fmt_ratio(Some(0.05)), "0.050×");
        assert_eq!(fmt_ratio(Some(0.1)), "0.10×");
        assert_eq!(fmt_ratio(ratio(Some(1.0), None)), "n/a");
        assert_eq!(fmt_ratio(ratio(None, Some(1.0))), "n/a");
        assert_eq!(fmt_ratio(ratio(Some(1.0), Some(0.0))), "n/a");
    }

    #[test]
    fn loop_line_is_found_among_the_guest_output() {
        let out = "vlab-guest: vlab guest kernel 0.1.0 cmdline=\"test=pio-loop n=20000\"\n\
                   vlab-guest: cpus online=1 of 1\n\
                   vlab-guest: loop done n=20000 ns=308767263\n";
        assert_eq!(parse_loop_line(out), Some((20000, 308_767_263)));
        assert_eq!(
            parse_loop_line("vlab-guest: loop done ns=5 n=2\r\n"),
            Some((2, 5))
        );
        assert_eq!(parse_loop_line("vlab-guest: hello done\n"), None);
        assert_eq!(parse_loop_line("vlab-guest: loop done n=x ns=1\n"), None);
        assert_eq!(parse_loop_line("vlab-guest: loop done n=3\n"), None);
    }

    #[test]
    fn guest_fields_are_found_by_the_first_word() {
        let out = "vlab-guest: vlab guest kernel 0.1.0 cmdline=\"test=vgpu-fill n=2\"\n\
                   vlab-guest: vgpu-fill n=2 w=1024 h=768 pixels=1572864 ns=1234 irqs=1\r\n";
        let f = Fields::find(out, "vgpu-fill").unwrap();
        assert_eq!(f.u64("n"), Some(2));
        assert_eq!(f.u64("pixels"), Some(1_572_864));
        assert_eq!(f.u64("irqs"), Some(1));
        assert_eq!(f.u64("bytes"), None);
        assert!(Fields::find(out, "vgpu-dma").is_none());
        assert!(
            Fields::find("vlab-guest: vgpu-poll status=0x4\n", "vgpu-poll")
                .unwrap()
                .u64("status")
                .is_none()
        );
    }

    #[test]
    fn table_rows_show_medians_ratio_and_verdict() {
        let rows = [
            Row {
                metric: "PIO".into(),
                key: "pio",
                peer: "raw",
                vlab: vec![110.0, 100.0, 105.0],
                peer_runs: vec![100.0, 100.0, 100.0],
                unit: Unit::Ns,
                target: Target::AtMost(1.10),
            },
            Row {
                metric: "boot".into(),
                key: "boot",
                peer: "QEMU",
                vlab: vec![30e6],
                peer_runs: vec![],
                unit: Unit::NsAsMs,
                target: Target::AtMost(0.3),
            },
            Row {
                metric: "poll".into(),
                key: "poll",
                peer: "trapped",
                vlab: vec![2.0, 2.0, 3.0],
                peer_runs: vec![120.0, 110.0, 100.0],
                unit: Unit::Ns,
                target: Target::CheaperBy(50.0),
            },
            Row {
                metric: "fill".into(),
                key: "fill",
                peer: VLAB_ONLY,
                vlab: vec![1500.0],
                peer_runs: vec![],
                unit: Unit::MBps,
                target: Target::None,
            },
            Row {
                metric: "iops".into(),
                key: "iops",
                peer: "host",
                vlab: vec![50.0],
                peer_runs: vec![200.0],
                unit: Unit::PerSec,
                target: Target::Ratio,
            },
            Row {
                metric: "fidelity".into(),
                key: "fid",
                peer: VLAB_ONLY,
                vlab: vec![0.5, 3.0, 1.0],
                peer_runs: vec![],
                unit: Unit::Percent,
                target: Target::Below(2.0),
            },
        ];
        let t = table(&rows);
        assert!(t.contains("| iops | 50/s | 200/s | 0.25× | — | — |"), "{t}");
        assert!(
            t.contains("| fidelity | 1.00% | n/a (vlab only) | — | ≤ 2.00% | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| PIO | 105 ns | 100 ns | 1.05× | ≤ 1.10× | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| boot | 30.0 ms | n/a | n/a | ≤ 0.30× | n/a |"),
            "{t}"
        );
        assert!(
            t.contains("| poll | 2 ns | 110 ns | 55.0× cheaper | ≥ 50× | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| fill | 1500 MB/s | n/a (vlab only) | — | — | — |"),
            "{t}"
        );
        let j = json(&[("host", "a \"b\"".into())], &rows);
        assert!(j.contains("\"host\": \"a \\\"b\\\"\""), "{j}");
        assert!(j.contains("\"peer_median\": null"), "{j}");
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_735_689_599), "2024-12-31 23:59:59 UTC");
    }
}
