//! The host terminal: raw mode while a TTY drives the guest's serial port,
//! the escape key, and the stdin pump.
//!
//! Escape sequence (like QEMU's): **Ctrl-A x** quits, **Ctrl-A Ctrl-A**
//! sends a literal Ctrl-A, **Ctrl-A h** prints help. In raw mode Ctrl-C
//! goes to the guest, as on a real serial console; with stdin not a TTY,
//! Ctrl-C (SIGINT) stops vlab.

use std::io::Read;
use std::time::Duration;

use vmm::control::StopReason;
use vmm::vm::VmHandles;

/// Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// Puts the terminal in raw mode and restores it when dropped.
pub struct RawMode {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawMode {
    /// Enter raw mode on stdin if it is a TTY; None otherwise.
    pub fn enter() -> Option<RawMode> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a TTY and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the guest's "\n" still returns
        // the carriage on the host terminal.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: fd is a TTY and `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }

    /// Put the terminal back as it was.
    pub fn restore(&self) {
        // SAFETY: restores the attributes read from the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// What one input byte means, given whether the previous was the escape.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// Send these bytes to the guest.
    Send(u8),
    /// The escape key: wait for the next byte.
    Escape,
    /// Quit vlab.
    Quit,
    /// Print the help text.
    Help,
    /// Write a screenshot.
    Screenshot,
    /// Ignore.
    Nothing,
}

/// Decode one byte of the escape protocol.
pub fn decode(escaped: bool, b: u8) -> Key {
    match (escaped, b) {
        (false, ESCAPE) => Key::Escape,
        (false, b) => Key::Send(b),
        (true, ESCAPE) => Key::Send(ESCAPE),
        (true, b'x' | b'X') => Key::Quit,
        (true, b'h' | b'H' | b'?') => Key::Help,
        (true, b's' | b'S') => Key::Screenshot,
        (true, _) => Key::Nothing,
    }
}

/// Help shown on Ctrl-A h.
pub const HELP: &str = "\r\nvlab: Ctrl-A x  quit | Ctrl-A s  screenshot | Ctrl-A Ctrl-A  send Ctrl-A | Ctrl-A h  this help\r\n";

/// Copy stdin to the guest's serial port until EOF or the VM stops.
/// Runs on its own thread. When `escapes` is false (stdin is not a TTY)
/// bytes are passed through untouched.
pub fn pump_stdin(handles: VmHandles, escapes: bool, screenshot: &dyn Fn()) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    let mut escaped = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            let key = if escapes {
                decode(escaped, b)
            } else {
                Key::Send(b)
            };
            escaped = key == Key::Escape;
            match key {
                Key::Send(b) => feed(&handles, b),
                Key::Quit => {
                    handles
                        .control
                        .request_stop(StopReason::User("escape key (Ctrl-A x)"));
                    return;
                }
                Key::Help => eprint!("{HELP}"),
                Key::Screenshot => screenshot(),
                Key::Escape | Key::Nothing => {}
            }
        }
    }
}

/// Give one byte to the UART, waiting while its FIFO is full (the guest
/// reads it at its own pace). Gives up when the VM stops.
fn feed(handles: &VmHandles, b: u8) {
    while handles.serial_input(&[b]) == 0 {
        if handles.control.stop_reason().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_protocol() {
        assert_eq!(decode(false, b'a'), Key::Send(b'a'));
        assert_eq!(decode(false, 3), Key::Send(3));
        assert_eq!(decode(false, ESCAPE), Key::Escape);
        assert_eq!(decode(true, b'x'), Key::Quit);
        assert_eq!(decode(true, ESCAPE), Key::Send(ESCAPE));
        assert_eq!(decode(true, b'h'), Key::Help);
        assert_eq!(decode(true, b's'), Key::Screenshot);
        assert_eq!(decode(true, b'q'), Key::Nothing);
    }
}
