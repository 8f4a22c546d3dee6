//! `vlab trace FILE`: summarise an I/O trace written by `vlab run --trace`.
//!
//! Per device and register: reads, writes, exits (trapped accesses: every
//! traced access is one exit; a configuration access through 0xCF8/0xCFC
//! costs one more exit for the address, not counted here) and the time the
//! VMM spent handling them; per device: DMA transfers and bytes, interrupts,
//! model events (doorbells, fences) and violations by rule. Lines that are
//! not trace events are reported and skipped, and so is a truncated last
//! line (a VM killed while writing). The format is in docs/monitors.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use crate::EXIT_USAGE;

/// Counts for one register (or config offset) of one device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegStats {
    /// Trapped reads.
    pub reads: u64,
    /// Trapped writes.
    pub writes: u64,
    /// Handling time, nanoseconds.
    pub ns: u64,
}

impl RegStats {
    /// Every trapped access is one exit.
    pub fn exits(&self) -> u64 {
        self.reads + self.writes
    }
}

/// Counts for one device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// By register name (`BAR0 DOORBELL`, `BAR0+0x104`, `CONFIG 0x04`).
    pub regs: BTreeMap<String, RegStats>,
    /// DMA transfers done.
    pub dma_ok: u64,
    /// Bytes moved by them.
    pub dma_bytes: u64,
    /// DMA transfers refused.
    pub dma_refused: u64,
    /// MSI messages.
    pub msi: u64,
    /// INTx rising edges (level set high).
    pub intx: u64,
    /// Model events by kind (`doorbell`, `fence`, `descriptor_done`, ...).
    pub model: BTreeMap<String, u64>,
    /// Violations by rule.
    pub violations: BTreeMap<String, u64>,
    /// DOORBELL writes.
    pub doorbells: u64,
    /// Exits from the first DOORBELL write on (that one included).
    exits_since_first_doorbell: u64,
    /// Of those, the ones before the last DOORBELL write.
    exits_before_last_doorbell: u64,
}

impl DeviceStats {
    /// Trapped accesses of all registers.
    pub fn exits(&self) -> u64 {
        self.regs.values().map(RegStats::exits).sum()
    }
    /// Handling time of all registers, nanoseconds.
    pub fn ns(&self) -> u64 {
        self.regs.values().map(|r| r.ns).sum()
    }
    /// Violations of all rules.
    pub fn violation_count(&self) -> u64 {
        self.violations.values().sum()
    }

    /// Steady-state exits per frame: the exits from the first DOORBELL
    /// write up to (not including) the last, divided by the frames in
    /// between (doorbells - 1). Set-up and tear-down are left out.
    pub fn exits_per_frame(&self) -> Option<f64> {
        (self.doorbells >= 2)
            .then(|| self.exits_before_last_doorbell as f64 / (self.doorbells - 1) as f64)
    }
}

/// A whole trace, summarised.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Events read.
    pub events: u64,
    /// Devices by name, in the order they first appear.
    pub devices: Vec<(String, DeviceStats)>,
    /// Lines that were not trace events: (line number, why).
    pub bad_lines: Vec<(u64, String)>,
    /// The last line was cut off (no newline, not an event).
    pub truncated: bool,
    /// The `stop` line's fields (exit counts), if the run finished.
    pub stop: Option<BTreeMap<String, u64>>,
    /// Time of the last event, nanoseconds.
    pub last_t: u64,
}

impl Summary {
    /// The stats of `name`, created if new.
    fn device(&mut self, name: &str) -> &mut DeviceStats {
        let i = match self.devices.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.devices
                    .push((name.to_string(), DeviceStats::default()));
                self.devices.len() - 1
            }
        };
        &mut self.devices[i].1
    }

    /// The stats of `name`, if it appeared.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&DeviceStats> {
        self.devices.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// Violations in the whole trace.
    pub fn violations(&self) -> u64 {
        self.devices.iter().map(|(_, d)| d.violation_count()).sum()
    }
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Add one parsed event to the summary; `Err` says why it is not one.
fn add(sum: &mut Summary, v: &Value) -> Result<(), String> {
    let ev = s(v, "ev").ok_or("no \"ev\" field")?;
    let t = u(v, "t").ok_or("no \"t\" field")?;
    sum.last_t = sum.last_t.max(t);
    match ev {
        "start" => {}
        "stop" => {
            let mut m = BTreeMap::new();
            if let Some(o) = v.as_object() {
                for (k, x) in o {
                    if let Some(n) = x.as_u64() {
                        if k != "t" {
                            m.insert(k.clone(), n);
                        }
                    }
                }
            }
            sum.stop = Some(m);
        }
        "device" => {
            sum.device(s(v, "dev").ok_or("no \"dev\" field")?);
        }
        _ => {
            let dev = s(v, "dev").ok_or("no \"dev\" field")?.to_string();
            let d = sum.device(&dev);
            match ev {
                "bar_read" | "bar_write" | "cfg_read" | "cfg_write" => {
                    let off = u(v, "off").ok_or("no \"off\" field")?;
                    let name = if ev.starts_with("cfg") {
                        format!("CONFIG {off:#04x}")
                    } else {
                        let bar = u(v, "bar").ok_or("no \"bar\" field")?;
                        match s(v, "reg") {
                            Some(r) => format!("BAR{bar} {r}"),
                            None => format!("BAR{bar}+{off:#x}"),
                        }
                    };
                    if ev == "bar_write" && s(v, "reg") == Some("DOORBELL") {
                        d.doorbells += 1;
                        d.exits_before_last_doorbell = d.exits_since_first_doorbell;
                    }
                    if d.doorbells > 0 {
                        d.exits_since_first_doorbell += 1;
                    }
                    let r = d.regs.entry(name).or_default();
                    if ev.ends_with("read") {
                        r.reads += 1;
                    } else {
                        r.writes += 1;
                    }
                    r.ns += u(v, "ns").unwrap_or(0);
                }
                "dma" => {
                    if v.get("ok").and_then(Value::as_bool).unwrap_or(false) {
                        d.dma_ok += 1;
                        d.dma_bytes += u(v, "len").unwrap_or(0);
                    } else {
                        d.dma_refused += 1;
                    }
                }
                "msi" => d.msi += 1,
                "intx" => {
                    if v.get("level").and_then(Value::as_bool).unwrap_or(false) {
                        d.intx += 1;
                    }
                }
                "model" => {
                    let what = s(v, "what").unwrap_or("?").to_string();
                    *d.model.entry(what).or_default() += 1;
                }
                "violation" => {
                    let rule = s(v, "rule").unwrap_or("?").to_string();
                    *d.violations.entry(rule).or_default() += 1;
                }
                other => return Err(format!("unknown event {other:?}")),
            }
        }
    }
    sum.events += 1;
    Ok(())
}

/// Summarise a trace. Never fails on content: bad lines are recorded in
/// [`Summary::bad_lines`] and skipped.
pub fn summarize(r: impl Read) -> std::io::Result<Summary> {
    let mut sum = Summary::default();
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        n += 1;
        let complete = buf.last() == Some(&b'\n');
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(line)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                if v.is_object() {
                    add(&mut sum, &v)
                } else {
                    Err("not a JSON object".to_string())
                }
            });
        if let Err(why) = parsed {
            if complete {
                sum.bad_lines.push((n, why));
            } else {
                sum.truncated = true;
            }
        }
    }
    Ok(sum)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The report `vlab trace` prints.
pub fn render(name: &str, sum: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "vlab trace: {name}: {} events over {:.3} ms",
        sum.events,
        sum.last_t as f64 / 1e6
    );
    for (dev, d) in &sum.devices {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{dev}: {} exits, {:.1} us handling; DMA {} transfers, {} bytes, {} refused; interrupts {} MSI, {} INTx; violations {}",
            d.exits(),
            us(d.ns()),
            d.dma_ok,
            d.dma_bytes,
            d.dma_refused,
            d.msi,
            d.intx,
            d.violation_count()
        );
        if !d.regs.is_empty() {
            let _ = writeln!(
                o,
                "  {:<24} {:>8} {:>8} {:>8} {:>11} {:>9}",
                "register", "reads", "writes", "exits", "total us", "mean us"
            );
            let mut regs: Vec<_> = d.regs.iter().collect();
            regs.sort_by(|a, b| b.1.exits().cmp(&a.1.exits()).then(a.0.cmp(b.0)));
            for (r, st) in regs {
                let _ = writeln!(
                    o,
                    "  {:<24} {:>8} {:>8} {:>8} {:>11.1} {:>9.2}",
                    r,
                    st.reads,
                    st.writes,
                    st.exits(),
                    us(st.ns),
                    us(st.ns) / st.exits().max(1) as f64
                );
            }
        }
        if !d.model.is_empty() {
            let m: Vec<String> = d.model.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(o, "  model events: {}", m.join(", "));
        }
        if let Some(f) = d.exits_per_frame() {
            let _ = writeln!(
                o,
                "  exits per frame: {f:.1} (steady state: between the first and the last of {} DOORBELL writes)",
                d.doorbells
            );
        }
        if let Some(&n) = d.model.get("fence").filter(|n| **n > 0) {
            let _ = writeln!(
                o,
                "  per fence, whole run: {:.1} exits, {:.1} us handling",
                d.exits() as f64 / n as f64,
                us(d.ns()) / n as f64
            );
        }
        if !d.violations.is_empty() {
            let v: Vec<String> = d
                .violations
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            let _ = writeln!(o, "  violations: {}", v.join(", "));
        }
    }
    let _ = writeln!(o);
    match &sum.stop {
        Some(st) => {
            let g = |k: &str| st.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "VM exits to vlab (all devices): {} port I/O, {} MMIO, {} other; monitor violations: {}",
                g("exits_pio"),
                g("exits_mmio"),
                g("exits_other"),
                sum.violations()
            );
        }
        None => {
            let _ = writeln!(
                o,
                "no stop line: the run did not finish cleanly (the trace may be incomplete); monitor violations: {}",
                sum.violations()
            );
        }
    }
    o
}

/// Problems with the file's lines, one per line (at most a few).
pub fn problems(sum: &Summary) -> Vec<String> {
    const SHOWN: usize = 5;
    let mut p: Vec<String> = sum
        .bad_lines
        .iter()
        .take(SHOWN)
        .map(|(n, why)| format!("line {n} is not a trace event ({why}); skipped"))
        .collect();
    if sum.bad_lines.len() > SHOWN {
        p.push(format!(
            "{} more bad lines skipped",
            sum.bad_lines.len() - SHOWN
        ));
    }
    if sum.truncated {
        p.push("the last line is truncated (was the VM killed?); skipped".to_string());
    }
    p
}

/// `vlab trace FILE`; returns the exit code.
pub fn trace(path: &Path) -> u8 {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "vlab: Cannot read trace {}: {e}; give a file written by `vlab run --trace`",
                path.display()
            );
            return EXIT_USAGE;
        }
    };
    let sum = match summarize(f) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vlab: Cannot read trace {}: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    for p in problems(&sum) {
        eprintln!("vlab trace: {}: {p}", path.display());
    }
    if sum.events == 0 {
        eprintln!(
            "vlab: {} holds no trace events; give a file written by `vlab run --trace`",
            path.display()
        );
        return EXIT_USAGE;
    }
    print!("{}", render(&path.display().to_string(), &sum));
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::monitor::json::{event_line, violation_line, Line};
    use devices::monitor::{Event, EventKind, Report, Violation};

    fn ev(t: u64, kind: EventKind) -> Event {
        Event {
            t_ns: t,
            vcpu: Some(0),
            kind,
        }
    }

    fn sample() -> String {
        let mut lines = vec![
            Line::new("start", 0).str("vlab", "0.1.0").finish(),
            Line::new("device", 1)
                .str("dev", "vgpu")
                .u64("id", 0)
                .finish(),
        ];
        for i in 0..3 {
            let w = |off, ns| EventKind::BarWrite {
                bar: 0,
                offset: off,
                width: 4,
                value: i,
                ns,
            };
            lines.push(event_line(
                "vgpu",
                &ev(10 + i, w(0x50, 1000)),
                Some("RING_TAIL"),
            ));
            lines.push(event_line(
                "vgpu",
                &ev(11 + i, w(0x54, 3000)),
                Some("DOORBELL"),
            ));
            lines.push(event_line(
                "vgpu",
                &ev(
                    12 + i,
                    EventKind::Vgpu(devices::vgpu::Event::Doorbell { tail: i as u32 }),
                ),
                None,
            ));
            lines.push(event_line(
                "vgpu",
                &ev(
                    13 + i,
                    EventKind::Dma {
                        dir: devices::dma::DmaDir::Read,
                        addr: 0x1000,
                        len: 16,
                        refused: None,
                    },
                ),
                None,
            ));
        }
        lines.push(event_line(
            "edu",
            &ev(
                40,
                EventKind::ConfigWrite {
                    offset: 4,
                    width: 2,
                    value: 6,
                    command: 6,
                    ns: 500,
                },
            ),
            None,
        ));
        lines.push(event_line("edu", &ev(41, EventKind::Msi), None));
        lines.push(violation_line(&Report {
            t_ns: 50,
            vcpu: Some(0),
            rip: Some(0x1000),
            device: "vgpu".into(),
            violation: Violation::new("vgpu.R1", "BAR0 DOORBELL", Some(1), "no bus master"),
        }));
        lines.push(
            Line::new("stop", 60)
                .u64("violations", 1)
                .u64("exits_pio", 100)
                .u64("exits_mmio", 7)
                .u64("exits_other", 1)
                .finish(),
        );
        lines.join("\n") + "\n"
    }

    #[test]
    fn summary_counts_registers_dma_irqs_and_violations() {
        let s = summarize(sample().as_bytes()).unwrap();
        assert!(s.bad_lines.is_empty() && !s.truncated);
        let v = s.get("vgpu").unwrap();
        assert_eq!(
            v.regs["BAR0 DOORBELL"],
            RegStats {
                reads: 0,
                writes: 3,
                ns: 9000
            }
        );
        assert_eq!(v.regs["BAR0 RING_TAIL"].exits(), 3);
        assert_eq!(v.exits(), 6);
        assert_eq!((v.dma_ok, v.dma_bytes, v.dma_refused), (3, 48, 0));
        assert_eq!(v.model["doorbell"], 3);
        assert_eq!(v.violations["vgpu.R1"], 1);
        let e = s.get("edu").unwrap();
        assert_eq!(e.regs["CONFIG 0x04"].writes, 1);
        assert_eq!(e.msi, 1);
        assert_eq!(s.stop.as_ref().unwrap()["exits_mmio"], 7);
        assert_eq!(s.violations(), 1);
        let text = render("t", &s);
        // RING_TAIL + DOORBELL per frame, 3 doorbells.
        assert_eq!(v.doorbells, 3);
        assert_eq!(v.exits_per_frame(), Some(2.0));
        assert!(text.contains("exits per frame: 2.0"), "{text}");
        assert!(text.contains("BAR0 DOORBELL"), "{text}");
        assert!(text.contains("vgpu.R1 x1"), "{text}");
        assert!(text.contains("7 MMIO"), "{text}");
    }

    #[test]
    fn truncated_last_line_and_garbage_are_skipped_and_reported() {
        let full = sample();
        // Cut the file in the middle of its last line.
        let cut = &full[..full.len() - 10];
        let s = summarize(cut.as_bytes()).unwrap();
        assert!(s.truncated);
        assert!(s.stop.is_none());
        assert!(render("t", &s).contains("no stop line"));
        assert_eq!(s.get("vgpu").unwrap().exits(), 6);
        let garbage = format!("not json\n[1,2]\n{{\"ev\":\"bar_read\"}}\n\u{0}\u{1}\n{full}");
        let s = summarize(garbage.as_bytes()).unwrap();
        assert_eq!(s.bad_lines.len(), 4, "{:?}", s.bad_lines);
        assert!(!s.truncated);
        assert_eq!(s.get("vgpu").unwrap().exits(), 6);
        let p = problems(&s);
        assert!(p[0].starts_with("line 1 "), "{p:?}");
        assert!(summarize(&b""[..]).unwrap().events == 0);
    }
}
