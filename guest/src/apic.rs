//! Local APIC in xAPIC (MMIO) mode.
//!
//! Registers are 32-bit, 16-byte spaced, at the LAPIC base (0xFEE0_0000 by
//! default; taken from the MADT). The page is mapped uncached by the boot
//! page tables (0xC000_0000..4 GiB is PCD|PWT). Every access is a VM exit
//! handled by the host kernel's emulated LAPIC (~3 µs on kvm_pvm).
//!
//! The LAPIC timer counts at the APIC bus rate divided by the divide
//! configuration. KVM and QEMU both emulate a 1 GHz bus (1 ns per count),
//! so no calibration is done; `tests::timer` reports the measured period.

use crate::cpu::{LAPIC_EOI_ADDR, SPURIOUS_VECTOR};
use core::sync::atomic::{AtomicU64, Ordering};

const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INIT: u64 = 0x380;
const REG_TIMER_DIV: u64 = 0x3e0;

/// ICR delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// LVT timer mode: periodic.
const TIMER_PERIODIC: u32 = 1 << 17;
/// Assumed LAPIC timer input clock (see module docs).
pub const BUS_HZ: u64 = 1_000_000_000;
/// Divide configuration value 0b1011 = divide by 1.
const DIV_BY_1: u32 = 0xb;

static BASE: AtomicU64 = AtomicU64::new(crate::acpi::DEFAULT_LAPIC_BASE);

/// Record the LAPIC base address (from the MADT). Call before [`enable`].
pub fn set_base(base: u64) {
    BASE.store(base, Ordering::Relaxed);
    LAPIC_EOI_ADDR.store(base + REG_EOI, Ordering::Relaxed);
}

fn read(reg: u64) -> u32 {
    let addr = BASE.load(Ordering::Relaxed) + reg;
    // SAFETY: the LAPIC page is identity mapped (uncached) on every CPU.
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

fn write(reg: u64, value: u32) {
    let addr = BASE.load(Ordering::Relaxed) + reg;
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u32, value) }
}

/// APIC ID of the calling CPU.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signal end of interrupt for the highest-priority in-service vector.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Software-enable this CPU's LAPIC (SVR bit 8) with the spurious vector.
pub fn enable() {
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

fn send_ipi(apic_id: u32, low: u32) {
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, low);
    // The emulated LAPIC delivers synchronously; bound the wait anyway.
    for _ in 0..1000 {
        if read(REG_ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Send INIT (assert, level triggered) to `apic_id`.
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, 0x4500);
}

/// Send a STARTUP IPI: the AP starts in real mode at `page << 12`.
pub fn send_sipi(apic_id: u32, page: u8) {
    send_ipi(apic_id, 0x4600 | u32::from(page));
}

/// Start the periodic LAPIC timer at `hz` interrupts per second.
pub fn start_timer(vector: u8, hz: u64) {
    write(REG_TIMER_DIV, DIV_BY_1);
    write(REG_LVT_TIMER, TIMER_PERIODIC | u32::from(vector));
    let count = (BUS_HZ / hz.max(1)).clamp(1, u64::from(u32::MAX));
    write(REG_TIMER_INIT, count as u32);
}

/// Arm the LAPIC timer once: `vector` fires after `ns` nanoseconds
/// (clamped to 1..=4.29 s). Used as a wake-up for `hlt` with a timeout.
pub fn start_oneshot(vector: u8, ns: u64) {
    write(REG_TIMER_DIV, DIV_BY_1);
    write(REG_LVT_TIMER, u32::from(vector));
    write(REG_TIMER_INIT, ns.clamp(1, u64::from(u32::MAX)) as u32);
}

/// Stop the LAPIC timer.
pub fn stop_timer() {
    write(REG_TIMER_INIT, 0);
}
