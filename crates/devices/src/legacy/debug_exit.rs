//! vlab's debug-exit port: lets a guest end the VM with a status byte.
//!
//! # Ports
//!
//! I/O ports 0xf4..=0xf7 ([`DEBUG_EXIT_PORT`], [`DEBUG_EXIT_LEN`]), the
//! same place as QEMU's `isa-debug-exit`, so test kernels written for it
//! work unchanged.
//!
//! | access            | effect                                                |
//! |-------------------|-------------------------------------------------------|
//! | write, any width, any offset | exit requested with status = first data byte |
//! | read              | returns 0 in every byte                               |
//!
//! Unlike QEMU, which reports `(value << 1) | 1` as its process status, the
//! status handed to the VMM here is the byte exactly as written. A
//! zero-length write (never produced by real port I/O) is ignored.
//!
//! The device only signals: the callback given at construction is invoked
//! on each write and it is up to the VMM to stop the vCPUs. The last
//! status written is kept for inspection.

use crate::bus::{Access, BusDevice};

/// The I/O port of the debug-exit device.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// Number of ports the device occupies (so 32-bit `outl` works).
pub const DEBUG_EXIT_LEN: u64 = 4;

/// The debug-exit device. See the module documentation.
pub struct DebugExit {
    on_exit: Box<dyn Fn(u8) + Send>,
    last_status: Option<u8>,
}

impl DebugExit {
    /// A device that calls `on_exit(status)` whenever the guest writes to it.
    pub fn new(on_exit: Box<dyn Fn(u8) + Send>) -> Self {
        DebugExit {
            on_exit,
            last_status: None,
        }
    }

    /// The status of the last exit request, if any.
    pub fn last_status(&self) -> Option<u8> {
        self.last_status
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _a: Access, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _a: Access, data: &[u8]) {
        if let Some(&status) = data.first() {
            self.last_status = Some(status);
            (self.on_exit)(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn acc(offset: u64) -> Access {
        Access {
            base: DEBUG_EXIT_PORT,
            offset,
            vcpu: 1,
        }
    }

    fn setup() -> (DebugExit, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let dev = DebugExit::new(Box::new(move |v| s.lock().unwrap().push(v)));
        (dev, seen)
    }

    #[test]
    fn write_of_any_width_signals_first_byte() {
        let (mut d, seen) = setup();
        assert_eq!(d.last_status(), None);
        d.write(acc(0), &[0x31]);
        d.write(acc(0), &[0x10, 0x20]);
        d.write(acc(0), &[0x00, 0xff, 0xff, 0xff]);
        d.write(acc(3), &[0x7f]);
        d.write(acc(0), &[0xab; 8]);
        assert_eq!(*seen.lock().unwrap(), vec![0x31, 0x10, 0x00, 0x7f, 0xab]);
        assert_eq!(d.last_status(), Some(0xab));
    }

    #[test]
    fn reads_are_zero_and_do_not_signal() {
        let (mut d, seen) = setup();
        for len in [0usize, 1, 2, 4, 7] {
            let mut buf = vec![0xeeu8; len];
            d.read(acc(0), &mut buf);
            assert!(buf.iter().all(|&b| b == 0));
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn empty_write_is_ignored() {
        let (mut d, seen) = setup();
        d.write(acc(u64::MAX), &[]);
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(d.last_status(), None);
    }
}
