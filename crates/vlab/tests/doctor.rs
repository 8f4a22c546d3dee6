//! `vlab doctor` reports this host truthfully.

mod common;

use std::time::Duration;

use common::*;
use vmm::doctor::KvmFlavour;

#[test]
fn doctor_names_the_flavour_and_the_capabilities() {
    let o = run_vlab(&["doctor"], Duration::from_secs(30));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let flavour = KvmFlavour::detect().to_string();
    assert!(out.contains(&format!("KVM flavour: {flavour}")), "{out}");
    for cap in [
        "irqchip",
        "irqfd",
        "ioeventfd",
        "immediate exit",
        "hardware breakpoints",
    ] {
        assert!(out.contains(cap), "{cap} missing from\n{out}");
    }
    assert!(out.contains("verdict: vlab can run here"), "{out}");
    if !KvmFlavour::detect().is_hardware() {
        assert!(out.contains("limitations on this host:"), "{out}");
    }
}
