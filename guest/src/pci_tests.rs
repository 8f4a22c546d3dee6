//! Tests of the PCI drivers: `pci`, `vgpu-scene`, `vgpu-bug`, `edu`
//! (output formats in docs/guest.md; parsed by crates/vlab/tests/pci_e2e.rs).

use crate::edu::Edu;
use crate::irq::{Deadline, IrqMode};
use crate::log;
use crate::pci;
use crate::scene_data as scene;
use crate::tests::Machine;
use crate::vgpu::{self, error_name, Error, Vgpu};

/// Prints a BAR as ` barN=0x...` (` barN=io:0x...` for I/O BARs).
struct Bars<'a>(&'a pci::Function);

impl core::fmt::Display for Bars<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, b) in self.0.bars.iter().enumerate() {
            if b.addr == 0 {
                continue;
            }
            let io = if b.io { "io:" } else { "" };
            write!(f, " bar{}={}{:#x}", i, io, b.addr)?;
        }
        Ok(())
    }
}

/// Prints the interrupt line (or `none` without an interrupt pin).
struct Line(u8, u8);

impl core::fmt::Display for Line {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.1 == 0 || self.0 == 0xff {
            write!(f, "none")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Prints an MSI capability offset, or `none`.
struct Cap(u8);

impl core::fmt::Display for Cap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == 0 {
            write!(f, "none")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

/// `test=pci`: one line per function on bus 0.
pub fn pci_test(m: &mut Machine) -> u8 {
    let fns = pci::scan(&m.plat);
    log!(
        "pci access={} ecam={:#x}",
        fns.access_name(),
        m.plat.ecam_base
    );
    for f in fns.all() {
        log!(
            "pci {:02x}:{:02x}.{} {:04x}:{:04x} class {:02x}/{:02x}{} irq={} msi={}{}{}",
            f.bdf.bus,
            f.bdf.dev,
            f.bdf.func,
            f.vendor,
            f.device,
            f.class,
            f.subclass,
            Bars(f),
            Line(f.irq_line, f.irq_pin),
            Cap(f.msi_cap),
            if f.name().is_some() { " name=" } else { "" },
            f.name().unwrap_or(""),
        );
    }
    log!("pci done functions={}", fns.all().len());
    0
}

fn irq_param(m: &Machine) -> Result<IrqMode, &str> {
    match m.param_str("irq") {
        None | Some("msi") => Ok(IrqMode::Msi),
        Some("intx") => Ok(IrqMode::Intx),
        Some(other) => Err(other),
    }
}

/// `test=vgpu-scene [irq=msi|intx]`.
pub fn vgpu_scene(m: &mut Machine) -> u8 {
    let mode = match irq_param(m) {
        Ok(mode) => mode,
        Err(other) => {
            log!("FAIL vgpu-scene: unknown irq={}", other);
            return 1;
        }
    };
    let mut g = match Vgpu::probe(m) {
        Ok(g) => g,
        Err(e) => {
            log!("FAIL vgpu-scene: {}", e);
            return 1;
        }
    };
    let t0 = crate::kvmclock::now_ns();
    let r = g
        .start(m, scene::SCENE_WIDTH, scene::SCENE_HEIGHT, Some(mode))
        .and_then(|()| vgpu::draw_scene(&mut g));
    let dt = crate::kvmclock::now_ns().wrapping_sub(t0);
    match r {
        Ok(fences) => {
            g.quiesce();
            log!(
                "vgpu mode {}x{} stride={} irq={} ns={}",
                scene::SCENE_WIDTH,
                scene::SCENE_HEIGHT,
                g.stride,
                mode.name(),
                dt
            );
            let done = g.fence_completed();
            if done != fences {
                log!(
                    "FAIL vgpu-scene: FENCE_COMPLETED={} after {} fences",
                    done,
                    fences
                );
                return 1;
            }
            log!(
                "vgpu scene done fences={} irqs={} spurious={}",
                done,
                g.irq_count(),
                g.spurious
            );
            0
        }
        Err(e) => {
            log!(
                "FAIL vgpu-scene: {} (fence {} of the scene)",
                e,
                g.last_fence
            );
            1
        }
    }
}

/// Names of the `vgpu-bug` variants.
const BUGS: &[&str] = &[
    "no-bus-master",
    "bad-ring",
    "dma-outside-ram",
    "no-ack",
    "wrong-width",
    "mode-while-busy",
];

/// `test=vgpu-bug name=<bug>`: make one documented mistake and check the
/// device's reaction (ERROR_CODE etc.).
pub fn vgpu_bug(m: &mut Machine) -> u8 {
    let name = m.param_str("name").unwrap_or("");
    if !BUGS.contains(&name) {
        log!("FAIL vgpu-bug: unknown name={} (known: {:?})", name, BUGS);
        return 1;
    }
    let mut g = match Vgpu::probe(m) {
        Ok(g) => g,
        Err(e) => {
            log!("FAIL vgpu-bug {}: {}", name, e);
            return 1;
        }
    };
    let r = match name {
        "no-bus-master" => bug_no_bus_master(m, &mut g),
        "bad-ring" => bug_bad_ring(&mut g),
        "dma-outside-ram" => bug_dma_outside_ram(m, &mut g),
        "no-ack" => bug_no_ack(m, &mut g),
        "wrong-width" => bug_wrong_width(&mut g),
        _ => bug_mode_while_busy(m, &mut g),
    };
    match r {
        Ok(()) => {
            log!("vgpu-bug {} ok", name);
            0
        }
        Err(e) => {
            log!("FAIL vgpu-bug {}: {}", name, e);
            1
        }
    }
}

/// Report the observed code and compare with the expected one.
fn expect(
    name: &str,
    (code, addr): (u32, u64),
    want: u32,
    want_addr: Option<u64>,
) -> Result<(), Error> {
    log!(
        "vgpu-bug {} error={} code={:#x} addr={:#x}",
        name,
        error_name(code),
        code,
        addr
    );
    if code != want {
        return Err(Error::Other("unexpected ERROR_CODE"));
    }
    if want_addr.is_some_and(|a| a != addr) {
        return Err(Error::Other("unexpected ERROR_ADDR"));
    }
    Ok(())
}

fn bug_no_bus_master(m: &Machine, g: &mut Vgpu) -> Result<(), Error> {
    g.set_mode(64, 64)?;
    g.set_ring(vgpu::ring_addr(), vgpu::RING_SIZE as u32);
    g.f.update_command(pci::CMD_MEMORY, pci::CMD_BUS_MASTER);
    g.enable()?;
    g.enable_irq(m, IrqMode::Msi)?;
    log!("vgpu-bug no-bus-master: ring enabled, bus mastering off, FILL_RECT + FENCE 1, doorbell");
    let mut b = g.begin();
    b.fill(0, 0, 8, 8, 0x00ff_0000);
    let v = g.next_fence();
    b.fence(v);
    g.submit(b)?;
    let err = g.wait_error()?;
    expect("no-bus-master", err, 0x10, Some(vgpu::ring_addr()))?;
    // Datasheet: not skipped. Enable bus mastering, clear, and it runs.
    g.f.enable_bus_master();
    g.clear_error();
    g.wait_fence(v)?;
    log!(
        "vgpu-bug no-bus-master: retried after set_master + CLEAR_ERROR, fence={}",
        g.fence_completed()
    );
    g.write(vgpu::REG_CONTROL, vgpu::CONTROL_RESET);
    Ok(())
}

fn bug_bad_ring(g: &mut Vgpu) -> Result<(), Error> {
    g.f.enable_bus_master();
    for (what, base, size) in [
        (
            "base not 16-byte aligned",
            vgpu::ring_addr() + 8,
            vgpu::RING_SIZE as u32,
        ),
        ("size 3 not a power of two", vgpu::ring_addr(), 3),
    ] {
        log!(
            "vgpu-bug bad-ring: RING_BASE={:#x} RING_SIZE={} ({}), CONTROL.ENABLE",
            base,
            size,
            what
        );
        g.set_ring(base, size);
        g.write(vgpu::REG_CONTROL, vgpu::CONTROL_ENABLE);
        if g.read(vgpu::REG_STATUS) & vgpu::STATUS_ENABLED != 0 {
            return Err(Error::Other("ring enabled anyway"));
        }
        expect("bad-ring", g.error(), 0x07, Some(vgpu::REG_CONTROL))?;
        g.clear_error();
        g.write(vgpu::REG_INT_STATUS, vgpu::INT_ERROR);
    }
    g.write(vgpu::REG_CONTROL, vgpu::CONTROL_RESET);
    Ok(())
}

fn bug_dma_outside_ram(m: &Machine, g: &mut Vgpu) -> Result<(), Error> {
    g.start(m, 64, 64, Some(IrqMode::Msi))?;
    // 2 MiB past the end of RAM, 4 KiB aligned.
    let bad = (m.info.ram_end() + (4 << 20)) & !0x1f_ffff;
    log!(
        "vgpu-bug dma-outside-ram: descriptor buffer_addr={:#x} (RAM ends at {:#x}), doorbell",
        bad,
        m.info.ram_end()
    );
    g.submit_raw(bad, 64)?;
    let err = g.wait_error()?;
    expect("dma-outside-ram", err, 0x11, Some(bad))?;
    g.write(vgpu::REG_CONTROL, vgpu::CONTROL_RESET);
    Ok(())
}

fn bug_no_ack(m: &Machine, g: &mut Vgpu) -> Result<(), Error> {
    g.start(m, 64, 64, Some(IrqMode::Msi))?;
    log!("vgpu-bug no-ack: 3 batches ending in FENCE 1..3, MSI taken and EOIed but INT_STATUS never acknowledged");
    for i in 0..3u32 {
        let mut b = g.begin();
        b.fill(i * 8, 0, 8, 8, 0x0000_ff00);
        let v = g.next_fence();
        b.fence(v);
        g.submit(b)?;
        if i == 0 {
            if g.wait_irq_without_ack(Deadline::after_ms(2000)) == 0 {
                return Err(Error::Timeout(
                    "the first fence interrupt",
                    g.read(vgpu::REG_STATUS),
                ));
            }
        } else {
            g.poll_fence(v)?;
        }
    }
    // A message for fences 2 and 3 would arrive now (it must not).
    g.wait_irq_without_ack(Deadline::after_ms(50));
    let int_status = g.read(vgpu::REG_INT_STATUS);
    let status = g.read(vgpu::REG_STATUS);
    let irqs = g.raw_irq_count();
    log!(
        "vgpu-bug no-ack fence={} irqs={} int_status={:#x} status={:#x}",
        g.fence_completed(),
        irqs,
        int_status,
        status
    );
    expect("no-ack", g.error(), 0, None)?;
    if g.fence_completed() != 3 {
        return Err(Error::Other("the engine did not keep executing"));
    }
    if int_status & vgpu::INT_FENCE == 0 || status & vgpu::STATUS_INT_PENDING == 0 {
        return Err(Error::Other("INT_STATUS.FENCE not left pending"));
    }
    if irqs != 1 {
        return Err(Error::Other("MSI sent again for a cause still pending"));
    }
    g.write(vgpu::REG_INT_MASK, 0);
    g.write(vgpu::REG_CONTROL, vgpu::CONTROL_RESET);
    Ok(())
}

fn bug_wrong_width(g: &mut Vgpu) -> Result<(), Error> {
    log!("vgpu-bug wrong-width: 16-bit write of 0x1234 to SCRATCH (0x05c)");
    g.write16(vgpu::REG_SCRATCH, 0x1234);
    expect("wrong-width", g.error(), 0x01, Some(vgpu::REG_SCRATCH))?;
    if g.read(vgpu::REG_SCRATCH) != 0 {
        return Err(Error::Other("the ignored write changed SCRATCH"));
    }
    g.clear_error();
    g.write(vgpu::REG_INT_STATUS, vgpu::INT_ERROR);
    g.write(vgpu::REG_SCRATCH, 0x1234);
    if g.read(vgpu::REG_SCRATCH) != 0x1234 || g.read(vgpu::REG_STATUS) & vgpu::STATUS_ERROR != 0 {
        return Err(Error::Other("a correct 32-bit write to SCRATCH failed"));
    }
    g.write(vgpu::REG_CONTROL, vgpu::CONTROL_RESET);
    Ok(())
}

fn bug_mode_while_busy(m: &Machine, g: &mut Vgpu) -> Result<(), Error> {
    const W: u32 = 640;
    const H: u32 = 480;
    /// Descriptors per attempt: the engine holds the device lock for one
    /// descriptor at a time, so the mode write lands between two of them
    /// while later ones are still outstanding.
    const DESCRIPTORS: u32 = 6;
    const ATTEMPTS: u32 = 12;
    g.start(m, W, H, Some(IrqMode::Msi))?;
    let mut attempt = 0;
    let (status, err, v) = loop {
        attempt += 1;
        let mut v = 0;
        for d in 0..DESCRIPTORS {
            let mut b = g.begin();
            for i in 0..4u32 {
                b.fill(0, 0, W, H, (d * 4 + i).wrapping_mul(0x0001_0203));
            }
            if d == DESCRIPTORS - 1 {
                v = g.next_fence();
                b.fence(v);
            }
            g.submit(b)?;
        }
        // No log line in between: printing takes milliseconds.
        let status = g.read(vgpu::REG_STATUS);
        g.write(vgpu::REG_MODE_WIDTH, 320);
        let err = g.error();
        let refused = g.read(vgpu::REG_MODE_WIDTH) == W;
        if (status & vgpu::STATUS_ENGINE_BUSY != 0 && refused) || attempt == ATTEMPTS {
            break (status, err, v);
        }
        // The engine drained the ring before the write reached it (the
        // write was then legal and took effect): restore the mode once
        // idle and try again.
        g.wait_fence(v)?;
        g.wait_idle()?;
        g.write(vgpu::REG_MODE_WIDTH, W);
    };
    log!(
        "vgpu-bug mode-while-busy: {} descriptors of full-screen fills submitted (STATUS={:#x}, attempt {}), then MODE_WIDTH=320",
        DESCRIPTORS,
        status,
        attempt
    );
    if status & vgpu::STATUS_ENGINE_BUSY == 0 {
        return Err(Error::Other("the engine finished before the mode write"));
    }
    expect("mode-while-busy", err, 0x04, Some(vgpu::REG_MODE_WIDTH))?;
    if g.read(vgpu::REG_MODE_WIDTH) != W {
        return Err(Error::Other("the refused write changed MODE_WIDTH"));
    }
    // Register error: nothing to skip. Clear it and let the work finish.
    g.clear_error();
    g.wait_fence(v)?;
    g.wait_idle()?;
    g.write(vgpu::REG_CONTROL, vgpu::CONTROL_RESET);
    Ok(())
}

/// `test=edu [irq=msi|intx]`.
pub fn edu_test(m: &mut Machine) -> u8 {
    let mode = match m.param_str("irq") {
        None => None,
        Some("msi") => Some(IrqMode::Msi),
        Some("intx") => Some(IrqMode::Intx),
        Some(other) => {
            log!("FAIL edu: unknown irq={}", other);
            return 1;
        }
    };
    let Some(mut edu) = Edu::probe(m) else {
        log!("FAIL edu: no edu (1234:11e8) on bus 0");
        return 1;
    };
    match edu.run(m, mode) {
        Ok(r) => {
            log!("edu irq={} irqs={}", r.mode.name(), edu.irqs);
            log!(
                "edu id={:#010x} liveness ok factorial(12)={} irq ok dma ok",
                r.id,
                r.factorial
            );
            0
        }
        Err(e) => {
            log!("FAIL edu: {}", e);
            1
        }
    }
}
