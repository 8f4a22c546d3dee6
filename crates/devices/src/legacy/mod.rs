//! Legacy PC devices: serial, i8042, CMOS RTC, debug exit.

pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod serial;

pub use cmos::{Clock, Cmos, SystemClock};
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use serial::Serial;
