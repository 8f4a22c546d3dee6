//! End-to-end: boot vlab's own guest kernel under `vlab run` and check
//! what it reports. Needs /dev/kvm; fails loudly without it.

mod common;

use std::time::Duration;

use common::*;
use vmm::arch::layout;

const T: Duration = Duration::from_secs(120);

#[test]
fn hello_boots_reports_and_exits_zero() {
    let o = run_vlab(&["run"], T);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{}",
        stderr(&o)
    );
    assert!(out.contains("vlab-guest: vlab guest kernel"), "{out}");
    assert!(out.contains("cmdline=\"test=hello\""), "{out}");
    let devices = guest_lines(&out, "devices:");
    assert_eq!(devices.len(), 1, "{out}");
    for d in ["serial0", "debug-exit"] {
        assert!(devices[0].split_whitespace().any(|w| w == d), "{out}");
    }
    assert!(
        !guest_lines(&out, "clock kvm-clock ns=").is_empty(),
        "{out}"
    );
    assert!(out.contains("vlab-guest: hello done"), "{out}");
}

fn check_smp(cpus: u32) {
    let n = cpus.to_string();
    let o = run_vlab(&["run", "--cpus", &n, "--cmdline", "test=smp"], T);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let online = guest_lines(&out, "cpus online=");
    assert_eq!(
        online,
        vec![format!("cpus online={cpus} of {cpus}")],
        "{out}"
    );
    let mut seen: Vec<u32> = guest_lines(&out, "cpu ")
        .iter()
        .filter(|l| l.ends_with(" online"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..cpus).collect::<Vec<_>>(), "{out}");
}

#[test]
fn one_cpu_reports_in() {
    check_smp(1);
}

#[test]
fn two_cpus_report_in() {
    check_smp(2);
}

#[test]
fn four_cpus_report_in() {
    check_smp(4);
}

/// The guest must see exactly the e820 map vlab built, and its RAM plus
/// the legacy hole below 1 MiB must add up to the size asked for.
fn check_memory(arg: &str) {
    let size = layout::parse_mem_size(arg).unwrap();
    let o = run_vlab(&["run", "--memory", arg, "--cmdline", "test=mem"], T);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let expected: Vec<String> = layout::e820_map(size)
        .iter()
        .map(|e| format!("e820 {:#x} {:#x} {}", e.addr, e.size, e.kind))
        .collect();
    assert_eq!(guest_lines(&out, "e820 "), expected, "{out}");
    let ram: u64 = layout::e820_map(size)
        .iter()
        .filter(|e| e.kind == layout::E820_RAM)
        .map(|e| e.size)
        .sum();
    let legacy_hole = 0x10_0000 - layout::EBDA_START;
    assert_eq!(ram + legacy_hole, size);
    let line = guest_lines(&out, "memory ram=");
    assert_eq!(line.len(), 1, "{out}");
    assert_eq!(field(&line[0], "ram"), Some(ram.to_string().as_str()));
    assert!(out.contains("vlab-guest: mem check ok"), "{out}");
}

#[test]
fn memory_128m_is_seen_exactly() {
    check_memory("128M");
}

#[test]
fn memory_3_5g_is_seen_exactly_around_the_pci_hole() {
    check_memory("3584M");
}

#[test]
fn timer_interrupts_arrive() {
    let o = run_vlab(&["run", "--cmdline", "test=timer"], T);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let l = guest_lines(&out, "timer ticks=");
    assert_eq!(l.len(), 1, "{out}");
    let ticks: u64 = field(&l[0], "ticks").unwrap().parse().unwrap();
    assert!(ticks >= 20, "{out}");
}

#[test]
fn kvm_clock_advances_with_host_time_within_one_percent() {
    let (lines, code) = run_vlab_timed(&["run", "--cmdline", "test=clock ms=2000"], T);
    assert_eq!(code, 0, "{lines:?}");
    let find = |k: &str| {
        lines
            .iter()
            .find_map(|(t, l)| {
                let v = l.trim_end().strip_prefix("vlab-guest: clock ")?;
                Some((*t, field(v, k)?.parse::<u64>().ok()?))
            })
            .unwrap_or_else(|| panic!("no clock {k} in {lines:?}"))
    };
    let (h0, g0) = find("t0");
    let (h1, g1) = find("t1");
    let guest = (g1 - g0) as f64;
    let host = h1.duration_since(h0).as_nanos() as f64;
    let err = (guest - host).abs() / host;
    assert!(
        err < 0.01,
        "guest {guest} ns vs host {host} ns: {:.3}% apart",
        err * 100.0
    );
}

#[test]
fn guest_exit_status_becomes_vlab_exit_status() {
    let o = run_vlab(&["run", "--cmdline", "test=exit code=7"], T);
    assert_eq!(o.status.code(), Some(7), "{}", stdout(&o));
}

#[test]
fn guest_triple_fault_ends_vlab_with_the_crash_code() {
    let o = run_vlab(&["run", "--cmdline", "test=triple-fault"], T);
    assert_eq!(o.status.code(), Some(252), "{}\n{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("guest crashed") && err.contains("triple fault"),
        "{err}"
    );
}

#[test]
fn the_guest_elf_boots_from_a_file_too() {
    let o = run_vlab(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "test=exit code=5",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(5), "{}\n{}", stdout(&o), stderr(&o));
}

#[test]
fn verbose_summary_counts_exits() {
    let o = run_vlab(&["run", "--verbose", "--cmdline", "test=pio-loop n=100"], T);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("exits to vlab:"), "{err}");
    assert!(stdout(&o).contains("loop done n=100"), "{}", stdout(&o));
}
