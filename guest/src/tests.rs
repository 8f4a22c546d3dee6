//! The test programs selected with `test=NAME` on the command line.
//!
//! Output formats are parsed by vlab's end-to-end tests: keep them stable.
//! To add a test, write `fn my_test(m: &mut Machine) -> u8` (returning the
//! exit status) and add it to [`TESTS`]; document it in docs/guest.md.

use crate::acpi::{self, Platform};
use crate::start_info::{param, parse_u64, StartInfo};
use crate::{apic, cpu, devices, io, kvmclock, log, paging, smp};
use core::sync::atomic::Ordering;

/// Everything a test may need, initialised lazily by [`Machine::new`].
pub struct Machine {
    /// Boot information from the VMM.
    pub info: StartInfo,
    /// CPUs and interrupt controllers from ACPI / MP tables.
    pub plat: Platform,
}

impl Machine {
    /// Bring up the BSP: IDT, TSS, GS base, LAPIC, kvm-clock, firmware
    /// tables. APs are started separately by [`Machine::start_cpus`].
    fn new(info: StartInfo) -> Machine {
        cpu::init_idt();
        let mut plat = acpi::discover(info.rsdp_paddr);
        paging::map_mmio(plat.lapic_base, 4096);
        apic::set_base(plat.lapic_base);
        let bsp_id = apic::id();
        plat.put_bsp_first(bsp_id);
        cpu::init_this_cpu(0, bsp_id);
        apic::enable();
        kvmclock::init_this_cpu();
        cpu::CPUS[0].online.store(true, Ordering::Release);
        Machine { info, plat }
    }

    /// Start all APs and print the CPU lines. Returns `(online, listed)`.
    fn start_cpus(&self) -> (usize, usize) {
        if self.plat.source == acpi::Source::None {
            log!("cpus: no ACPI MADT or MP table, assuming one cpu");
        }
        let online = smp::start_aps(&self.info, &self.plat);
        let listed = self.plat.ncpus + self.plat.ncpus_dropped;
        log!("cpus online={} of {}", online, listed);
        for (i, &id) in self.plat.cpus().iter().enumerate() {
            let state = if cpu::CPUS[i].online.load(Ordering::Acquire) {
                "online"
            } else {
                "offline"
            };
            log!("cpu {} apic={} {}", i, id, state);
        }
        (online, listed)
    }

    /// String command-line parameter.
    pub fn param_str(&self, key: &str) -> Option<&'static str> {
        param(self.info.cmdline, key)
    }

    /// Numeric command-line parameter with a default.
    pub fn param_u64(&self, key: &str, default: u64) -> u64 {
        param(self.info.cmdline, key)
            .and_then(parse_u64)
            .unwrap_or(default)
    }

    fn print_memory(&self) {
        let ram = self.info.ram_bytes();
        log!("memory ram={} bytes ({} MiB)", ram, ram >> 20);
        for e in self.info.memmap {
            log!("e820 {:#x} {:#x} {}", e.addr, e.size, e.typ);
        }
    }
}

/// A test: name on the command line and body returning the exit status.
struct Test {
    name: &'static str,
    run: fn(&mut Machine) -> u8,
}

static TESTS: &[Test] = &[
    Test {
        name: "hello",
        run: hello,
    },
    Test {
        name: "smp",
        run: smp_test,
    },
    Test {
        name: "mem",
        run: mem,
    },
    Test {
        name: "timer",
        run: timer,
    },
    Test {
        name: "clock",
        run: clock,
    },
    Test {
        name: "pio-loop",
        run: pio_loop,
    },
    Test {
        name: "mmio-loop",
        run: mmio_loop,
    },
    Test {
        name: "echo",
        run: echo,
    },
    Test {
        name: "pci",
        run: crate::pci_tests::pci_test,
    },
    Test {
        name: "vgpu-scene",
        run: crate::pci_tests::vgpu_scene,
    },
    Test {
        name: "vgpu-bug",
        run: crate::pci_tests::vgpu_bug,
    },
    Test {
        name: "edu",
        run: crate::pci_tests::edu_test,
    },
    Test {
        name: "vgpu-poll",
        run: crate::bench_tests::vgpu_poll,
    },
    Test {
        name: "vgpu-fill",
        run: crate::bench_tests::vgpu_fill,
    },
    Test {
        name: "vgpu-dma",
        run: crate::bench_tests::vgpu_dma,
    },
    Test {
        name: "vgpu-irq",
        run: crate::bench_tests::vgpu_irq,
    },
    Test {
        name: "blk",
        run: crate::blk_tests::blk_test,
    },
    Test {
        name: "blk-write",
        run: crate::blk_tests::blk_write,
    },
    Test {
        name: "blk-verify",
        run: crate::blk_tests::blk_verify,
    },
    Test {
        name: "blk-storm",
        run: crate::blk_tests::blk_storm,
    },
    Test {
        name: "blk-workload",
        run: crate::blk_tests::blk_workload,
    },
    Test {
        name: "panic",
        run: panic_test,
    },
    Test {
        name: "ud",
        run: ud_test,
    },
];

/// Run the test named on the command line; returns the exit status.
pub fn run(info: StartInfo) -> u8 {
    let name = param(info.cmdline, "test").unwrap_or("hello");
    // Tests that must not depend on any initialisation.
    match name {
        "exit" => return param(info.cmdline, "code").and_then(parse_u64).unwrap_or(0) as u8,
        "triple-fault" => cpu::triple_fault(),
        _ => {}
    }
    let Some(test) = TESTS.iter().find(|t| t.name == name) else {
        log!("FAIL unknown test {}", name);
        return 1;
    };
    let mut m = Machine::new(info);
    (test.run)(&mut m)
}

fn hello(m: &mut Machine) -> u8 {
    m.start_cpus();
    m.print_memory();
    if kvmclock::available() {
        log!("clock kvm-clock ns={}", kvmclock::now_ns());
    } else {
        log!("clock none");
    }
    let devs = devices::probe_all(m);
    log!("devices: {}", devs.as_str());
    log!("hello done");
    0
}

fn smp_test(m: &mut Machine) -> u8 {
    let (online, listed) = m.start_cpus();
    if online != listed {
        log!("FAIL smp: only {} of {} cpus reported in", online, listed);
        return 1;
    }
    log!("smp ok cpus={}", online);
    0
}

/// Write a pattern to one word, read it back, restore the old value.
fn check_word(addr: u64) -> bool {
    let p = addr as usize as *mut u64;
    // SAFETY: `addr` is 8-byte aligned, identity-mapped RAM from the memory
    // map; the original value is restored (nothing else runs concurrently:
    // APs are not started in this test).
    unsafe {
        let old = p.read_volatile();
        let pattern = 0x5a5a_a5a5_0f0f_f0f0 ^ addr;
        p.write_volatile(pattern);
        let ok = p.read_volatile() == pattern;
        p.write_volatile(old);
        ok
    }
}

fn mem(m: &mut Machine) -> u8 {
    m.print_memory();
    let mapped_end = paging::map_ram(m.info.ram_end());
    let mut bad = 0;
    let mut checked = 0;
    for r in m.info.ram_regions() {
        // First and last whole 4 KiB page of the region.
        let first = r.addr.next_multiple_of(4096);
        let last = (r.end() & !4095).saturating_sub(4096);
        if r.end() < first + 4096 {
            continue;
        }
        if last + 4096 > mapped_end {
            log!("mem skip {:#x} {:#x} (not mapped)", r.addr, r.size);
            continue;
        }
        for addr in [first, last + 4096 - 8] {
            checked += 1;
            if !check_word(addr) {
                log!("FAIL mem check at {:#x}", addr);
                bad += 1;
            }
        }
    }
    if bad != 0 || checked == 0 {
        log!("FAIL mem: {} of {} words bad", bad, checked);
        return 1;
    }
    log!("mem check ok");
    0
}

fn timer(m: &mut Machine) -> u8 {
    const WANT: u64 = 20;
    const TIMEOUT_NS: u64 = 2_000_000_000;
    let hz = m.param_u64("hz", 100);
    // Mask the legacy 8259 PICs so only LAPIC interrupts arrive.
    io::outb(0x21, 0xff);
    io::outb(0xa1, 0xff);
    let ticks = &cpu::CPUS[0].ticks;
    let t0 = kvmclock::now_ns();
    apic::start_timer(cpu::TIMER_VECTOR, hz);
    // Poll (interrupts on) until the first tick so a dead timer cannot
    // leave us halted forever, then sleep with hlt.
    let mut spins = 0u64;
    interrupts_on();
    while ticks.load(Ordering::Relaxed) == 0 {
        let timed_out = if kvmclock::available() {
            kvmclock::now_ns().wrapping_sub(t0) > TIMEOUT_NS
        } else {
            spins += 1;
            spins > 200_000_000
        };
        if timed_out {
            interrupts_off();
            apic::stop_timer();
            log!("FAIL timer: no ticks");
            return 1;
        }
        core::hint::spin_loop();
    }
    interrupts_off();
    while ticks.load(Ordering::Relaxed) < WANT {
        // SAFETY: `sti; hlt` atomically enables interrupts and waits; the
        // timer handler runs on its IST stack; `cli` disables them again.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    let elapsed = kvmclock::now_ns().wrapping_sub(t0);
    apic::stop_timer();
    log!(
        "timer ticks={} elapsed_ns={}",
        ticks.load(Ordering::Relaxed),
        elapsed
    );
    0
}

fn interrupts_on() {
    // SAFETY: the IDT, TSS (IST stacks) and LAPIC are set up.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
}

fn interrupts_off() {
    // SAFETY: disabling interrupts is always safe.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
}

fn clock(m: &mut Machine) -> u8 {
    if !kvmclock::available() {
        log!("clock none");
        log!("FAIL clock: no kvm-clock");
        return 1;
    }
    let ms = m.param_u64("ms", 500);
    let t0 = kvmclock::now_ns();
    log!("clock t0={}", t0);
    let target = t0 + ms * 1_000_000;
    let mut t1 = kvmclock::now_ns();
    while t1 < target {
        core::hint::spin_loop();
        t1 = kvmclock::now_ns();
    }
    log!("clock t1={}", t1);
    0
}

fn pio_loop(m: &mut Machine) -> u8 {
    let n = m.param_u64("n", 1000);
    let t0 = kvmclock::now_ns();
    for i in 0..n {
        io::outl(0xf5, i as u32);
    }
    let dt = kvmclock::now_ns().wrapping_sub(t0);
    log!("loop done n={} ns={}", n, dt);
    0
}

fn mmio_loop(m: &mut Machine) -> u8 {
    const MMIO_ADDR: usize = 0xd000_0000;
    let n = m.param_u64("n", 1000);
    paging::map_mmio(MMIO_ADDR as u64, 4);
    let t0 = kvmclock::now_ns();
    for i in 0..n {
        // SAFETY: 0xD000_0000 is in the uncached MMIO window mapped by the
        // boot page tables; the VMM treats the write as a benchmark probe.
        unsafe { core::ptr::write_volatile(MMIO_ADDR as *mut u32, i as u32) };
    }
    let dt = kvmclock::now_ns().wrapping_sub(t0);
    log!("loop done n={} ns={}", n, dt);
    0
}

/// Echo serial input back, upper-cased so the echo is told apart from the
/// terminal's own. Ends with status 0 on Ctrl-D (0x04); `max=` bytes
/// (default unlimited) also ends it. Prints `echo ready` first.
fn echo(m: &mut Machine) -> u8 {
    let max = m.param_u64("max", u64::MAX);
    log!("echo ready: type, Ctrl-D ends");
    let mut n = 0u64;
    while n < max {
        let Some(b) = crate::serial::try_read_byte() else {
            core::hint::spin_loop();
            continue;
        };
        if b == 0x04 {
            break;
        }
        crate::serial::write_raw(&[b.to_ascii_uppercase()]);
        n += 1;
    }
    log!("echo done bytes={}", n);
    0
}

fn panic_test(_: &mut Machine) -> u8 {
    panic!("test panic");
}

fn ud_test(_: &mut Machine) -> u8 {
    // SAFETY: deliberately raises #UD, which the exception handler reports
    // before ending the VM.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    1
}
