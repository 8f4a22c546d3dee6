//! Benchmark tests of the vgpu driver path, run by `vlab bench`
//! (`crates/vlab/src/bench/vgpu.rs` parses the lines; formats in
//! docs/guest.md). Each prints one machine-readable result line with
//! totals (kvm-clock nanoseconds, counts); the host does the division (no
//! floating point in the guest).
//!
//! * `vgpu-poll n=N`: N reads of STATUS (a plain load from BAR0) and N
//!   reads of a RAM word, with the same three-instruction loop, first in
//!   ring 0, then in ring 3 (`usermode.rs`: the register page mapped into
//!   the user window, as a driver's user-space half polls it; on kvm_pvm
//!   only ring 3 runs natively). Whether the STATUS loads hit the
//!   read-only register page or trap to vlab is the VMM's choice
//!   (`MachineOptions::register_pages`): `vlab bench` runs the test both
//!   ways.
//! * `vgpu-fill n=N w=W h=H`: mode W×H, N FILL_RECTs of the whole screen
//!   encoded up front, submitted, then `sti; hlt` until the last fence.
//! * `vgpu-dma n=N size=BYTES`: the same with N UPLOAD_IMAGEs of BYTES
//!   each from guest RAM (16 MiB up) to the screen (mode 1024×768).
//! * `vgpu-irq n=N`: N command buffers holding one FENCE each, submitted
//!   and waited for one by one (MSI, `sti; hlt`, INT_STATUS acknowledged,
//!   EOI).

use crate::irq::IrqMode;
use crate::tests::Machine;
use crate::vgpu::{self, Vgpu};
use crate::{kvmclock, log, usermode};
use core::sync::atomic::AtomicU32;

/// Largest mode (datasheet §2).
const MAX_W: u32 = 1024;
const MAX_H: u32 = 768;
/// Commands per command buffer (2048 dwords: 340 fills or 255 uploads,
/// plus a fence).
const FILLS_PER_BUF: u32 = ((vgpu::CMD_DWORDS - 2) / 6) as u32;
const UPLOADS_PER_BUF: u32 = ((vgpu::CMD_DWORDS - 2) / 8) as u32;
/// Where `vgpu-dma` reads from: RAM above the kernel image and its `.bss`.
const DMA_SOURCE: u64 = 16 << 20;

/// Find, reset and (except for `vgpu-poll`) start the vgpu; prints the
/// FAIL line itself.
fn probe(m: &Machine, test: &str) -> Option<Vgpu> {
    if !kvmclock::available() {
        log!("FAIL {}: no kvm-clock", test);
        return None;
    }
    match Vgpu::probe(m) {
        Ok(g) => Some(g),
        Err(e) => {
            log!("FAIL {}: {}", test, e);
            None
        }
    }
}

fn start(m: &Machine, g: &mut Vgpu, test: &str, w: u32, h: u32) -> bool {
    match g.start(m, w, h, Some(IrqMode::Msi)) {
        Ok(()) => true,
        Err(e) => {
            log!("FAIL {}: {}", test, e);
            false
        }
    }
}

/// The word `vgpu-poll` reads for its RAM baseline.
static RAM_WORD: AtomicU32 = AtomicU32::new(0x5a5a_5a5a);

/// `n` 32-bit loads from `addr` (`mov; dec; jnz`); kvm-clock ns.
fn read_loop(addr: u64, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let t0 = kvmclock::now_ns();
    // SAFETY: `addr` is a mapped, 4-byte aligned word (the vgpu's STATUS
    // register, which has no read side effects, or a static); the loop
    // only reads it and runs `n` >= 1 times.
    unsafe {
        core::arch::asm!(
            "2:",
            "mov {tmp:e}, dword ptr [{addr}]",
            "dec {n}",
            "jnz 2b",
            addr = in(reg) addr,
            n = inout(reg) n => _,
            tmp = out(reg) _,
            options(nostack, readonly),
        );
    }
    kvmclock::now_ns().wrapping_sub(t0)
}

/// `test=vgpu-poll [n=10000]`: the loops in ring 0, then in ring 3.
pub fn vgpu_poll(m: &mut Machine) -> u8 {
    let n = m.param_u64("n", 10_000).max(1);
    let Some(g) = probe(m, "vgpu-poll") else {
        return 1;
    };
    let status_addr = g.f.bars[0].addr + vgpu::REG_STATUS;
    let ram_addr = RAM_WORD.as_ptr() as u64;
    let status_ns = read_loop(status_addr, n);
    let ram_ns = read_loop(ram_addr, n);
    log!(
        "vgpu-poll mode=kernel n={} status_ns={} ram_ns={} status={:#x}",
        n,
        status_ns,
        ram_ns,
        g.read(vgpu::REG_STATUS)
    );
    // The same loop in ring 3, the register page mapped into the user
    // window (read-only, uncached) and a RAM word on the user data page.
    usermode::init();
    let user_status = usermode::map_device_page(status_addr);
    let user_ram = usermode::set_ram_word(0x5a5a_5a5a);
    let t0 = kvmclock::now_ns();
    let s = usermode::poll(user_status, n);
    let trip_ns = kvmclock::now_ns().wrapping_sub(t0);
    let (Some(s), Some(r)) = (s, usermode::poll(user_ram, n)) else {
        log!("FAIL vgpu-poll: ring 3 did not end at its ud2");
        return 1;
    };
    log!(
        "vgpu-poll mode=user n={} status_ns={} ram_ns={} status={:#x} status_ticks={} ram_ticks={} status_trip_ns={}",
        n,
        kvmclock::tsc_to_ns(s.ticks),
        kvmclock::tsc_to_ns(r.ticks),
        s.value,
        s.ticks,
        r.ticks,
        trip_ns
    );
    0
}

/// Submit `n` commands in buffers of at most `per_buf`, each buffer
/// ending with a fence, at most 6 outstanding; `encode(buf, i)` writes
/// command `i`. The first buffer is encoded before the clock starts; the
/// others while the engine works. Returns kvm-clock ns from the first
/// doorbell to the last fence's interrupt.
fn run_batches(
    g: &mut Vgpu,
    n: u32,
    per_buf: u32,
    encode: &dyn Fn(&mut vgpu::CmdBuf, u32),
) -> Result<u64, vgpu::Error> {
    let bufs = n.div_ceil(per_buf).max(1);
    // Buffer k ends with fence `first + k`.
    let first = g.last_fence.wrapping_add(1);
    let mut t0 = 0;
    let mut i = 0;
    for k in 0..bufs {
        // Rule 9: descriptor k - 7 must be done before descriptor k goes
        // in; the fence of buffer k - 6 implies it (RING_HEAD passed k - 7).
        if k >= 7 {
            g.wait_fence(first.wrapping_add(k - 6))?;
        }
        let mut b = g.begin();
        let end = n.min(i + per_buf);
        while i < end {
            encode(&mut b, i);
            i += 1;
        }
        let v = g.next_fence();
        b.fence(v);
        if k == 0 {
            t0 = kvmclock::now_ns();
        }
        g.submit(b)?;
    }
    g.wait_fence(g.last_fence)?;
    Ok(kvmclock::now_ns().wrapping_sub(t0))
}

/// `test=vgpu-fill [n=64] [w=1024] [h=768]`.
pub fn vgpu_fill(m: &mut Machine) -> u8 {
    let n = m.param_u64("n", 64) as u32;
    let w = m.param_u64("w", u64::from(MAX_W)) as u32;
    let h = m.param_u64("h", u64::from(MAX_H)) as u32;
    if w == 0 || h == 0 || w > MAX_W || h > MAX_H {
        log!(
            "FAIL vgpu-fill: w={} h={}: the mode is at most 1024x768",
            w,
            h
        );
        return 1;
    }
    let Some(mut g) = probe(m, "vgpu-fill") else {
        return 1;
    };
    if !start(m, &mut g, "vgpu-fill", w, h) {
        return 1;
    }
    let fill = |b: &mut vgpu::CmdBuf, i: u32| b.fill(0, 0, w, h, i.wrapping_mul(0x0001_0307));
    match run_batches(&mut g, n, FILLS_PER_BUF, &fill) {
        Ok(ns) => {
            g.quiesce();
            let pixels = u64::from(n) * u64::from(w) * u64::from(h);
            log!(
                "vgpu-fill n={} w={} h={} pixels={} bytes={} ns={} irqs={}",
                n,
                w,
                h,
                pixels,
                pixels * 4,
                ns,
                g.irq_count()
            );
            0
        }
        Err(e) => {
            log!("FAIL vgpu-fill: {}", e);
            1
        }
    }
}

/// `test=vgpu-dma [n=64] [size=3145728]`: sizes of a whole number of
/// 1024-pixel rows (4 KiB) up to 3 MiB, or below 4 KiB a part of one row.
pub fn vgpu_dma(m: &mut Machine) -> u8 {
    let n = m.param_u64("n", 64) as u32;
    let size = m.param_u64("size", u64::from(MAX_W * MAX_H * 4));
    let row = u64::from(MAX_W) * 4;
    let (w, h) = if size < row {
        (size / 4, 1)
    } else {
        (u64::from(MAX_W), size / row)
    };
    if size == 0
        || !size.is_multiple_of(4)
        || (size >= row && !size.is_multiple_of(row))
        || h > u64::from(MAX_H)
    {
        log!(
            "FAIL vgpu-dma: size={}: use a multiple of 4 below 4096, or of 4096 up to 3 MiB",
            size
        );
        return 1;
    }
    let (w, h) = (w as u32, h as u32);
    if !m
        .info
        .ram_regions()
        .any(|r| r.addr <= DMA_SOURCE && DMA_SOURCE + size <= r.end())
    {
        log!("FAIL vgpu-dma: no RAM at {:#x}+{:#x}", DMA_SOURCE, size);
        return 1;
    }
    let Some(mut g) = probe(m, "vgpu-dma") else {
        return 1;
    };
    if !start(m, &mut g, "vgpu-dma", MAX_W, MAX_H) {
        return 1;
    }
    let upload = |b: &mut vgpu::CmdBuf, _: u32| b.upload(0, 0, w, h, DMA_SOURCE, w * 4);
    match run_batches(&mut g, n, UPLOADS_PER_BUF, &upload) {
        Ok(ns) => {
            g.quiesce();
            log!(
                "vgpu-dma n={} size={} bytes={} ns={} irqs={}",
                n,
                size,
                u64::from(n) * size,
                ns,
                g.irq_count()
            );
            0
        }
        Err(e) => {
            log!("FAIL vgpu-dma: {}", e);
            1
        }
    }
}

/// `test=vgpu-irq [n=1000]`.
pub fn vgpu_irq(m: &mut Machine) -> u8 {
    let n = m.param_u64("n", 1000);
    let Some(mut g) = probe(m, "vgpu-irq") else {
        return 1;
    };
    if !start(m, &mut g, "vgpu-irq", 64, 64) {
        return 1;
    }
    let t0 = kvmclock::now_ns();
    for _ in 0..n {
        let mut b = g.begin();
        let v = g.next_fence();
        b.fence(v);
        if let Err(e) = g.submit(b).and_then(|()| g.wait_fence(v)) {
            log!("FAIL vgpu-irq: {} (fence {})", e, v);
            return 1;
        }
    }
    let ns = kvmclock::now_ns().wrapping_sub(t0);
    g.quiesce();
    log!(
        "vgpu-irq n={} irqs={} spurious={} ns={}",
        n,
        g.irq_count(),
        g.spurious,
        ns
    );
    0
}
