//! The i8042 PS/2 keyboard controller, as far as a VM needs it.
//!
//! # Ports
//!
//! One device over 0x60..=0x64 (base [`I8042_PORT`], length
//! [`I8042_PORT_LEN`]):
//!
//! | port | offset | read                        | write                              |
//! |------|--------|-----------------------------|------------------------------------|
//! | 0x60 | 0      | data: next output byte, 0 if none | data: parameter of a pending command, else dropped |
//! | 0x64 | 4      | status register             | command                            |
//! | 0x61-0x63 | 1-3 | 0                          | ignored                            |
//!
//! A wider access is split into byte lanes: byte `i` goes to the port at
//! `offset + i` (so a 2-byte read at 0x60 reads the data port and then
//! offset 1, which is 0).
//!
//! # Status register (0x64, read)
//!
//! OBF (0x01) when the output buffer holds a byte, IBF (0x02) never (writes
//! are consumed at once), SYS (0x04) mirrors the command byte's system
//! flag, CMD (0x08) when the last write went to port 0x64, KEYLOCK (0x10)
//! always set (not inhibited), AUXOBF (0x20) when the pending byte comes
//! from the aux port. Timeout and parity errors never happen.
//!
//! # Commands (0x64, write)
//!
//! | cmd       | effect                                                    |
//! |-----------|-----------------------------------------------------------|
//! | 0x20      | read the command byte (CTR)                               |
//! | 0x21-0x3f | read controller RAM: answers 0                            |
//! | 0x60      | write the CTR (next data byte)                            |
//! | 0x61-0x7f | write controller RAM (next data byte, dropped)            |
//! | 0xa7/0xa8 | disable/enable the aux port (CTR bit 5)                   |
//! | 0xa9      | test the aux port: answers 0x00 (ok)                      |
//! | 0xaa      | controller self-test: answers 0x55 (ok)                   |
//! | 0xab      | test the keyboard port: answers 0x00 (ok)                 |
//! | 0xad/0xae | disable/enable the keyboard port (CTR bit 4)              |
//! | 0xc0      | read input port: answers 0x80 (keyboard not locked)       |
//! | 0xd0      | read the output port                                      |
//! | 0xd1      | write the output port; bit 0 clear = CPU reset            |
//! | 0xd2/0xd3 | next data byte is echoed as keyboard / aux input          |
//! | 0xd4      | next data byte goes to the aux device (none: dropped)     |
//! | 0xf0-0xff | pulse output lines; bit 0 clear pulses reset (0xfe)       |
//! | others    | ignored                                                   |
//!
//! A CPU reset request is reported through the callback given at
//! construction; stopping or resetting the VM is the VMM's job.
//!
//! # Not modelled
//!
//! No keyboard or mouse is attached, and the controller has no interrupt
//! lines (IRQ 1/12): bytes written to the devices are dropped and nothing
//! is ever received from them. Controller commands are answered through the
//! output buffer, which Linux polls, so its i8042 probe completes; Linux
//! then finds no keyboard (boot with `i8042.noaux i8042.nomux i8042.nopnp
//! i8042.dumbkbd`, or `i8042.nokbd`, to skip the device probing and its
//! timeouts). The A20 gate (output port bit 1) is stored but has no effect.

use std::collections::VecDeque;

use crate::bus::{Access, BusDevice};

/// First I/O port of the controller (the data port).
pub const I8042_PORT: u64 = 0x60;
/// Number of I/O ports covered: 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// Offset of the data port (0x60).
pub const I8042_DATA_REG: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64).
pub const I8042_STATUS_REG: u64 = 4;

/// Status: output buffer full.
pub const I8042_STR_OBF: u8 = 0x01;
/// Status: input buffer full.
pub const I8042_STR_IBF: u8 = 0x02;
/// Status: system flag.
pub const I8042_STR_SYSFLAG: u8 = 0x04;
/// Status: last write was a command.
pub const I8042_STR_CMDDAT: u8 = 0x08;
/// Status: keyboard not inhibited.
pub const I8042_STR_KEYLOCK: u8 = 0x10;
/// Status: output byte is from the aux port.
pub const I8042_STR_AUXDATA: u8 = 0x20;

/// CTR: keyboard interrupt enable.
pub const I8042_CTR_KBDINT: u8 = 0x01;
/// CTR: aux interrupt enable.
pub const I8042_CTR_AUXINT: u8 = 0x02;
/// CTR: system flag.
pub const I8042_CTR_SYSFLAG: u8 = 0x04;
/// CTR: keyboard port disabled.
pub const I8042_CTR_KBDDIS: u8 = 0x10;
/// CTR: aux port disabled.
pub const I8042_CTR_AUXDIS: u8 = 0x20;
/// CTR: scancode translation.
pub const I8042_CTR_XLATE: u8 = 0x40;
/// CTR after firmware: keyboard interrupt, system flag, translation.
pub const I8042_CTR_DEFAULT: u8 = I8042_CTR_KBDINT | I8042_CTR_SYSFLAG | I8042_CTR_XLATE;

/// Command: read the command byte.
pub const I8042_CMD_CTL_RCTR: u8 = 0x20;
/// Command: write the command byte.
pub const I8042_CMD_CTL_WCTR: u8 = 0x60;
/// Command: disable the aux port.
pub const I8042_CMD_AUX_DISABLE: u8 = 0xa7;
/// Command: enable the aux port.
pub const I8042_CMD_AUX_ENABLE: u8 = 0xa8;
/// Command: test the aux port.
pub const I8042_CMD_AUX_TEST: u8 = 0xa9;
/// Command: controller self-test.
pub const I8042_CMD_CTL_TEST: u8 = 0xaa;
/// Command: test the keyboard port.
pub const I8042_CMD_KBD_TEST: u8 = 0xab;
/// Command: disable the keyboard port.
pub const I8042_CMD_KBD_DISABLE: u8 = 0xad;
/// Command: enable the keyboard port.
pub const I8042_CMD_KBD_ENABLE: u8 = 0xae;
/// Command: read the input port.
pub const I8042_CMD_READ_INPUT: u8 = 0xc0;
/// Command: read the output port.
pub const I8042_CMD_READ_OUTPUT: u8 = 0xd0;
/// Command: write the output port.
pub const I8042_CMD_WRITE_OUTPUT: u8 = 0xd1;
/// Command: write the keyboard output buffer (loop back as keyboard data).
pub const I8042_CMD_KBD_LOOP: u8 = 0xd2;
/// Command: write the aux output buffer (loop back as aux data).
pub const I8042_CMD_AUX_LOOP: u8 = 0xd3;
/// Command: send the next data byte to the aux device.
pub const I8042_CMD_AUX_SEND: u8 = 0xd4;
/// Command: pulse the reset line (CPU reset).
pub const I8042_CMD_RESET_CPU: u8 = 0xfe;

/// Answer to a successful controller self-test.
pub const I8042_RET_CTL_TEST: u8 = 0x55;
/// Output port bit 0: system reset, active low.
pub const I8042_OUTP_RESET: u8 = 0x01;
/// Output port bit 1: A20 gate.
pub const I8042_OUTP_A20: u8 = 0x02;
/// Output port at power-on: reset inactive, A20 enabled.
pub const I8042_OUTP_DEFAULT: u8 = I8042_OUTP_RESET | I8042_OUTP_A20;

/// Bytes the output buffer holds before further answers are dropped.
const OUTPUT_QUEUE_MAX: usize = 16;

/// The i8042 controller. See the module documentation.
pub struct I8042 {
    on_reset: Box<dyn Fn() + Send>,
    ctr: u8,
    outp: u8,
    /// A command waiting for its parameter on the data port.
    pending: Option<u8>,
    /// Output bytes and whether each came from the aux port.
    output: VecDeque<(u8, bool)>,
    last_was_command: bool,
    resets: u64,
}

impl I8042 {
    /// A controller that calls `on_reset` when the guest requests a CPU
    /// reset.
    pub fn new(on_reset: Box<dyn Fn() + Send>) -> Self {
        I8042 {
            on_reset,
            ctr: I8042_CTR_DEFAULT,
            outp: I8042_OUTP_DEFAULT,
            pending: None,
            output: VecDeque::new(),
            last_was_command: false,
            resets: 0,
        }
    }

    /// How many CPU resets the guest requested.
    pub fn reset_requests(&self) -> u64 {
        self.resets
    }

    /// The controller command byte (CTR).
    pub fn command_byte(&self) -> u8 {
        self.ctr
    }

    /// The status register as the guest reads it from port 0x64.
    pub fn status(&self) -> u8 {
        let mut s = I8042_STR_KEYLOCK;
        if self.ctr & I8042_CTR_SYSFLAG != 0 {
            s |= I8042_STR_SYSFLAG;
        }
        if self.last_was_command {
            s |= I8042_STR_CMDDAT;
        }
        if let Some(&(_, aux)) = self.output.front() {
            s |= I8042_STR_OBF;
            if aux {
                s |= I8042_STR_AUXDATA;
            }
        }
        s
    }

    fn push(&mut self, byte: u8, aux: bool) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back((byte, aux));
        }
    }

    fn reset(&mut self) {
        self.resets += 1;
        (self.on_reset)();
    }

    /// Read the data port (0x60): the next output byte, or 0.
    pub fn read_data(&mut self) -> u8 {
        self.output.pop_front().map_or(0, |(b, _)| b)
    }

    /// Write the data port (0x60).
    pub fn write_data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(I8042_CMD_CTL_WCTR) => self.ctr = value,
            Some(I8042_CMD_WRITE_OUTPUT) => {
                self.outp = value;
                if value & I8042_OUTP_RESET == 0 {
                    self.reset();
                }
            }
            Some(I8042_CMD_KBD_LOOP) => self.push(value, false),
            Some(I8042_CMD_AUX_LOOP) => self.push(value, true),
            // Controller RAM writes, aux device bytes and keyboard bytes:
            // nothing is there to take them.
            _ => {}
        }
    }

    /// Write the command port (0x64).
    pub fn write_command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = None;
        match cmd {
            I8042_CMD_CTL_RCTR => self.push(self.ctr, false),
            0x21..=0x3f => self.push(0, false),
            I8042_CMD_CTL_WCTR..=0x7f
            | I8042_CMD_WRITE_OUTPUT
            | I8042_CMD_KBD_LOOP
            | I8042_CMD_AUX_LOOP
            | I8042_CMD_AUX_SEND => self.pending = Some(cmd),
            I8042_CMD_AUX_DISABLE => self.ctr |= I8042_CTR_AUXDIS,
            I8042_CMD_AUX_ENABLE => self.ctr &= !I8042_CTR_AUXDIS,
            I8042_CMD_AUX_TEST | I8042_CMD_KBD_TEST => self.push(0x00, false),
            I8042_CMD_CTL_TEST => self.push(I8042_RET_CTL_TEST, false),
            I8042_CMD_KBD_DISABLE => self.ctr |= I8042_CTR_KBDDIS,
            I8042_CMD_KBD_ENABLE => self.ctr &= !I8042_CTR_KBDDIS,
            I8042_CMD_READ_INPUT => self.push(0x80, false),
            I8042_CMD_READ_OUTPUT => self.push(self.outp, false),
            0xf0..=0xff if cmd & I8042_OUTP_RESET == 0 => self.reset(),
            _ => {}
        }
    }

    fn read_port(&mut self, offset: u64) -> u8 {
        match offset {
            I8042_DATA_REG => self.read_data(),
            I8042_STATUS_REG => self.status(),
            _ => 0,
        }
    }

    fn write_port(&mut self, offset: u64, value: u8) {
        match offset {
            I8042_DATA_REG => self.write_data(value),
            I8042_STATUS_REG => self.write_command(value),
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
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
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn acc(offset: u64) -> Access {
        Access {
            base: I8042_PORT,
            offset,
            vcpu: 0,
        }
    }

    fn setup() -> (I8042, Arc<AtomicU32>) {
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let dev = I8042::new(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        (dev, n)
    }

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0xaa];
        d.read(acc(I8042_STATUS_REG), &mut b);
        b[0]
    }

    fn data(d: &mut I8042) -> u8 {
        let mut b = [0xaa];
        d.read(acc(I8042_DATA_REG), &mut b);
        b[0]
    }

    fn cmd(d: &mut I8042, c: u8) {
        d.write(acc(I8042_STATUS_REG), &[c]);
    }

    fn put(d: &mut I8042, v: u8) {
        d.write(acc(I8042_DATA_REG), &[v]);
    }

    /// The polled part of Linux's i8042_command(): wait for OBF, read.
    fn answer(d: &mut I8042) -> Option<u8> {
        (status(d) & I8042_STR_OBF != 0).then(|| data(d))
    }

    #[test]
    fn idle_status_has_no_data_and_empty_input_buffer() {
        let (mut d, _) = setup();
        let s = status(&mut d);
        assert_eq!(s & (I8042_STR_OBF | I8042_STR_IBF), 0);
        assert_ne!(s, 0xff);
        assert_eq!(data(&mut d), 0);
    }

    #[test]
    fn reset_command_calls_back() {
        let (mut d, n) = setup();
        cmd(&mut d, I8042_CMD_RESET_CPU);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(d.reset_requests(), 1);
        // Pulsing other lines (bit 0 set) is not a reset.
        cmd(&mut d, 0xff);
        cmd(&mut d, 0xfd);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Any pulse with bit 0 clear is.
        cmd(&mut d, 0xf0);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // 0xfe on the data port is not a command.
        put(&mut d, I8042_CMD_RESET_CPU);
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn output_port_reset_bit() {
        let (mut d, n) = setup();
        cmd(&mut d, I8042_CMD_READ_OUTPUT);
        assert_eq!(answer(&mut d), Some(I8042_OUTP_DEFAULT));
        cmd(&mut d, I8042_CMD_WRITE_OUTPUT);
        put(&mut d, I8042_OUTP_RESET);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        cmd(&mut d, I8042_CMD_READ_OUTPUT);
        assert_eq!(answer(&mut d), Some(I8042_OUTP_RESET));
        cmd(&mut d, I8042_CMD_WRITE_OUTPUT);
        put(&mut d, I8042_OUTP_A20);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn linux_probe_sequence_completes() {
        let (mut d, n) = setup();
        // i8042_flush: nothing pending.
        assert_eq!(answer(&mut d), None);
        // Read the CTR twice (must be stable), write it back.
        cmd(&mut d, I8042_CMD_CTL_RCTR);
        let ctr = answer(&mut d).unwrap();
        cmd(&mut d, I8042_CMD_CTL_RCTR);
        assert_eq!(answer(&mut d), Some(ctr));
        assert_eq!(ctr, I8042_CTR_DEFAULT);
        let new = (ctr & !I8042_CTR_KBDINT) | I8042_CTR_KBDDIS;
        cmd(&mut d, I8042_CMD_CTL_WCTR);
        assert_ne!(status(&mut d) & I8042_STR_CMDDAT, 0);
        put(&mut d, new);
        assert_eq!(status(&mut d) & I8042_STR_CMDDAT, 0);
        assert_eq!(d.command_byte(), new);
        // Self-test and port tests.
        cmd(&mut d, I8042_CMD_CTL_TEST);
        assert_eq!(answer(&mut d), Some(I8042_RET_CTL_TEST));
        cmd(&mut d, I8042_CMD_KBD_TEST);
        assert_eq!(answer(&mut d), Some(0));
        cmd(&mut d, I8042_CMD_AUX_TEST);
        assert_eq!(answer(&mut d), Some(0));
        // AUX loop: the byte comes back flagged as aux data.
        cmd(&mut d, I8042_CMD_AUX_LOOP);
        put(&mut d, 0x5a);
        assert_ne!(status(&mut d) & I8042_STR_AUXDATA, 0);
        assert_eq!(answer(&mut d), Some(0x5a));
        assert_eq!(status(&mut d) & (I8042_STR_AUXDATA | I8042_STR_OBF), 0);
        // AUX disable/enable show in the CTR.
        cmd(&mut d, I8042_CMD_AUX_DISABLE);
        cmd(&mut d, I8042_CMD_CTL_RCTR);
        assert_ne!(answer(&mut d).unwrap() & I8042_CTR_AUXDIS, 0);
        cmd(&mut d, I8042_CMD_AUX_ENABLE);
        cmd(&mut d, I8042_CMD_CTL_RCTR);
        assert_eq!(answer(&mut d).unwrap() & I8042_CTR_AUXDIS, 0);
        // Keyboard disable/enable.
        cmd(&mut d, I8042_CMD_KBD_ENABLE);
        assert_eq!(d.command_byte() & I8042_CTR_KBDDIS, 0);
        cmd(&mut d, I8042_CMD_KBD_DISABLE);
        assert_ne!(d.command_byte() & I8042_CTR_KBDDIS, 0);
        assert_eq!(answer(&mut d), None);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn system_flag_follows_ctr() {
        let (mut d, _) = setup();
        assert_ne!(status(&mut d) & I8042_STR_SYSFLAG, 0);
        cmd(&mut d, I8042_CMD_CTL_WCTR);
        put(&mut d, 0);
        assert_eq!(status(&mut d) & I8042_STR_SYSFLAG, 0);
    }

    #[test]
    fn device_bytes_are_dropped() {
        let (mut d, _) = setup();
        // Keyboard command (reset) with nothing attached.
        put(&mut d, 0xff);
        cmd(&mut d, I8042_CMD_AUX_SEND);
        put(&mut d, 0xf4);
        cmd(&mut d, 0x61);
        put(&mut d, 0x12);
        assert_eq!(answer(&mut d), None);
        assert_eq!(d.command_byte(), I8042_CTR_DEFAULT);
        cmd(&mut d, 0x21);
        assert_eq!(answer(&mut d), Some(0));
        cmd(&mut d, I8042_CMD_READ_INPUT);
        assert_eq!(answer(&mut d), Some(0x80));
    }

    #[test]
    fn a_new_command_cancels_a_pending_one() {
        let (mut d, _) = setup();
        cmd(&mut d, I8042_CMD_CTL_WCTR);
        cmd(&mut d, I8042_CMD_KBD_LOOP);
        put(&mut d, 0x33);
        assert_eq!(d.command_byte(), I8042_CTR_DEFAULT);
        assert_eq!(status(&mut d) & I8042_STR_AUXDATA, 0);
        assert_eq!(answer(&mut d), Some(0x33));
    }

    #[test]
    fn output_queue_is_bounded() {
        let (mut d, _) = setup();
        for _ in 0..1000 {
            cmd(&mut d, I8042_CMD_CTL_TEST);
        }
        let mut n = 0;
        while answer(&mut d).is_some() {
            n += 1;
            assert!(n <= OUTPUT_QUEUE_MAX);
        }
        assert_eq!(n, OUTPUT_QUEUE_MAX);
    }

    #[test]
    fn other_offsets_and_wide_accesses() {
        let (mut d, n) = setup();
        for off in 1..=3 {
            d.write(acc(off), &[I8042_CMD_RESET_CPU]);
            let mut b = [0xee];
            d.read(acc(off), &mut b);
            assert_eq!(b[0], 0);
        }
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // A 4-byte write at offset 1 reaches the command port in lane 3.
        d.write(acc(1), &[0, 0, 0, I8042_CMD_RESET_CPU]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        cmd(&mut d, I8042_CMD_CTL_TEST);
        let mut b = [0xee; 5];
        d.read(acc(0), &mut b);
        assert_eq!(b[..4], [I8042_RET_CTL_TEST, 0, 0, 0]);
        assert_eq!(b[4] & I8042_STR_OBF, 0);
    }

    #[test]
    fn any_access_is_safe() {
        let (mut d, _) = setup();
        for c in 0..=255u8 {
            for v in [0u8, 0x01, 0xfe, 0xff] {
                cmd(&mut d, c);
                put(&mut d, v);
                data(&mut d);
                status(&mut d);
            }
        }
        for off in [0u64, 4, 5, 100, u64::MAX - 2, u64::MAX] {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut buf = vec![0u8; len];
                d.read(acc(off), &mut buf);
                d.write(acc(off), &vec![0x20u8; len]);
            }
        }
    }
}
