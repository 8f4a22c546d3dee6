//! Legacy PC devices: serial, i8042, CMOS RTC, debug exit.

pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod serial;

pub use cmos::{Clock, Cmos, SystemClock};
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use serial::Serial;

use crate::bus::Access;

/// An 8-bit ISA device reached with a wider access sees one byte per port,
/// as on an 8-bit bus: byte `i` of `data` is read from port offset + `i`.
pub(crate) fn read_bytewise(a: Access, data: &mut [u8], mut port: impl FnMut(u64) -> u8) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = a.offset.checked_add(i as u64).map_or(0, &mut port);
    }
}

/// The write half of [`read_bytewise`]: byte `i` goes to port offset + `i`.
pub(crate) fn write_bytewise(a: Access, data: &[u8], mut port: impl FnMut(u64, u8)) {
    for (i, &b) in data.iter().enumerate() {
        if let Some(off) = a.offset.checked_add(i as u64) {
            port(off, b);
        }
    }
}
