//! Polled output on the 16550 UART COM1 (I/O port 0x3f8).
//!
//! Bytes are written straight to the transmit holding register; the line
//! status register is not polled because both vlab's and QEMU's UARTs
//! accept bytes immediately (each `out` is a VM exit, so skipping the LSR
//! read halves the cost of printing).
//!
//! All output goes through [`log!`](crate::log), which prefixes every line
//! with `vlab-guest: ` and emits it atomically (under a spin lock).

use crate::io::outb;
use crate::sync::SpinLock;
use core::fmt::{self, Write};

/// COM1 transmit holding register.
const COM1: u16 = 0x3f8;

/// Prefix of every line the kernel prints (parsed by vlab's tests).
pub const PREFIX: &str = "vlab-guest: ";

static LOCK: SpinLock<()> = SpinLock::new(());

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(COM1, b);
        }
        Ok(())
    }
}

/// COM1 line status register and its data-ready bit.
const COM1_LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 0x01;

/// A received byte, if the UART has one (polled; no interrupt).
pub fn try_read_byte() -> Option<u8> {
    if crate::io::inb(COM1_LSR) & LSR_DATA_READY != 0 {
        Some(crate::io::inb(COM1))
    } else {
        None
    }
}

/// Write raw bytes (no prefix, no newline).
pub fn write_raw(bytes: &[u8]) {
    LOCK.with(1_000_000, |_| {
        for &b in bytes {
            outb(COM1, b);
        }
    });
}

/// Print one prefixed line (used by the `log!` macro).
pub fn print_line(args: fmt::Arguments) {
    LOCK.with(1_000_000, |_| {
        let _ = Com1.write_str(PREFIX);
        let _ = Com1.write_fmt(args);
        let _ = Com1.write_str("\n");
    });
}

/// Print one line prefixed with `vlab-guest: `.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::serial::print_line(format_args!($($arg)*))
    };
}
