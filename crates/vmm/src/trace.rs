//! Protocol monitors and the I/O trace on a VM: building the per-VM
//! [`Recorder`] and wiring it to the PCI devices (see `devices::monitor`
//! and docs/monitors.md).
//!
//! With [`ObserveOptions`] given to [`crate::vm::Vm::with_observer`], the
//! PCI bus shows every BAR and configuration access to the recorder (timed
//! around the device's handling), each device's INTx line and MSI sink are
//! wrapped to record interrupts, its DMA path records every transfer, and
//! vgpu's model events are fed in. Each vCPU thread prints the violations
//! it caused with its RIP after the exit that caused them. Without options
//! none of this exists: the bus checks one `Option` per access.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use devices::monitor::{Recorder, RecorderOptions, ReportSink, DEFAULT_ACK_TIMEOUT};

use crate::control::{StopReason, VmControl};

/// What to observe.
pub struct ObserveOptions {
    /// Run the devices' protocol monitors.
    pub monitors: bool,
    /// Stop the VM on the first violation
    /// ([`StopReason::MonitorViolation`]).
    pub strict: bool,
    /// Write the I/O trace (JSON lines) here.
    pub trace: Option<Box<dyn Write + Send>>,
    /// Report interrupts not acknowledged within this long.
    pub ack_timeout: Duration,
    /// Where report lines go (default: stderr, `vlab: monitor: ...`).
    pub report: Option<ReportSink>,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        ObserveOptions {
            monitors: true,
            strict: false,
            trace: None,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            report: None,
        }
    }
}

/// The recorder for a VM controlled by `control`.
pub fn recorder(opts: ObserveOptions, control: &Arc<VmControl>) -> Arc<Recorder> {
    let mut r = RecorderOptions::new();
    r.monitors = opts.monitors;
    r.strict = opts.strict;
    r.trace = opts.trace;
    if let Some(sink) = opts.report {
        r.report = sink;
    }
    let c = control.clone();
    // Runs with the recorder's lock (and maybe a device's) held;
    // `request_stop` takes neither.
    r.stop = Some(Box::new(move |report| {
        c.request_stop(StopReason::MonitorViolation(report.to_string()))
    }));
    Recorder::new(r)
}
