//! The trace's JSON lines. One object per line, written by hand (the
//! format is flat and small; see docs/monitors.md for every field).

use std::fmt::Write;

use super::{Event, EventKind, Report};
use crate::dma::DmaDir;
use crate::vgpu::{DmaKind, Event as VgpuEvent};

/// A JSON object being written: `{"t":…,"ev":…` then fields.
#[derive(Debug, Clone)]
pub struct Line(String);

impl Line {
    /// A line of kind `ev` at `t_ns`.
    pub fn new(ev: &str, t_ns: u64) -> Line {
        let mut s = String::with_capacity(128);
        let _ = write!(s, "{{\"t\":{t_ns},\"ev\":");
        push_str(&mut s, ev);
        Line(s)
    }

    fn key(&mut self, k: &str) {
        self.0.push(',');
        push_str(&mut self.0, k);
        self.0.push(':');
    }

    /// A string field.
    pub fn str(mut self, k: &str, v: &str) -> Line {
        self.key(k);
        push_str(&mut self.0, v);
        self
    }

    /// A number field.
    pub fn u64(mut self, k: &str, v: u64) -> Line {
        self.key(k);
        let _ = write!(self.0, "{v}");
        self
    }

    /// A number field, or nothing.
    pub fn opt_u64(self, k: &str, v: Option<u64>) -> Line {
        match v {
            Some(v) => self.u64(k, v),
            None => self,
        }
    }

    /// A boolean field.
    pub fn bool(mut self, k: &str, v: bool) -> Line {
        self.key(k);
        self.0.push_str(if v { "true" } else { "false" });
        self
    }

    /// The finished object (no newline).
    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Append `v` as a JSON string.
fn push_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

fn dir_name(d: DmaDir) -> &'static str {
    match d {
        DmaDir::Read => "read",
        DmaDir::Write => "write",
    }
}

/// The trace line of an event of device `dev`; `reg` is the register name
/// of a BAR access, if known.
pub fn event_line(dev: &str, ev: &Event, reg: Option<&str>) -> String {
    let name = match &ev.kind {
        EventKind::BarRead { .. } => "bar_read",
        EventKind::BarWrite { .. } => "bar_write",
        EventKind::ConfigRead { .. } => "cfg_read",
        EventKind::ConfigWrite { .. } => "cfg_write",
        EventKind::Dma { .. } => "dma",
        EventKind::Intx { .. } => "intx",
        EventKind::Msi => "msi",
        EventKind::Vgpu(_) => "model",
    };
    let l = Line::new(name, ev.t_ns)
        .str("dev", dev)
        .opt_u64("vcpu", ev.vcpu.map(u64::from));
    let l = match &ev.kind {
        EventKind::BarRead {
            bar,
            offset,
            width,
            value,
            ns,
        }
        | EventKind::BarWrite {
            bar,
            offset,
            width,
            value,
            ns,
        } => {
            let l = l
                .u64("bar", u64::from(*bar))
                .u64("off", *offset)
                .u64("width", u64::from(*width))
                .u64("value", *value)
                .u64("ns", *ns);
            match reg {
                Some(r) => l.str("reg", r),
                None => l,
            }
        }
        EventKind::ConfigRead {
            offset,
            width,
            value,
            ns,
        } => l
            .u64("off", u64::from(*offset))
            .u64("width", u64::from(*width))
            .u64("value", *value)
            .u64("ns", *ns),
        EventKind::ConfigWrite {
            offset,
            width,
            value,
            command,
            ns,
        } => l
            .u64("off", u64::from(*offset))
            .u64("width", u64::from(*width))
            .u64("value", *value)
            .u64("command", u64::from(*command))
            .u64("ns", *ns),
        EventKind::Dma {
            dir,
            addr,
            len,
            refused,
        } => {
            let l = l
                .str("dir", dir_name(*dir))
                .u64("addr", *addr)
                .u64("len", *len)
                .bool("ok", refused.is_none());
            match refused {
                Some(r) => l.str("refused", r),
                None => l,
            }
        }
        EventKind::Intx { level } => l.bool("level", *level),
        EventKind::Msi => l,
        EventKind::Vgpu(e) => vgpu_fields(l, e),
    };
    l.finish()
}

fn vgpu_fields(l: Line, e: &VgpuEvent) -> Line {
    match *e {
        VgpuEvent::Doorbell { tail } => l.str("what", "doorbell").u64("tail", u64::from(tail)),
        VgpuEvent::DmaRead { kind, addr, len } => l
            .str("what", "dma_read")
            .str(
                "kind",
                match kind {
                    DmaKind::Descriptor => "descriptor",
                    DmaKind::CommandBuffer => "command_buffer",
                    DmaKind::Upload => "upload",
                },
            )
            .u64("addr", addr)
            .u64("len", len),
        VgpuEvent::DescriptorDone { index, addr, len } => l
            .str("what", "descriptor_done")
            .u64("index", u64::from(index))
            .u64("addr", addr)
            .u64("len", u64::from(len)),
        VgpuEvent::Fence { value } => l.str("what", "fence").u64("value", u64::from(value)),
        VgpuEvent::InterruptRaised { bits } => {
            l.str("what", "irq_raised").u64("bits", u64::from(bits))
        }
        VgpuEvent::InterruptAcked { bits } => {
            l.str("what", "irq_acked").u64("bits", u64::from(bits))
        }
        VgpuEvent::Error { code, addr } => l
            .str("what", "error")
            .str("code", code.name())
            .u64("addr", addr),
        VgpuEvent::ModeChanged { geometry } => {
            let l = l.str("what", "mode");
            match geometry {
                Some(g) => l
                    .u64("width", u64::from(g.width))
                    .u64("height", u64::from(g.height))
                    .u64("stride", u64::from(g.stride)),
                None => l,
            }
        }
        VgpuEvent::Reset => l.str("what", "reset"),
    }
}

/// The trace line of a violation.
pub fn violation_line(r: &Report) -> String {
    let v = &r.violation;
    Line::new("violation", r.t_ns)
        .str("dev", &r.device)
        .opt_u64("vcpu", r.vcpu.map(u64::from))
        .opt_u64("rip", r.rip)
        .str("rule", v.rule)
        .str("reg", &v.register)
        .opt_u64("value", v.value)
        .str("text", &v.text)
        .finish()
}
