//! End-to-end: the protocol monitors and the I/O trace under `vlab run`,
//! with the guest kernel's deliberately buggy vgpu driver variants
//! (`test=vgpu-bug name=<bug>`) and its correct scene (`test=vgpu-scene`).
//! Needs /dev/kvm; fails loudly without it.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);
/// vlab's exit code for a `--strict` stop.
const EXIT_MONITOR: i32 = 255;

/// The monitor report lines on stderr.
fn reports(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("vlab: monitor: t="))
        .collect()
}

/// Run one buggy variant; return (exit code, stdout, stderr).
fn bug(name: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let cmdline = format!("test=vgpu-bug name={name}");
    let mut args = vec!["run", "--cmdline", &cmdline];
    args.extend_from_slice(extra);
    let o = run_vlab(&args, T);
    (o.status.code(), stdout(&o), stderr(&o))
}

/// Check a report line's shape: time, vCPU, RIP, device, register, rule.
fn check_line(line: &str, rule: &str, reg: &str, on_vcpu: bool) {
    let rest = line.strip_prefix("vlab: monitor: t=").unwrap();
    let (t, rest) = rest.split_once("ms ").unwrap();
    assert!(t.parse::<f64>().is_ok(), "{line}");
    if on_vcpu {
        assert!(rest.starts_with("vcpu=0 rip=0x"), "{line}");
    } else {
        assert!(rest.starts_with("vcpu=- rip=- "), "{line}");
    }
    assert!(rest.contains(&format!(" vgpu {reg}")), "{line}");
    assert!(rest.contains(&format!(": rule {rule} broken: ")), "{line}");
    assert!(!line.contains('\n'));
}

/// Each bug gets its report line; the guest's own check of the device's
/// reaction still passes (monitors never change behaviour).
#[test]
fn each_buggy_driver_gets_its_report_line() {
    for (name, rule, reg, on_vcpu) in [
        ("no-bus-master", "vgpu.R1", "BAR0 DOORBELL=0x1", true),
        ("bad-ring", "vgpu.R6", "BAR0 CONTROL=0x1", true),
        ("dma-outside-ram", "vgpu.R7", "ENGINE=0x", false),
        ("no-ack", "vgpu.R12", "BAR0 INT_STATUS=0x1", false),
        ("wrong-width", "vgpu.R2", "BAR0 SCRATCH=0x1234", true),
    ] {
        let (code, out, err) = bug(name, &[]);
        assert_eq!(code, Some(0), "{name}\nstdout:\n{out}\nstderr:\n{err}");
        assert!(
            out.contains(&format!("vgpu-bug {name} ok")),
            "{name}: {out}"
        );
        let r = reports(&err);
        assert!(!r.is_empty(), "{name}: no report\n{err}");
        check_line(r[0], rule, reg, on_vcpu);
        assert!(
            r.iter().all(|l| l.contains(&format!("rule {rule} "))),
            "{name}: other rules reported too: {r:?}"
        );
        assert!(
            err.contains(&format!(
                "vlab: monitor: {} violation(s) (vgpu: {})",
                r.len(),
                r.len()
            )),
            "{name}: {err}"
        );
    }
}

/// mode-while-busy races the engine (the guest reports whether the device
/// saw the write while busy): the monitor must agree with the device.
#[test]
fn mode_while_busy_is_reported_exactly_when_the_device_refused_it() {
    let (_, out, err) = bug("mode-while-busy", &[]);
    let refused = out.contains("error=BAD_STATE");
    let r = reports(&err);
    let r5 = r.iter().filter(|l| l.contains("rule vgpu.R5 ")).count();
    assert_eq!(r5, usize::from(refused), "stdout:\n{out}\nstderr:\n{err}");
    if refused {
        check_line(r[0], "vgpu.R5", "BAR0 MODE_WIDTH=0x140", true);
    }
}

#[test]
fn strict_stops_at_the_first_violation_with_exit_255() {
    let (code, out, err) = bug("no-bus-master", &["--strict"]);
    assert_eq!(code, Some(EXIT_MONITOR), "stdout:\n{out}\nstderr:\n{err}");
    let r = reports(&err);
    assert_eq!(r.len(), 1, "{err}");
    check_line(r[0], "vgpu.R1", "BAR0 DOORBELL=0x1", true);
    assert!(err.contains("stopped by --strict"), "{err}");
    // The VM stopped before the guest got to its retry.
    assert!(!out.contains("retried after set_master"), "{out}");
    // bad-ring: the first of its two violations stops it.
    let (code, _, err) = bug("bad-ring", &["--strict"]);
    assert_eq!(code, Some(EXIT_MONITOR), "{err}");
    assert_eq!(reports(&err).len(), 1, "{err}");
}

#[test]
fn no_monitors_means_no_reports() {
    let (code, out, err) = bug("wrong-width", &["--no-monitors"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(reports(&err).is_empty(), "{err}");
}

/// The correct driver: no violation, with MSI and INTx, and the trace's
/// summary has the expected per-register counts: each frame is RING_TAIL,
/// DOORBELL and the interrupt acknowledgement (INT_STATUS) — 3 exits with
/// MSI; with INTx two fences may share one acknowledgement.
#[test]
fn scene_trace_has_zero_violations_and_three_exits_per_frame() {
    for irq in ["msi", "intx"] {
        let trace = temp_file(&format!("scene-{irq}.jsonl"), b"");
        let t = trace.to_str().unwrap();
        let cmdline = format!("test=vgpu-scene irq={irq}");
        let o = run_vlab(&["run", "--cmdline", &cmdline, "--trace", t, "--strict"], T);
        let (out, err) = (stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
        assert!(reports(&err).is_empty(), "{err}");
        let fences: u64 = guest_lines(&out, "vgpu scene done")
            .first()
            .and_then(|l| field(l, "fences"))
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        let s = run_vlab(&["trace", t], T);
        let sum = stdout(&s);
        assert_eq!(s.status.code(), Some(0), "{sum}{}", stderr(&s));
        assert!(stderr(&s).is_empty(), "{}", stderr(&s));
        assert!(
            sum.contains("violations 0") && sum.contains("monitor violations: 0"),
            "{sum}"
        );
        let row = |reg: &str| -> Vec<u64> {
            let line = sum
                .lines()
                .find(|l| l.trim_start().starts_with(reg))
                .unwrap_or_else(|| panic!("no {reg} row in\n{sum}"));
            line[reg.len() + 2..]
                .split_whitespace()
                .take(3)
                .map(|x| x.parse().unwrap())
                .collect()
        };
        // reads, writes, exits
        assert_eq!(row("BAR0 DOORBELL"), vec![0, fences, fences], "{sum}");
        assert_eq!(row("BAR0 RING_TAIL"), vec![0, fences, fences], "{sum}");
        let acks = row("BAR0 INT_STATUS");
        if irq == "msi" {
            // One message per fence, each acknowledged.
            assert_eq!(acks, vec![0, fences, fences], "{sum}");
        } else {
            // A level-triggered line may carry two fences in one assertion
            // (the handler acknowledges every bit it reads): at most one
            // acknowledgement per fence, at least one.
            assert!(acks[0] == 0 && (1..=fences).contains(&acks[1]), "{sum}");
            assert_eq!(acks[1], acks[2], "{sum}");
        }
        // The register page: STATUS, RING_HEAD, FENCE_COMPLETED are polled
        // without a single exit.
        for polled in ["BAR0 STATUS ", "BAR0 RING_HEAD", "BAR0 FENCE_COMPLETED"] {
            assert!(!sum.contains(polled), "{polled} trapped:\n{sum}");
        }
        if irq == "msi" {
            assert!(sum.contains("exits per frame: 3.0"), "{sum}");
        } else {
            assert!(sum.contains("exits per frame: "), "{sum}");
        }
        assert!(sum.contains("VM exits to vlab (all devices)"), "{sum}");
    }
}

#[test]
fn trace_of_a_killed_run_is_summarised_with_a_warning() {
    let trace = temp_file("cut.jsonl", b"");
    let t = trace.to_str().unwrap();
    let o = run_vlab(
        &[
            "run",
            "--cmdline",
            "test=vgpu-bug name=wrong-width",
            "--trace",
            t,
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let full = std::fs::read_to_string(&trace).unwrap();
    // Cut in the middle of the last line, and add garbage in front.
    let cut = format!("garbage\n{}", &full[..full.len() - 7]);
    let p = temp_file("cut2.jsonl", cut.as_bytes());
    let s = run_vlab(&["trace", p.to_str().unwrap()], T);
    let (out, err) = (stdout(&s), stderr(&s));
    assert_eq!(s.status.code(), Some(0), "{out}{err}");
    assert!(err.contains("line 1 is not a trace event"), "{err}");
    assert!(err.contains("the last line is truncated"), "{err}");
    assert!(out.contains("no stop line"), "{out}");
    assert!(out.contains("vgpu.R2 x1"), "{out}");
    // A missing file is a usage error.
    let s = run_vlab(&["trace", "/nonexistent/trace.jsonl"], T);
    assert_eq!(s.status.code(), Some(254));
    assert_eq!(stderr(&s).lines().count(), 1, "{}", stderr(&s));
}
