//! CMOS RAM and real-time clock (Motorola MC146818 and PC compatibles).
//!
//! # Ports
//!
//! | port | offset | access | function                                        |
//! |------|--------|--------|-------------------------------------------------|
//! | 0x70 | 0      | write  | index: bits 0-6 select a byte, bit 7 = NMI disable |
//! | 0x70 | 0      | read   | 0xff (the index register is write-only)         |
//! | 0x71 | 1      | r/w    | the byte selected by the index                  |
//!
//! A wider access is split into byte lanes as on an 8-bit ISA bus: byte `i`
//! goes to the port at `offset + i`, so `outw 0x70` sets the index from the
//! low byte and writes the high byte to the data port. Lanes beyond the two
//! ports read 0 and are ignored on write.
//!
//! # Registers
//!
//! | index | name                   | behaviour                                        |
//! |-------|------------------------|--------------------------------------------------|
//! | 0x00  | seconds                | current UTC time from the clock                  |
//! | 0x02  | minutes                | "                                                |
//! | 0x04  | hours                  | " (12-hour: bit 7 = PM, unless B.24H)            |
//! | 0x06  | day of week            | " (1 = Sunday)                                   |
//! | 0x07  | day of month           | "                                                |
//! | 0x08  | month                  | "                                                |
//! | 0x09  | year (of century)      | "                                                |
//! | 0x32  | century                | "                                                |
//! | 0x01/03/05 | alarms            | plain storage (alarms never fire)                |
//! | 0x0a  | register A             | storage; UIP (bit 7) always reads 0; default 0x26 |
//! | 0x0b  | register B             | storage; DM (0x04) selects binary, 24H (0x02) selects 24-hour; default 0x02 |
//! | 0x0c  | register C             | reads 0 (no interrupt flags), read-only          |
//! | 0x0d  | register D             | reads 0x80 (VRT: RAM and time valid), read-only  |
//! | 0x15/16 | base memory, KiB     | min(RAM below 4 GiB, 640 KiB)                    |
//! | 0x17/18, 0x30/31 | extended memory, KiB | RAM between 1 MiB and 4 GiB, max 0xffff |
//! | 0x34/35 | memory above 16 MiB  | in 64 KiB units, up to 4 GiB, max 0xffff         |
//! | 0x5b-5d | memory above 4 GiB   | in 64 KiB units, max 0xff_ffff                   |
//! | others | NVRAM                 | plain storage, initially 0                       |
//!
//! The memory-size bytes follow QEMU's `pc_cmos_init`, which SeaBIOS and
//! other firmware read.
//!
//! # Not modelled
//!
//! Writing the time registers stores the value in NVRAM but does not move
//! the clock: reads always report the injected clock's current time (so a
//! guest setting the RTC, e.g. `hwclock --systohc`, has no lasting effect).
//! Register B's SET bit does not freeze the time. No periodic, alarm or
//! update-ended interrupts (no IRQ 8); times before 1970 read as 1970-01-01.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{Access, BusDevice};

/// First I/O port of the CMOS (the index port).
pub const CMOS_PORT: u64 = 0x70;
/// Number of I/O ports: index and data.
pub const CMOS_PORT_LEN: u64 = 2;
/// Size of the CMOS RAM, in bytes.
pub const CMOS_NVRAM_SIZE: usize = 128;

/// Index port bit that masks NMIs (not part of the index).
pub const CMOS_NMI_DISABLE: u8 = 0x80;

/// Seconds.
pub const RTC_SECONDS: u8 = 0x00;
/// Seconds alarm.
pub const RTC_SECONDS_ALARM: u8 = 0x01;
/// Minutes.
pub const RTC_MINUTES: u8 = 0x02;
/// Minutes alarm.
pub const RTC_MINUTES_ALARM: u8 = 0x03;
/// Hours.
pub const RTC_HOURS: u8 = 0x04;
/// Hours alarm.
pub const RTC_HOURS_ALARM: u8 = 0x05;
/// Day of week, 1 = Sunday.
pub const RTC_DAY_OF_WEEK: u8 = 0x06;
/// Day of month, 1-31.
pub const RTC_DAY_OF_MONTH: u8 = 0x07;
/// Month, 1-12.
pub const RTC_MONTH: u8 = 0x08;
/// Year of the century, 0-99.
pub const RTC_YEAR: u8 = 0x09;
/// Register A: update in progress, divider, rate select.
pub const RTC_REG_A: u8 = 0x0a;
/// Register B: SET, interrupt enables, data mode, 24/12 hours, DST.
pub const RTC_REG_B: u8 = 0x0b;
/// Register C: interrupt flags.
pub const RTC_REG_C: u8 = 0x0c;
/// Register D: valid RAM and time.
pub const RTC_REG_D: u8 = 0x0d;
/// Century (PC convention, ACPI FADT default).
pub const RTC_CENTURY: u8 = 0x32;

/// Register A: update in progress.
pub const RTC_REG_A_UIP: u8 = 0x80;
/// Register B: halt updates.
pub const RTC_REG_B_SET: u8 = 0x80;
/// Register B: data mode, 1 = binary, 0 = BCD.
pub const RTC_REG_B_DM: u8 = 0x04;
/// Register B: 1 = 24-hour mode, 0 = 12-hour mode.
pub const RTC_REG_B_24H: u8 = 0x02;
/// Hours register in 12-hour mode: PM flag.
pub const RTC_HOURS_PM: u8 = 0x80;
/// Register D: valid RAM and time.
pub const RTC_REG_D_VRT: u8 = 0x80;

/// Register A at power-on: 32.768 kHz time base, 1024 Hz rate.
pub const RTC_REG_A_DEFAULT: u8 = 0x26;
/// Register B at power-on: BCD, 24-hour.
pub const RTC_REG_B_DEFAULT: u8 = RTC_REG_B_24H;

/// Base memory size in KiB, low byte (high at +1).
pub const CMOS_BASE_MEM_LO: u8 = 0x15;
/// Extended memory (above 1 MiB) in KiB, low byte (high at +1).
pub const CMOS_EXT_MEM_LO: u8 = 0x17;
/// Extended memory (above 1 MiB) in KiB, second copy, low byte.
pub const CMOS_EXT_MEM2_LO: u8 = 0x30;
/// Memory between 16 MiB and 4 GiB in 64 KiB units, low byte.
pub const CMOS_MEM_ABOVE_16M_LO: u8 = 0x34;
/// Memory above 4 GiB in 64 KiB units, bytes 0x5b..=0x5d (little endian).
pub const CMOS_MEM_ABOVE_4G_LO: u8 = 0x5b;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const UNIT_64K: u64 = 64 * KIB;

/// Where the RTC gets the current time from.
pub trait Clock: Send {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

impl<F: Fn() -> SystemTime + Send> Clock for F {
    fn now(&self) -> SystemTime {
        self()
    }
}

/// The host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: u64,
    month: u8,
    day: u8,
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    /// Convert a time to UTC fields; times before the epoch clamp to it.
    fn from_system_time(t: SystemTime) -> Self {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days, for days >= 0.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            // 1970-01-01 was a Thursday; 1 = Sunday.
            weekday: ((days + 4) % 7 + 1) as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    let v = v % 100;
    ((v / 10) << 4) | (v % 10)
}

/// The CMOS RAM and RTC. See the module documentation.
pub struct Cmos {
    index: u8,
    nmi_disabled: bool,
    nvram: [u8; CMOS_NVRAM_SIZE],
    clock: Box<dyn Clock>,
}

impl Cmos {
    /// A CMOS for a guest with `mem_below_4g` bytes of RAM below 4 GiB
    /// (starting at address 0) and `mem_above_4g` bytes above it, reading
    /// the time from `clock`.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64, clock: Box<dyn Clock>) -> Self {
        let mut nvram = [0u8; CMOS_NVRAM_SIZE];
        let mut put16 = |at: u8, v: u64| {
            let v = v.min(0xffff) as u16;
            let [lo, hi] = v.to_le_bytes();
            nvram[usize::from(at)] = lo;
            nvram[usize::from(at) + 1] = hi;
        };
        put16(CMOS_BASE_MEM_LO, (mem_below_4g / KIB).min(640));
        let ext = mem_below_4g.saturating_sub(MIB) / KIB;
        put16(CMOS_EXT_MEM_LO, ext);
        put16(CMOS_EXT_MEM2_LO, ext);
        put16(
            CMOS_MEM_ABOVE_16M_LO,
            mem_below_4g.saturating_sub(16 * MIB) / UNIT_64K,
        );
        let high = (mem_above_4g / UNIT_64K).min(0xff_ffff).to_le_bytes();
        let at = usize::from(CMOS_MEM_ABOVE_4G_LO);
        nvram[at..at + 3].copy_from_slice(&high[..3]);
        nvram[usize::from(RTC_REG_A)] = RTC_REG_A_DEFAULT;
        nvram[usize::from(RTC_REG_B)] = RTC_REG_B_DEFAULT;
        nvram[usize::from(RTC_REG_D)] = RTC_REG_D_VRT;
        Cmos {
            index: 0,
            nmi_disabled: false,
            nvram,
            clock,
        }
    }

    /// Whether the guest last wrote the index port with the NMI-disable bit.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The selected CMOS byte (0..=0x7f).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Read CMOS byte `index` (bit 7 ignored), as the guest would see it.
    pub fn read_cmos(&self, index: u8) -> u8 {
        let index = index & !CMOS_NMI_DISABLE;
        let stored = self.nvram.get(usize::from(index)).copied().unwrap_or(0);
        match index {
            RTC_SECONDS | RTC_MINUTES | RTC_HOURS | RTC_DAY_OF_WEEK | RTC_DAY_OF_MONTH
            | RTC_MONTH | RTC_YEAR | RTC_CENTURY => self.read_time(index),
            RTC_REG_A => stored & !RTC_REG_A_UIP,
            RTC_REG_C => 0,
            RTC_REG_D => RTC_REG_D_VRT,
            _ => stored,
        }
    }

    /// Write CMOS byte `index` (bit 7 ignored), as the guest would.
    pub fn write_cmos(&mut self, index: u8, value: u8) {
        let index = index & !CMOS_NMI_DISABLE;
        let value = match index {
            RTC_REG_C | RTC_REG_D => return,
            RTC_REG_A => value & !RTC_REG_A_UIP,
            _ => value,
        };
        if let Some(b) = self.nvram.get_mut(usize::from(index)) {
            *b = value;
        }
    }

    fn reg_b(&self) -> u8 {
        self.nvram
            .get(usize::from(RTC_REG_B))
            .copied()
            .unwrap_or(RTC_REG_B_DEFAULT)
    }

    fn read_time(&self, index: u8) -> u8 {
        let t = DateTime::from_system_time(self.clock.now());
        let b = self.reg_b();
        let binary = b & RTC_REG_B_DM != 0;
        let enc = |v: u8| if binary { v } else { to_bcd(v) };
        match index {
            RTC_SECONDS => enc(t.second),
            RTC_MINUTES => enc(t.minute),
            RTC_HOURS if b & RTC_REG_B_24H != 0 => enc(t.hour),
            RTC_HOURS => {
                let h12 = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                let pm = if t.hour >= 12 { RTC_HOURS_PM } else { 0 };
                enc(h12) | pm
            }
            RTC_DAY_OF_WEEK => enc(t.weekday),
            RTC_DAY_OF_MONTH => enc(t.day),
            RTC_MONTH => enc(t.month),
            RTC_YEAR => enc((t.year % 100) as u8),
            RTC_CENTURY => enc((t.year / 100 % 100) as u8),
            _ => 0,
        }
    }

    fn read_port(&mut self, offset: u64) -> u8 {
        match offset {
            0 => 0xff,
            1 => self.read_cmos(self.index),
            _ => 0,
        }
    }

    fn write_port(&mut self, offset: u64, value: u8) {
        match offset {
            0 => {
                self.index = value & !CMOS_NMI_DISABLE;
                self.nmi_disabled = value & CMOS_NMI_DISABLE != 0;
            }
            1 => self.write_cmos(self.index, value),
            _ => {}
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, a: Access, data: &mut [u8]) {
        super::read_bytewise(a, data, |off| self.read_port(off));
    }

    fn write(&mut self, a: Access, data: &[u8]) {
        super::write_bytewise(a, data, |off, b| self.write_port(off, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const GIB: u64 = 1024 * MIB;

    fn at(secs: u64) -> Box<dyn Clock> {
        Box::new(move || UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn acc(offset: u64) -> Access {
        Access {
            base: CMOS_PORT,
            offset,
            vcpu: 0,
        }
    }

    /// Read CMOS byte `idx` through the ports.
    fn rd(c: &mut Cmos, idx: u8) -> u8 {
        c.write(acc(0), &[idx]);
        let mut b = [0xaa];
        c.read(acc(1), &mut b);
        b[0]
    }

    fn wr(c: &mut Cmos, idx: u8, v: u8) {
        c.write(acc(0), &[idx]);
        c.write(acc(1), &[v]);
    }

    // 2024-02-29 13:05:09 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_211_909;

    #[test]
    fn time_reads_bcd_24h_by_default() {
        let mut c = Cmos::new(GIB, 0, at(LEAP_DAY));
        assert_eq!(rd(&mut c, RTC_REG_B), 0x02);
        assert_eq!(rd(&mut c, RTC_SECONDS), 0x09);
        assert_eq!(rd(&mut c, RTC_MINUTES), 0x05);
        assert_eq!(rd(&mut c, RTC_HOURS), 0x13);
        assert_eq!(rd(&mut c, RTC_DAY_OF_WEEK), 0x05);
        assert_eq!(rd(&mut c, RTC_DAY_OF_MONTH), 0x29);
        assert_eq!(rd(&mut c, RTC_MONTH), 0x02);
        assert_eq!(rd(&mut c, RTC_YEAR), 0x24);
        assert_eq!(rd(&mut c, RTC_CENTURY), 0x20);
    }

    #[test]
    fn binary_mode_and_12_hour_mode() {
        let mut c = Cmos::new(GIB, 0, at(LEAP_DAY));
        wr(&mut c, RTC_REG_B, RTC_REG_B_DM | RTC_REG_B_24H);
        assert_eq!(rd(&mut c, RTC_HOURS), 13);
        assert_eq!(rd(&mut c, RTC_DAY_OF_MONTH), 29);
        assert_eq!(rd(&mut c, RTC_YEAR), 24);
        assert_eq!(rd(&mut c, RTC_CENTURY), 20);
        wr(&mut c, RTC_REG_B, RTC_REG_B_DM);
        assert_eq!(rd(&mut c, RTC_HOURS), RTC_HOURS_PM | 1);
        wr(&mut c, RTC_REG_B, 0);
        assert_eq!(rd(&mut c, RTC_HOURS), RTC_HOURS_PM | 0x01);
        assert_eq!(rd(&mut c, RTC_MINUTES), 0x05);
    }

    #[test]
    fn twelve_hour_midnight_and_noon() {
        // 2000-01-01 00:00:00 (Saturday) and 12:00:00.
        let mut c = Cmos::new(0, 0, at(946_684_800));
        wr(&mut c, RTC_REG_B, 0);
        assert_eq!(rd(&mut c, RTC_HOURS), 0x12);
        assert_eq!(rd(&mut c, RTC_DAY_OF_WEEK), 7);
        let mut c = Cmos::new(0, 0, at(946_684_800 + 12 * 3600));
        wr(&mut c, RTC_REG_B, 0);
        assert_eq!(rd(&mut c, RTC_HOURS), RTC_HOURS_PM | 0x12);
        let mut c = Cmos::new(0, 0, at(946_684_800 + 23 * 3600));
        wr(&mut c, RTC_REG_B, RTC_REG_B_DM);
        assert_eq!(rd(&mut c, RTC_HOURS), RTC_HOURS_PM | 11);
    }

    #[test]
    fn calendar_edge_cases() {
        let cases: [(u64, DateTime); 4] = [
            (
                0,
                DateTime {
                    year: 1970,
                    month: 1,
                    day: 1,
                    weekday: 5,
                    hour: 0,
                    minute: 0,
                    second: 0,
                },
            ),
            (
                946_684_799,
                DateTime {
                    year: 1999,
                    month: 12,
                    day: 31,
                    weekday: 6,
                    hour: 23,
                    minute: 59,
                    second: 59,
                },
            ),
            (
                LEAP_DAY,
                DateTime {
                    year: 2024,
                    month: 2,
                    day: 29,
                    weekday: 5,
                    hour: 13,
                    minute: 5,
                    second: 9,
                },
            ),
            (
                4_107_585_600,
                DateTime {
                    year: 2100,
                    month: 3,
                    day: 1,
                    weekday: 2,
                    hour: 12,
                    minute: 0,
                    second: 0,
                },
            ),
        ];
        for (secs, want) in cases {
            let got = DateTime::from_system_time(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(got, want, "at {secs}");
        }
        // Before the epoch clamps to it.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(DateTime::from_system_time(before).year, 1970);
    }

    #[test]
    fn clock_is_read_live() {
        let now = Arc::new(AtomicU64::new(LEAP_DAY));
        let n = now.clone();
        let clock = Box::new(move || UNIX_EPOCH + Duration::from_secs(n.load(Ordering::SeqCst)));
        let mut c = Cmos::new(0, 0, clock);
        assert_eq!(rd(&mut c, RTC_SECONDS), 0x09);
        now.fetch_add(50, Ordering::SeqCst);
        assert_eq!(rd(&mut c, RTC_SECONDS), 0x59);
        assert_eq!(rd(&mut c, RTC_MINUTES), 0x05);
        // Writing a time register does not move the clock.
        wr(&mut c, RTC_SECONDS, 0x00);
        assert_eq!(rd(&mut c, RTC_SECONDS), 0x59);
    }

    #[test]
    fn status_registers() {
        let mut c = Cmos::new(0, 0, at(0));
        assert_eq!(rd(&mut c, RTC_REG_A), RTC_REG_A_DEFAULT);
        wr(&mut c, RTC_REG_A, 0xff);
        assert_eq!(rd(&mut c, RTC_REG_A), 0x7f);
        assert_eq!(rd(&mut c, RTC_REG_C), 0);
        assert_eq!(rd(&mut c, RTC_REG_D), RTC_REG_D_VRT);
        wr(&mut c, RTC_REG_C, 0xff);
        wr(&mut c, RTC_REG_D, 0x00);
        assert_eq!(rd(&mut c, RTC_REG_C), 0);
        assert_eq!(rd(&mut c, RTC_REG_D), RTC_REG_D_VRT);
    }

    #[test]
    fn memory_size_bytes_small_guest() {
        let mut c = Cmos::new(512 * MIB, 0, at(0));
        let w = |c: &mut Cmos, i: u8| u16::from_le_bytes([rd(c, i), rd(c, i + 1)]);
        assert_eq!(w(&mut c, CMOS_BASE_MEM_LO), 640);
        assert_eq!(w(&mut c, CMOS_EXT_MEM_LO), 0xffff);
        assert_eq!(w(&mut c, CMOS_EXT_MEM2_LO), 0xffff);
        assert_eq!(w(&mut c, CMOS_MEM_ABOVE_16M_LO), ((512 - 16) * 16) as u16);
        assert_eq!(rd(&mut c, 0x5b), 0);
        assert_eq!(rd(&mut c, 0x5c), 0);
        assert_eq!(rd(&mut c, 0x5d), 0);

        let mut c = Cmos::new(8 * MIB, 0, at(0));
        assert_eq!(w(&mut c, CMOS_EXT_MEM_LO), 7 * 1024);
        assert_eq!(w(&mut c, CMOS_MEM_ABOVE_16M_LO), 0);
        let mut c = Cmos::new(512 * KIB, 0, at(0));
        assert_eq!(w(&mut c, CMOS_BASE_MEM_LO), 512);
        assert_eq!(w(&mut c, CMOS_EXT_MEM_LO), 0);
    }

    #[test]
    fn memory_size_bytes_large_guest() {
        let mut c = Cmos::new(3 * GIB, 5 * GIB, at(0));
        let w = |c: &mut Cmos, i: u8| u16::from_le_bytes([rd(c, i), rd(c, i + 1)]);
        assert_eq!(
            u64::from(w(&mut c, CMOS_MEM_ABOVE_16M_LO)),
            (3 * GIB - 16 * MIB) / UNIT_64K
        );
        let high = u32::from_le_bytes([rd(&mut c, 0x5b), rd(&mut c, 0x5c), rd(&mut c, 0x5d), 0]);
        assert_eq!(u64::from(high), 5 * GIB / UNIT_64K);
        // Clamped.
        let mut c = Cmos::new(u64::MAX, u64::MAX, at(0));
        assert_eq!(w(&mut c, CMOS_MEM_ABOVE_16M_LO), 0xffff);
        assert_eq!(
            [rd(&mut c, 0x5b), rd(&mut c, 0x5c), rd(&mut c, 0x5d)],
            [0xff; 3]
        );
    }

    #[test]
    fn nvram_and_nmi_bit() {
        let mut c = Cmos::new(0, 0, at(0));
        c.write(acc(0), &[CMOS_NMI_DISABLE | 0x40]);
        assert!(c.nmi_disabled());
        assert_eq!(c.index(), 0x40);
        c.write(acc(1), &[0x99]);
        c.write(acc(0), &[0x40]);
        assert!(!c.nmi_disabled());
        let mut b = [0];
        c.read(acc(1), &mut b);
        assert_eq!(b[0], 0x99);
        assert_eq!(c.read_cmos(0xc0), 0x99);
        // The index port is write-only.
        c.read(acc(0), &mut b);
        assert_eq!(b[0], 0xff);
        // Registers survive the NMI bit being set on the index.
        c.write(acc(0), &[CMOS_NMI_DISABLE | RTC_REG_D]);
        c.read(acc(1), &mut b);
        assert_eq!(b[0], RTC_REG_D_VRT);
    }

    #[test]
    fn wide_accesses_split_into_byte_lanes() {
        let mut c = Cmos::new(0, 0, at(0));
        // outw 0x70: index 0x50, data 0x77.
        c.write(acc(0), &[0x50, 0x77]);
        assert_eq!(c.read_cmos(0x50), 0x77);
        let mut buf = [0xeeu8; 4];
        c.read(acc(0), &mut buf);
        assert_eq!(buf, [0xff, 0x77, 0, 0]);
        let mut buf = [0xeeu8; 2];
        c.read(acc(1), &mut buf);
        assert_eq!(buf, [0x77, 0]);
    }

    #[test]
    fn any_access_is_safe() {
        let mut c = Cmos::new(
            u64::MAX,
            u64::MAX,
            Box::new(|| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
        );
        for idx in 0..=255u8 {
            for v in [0u8, 0x55, 0xaa, 0xff] {
                wr(&mut c, idx, v);
                rd(&mut c, idx);
            }
        }
        for off in [0u64, 1, 2, 3, u64::MAX - 1, u64::MAX] {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut buf = vec![0u8; len];
                c.read(acc(off), &mut buf);
                c.write(acc(off), &vec![0xffu8; len]);
            }
        }
        // Far-future times still give valid BCD.
        wr(&mut c, RTC_REG_B, RTC_REG_B_24H);
        for idx in [RTC_YEAR, RTC_CENTURY, RTC_MONTH, RTC_DAY_OF_MONTH] {
            let v = rd(&mut c, idx);
            assert!(v & 0x0f < 10 && v >> 4 < 10, "{idx:#x} = {v:#x}");
        }
    }
}
