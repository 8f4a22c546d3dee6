//! `vlab doctor`: what this host's KVM can do for vlab.

pub fn doctor() -> u8 {
    match vmm::doctor::probe() {
        Ok(report) => {
            print!("{report}");
            if report.usable() {
                0
            } else {
                crate::EXIT_USAGE
            }
        }
        Err(e) => {
            println!("vlab doctor: {e}");
            crate::EXIT_USAGE
        }
    }
}
