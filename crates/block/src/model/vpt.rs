//! The virtual performance throttle: holds each request until the modelled
//! disk, running on a virtual clock slowed by the scale factor k, would have
//! finished it.
//!
//! The model runs on a **virtual disk clock** `τ`. Host time `h` (the
//! caller's monotonic clock, in ns) maps to it piecewise linearly:
//! `τ = τ₀ + (h − h₀)/k`, re-anchored whenever k changes, so the virtual
//! clock is continuous and monotonic. A request submitted at host time `s`
//! reaches the model at `τ(s)`, in submission order (the model queues it
//! behind earlier ones: a single actuator for a disk, per-channel queues for
//! an SSD). The model says it completes at `τ_done`; its modelled latency is
//! `T = τ_done − τ(s)` and its deadline is `h(τ_done) = s + k·T`. The host
//! really finishes it at `s + V`; the request is released to the guest at
//! `max(s + V, s + k·T)`.
//!
//! k adapts: after each window of completions, if at least
//! `raise_fraction` of them missed their deadline (V > k·T, the host is
//! slower than the model), k is raised to cover the window's 90th
//! percentile of V/T with a margin, and a warning is recorded. If none
//! missed and even the largest V/T with the margin fits under a smaller k,
//! k is lowered toward it (at most halving per window, never below
//! `k_target`).

use super::stats;
use super::{DiskModel, Op, Request, Service};
use std::collections::VecDeque;

/// Tuning of the throttle.
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleConfig {
    /// Initial k (raised to `k_target` if below it).
    pub k0: f64,
    /// The lowest k, the one wanted: 1.0 = real time.
    pub k_target: f64,
    pub k_max: f64,
    /// Completions per adaptation decision.
    pub window: u32,
    /// Fraction of a window that must miss its deadline to raise k.
    pub raise_fraction: f64,
    /// Headroom applied to observed V/T ratios.
    pub margin: f64,
    /// Records kept for the trace and statistics.
    pub record_capacity: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            k0: 1.0,
            k_target: 1.0,
            k_max: 1000.0,
            window: 32,
            raise_fraction: 0.5,
            margin: 1.2,
            record_capacity: 4096,
        }
    }
}

/// What [`Throttle::on_submit`] returns; hand it back to
/// [`Throttle::release_time`] when the host has finished the request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ticket {
    pub id: u64,
    pub req: Request,
    /// Host time of submission.
    pub submit_ns: u64,
    /// Modelled latency T on the virtual clock (k = 1), including time
    /// queued behind earlier requests on the modelled disk.
    pub model_ns: u64,
    /// k in force at submission.
    pub k: f64,
    /// Host time before which the request must not be released:
    /// `submit + k·T`.
    pub deadline_ns: u64,
    /// The model's breakdown (virtual times).
    pub service: Service,
}

/// One finished request, for the trace and `vlab disk stats`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    pub id: u64,
    pub lba: u64,
    pub sectors: u32,
    pub op: Op,
    pub submit_ns: u64,
    /// T.
    pub model_ns: u64,
    pub k: f64,
    /// k·T.
    pub scaled_ns: u64,
    /// V: host completion − submission.
    pub actual_ns: u64,
    /// Host time the request was released to the guest.
    pub release_ns: u64,
    /// V > k·T: the host was slower than the model.
    pub missed: bool,
    pub service: Service,
}

impl Record {
    /// Latency the guest sees: release − submit.
    pub fn observed_ns(&self) -> u64 {
        self.release_ns.saturating_sub(self.submit_ns)
    }

    /// One line for the trace.
    pub fn trace_line(&self) -> String {
        let op = match self.op {
            Op::Read => "R",
            Op::Write => "W",
            Op::Flush => "F",
        };
        let s = &self.service;
        format!(
            "disk-model id={} op={} lba={} sectors={} submit={} T={} k={:.3} kT={} V={} release={} missed={} seek={} rot={} xfer={} ovh={} hit={}",
            self.id,
            op,
            self.lba,
            self.sectors,
            self.submit_ns,
            self.model_ns,
            self.k,
            self.scaled_ns,
            self.actual_ns,
            self.release_ns,
            u8::from(self.missed),
            s.seek_ns,
            s.rotate_ns,
            s.transfer_ns,
            s.overhead_ns,
            u8::from(s.cache_hit),
        )
    }
}

/// A change of k, with the message to show the user.
#[derive(Clone, Debug, PartialEq)]
pub struct KChange {
    pub at_ns: u64,
    pub from: f64,
    pub to: f64,
    pub raised: bool,
    pub message: String,
}

/// Totals and fidelity figures for `vlab disk stats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThrottleStats {
    pub model: String,
    pub requests: u64,
    pub missed: u64,
    pub cache_hits: u64,
    pub k: f64,
    pub k_raises: u64,
    pub k_lowers: u64,
    /// Over the retained records (ns): |observed − k·T| at p50 and p99.
    pub err_p50_ns: f64,
    pub err_p99_ns: f64,
    pub mean_model_ns: f64,
    pub mean_actual_ns: f64,
    pub mean_observed_ns: f64,
    /// Demerit of the observed latency distribution against the modelled
    /// (k·T) one, as % of the modelled mean.
    pub demerit_pct: f64,
    pub retained: usize,
}

impl ThrottleStats {
    /// A few lines of text.
    pub fn summary(&self) -> String {
        let ms = |ns: f64| ns / 1e6;
        format!(
            "model {}: {} requests, {} buffer hits, {} missed their modelled time\n\
             k = {:.3} (raised {}x, lowered {}x)\n\
             mean latency: model T {:.3} ms, host V {:.3} ms, guest-visible {:.3} ms\n\
             |guest-visible - k*T| p50 {:.3} ms, p99 {:.3} ms; demerit {:.2}% (last {} requests)",
            self.model,
            self.requests,
            self.cache_hits,
            self.missed,
            self.k,
            self.k_raises,
            self.k_lowers,
            ms(self.mean_model_ns),
            ms(self.mean_actual_ns),
            ms(self.mean_observed_ns),
            ms(self.err_p50_ns),
            ms(self.err_p99_ns),
            self.demerit_pct,
            self.retained,
        )
    }
}

/// The throttle. Not thread-safe by itself: one per disk, behind the
/// device's lock.
#[derive(Debug)]
pub struct Throttle {
    model: Box<dyn DiskModel>,
    cfg: ThrottleConfig,
    k: f64,
    anchor_host: u64,
    anchor_virt: u64,
    last_host: u64,
    last_virt: u64,
    next_id: u64,
    win_count: u32,
    win_missed: u32,
    win_ratios: Vec<f64>,
    records: VecDeque<Record>,
    changes: Vec<KChange>,
    totals: ThrottleStats,
}

fn sane(v: f64, default: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        default
    }
}

impl Throttle {
    /// A throttle around `model` starting at `k0`, other settings default.
    pub fn new(model: Box<dyn DiskModel>, k0: f64) -> Self {
        Self::with_config(
            model,
            ThrottleConfig {
                k0,
                ..ThrottleConfig::default()
            },
        )
    }

    pub fn with_config(model: Box<dyn DiskModel>, mut cfg: ThrottleConfig) -> Self {
        cfg.k_target = sane(cfg.k_target, 1.0);
        cfg.k_max = sane(cfg.k_max, 1000.0).max(cfg.k_target);
        cfg.k0 = sane(cfg.k0, cfg.k_target).clamp(cfg.k_target, cfg.k_max);
        cfg.window = cfg.window.max(1);
        cfg.margin = sane(cfg.margin, 1.2).max(1.0);
        if !(cfg.raise_fraction.is_finite() && cfg.raise_fraction > 0.0) {
            cfg.raise_fraction = 0.5;
        }
        let totals = ThrottleStats {
            model: model.name().to_string(),
            ..ThrottleStats::default()
        };
        Throttle {
            model,
            k: cfg.k0,
            cfg,
            anchor_host: 0,
            anchor_virt: 0,
            last_host: 0,
            last_virt: 0,
            next_id: 0,
            win_count: 0,
            win_missed: 0,
            win_ratios: Vec::new(),
            records: VecDeque::new(),
            changes: Vec::new(),
            totals,
        }
    }

    pub fn k(&self) -> f64 {
        self.k
    }

    pub fn model(&self) -> &dyn DiskModel {
        self.model.as_ref()
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    fn to_virt(&self, h: u64) -> u64 {
        let dh = h.saturating_sub(self.anchor_host);
        let dv = if self.k == 1.0 {
            dh
        } else {
            (dh as f64 / self.k) as u64
        };
        self.anchor_virt.saturating_add(dv)
    }

    fn to_host(&self, v: u64) -> u64 {
        let dv = v.saturating_sub(self.anchor_virt);
        let dh = if self.k == 1.0 {
            dv
        } else {
            (dv as f64 * self.k) as u64
        };
        self.anchor_host.saturating_add(dh)
    }

    /// The guest submitted `req` at host time `now_ns` (monotonic clock;
    /// calls must come in submission order). Runs the model and returns
    /// the ticket carrying the deadline.
    pub fn on_submit(&mut self, req: Request, now_ns: u64) -> Ticket {
        let now = now_ns.max(self.last_host);
        self.last_host = now;
        let virt = self.to_virt(now).max(self.last_virt);
        self.last_virt = virt;
        let service = self.model.service(&req, virt);
        let model_ns = service.done_ns.saturating_sub(virt);
        let scaled = (model_ns as f64 * self.k) as u64;
        let deadline_ns = self
            .to_host(service.done_ns)
            .max(now.saturating_add(scaled));
        let id = self.next_id;
        self.next_id += 1;
        Ticket {
            id,
            req,
            submit_ns: now,
            model_ns,
            k: self.k,
            deadline_ns,
            service,
        }
    }

    /// The host finished the ticket's request at `actual_done_ns`. Returns
    /// when to complete it to the guest (≥ both the host completion and
    /// the deadline), records it, and adapts k.
    pub fn release_time(&mut self, ticket: &Ticket, actual_done_ns: u64) -> u64 {
        let actual_done = actual_done_ns.max(ticket.submit_ns);
        let release = actual_done.max(ticket.deadline_ns);
        let actual_ns = actual_done - ticket.submit_ns;
        let scaled_ns = ticket.deadline_ns.saturating_sub(ticket.submit_ns);
        let missed = actual_done > ticket.deadline_ns;
        let rec = Record {
            id: ticket.id,
            lba: ticket.req.lba,
            sectors: ticket.req.sectors,
            op: ticket.req.op,
            submit_ns: ticket.submit_ns,
            model_ns: ticket.model_ns,
            k: ticket.k,
            scaled_ns,
            actual_ns,
            release_ns: release,
            missed,
            service: ticket.service,
        };
        self.totals.requests += 1;
        self.totals.missed += u64::from(missed);
        self.totals.cache_hits += u64::from(ticket.service.cache_hit);
        if self.cfg.record_capacity > 0 {
            if self.records.len() == self.cfg.record_capacity {
                self.records.pop_front();
            }
            self.records.push_back(rec);
        }
        self.adapt(&rec, actual_done);
        release
    }

    fn adapt(&mut self, rec: &Record, at: u64) {
        self.win_count += 1;
        self.win_missed += u32::from(rec.missed);
        // V/T; a zero-time model request counts only if it missed.
        let ratio = if rec.model_ns > 0 {
            rec.actual_ns as f64 / rec.model_ns as f64
        } else if rec.missed {
            self.cfg.k_max
        } else {
            0.0
        };
        self.win_ratios.push(ratio);
        if self.win_count < self.cfg.window {
            return;
        }
        let missed = self.win_missed;
        let ratios = std::mem::take(&mut self.win_ratios);
        self.win_count = 0;
        self.win_missed = 0;
        let need = f64::from(self.cfg.window) * self.cfg.raise_fraction;
        if f64::from(missed) >= need {
            let p90 = stats::percentile(&ratios, 90.0).unwrap_or(self.k);
            let to = (self.k * 1.25)
                .max(p90 * self.cfg.margin)
                .min(self.cfg.k_max);
            if to > self.k {
                let message = format!(
                    "{}: host slower than the model: k raised to {:.2} ({} of {} requests missed their modelled time)",
                    self.model.name(),
                    to,
                    missed,
                    self.cfg.window
                );
                self.set_k(to, at, true, message);
            }
        } else if missed == 0 && self.k > self.cfg.k_target {
            let max = ratios.iter().copied().fold(0.0, f64::max);
            let to = (max * self.cfg.margin)
                .max(self.k * 0.5)
                .max(self.cfg.k_target);
            if to < self.k * 0.99 {
                let message = format!(
                    "{}: host keeps up with the model again: k lowered to {:.2}",
                    self.model.name(),
                    to
                );
                self.set_k(to, at, false, message);
            }
        }
    }

    fn set_k(&mut self, to: f64, at: u64, raised: bool, message: String) {
        let h = at.max(self.last_host);
        let v = self.to_virt(h).max(self.last_virt);
        self.anchor_host = h;
        self.anchor_virt = v;
        self.last_host = h;
        self.last_virt = v;
        let from = self.k;
        self.k = to;
        if raised {
            self.totals.k_raises += 1;
        } else {
            self.totals.k_lowers += 1;
        }
        self.changes.push(KChange {
            at_ns: h,
            from,
            to,
            raised,
            message,
        });
    }

    /// Changes of k since the last call (log their messages).
    pub fn take_k_changes(&mut self) -> Vec<KChange> {
        std::mem::take(&mut self.changes)
    }

    /// The retained records, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// Remove and return the retained records (for a trace writer).
    pub fn drain_records(&mut self) -> Vec<Record> {
        self.records.drain(..).collect()
    }

    /// Totals and fidelity over the retained records.
    pub fn stats(&self) -> ThrottleStats {
        let mut s = self.totals.clone();
        s.k = self.k;
        s.retained = self.records.len();
        let observed: Vec<f64> = self
            .records
            .iter()
            .map(|r| r.observed_ns() as f64)
            .collect();
        let scaled: Vec<f64> = self.records.iter().map(|r| r.scaled_ns as f64).collect();
        let pairs: Vec<(f64, f64)> = observed
            .iter()
            .copied()
            .zip(scaled.iter().copied())
            .collect();
        if let Some(e) = stats::abs_error_percentiles(&pairs, &[50.0, 99.0]) {
            s.err_p50_ns = e[0];
            s.err_p99_ns = e[1];
        }
        let models: Vec<f64> = self.records.iter().map(|r| r.model_ns as f64).collect();
        let actuals: Vec<f64> = self.records.iter().map(|r| r.actual_ns as f64).collect();
        s.mean_model_ns = stats::mean(&models).unwrap_or(0.0);
        s.mean_actual_ns = stats::mean(&actuals).unwrap_or(0.0);
        s.mean_observed_ns = stats::mean(&observed).unwrap_or(0.0);
        s.demerit_pct = stats::demerit_percent(&observed, &scaled).unwrap_or(0.0);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hdd, HddParams, Ssd, SsdParams, XorShift};

    /// A model with a fixed service time and a single server.
    #[derive(Debug)]
    struct Fixed {
        ns: u64,
        busy: u64,
    }

    impl DiskModel for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn capacity_sectors(&self) -> Option<u64> {
            None
        }
        fn service(&mut self, _req: &Request, arrival_ns: u64) -> Service {
            let start = arrival_ns.max(self.busy);
            self.busy = start + self.ns;
            Service {
                start_ns: start,
                done_ns: self.busy,
                transfer_ns: self.ns,
                ..Service::default()
            }
        }
    }

    fn fixed(ns: u64) -> Box<dyn DiskModel> {
        Box::new(Fixed { ns, busy: 0 })
    }

    #[test]
    fn release_holds_until_model_time() {
        let mut t = Throttle::new(fixed(10_000_000), 1.0);
        let tk = t.on_submit(Request::read(0, 8), 1_000);
        assert_eq!(tk.model_ns, 10_000_000);
        assert_eq!(tk.deadline_ns, 1_000 + 10_000_000);
        // Host finished fast: held until the deadline.
        assert_eq!(t.release_time(&tk, 50_000), 10_001_000);
        // Host finished late: released when done.
        let tk = t.on_submit(Request::read(0, 8), 20_000_000);
        assert_eq!(t.release_time(&tk, 45_000_000), 45_000_000);
        let recs: Vec<_> = t.records().copied().collect();
        assert_eq!(recs.len(), 2);
        assert!(!recs[0].missed && recs[1].missed);
        assert!(recs[0].trace_line().contains("T=10000000"));
    }

    #[test]
    fn queued_requests_wait_on_the_virtual_disk() {
        let mut t = Throttle::new(fixed(5_000_000), 1.0);
        let a = t.on_submit(Request::read(0, 8), 0);
        let b = t.on_submit(Request::read(8, 8), 0);
        assert_eq!(a.deadline_ns, 5_000_000);
        assert_eq!(b.deadline_ns, 10_000_000);
        assert_eq!(b.model_ns, 10_000_000);
    }

    #[test]
    fn release_at_least_submit_plus_k_t() {
        let model = Box::new(Hdd::new(HddParams::hp97560()).unwrap());
        let mut t = Throttle::new(model, 2.5);
        let mut r = XorShift(3);
        let mut now = 0u64;
        for _ in 0..500 {
            now += r.below(30_000_000);
            let req = Request::read(r.below(2_000_000), 1 + r.below(64) as u32);
            let tk = t.on_submit(req, now);
            let actual = now + r.below(5_000_000);
            let rel = t.release_time(&tk, actual);
            let kt = (tk.model_ns as f64 * tk.k) as u64;
            assert!(rel >= tk.submit_ns + kt, "{rel} < {} + {kt}", tk.submit_ns);
            assert!(rel >= actual);
        }
    }

    #[test]
    fn k_rises_when_host_is_slower_and_says_so() {
        let mut t = Throttle::new(fixed(1_000_000), 1.0);
        let mut now = 0;
        for _ in 0..64 {
            let tk = t.on_submit(Request::read(0, 8), now);
            // The host takes 3 ms for a 1 ms modelled request.
            let rel = t.release_time(&tk, now + 3_000_000);
            now = rel + 1;
        }
        assert!(t.k() >= 3.0, "k = {}", t.k());
        let ch = t.take_k_changes();
        assert!(!ch.is_empty());
        assert!(ch[0].raised);
        assert!(ch[0]
            .message
            .contains("host slower than the model: k raised to"));
        assert!(t.take_k_changes().is_empty());
        // With k ≥ 3.6 the host now keeps up.
        let tk = t.on_submit(Request::read(0, 8), now);
        assert!(tk.deadline_ns - tk.submit_ns >= 3_000_000);
        assert_eq!(t.stats().k_raises, ch.len() as u64);
    }

    #[test]
    fn k_returns_down_to_target() {
        let mut t = Throttle::new(fixed(1_000_000), 1.0);
        let mut now = 0;
        for _ in 0..64 {
            let tk = t.on_submit(Request::read(0, 8), now);
            now = t.release_time(&tk, now + 4_000_000) + 1;
        }
        let high = t.k();
        assert!(high > 4.0);
        // The host becomes fast again.
        for _ in 0..32 * 20 {
            let tk = t.on_submit(Request::read(0, 8), now);
            now = t.release_time(&tk, now + 100_000) + 1;
        }
        assert_eq!(t.k(), 1.0);
        let ch = t.take_k_changes();
        assert!(ch
            .iter()
            .any(|c| !c.raised && c.message.contains("k lowered")));
        assert!(t.stats().k_lowers > 0);
    }

    #[test]
    fn k_change_keeps_virtual_clock_continuous() {
        let mut t = Throttle::new(fixed(1_000_000), 1.0);
        let mut now = 0;
        let mut last_virt_start = 0;
        for i in 0..200u64 {
            let tk = t.on_submit(Request::read(0, 8), now);
            assert!(tk.service.start_ns >= last_virt_start);
            last_virt_start = tk.service.start_ns;
            let slow = if i < 100 { 5_000_000 } else { 10_000 };
            now = t.release_time(&tk, now + slow) + 1;
        }
    }

    #[test]
    fn k_respects_bounds_and_bad_config() {
        let t = Throttle::with_config(
            fixed(1),
            ThrottleConfig {
                k0: f64::NAN,
                k_target: -3.0,
                k_max: f64::INFINITY,
                window: 0,
                margin: 0.0,
                raise_fraction: f64::NAN,
                record_capacity: 0,
            },
        );
        assert_eq!(t.k(), 1.0);
        let t = Throttle::new(fixed(1), 0.2);
        assert_eq!(t.k(), 1.0, "k0 below target is raised to the target");
        let mut t = Throttle::with_config(
            fixed(1_000),
            ThrottleConfig {
                k_max: 4.0,
                window: 4,
                ..ThrottleConfig::default()
            },
        );
        let mut now = 0;
        for _ in 0..100 {
            let tk = t.on_submit(Request::read(0, 1), now);
            now = t.release_time(&tk, now + 1_000_000) + 1;
        }
        assert_eq!(t.k(), 4.0);
    }

    #[test]
    fn ssd_parallelism_survives_the_throttle() {
        let model = Box::new(Ssd::new(SsdParams::generic()).unwrap());
        let mut t = Throttle::new(model, 1.0);
        // Eight one-page reads on eight channels, submitted together.
        let tks: Vec<Ticket> = (0..8)
            .map(|i| t.on_submit(Request::read(i * 8, 8), 0))
            .collect();
        let worst = tks.iter().map(|k| k.model_ns).max().unwrap();
        assert!(worst < 2 * tks[0].model_ns, "{worst}");
    }

    #[test]
    fn stats_and_records() {
        let mut t = Throttle::with_config(
            fixed(2_000_000),
            ThrottleConfig {
                record_capacity: 10,
                ..ThrottleConfig::default()
            },
        );
        let mut now = 0;
        for _ in 0..25 {
            let tk = t.on_submit(Request::write(0, 8), now);
            now = t.release_time(&tk, now + 500_000) + 1;
        }
        let s = t.stats();
        assert_eq!(s.requests, 25);
        assert_eq!(s.missed, 0);
        assert_eq!(s.retained, 10);
        assert_eq!(s.err_p50_ns, 0.0);
        assert_eq!(s.demerit_pct, 0.0);
        assert!((s.mean_model_ns - 2e6).abs() < 1.0);
        assert!(s.summary().contains("25 requests"));
        assert_eq!(t.drain_records().len(), 10);
        assert_eq!(t.records().count(), 0);
    }

    #[test]
    fn no_panic_on_random_input() {
        let mut r = XorShift(0xdead_beef);
        for model in [
            Box::new(Hdd::new(HddParams::cheetah4lp()).unwrap()) as Box<dyn DiskModel>,
            Box::new(Ssd::new(SsdParams::generic()).unwrap()),
        ] {
            let mut t = Throttle::new(model, 1.0 + r.below(5) as f64);
            let mut now = 0u64;
            for _ in 0..3000 {
                now = match r.below(10) {
                    0 => r.next(),
                    1 => now.saturating_sub(r.below(1_000_000)),
                    _ => now.saturating_add(r.below(20_000_000)),
                };
                let req = Request {
                    lba: r.next() >> r.below(64),
                    sectors: if r.below(200) == 0 {
                        u32::MAX
                    } else {
                        r.below(4096) as u32
                    },
                    op: [Op::Read, Op::Write, Op::Flush][r.below(3) as usize],
                };
                let tk = t.on_submit(req, now);
                let done = match r.below(4) {
                    0 => u64::MAX,
                    1 => 0,
                    _ => now.saturating_add(r.below(100_000_000)),
                };
                let rel = t.release_time(&tk, done);
                assert!(rel >= tk.submit_ns);
            }
            let _ = t.stats().summary();
        }
    }
}
