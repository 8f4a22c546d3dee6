//! Smoke test: `vlab bench --quick` runs and prints its table. No timing
//! assertions: performance is measured by `vlab bench`, not tested here.
//! Needs /dev/kvm; fails loudly without it.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn check_table(out: &str) {
    assert!(
        out.contains("| metric | vlab (median) | peer (median) | ratio | target | met |"),
        "{out}"
    );
    for row in [
        "PIO exit round trip",
        "MMIO exit round trip",
        "start→exit",
        "peak RSS",
        "register-page poll vs trapped read",
        "vgpu fill rate",
        "vgpu DMA upload",
        "vgpu interrupts/s",
        "exits per frame (vgpu-scene",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("| {row}"))),
            "no {row} row:\n{out}"
        );
    }
    assert!(out.contains("- host: KVM: "), "{out}");
    assert!(out.contains("- command: `vlab bench --quick"), "{out}");
}

#[test]
fn quick_bench_prints_a_table_and_json() {
    let json = std::env::temp_dir().join(format!("vlab-bench-smoke-{}.json", std::process::id()));
    let j = json.to_str().unwrap();
    let o = run_vlab(&["bench", "--quick", "--json", j], T);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    check_table(&out);
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(text.contains("\"key\": \"pio_exit_ns\""), "{text}");
    assert!(text.contains("\"rows\": ["), "{text}");
    assert!(text.contains("\"key\": \"vgpu_poll_ns\""), "{text}");
}

#[test]
fn missing_qemu_leaves_its_columns_na() {
    let o = run_vlab(
        &[
            "bench",
            "--quick",
            "--runs",
            "1",
            "--qemu",
            "/nonexistent/qemu-system-x86_64",
        ],
        T,
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    check_table(&out);
    assert!(out.contains("QEMU not found"), "{out}");
    let boot = out.lines().find(|l| l.starts_with("| start→exit")).unwrap();
    assert!(boot.contains("| n/a | n/a |"), "{boot}");
}
