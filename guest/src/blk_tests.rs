//! virtio-blk tests: `blk`, `blk-write`, `blk-verify`, `blk-storm`,
//! `blk-workload` (output formats in docs/guest.md; parsed by
//! crates/vlab/tests/disk_e2e.rs).
//!
//! Common parameters: `disk=<i>` (the i-th virtio-blk function, default
//! 0), `irq=poll` (poll the used ring instead of MSI-X).
//!
//! Output in hot paths (per-request lines, storm progress) is built by hand
//! in a [`Line`] and written with one `serial::write_raw`: `core::fmt`
//! costs thousands of emulated instructions per value on kvm_pvm.

use crate::blk_shared::{pattern_base_step, pattern_word, Pattern, Workload, SECTOR_WORDS};
use crate::irq::Deadline;
use crate::kvmclock;
use crate::log;
use crate::start_info::parse_u64;
use crate::sync::RacyCell;
use crate::tests::Machine;
use crate::virtio_blk::{
    status_name, Blk, Op, MAX_SLOTS, REQUEST_TIMEOUT_MS, SLOT_SECTORS, S_IOERR, S_OK,
};
use core::mem::MaybeUninit;

/// One output line without `core::fmt` (and without zeroing its buffer:
/// small arrays are zeroed with SSE stores, large ones cost emulated
/// `rep stos` iterations on kvm_pvm).
struct Line {
    /// `buf[..len]` is initialised.
    buf: [MaybeUninit<u8>; 200],
    len: usize,
}

impl Line {
    fn new() -> Line {
        let mut l = Line {
            buf: [const { MaybeUninit::uninit() }; 200],
            len: 0,
        };
        l.s(crate::serial::PREFIX);
        l
    }

    fn byte(&mut self, b: u8) {
        // One byte is kept for the newline.
        if self.len < self.buf.len() - 1 {
            self.buf[self.len].write(b);
            self.len += 1;
        }
    }

    fn s(&mut self, s: &str) -> &mut Line {
        for &b in s.as_bytes() {
            self.byte(b);
        }
        self
    }

    fn u(&mut self, v: u64) -> &mut Line {
        let mut div = 1u64;
        while v / div >= 10 {
            div *= 10;
        }
        while div > 0 {
            self.byte(b'0' + (v / div % 10) as u8);
            div /= 10;
        }
        self
    }

    /// `v / 1000` with three decimals.
    fn milli(&mut self, v: u64) -> &mut Line {
        self.u(v / 1000).s(".");
        let f = v % 1000;
        if f < 100 {
            self.s("0");
        }
        if f < 10 {
            self.s("0");
        }
        self.u(f)
    }

    fn emit(&mut self) {
        self.buf[self.len].write(b'\n');
        // SAFETY: `buf[..=len]` was written by `byte` and above.
        let bytes =
            unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len + 1) };
        crate::serial::write_raw(bytes);
    }
}

/// Probe the disk selected by `disk=` / `irq=`, printing a FAIL line on
/// error.
fn open(m: &Machine, test: &str) -> Option<Blk> {
    let index = m.param_u64("disk", 0) as usize;
    let poll = m.param_str("irq") == Some("poll");
    match Blk::probe(m, index, poll) {
        Ok(b) => Some(b),
        Err(e) => {
            log!("FAIL {}: {}", test, e);
            None
        }
    }
}

/// Fill `sectors` sectors of `slot`'s buffer with the pattern of `seed`
/// for the sectors from `lba`.
fn fill(b: &Blk, slot: usize, seed: u64, lba: u64, sectors: u32) {
    let p = b.data(slot).cast::<u64>();
    for s in 0..sectors as usize {
        let l = lba + s as u64;
        let (base, step) = pattern_base_step(seed, l);
        let w = p.wrapping_add(s * SECTOR_WORDS);
        // SAFETY: `sectors <= SLOT_SECTORS`, so every word is inside the
        // slot's buffer; the slot is not in flight.
        unsafe {
            w.write_volatile(l);
            w.add(1).write_volatile(seed);
            let mut v = base.wrapping_add(step.wrapping_mul(2));
            for i in 2..SECTOR_WORDS {
                w.add(i).write_volatile(v);
                v = v.wrapping_add(step);
            }
        }
    }
}

/// Overwrite word 0 of each sector of `slot`'s buffer (so a read that
/// transfers nothing is noticed).
fn poison(b: &Blk, slot: usize, sectors: u32) {
    let p = b.data(slot).cast::<u64>();
    for s in 0..sectors as usize {
        // SAFETY: as in `fill`.
        unsafe { p.wrapping_add(s * SECTOR_WORDS).write_volatile(u64::MAX) };
    }
}

/// Compare `slot`'s buffer with the pattern; returns the first bad sector
/// (its LBA) and word.
fn check(b: &Blk, slot: usize, seed: u64, lba: u64, sectors: u32) -> Option<(u64, usize)> {
    (0..u64::from(sectors))
        .find_map(|s| check_at(b.data(slot).wrapping_add(s as usize * 512), seed, lba + s))
}

/// One synchronous request on slot 0 (the data of slot 0).
fn run_ok(b: &mut Blk, test: &str, op: Op, lba: u64, sectors: u32) -> Result<u8, ()> {
    b.run(op, lba, sectors).map_err(|e| {
        log!("FAIL {}: {}", test, e);
    })
}

/// The GET_ID string (printable ASCII up to the first NUL).
fn serial_id(b: &mut Blk) -> Result<([u8; 20], usize), &'static str> {
    let st = b.run(Op::GetId, 0, 0)?;
    // SAFETY: zero bytes are a valid array of u8 (no SSE zeroing).
    let mut id: [u8; 20] = unsafe { crate::mem::zeroed() };
    let mut n = 0;
    if st == S_OK {
        let p = b.data(0);
        while n < 20 {
            // SAFETY: the GET_ID request completed; 20 bytes of slot 0.
            let c = unsafe { p.add(n).read_volatile() };
            if c == 0 {
                break;
            }
            id[n] = if c.is_ascii_graphic() { c } else { b'?' };
            n += 1;
        }
    }
    Ok((id, n))
}

/// `test=blk [ro=1] [seed=N]`.
pub fn blk_test(m: &mut Machine) -> u8 {
    let Some(mut b) = open(m, "blk") else {
        return 1;
    };
    let (id, n) = match serial_id(&mut b) {
        Ok(v) => v,
        Err(e) => {
            log!("FAIL blk: GET_ID: {}", e);
            return 1;
        }
    };
    let serial = core::str::from_utf8(&id[..n]).unwrap_or("?");
    log!("blk capacity={} serial={}", b.capacity, serial);
    log!(
        "blk features={:#x} status={:#x} ro={} blk_size={} seg_max={} queue_size={} slots={} irq={}",
        b.features,
        b.t.status(),
        u8::from(b.features & crate::virtio_blk::F_RO != 0),
        b.blk_size,
        b.seg_max,
        b.q.size,
        b.slots,
        if b.uses_irq() { "msix" } else { "poll" }
    );
    let seed = m.param_u64("seed", 0x5eed);
    if m.param_u64("ro", 0) != 0 {
        return blk_ro(&mut b, seed);
    }
    if b.capacity < 16 {
        log!(
            "FAIL blk: capacity {} too small (need 16 sectors)",
            b.capacity
        );
        return 1;
    }
    let reqs = [
        (0u64, 1u32),
        (1, 8),
        (b.capacity / 2, 3),
        (b.capacity - 1, 1),
    ];
    for &(lba, n) in &reqs {
        fill(&b, 0, seed, lba, n);
        match run_ok(&mut b, "blk", Op::Write, lba, n) {
            Ok(S_OK) => {}
            Ok(s) => {
                log!(
                    "FAIL blk: write lba={} sectors={}: {}",
                    lba,
                    n,
                    status_name(s)
                );
                return 1;
            }
            Err(()) => return 1,
        }
    }
    match run_ok(&mut b, "blk", Op::Flush, 0, 0) {
        Ok(S_OK) => {}
        Ok(s) => {
            log!("FAIL blk: flush: {}", status_name(s));
            return 1;
        }
        Err(()) => return 1,
    }
    for &(lba, n) in &reqs {
        poison(&b, 0, n);
        match run_ok(&mut b, "blk", Op::Read, lba, n) {
            Ok(S_OK) => {}
            Ok(s) => {
                log!(
                    "FAIL blk: read lba={} sectors={}: {}",
                    lba,
                    n,
                    status_name(s)
                );
                return 1;
            }
            Err(()) => return 1,
        }
        if let Some((l, w)) = check(&b, 0, seed, lba, n) {
            log!("FAIL blk: data differs at lba={} word={}", l, w);
            return 1;
        }
    }
    log!("blk verified requests={} seed={}", reqs.len(), seed);
    // A read past the end must fail with IOERR.
    let end = b.capacity;
    match run_ok(&mut b, "blk", Op::Read, end, 1) {
        Ok(S_IOERR) => log!("blk past-end=ioerr"),
        Ok(s) => {
            log!("FAIL blk: read past the end: {}", status_name(s));
            return 1;
        }
        Err(()) => return 1,
    }
    log!("blk ok");
    0
}

/// `test=blk ro=1`: writes must fail with IOERR, reads succeed.
fn blk_ro(b: &mut Blk, seed: u64) -> u8 {
    fill(b, 0, seed, 0, 1);
    let w = match run_ok(b, "blk", Op::Write, 0, 1) {
        Ok(s) => s,
        Err(()) => return 1,
    };
    let r = match run_ok(b, "blk", Op::Read, 0, 1) {
        Ok(s) => s,
        Err(()) => return 1,
    };
    log!("blk ro write={} read={}", status_name(w), status_name(r));
    if w != S_IOERR || r != S_OK {
        log!("FAIL blk: read-only disk: expected write=ioerr read=ok");
        return 1;
    }
    if b.features & crate::virtio_blk::F_RO == 0 {
        log!("FAIL blk: read-only disk does not offer VIRTIO_BLK_F_RO");
        return 1;
    }
    log!("blk ok");
    0
}

/// Ranges of `sectors=` (`a-b` inclusive or `a`, comma separated), at
/// most 16.
fn parse_sectors(s: &str, out: &mut [(u64, u64); 16]) -> Option<usize> {
    let mut n = 0;
    for item in s.split(',') {
        if item.is_empty() {
            continue;
        }
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (parse_u64(a)?, parse_u64(b)?),
            None => {
                let a = parse_u64(item)?;
                (a, a)
            }
        };
        if b < a || n == out.len() {
            return None;
        }
        out[n] = (a, b + 1);
        n += 1;
    }
    Some(n)
}

/// `test=blk-write` (write + flush) and `test=blk-verify` (read + compare)
/// of `sectors=` with the pattern of `seed=`.
fn write_or_verify(m: &mut Machine, verify: bool) -> u8 {
    let name = if verify { "blk-verify" } else { "blk-write" };
    let seed = m.param_u64("seed", 1);
    // SAFETY: zero bytes are valid integers.
    let mut ranges: [(u64, u64); 16] = unsafe { crate::mem::zeroed() };
    let Some(nr) = parse_sectors(m.param_str("sectors").unwrap_or("0-63"), &mut ranges) else {
        log!("FAIL {}: bad sectors= (a-b,c,... at most 16 items)", name);
        return 1;
    };
    let Some(mut b) = open(m, name) else {
        return 1;
    };
    let mut count = 0u64;
    let mut bad = 0u64;
    for &(start, end) in &ranges[..nr] {
        if end > b.capacity {
            log!(
                "FAIL {}: sector {} past the capacity {}",
                name,
                end - 1,
                b.capacity
            );
            return 1;
        }
        let mut lba = start;
        while lba < end {
            let n = (end - lba).min(u64::from(SLOT_SECTORS)) as u32;
            let st = if verify {
                poison(&b, 0, n);
                run_ok(&mut b, name, Op::Read, lba, n)
            } else {
                fill(&b, 0, seed, lba, n);
                run_ok(&mut b, name, Op::Write, lba, n)
            };
            match st {
                Ok(S_OK) => {}
                Ok(s) => {
                    log!(
                        "FAIL {}: lba={} sectors={}: {}",
                        name,
                        lba,
                        n,
                        status_name(s)
                    );
                    return 1;
                }
                Err(()) => return 1,
            }
            if verify {
                // Check sector by sector to count every bad one.
                for s in 0..u64::from(n) {
                    let p = b.data(0).wrapping_add(s as usize * 512);
                    if check_at(p, seed, lba + s).is_some() {
                        if bad < 8 {
                            let (l, w) = check_at(p, seed, lba + s).unwrap_or((0, 0));
                            log!("FAIL {}: lba={} word={} differs", name, l, w);
                        }
                        bad += 1;
                    }
                }
            }
            count += u64::from(n);
            lba += u64::from(n);
        }
    }
    if verify {
        if bad != 0 {
            log!("FAIL {}: bad={} of {} sectors", name, bad, count);
            return 1;
        }
        log!("blk-verify ok sectors={} seed={}", count, seed);
        return 0;
    }
    match run_ok(&mut b, name, Op::Flush, 0, 0) {
        Ok(S_OK) => {}
        Ok(s) => {
            log!("FAIL {}: flush: {}", name, status_name(s));
            return 1;
        }
        Err(()) => return 1,
    }
    log!("blk-write done sectors={} seed={}", count, seed);
    0
}

/// Pattern check of one sector at `p`.
fn check_at(p: *mut u8, seed: u64, lba: u64) -> Option<(u64, usize)> {
    let w = p.cast::<u64>();
    let (base, step) = pattern_base_step(seed, lba);
    // SAFETY: `p` points at a whole sector of a slot buffer whose read
    // completed.
    unsafe {
        for i in 0..2 {
            if w.add(i).read_volatile() != pattern_word(seed, lba, i) {
                return Some((lba, i));
            }
        }
        let mut v = base.wrapping_add(step.wrapping_mul(2));
        for i in 2..SECTOR_WORDS {
            if w.add(i).read_volatile() != v {
                return Some((lba, i));
            }
            v = v.wrapping_add(step);
        }
    }
    None
}

pub fn blk_write(m: &mut Machine) -> u8 {
    write_or_verify(m, false)
}

pub fn blk_verify(m: &mut Machine) -> u8 {
    write_or_verify(m, true)
}

/// `test=blk-storm seed=N [size=8] [every=8] [start=0] [n=blocks]`:
/// sequential pattern writes of `size`-sector blocks from `start`, a flush
/// every `every` writes, `blk flushed upto=<blocks>` after each flush.
pub fn blk_storm(m: &mut Machine) -> u8 {
    let seed = m.param_u64("seed", 1);
    let size = m.param_u64("size", 8).clamp(1, u64::from(SLOT_SECTORS)) as u32;
    let every = m.param_u64("every", 8).max(1);
    let start = m.param_u64("start", 0);
    let Some(mut b) = open(m, "blk-storm") else {
        return 1;
    };
    let fit = b.capacity.saturating_sub(start) / u64::from(size);
    let n = m.param_u64("n", fit).min(fit);
    log!(
        "blk-storm start={} size={} every={} n={} seed={}",
        start,
        size,
        every,
        n,
        seed
    );
    let flush = |b: &mut Blk, upto: u64| -> bool {
        match run_ok(b, "blk-storm", Op::Flush, 0, 0) {
            Ok(S_OK) => {
                Line::new().s("blk flushed upto=").u(upto).emit();
                true
            }
            Ok(s) => {
                log!("FAIL blk-storm: flush: {}", status_name(s));
                false
            }
            Err(()) => false,
        }
    };
    for blk in 0..n {
        let lba = start + blk * u64::from(size);
        fill(&b, 0, seed, lba, size);
        match run_ok(&mut b, "blk-storm", Op::Write, lba, size) {
            Ok(S_OK) => {}
            Ok(s) => {
                log!("FAIL blk-storm: write lba={}: {}", lba, status_name(s));
                return 1;
            }
            Err(()) => return 1,
        }
        if (blk + 1) % every == 0 && !flush(&mut b, blk + 1) {
            return 1;
        }
    }
    if n % every != 0 && !flush(&mut b, n) {
        return 1;
    }
    log!("blk-storm done blocks={}", n);
    0
}

/// Most requests `blk-workload` records.
const MAX_REQUESTS: usize = 16384;

#[derive(Clone, Copy)]
struct Record {
    lba: u64,
    /// Submit time, then latency (ns).
    ns: u64,
    sectors: u32,
    write: bool,
}

// `.bss`: never zeroed; entries are written before they are read.
static RECORDS: RacyCell<[Record; MAX_REQUESTS]> = RacyCell::new(
    [Record {
        lba: 0,
        ns: 0,
        sectors: 0,
        write: false,
    }; MAX_REQUESTS],
);
static SORTED: RacyCell<[u64; MAX_REQUESTS]> = RacyCell::new([0; MAX_REQUESTS]);

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[u64], pct: u64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (pct * v.len() as u64).div_ceil(100).max(1);
    v[rank as usize - 1]
}

/// `test=blk-workload pattern=seq|rand|mixed qd=1..16 n=N size=S seed=X
/// [read_pct=P] [span=SECTORS] [lines=0|1]`.
pub fn blk_workload(m: &mut Machine) -> u8 {
    let pname = m.param_str("pattern").unwrap_or("seq");
    let Some(pattern) = Pattern::parse(pname) else {
        log!("FAIL blk-workload: pattern must be seq, rand or mixed");
        return 1;
    };
    let n = m.param_u64("n", 100) as usize;
    if n == 0 || n > MAX_REQUESTS {
        log!("FAIL blk-workload: n must be 1..={}", MAX_REQUESTS);
        return 1;
    }
    let size = m.param_u64("size", 8).clamp(1, u64::from(SLOT_SECTORS)) as u32;
    let seed = m.param_u64("seed", 1);
    let default_read = if pattern == Pattern::Mixed { 50 } else { 100 };
    let read_pct = m.param_u64("read_pct", default_read).min(100);
    let lines = m.param_u64("lines", 1) != 0;
    let Some(mut b) = open(m, "blk-workload") else {
        return 1;
    };
    let qd = (m.param_u64("qd", 1).clamp(1, MAX_SLOTS as u64) as usize).min(b.slots);
    let span = m.param_u64("span", b.capacity).min(b.capacity);
    if span < u64::from(size) {
        log!(
            "FAIL blk-workload: span {} smaller than size {}",
            span,
            size
        );
        return 1;
    }
    log!(
        "workload pattern={} qd={} n={} size={} seed={} read_pct={} span={} irq={}",
        pattern.name(),
        qd,
        n,
        size,
        seed,
        read_pct,
        span,
        if b.uses_irq() { "msix" } else { "poll" }
    );
    let mut gen = Workload::new(pattern, seed, size, span, read_pct);
    let recs = RECORDS.get().cast::<Record>();
    // SAFETY: zero bytes are valid integer arrays.
    let mut free: [u8; MAX_SLOTS] = unsafe { crate::mem::zeroed() };
    for (i, f) in free.iter_mut().enumerate() {
        *f = i as u8;
    }
    let mut nfree = b.slots;
    // SAFETY: as above.
    let mut slot_req: [usize; MAX_SLOTS] = unsafe { crate::mem::zeroed() };
    let (mut issued, mut done, mut errors) = (0usize, 0usize, 0u64);
    let mut reads = 0u64;
    // SAFETY: as above.
    let mut hist: [u32; 64] = unsafe { crate::mem::zeroed() };
    let mut sum = 0u64;
    let t_start = kvmclock::now_ns();
    let mut t_end = t_start;
    while done < n {
        let first = issued;
        while issued - done < qd && issued < n && nfree > 0 {
            let r = gen.next_req();
            nfree -= 1;
            let slot = usize::from(free[nfree]);
            b.submit(
                slot,
                if r.write { Op::Write } else { Op::Read },
                r.lba,
                r.sectors,
            );
            slot_req[slot] = issued;
            // SAFETY: `issued < n <= MAX_REQUESTS`; only this CPU uses it.
            unsafe {
                recs.add(issued).write(Record {
                    lba: r.lba,
                    ns: 0,
                    sectors: r.sectors,
                    write: r.write,
                })
            };
            reads += u64::from(!r.write);
            issued += 1;
        }
        if issued > first {
            let t = kvmclock::now_ns();
            for i in first..issued {
                // SAFETY: as above.
                unsafe { (*recs.add(i)).ns = t };
            }
            b.publish();
        }
        if !b.wait(Deadline::after_ms(REQUEST_TIMEOUT_MS)) {
            log!(
                "FAIL blk-workload: timeout, {} of {} requests done",
                done,
                n
            );
            return 1;
        }
        let t = kvmclock::now_ns();
        while let Some((slot, st)) = b.complete() {
            if slot >= b.slots {
                log!("FAIL blk-workload: used ring returned an unknown chain");
                return 1;
            }
            let idx = slot_req[slot];
            // SAFETY: `idx < issued`; written above.
            let lat = unsafe {
                let r = &mut *recs.add(idx);
                r.ns = t.wrapping_sub(r.ns);
                r.ns
            };
            sum += lat;
            hist[(63 - lat.max(1).leading_zeros()) as usize] += 1;
            if st != S_OK {
                errors += 1;
            }
            free[nfree] = slot as u8;
            nfree += 1;
            done += 1;
        }
        t_end = t;
    }
    let elapsed = t_end.wrapping_sub(t_start).max(1);
    if lines {
        for i in 0..n {
            // SAFETY: `i < n`; every record was written.
            let r = unsafe { *recs.add(i) };
            Line::new()
                .s("lat ")
                .u(i as u64)
                .s(if r.write { " W " } else { " R " })
                .u(r.lba)
                .s(" ")
                .u(u64::from(r.sectors))
                .s(" ")
                .u(r.ns)
                .emit();
        }
    }
    let mut l = Line::new();
    l.s("workload hist");
    for (k, &c) in hist.iter().enumerate() {
        if c != 0 {
            l.s(" ").u(1 << k).s(":").u(u64::from(c));
        }
    }
    l.emit();
    let sorted = SORTED.get().cast::<u64>();
    // SAFETY: `n <= MAX_REQUESTS`; the static is used only here.
    let v = unsafe { core::slice::from_raw_parts_mut(sorted, n) };
    for (i, x) in v.iter_mut().enumerate() {
        // SAFETY: as above.
        *x = unsafe { (*recs.add(i)).ns };
    }
    v.sort_unstable();
    let bytes = n as u64 * u64::from(size) * 512;
    Line::new()
        .s("workload done n=")
        .u(n as u64)
        .s(" p50_ns=")
        .u(percentile(v, 50))
        .s(" p99_ns=")
        .u(percentile(v, 99))
        .s(" mean_ns=")
        .u(sum / n as u64)
        .s(" iops=")
        .u((u128::from(n as u64) * 1_000_000_000 / u128::from(elapsed)) as u64)
        .s(" mbps=")
        .milli((u128::from(bytes) * 1_000_000 / u128::from(elapsed)) as u64)
        .s(" reads=")
        .u(reads)
        .s(" writes=")
        .u(n as u64 - reads)
        .s(" errors=")
        .u(errors)
        .s(" elapsed_ns=")
        .u(elapsed)
        .s(" kicks=")
        .u(b.q.kicks)
        .emit();
    if errors != 0 {
        log!("FAIL blk-workload: {} requests failed", errors);
        return 1;
    }
    0
}
