//! What the host's KVM offers vlab, for `vlab doctor` and for tests that
//! must say why they did not run.

use std::fmt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// The kind of KVM on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Intel VT-x.
    Intel,
    /// AMD SVM.
    Amd,
    /// kvm_pvm: software nested virtualization; guest kernel code is
    /// emulated instruction by instruction.
    Pvm,
    /// Loaded but of unknown kind.
    Unknown,
}

impl KvmFlavour {
    /// Detect from the loaded kernel modules.
    pub fn detect() -> KvmFlavour {
        let m = |n: &str| Path::new("/sys/module").join(n).exists();
        if m("kvm_pvm") {
            KvmFlavour::Pvm
        } else if m("kvm_intel") {
            KvmFlavour::Intel
        } else if m("kvm_amd") {
            KvmFlavour::Amd
        } else {
            KvmFlavour::Unknown
        }
    }

    /// True when guest kernels run at hardware speed.
    pub fn is_hardware(self) -> bool {
        matches!(self, KvmFlavour::Intel | KvmFlavour::Amd)
    }
}

impl fmt::Display for KvmFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvmFlavour::Intel => "hardware (Intel VT-x, kvm_intel)",
            KvmFlavour::Amd => "hardware (AMD SVM, kvm_amd)",
            KvmFlavour::Pvm => "kvm_pvm (software nested virtualization)",
            KvmFlavour::Unknown => "unknown (no kvm_intel, kvm_amd or kvm_pvm module seen)",
        })
    }
}

/// One capability and whether vlab needs it.
#[derive(Clone, Debug)]
pub struct CapLine {
    /// Name.
    pub name: &'static str,
    /// Present on this host.
    pub present: bool,
    /// vlab cannot run without it.
    pub required: bool,
    /// What it is for.
    pub used_for: &'static str,
}

/// The doctor's findings.
#[derive(Clone, Debug)]
pub struct Report {
    /// KVM API version.
    pub api_version: i32,
    /// Flavour.
    pub flavour: KvmFlavour,
    /// Capabilities.
    pub caps: Vec<CapLine>,
    /// Recommended / maximum vCPUs.
    pub vcpus: (usize, usize),
}

impl Report {
    /// True when every required capability is present.
    pub fn usable(&self) -> bool {
        self.api_version == 12 && self.caps.iter().all(|c| c.present || !c.required)
    }

    /// Things that will not work on this host, one line each.
    pub fn limitations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.flavour == KvmFlavour::Pvm {
            v.push("guest kernel code is emulated (~1-2 M instructions/s): vlab's own guest boots in well under a second, but a stock Linux vmlinux takes ~10-30 s to its first message and stops before user space (a bzImage's decompressor alone runs for many minutes); the Linux full-boot tests do not run here".into());
            v.push("KVM's emulator fails on int3, cmpxchg16b, xrstor, popcnt, clac/stac, fwait, ldmxcsr/stmxcsr and SSE/AVX arithmetic here: vlab completes all but the last in user space (docs/linux.md)".into());
        }
        for c in &self.caps {
            if !c.present && !c.required {
                v.push(format!("no {}: {}", c.name, c.used_for));
            }
        }
        v
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "/dev/kvm: accessible, API version {}", self.api_version)?;
        writeln!(f, "KVM flavour: {}", self.flavour)?;
        writeln!(
            f,
            "vCPUs: {} recommended, {} maximum (vlab allows 1 to 32)",
            self.vcpus.0, self.vcpus.1
        )?;
        writeln!(f, "capabilities:")?;
        for c in &self.caps {
            writeln!(
                f,
                "  [{}] {:<24} {}{}",
                if c.present { "x" } else { " " },
                c.name,
                c.used_for,
                if c.required { " (required)" } else { "" }
            )?;
        }
        let lim = self.limitations();
        if lim.is_empty() {
            writeln!(f, "limitations: none known")?;
        } else {
            writeln!(f, "limitations on this host:")?;
            for l in lim {
                writeln!(f, "  - {l}")?;
            }
        }
        writeln!(
            f,
            "verdict: {}",
            if self.usable() {
                "vlab can run here"
            } else {
                "vlab cannot run here: a required capability is missing"
            }
        )
    }
}

/// Errors probing KVM.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// /dev/kvm could not be opened.
    #[error("Cannot open /dev/kvm: {0}; load kvm_intel or kvm_amd and give this user read/write access to /dev/kvm")]
    NoKvm(kvm_ioctls::Error),
}

/// Probe the host.
pub fn probe() -> Result<Report, DoctorError> {
    let kvm = Kvm::new().map_err(DoctorError::NoKvm)?;
    let c = |name, cap, required, used_for| CapLine {
        name,
        present: kvm.check_extension(cap),
        required,
        used_for,
    };
    let caps = vec![
        c(
            "irqchip",
            Cap::Irqchip,
            true,
            "in-kernel PIC, IOAPIC and LAPIC",
        ),
        c("PIT", Cap::Pit2, true, "in-kernel timer (8254)"),
        c("user memory", Cap::UserMemory, true, "guest RAM"),
        c(
            "immediate exit",
            Cap::ImmediateExit,
            true,
            "stopping vCPUs without lost wake-ups",
        ),
        c(
            "irqfd",
            Cap::Irqfd,
            true,
            "device interrupts without a vCPU exit",
        ),
        c(
            "ioeventfd",
            Cap::Ioeventfd,
            false,
            "doorbells that wake device threads without a vCPU exit",
        ),
        c(
            "MSI",
            Cap::SignalMsi,
            false,
            "message-signalled interrupts for PCI devices",
        ),
        c(
            "read-only memory",
            Cap::ReadonlyMem,
            false,
            "read-only register pages (reads cost nothing, writes trap)",
        ),
        c(
            "guest debug",
            Cap::SetGuestDebug,
            false,
            "gdb stub: single step and software breakpoints",
        ),
        c(
            "hardware breakpoints",
            Cap::DebugHwBps,
            false,
            "gdb hardware breakpoints and watchpoints",
        ),
        c(
            "TSC deadline timer",
            Cap::TscDeadlineTimer,
            false,
            "the LAPIC's TSC-deadline mode for guests",
        ),
        c(
            "kvmclock control",
            Cap::KvmclockCtrl,
            false,
            "telling guests they were paused",
        ),
    ];
    Ok(Report {
        api_version: kvm.get_api_version(),
        flavour: KvmFlavour::detect(),
        caps,
        vcpus: (kvm.get_nr_vcpus(), kvm.get_max_vcpus()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(flavour: KvmFlavour, hw_bps: bool, irqfd: bool) -> Report {
        let line = |name, present, required| CapLine {
            name,
            present,
            required,
            used_for: "x",
        };
        Report {
            api_version: 12,
            flavour,
            caps: vec![
                line("irqfd", irqfd, true),
                line("hardware breakpoints", hw_bps, false),
            ],
            vcpus: (2, 1024),
        }
    }

    #[test]
    fn pvm_hosts_list_their_limits() {
        let r = report(KvmFlavour::Pvm, false, true);
        assert!(r.usable());
        let l = r.limitations();
        assert!(l.iter().any(|s| s.contains("emulated")));
        assert!(l.iter().any(|s| s.contains("no hardware breakpoints")));
        assert!(r.to_string().contains("verdict: vlab can run here"));
    }

    #[test]
    fn missing_required_capability_is_unusable() {
        let r = report(KvmFlavour::Intel, true, false);
        assert!(!r.usable());
        assert!(r.limitations().is_empty());
        assert!(r.to_string().contains("vlab cannot run here"));
    }
}
