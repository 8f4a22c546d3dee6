//! COM1: a 16550A UART, as a [`BusDevice`] over [`vm_superio::Serial`].
//!
//! # Ports
//!
//! Eight consecutive I/O ports (COM1: 0x3f8..=0x3ff, IRQ 4); the offset
//! selects the register:
//!
//! | off | read                      | write                     |
//! |-----|---------------------------|---------------------------|
//! | 0   | RBR (receive buffer)      | THR (transmit holding)    |
//! | 1   | IER (interrupt enable)    | IER                       |
//! | 2   | IIR (interrupt ident.)    | FCR (FIFO control, ignored) |
//! | 3   | LCR (line control)        | LCR                       |
//! | 4   | MCR (modem control)       | MCR                       |
//! | 5   | LSR (line status)         | -                         |
//! | 6   | MSR (modem status)        | -                         |
//! | 7   | SCR (scratch)             | SCR                       |
//!
//! With LCR.DLAB set, offsets 0 and 1 are the divisor latch (DLL/DLM).
//!
//! # Modelled
//!
//! Everything vm-superio models: a 64-byte receive FIFO fed by
//! [`Serial::enqueue_input`], an always-empty transmitter (each THR write
//! goes straight to the output writer), the received-data and THR-empty
//! interrupts (signalled as an edge on the [`Irq`]), loopback mode and the
//! modem lines. Not modelled: baud rate / framing (stored, no effect), line
//! errors, break, FIFO trigger levels, the character-timeout interrupt.
//!
//! # Access width
//!
//! A UART's registers are 8 bits wide and only 1-byte accesses are
//! meaningful. A wider access is handled as a 1-byte access to the register
//! at its offset: a read fills byte 0 from that register and the other bytes
//! with 0; a write uses byte 0 and ignores the rest. Zero-length accesses
//! and offsets past 7 do nothing (reads return 0).

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;

use crate::bus::{Access, BusDevice};
use crate::irq::Irq;

/// Number of I/O ports a 16550 occupies.
pub const SERIAL_PORT_LEN: u64 = 8;
/// Base I/O port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// Receive buffer (read) / transmit holding (write) register; DLL with DLAB.
pub const UART_RBR_THR: u8 = 0;
/// Interrupt enable register; DLM with DLAB.
pub const UART_IER: u8 = 1;
/// Interrupt identification (read) / FIFO control (write) register.
pub const UART_IIR_FCR: u8 = 2;
/// Line control register.
pub const UART_LCR: u8 = 3;
/// Modem control register.
pub const UART_MCR: u8 = 4;
/// Line status register.
pub const UART_LSR: u8 = 5;
/// Modem status register.
pub const UART_MSR: u8 = 6;
/// Scratch register.
pub const UART_SCR: u8 = 7;

/// IER: received-data-available interrupt enable.
pub const UART_IER_RDI: u8 = 0x01;
/// IER: transmitter-holding-register-empty interrupt enable.
pub const UART_IER_THRI: u8 = 0x02;
/// IIR: no interrupt pending.
pub const UART_IIR_NO_INT: u8 = 0x01;
/// IIR: THR empty interrupt pending.
pub const UART_IIR_THRI: u8 = 0x02;
/// IIR: received data interrupt pending.
pub const UART_IIR_RDI: u8 = 0x04;
/// LCR: divisor latch access bit.
pub const UART_LCR_DLAB: u8 = 0x80;
/// MCR: loopback mode.
pub const UART_MCR_LOOP: u8 = 0x10;
/// LSR: data ready.
pub const UART_LSR_DR: u8 = 0x01;
/// LSR: transmitter holding register empty.
pub const UART_LSR_THRE: u8 = 0x20;
/// LSR: transmitter empty.
pub const UART_LSR_TEMT: u8 = 0x40;

/// A [`Trigger`] that pulses an [`Irq`] line: vm-superio calls it when an
/// interrupt condition appears.
pub struct IrqTrigger(pub Arc<dyn Irq>);

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.pulse();
        Ok(())
    }
}

/// Counters fed by vm-superio's event callbacks.
#[derive(Debug, Default)]
pub struct SerialStats {
    tx_bytes: AtomicU64,
    tx_lost: AtomicU64,
}

impl SerialEvents for SerialStats {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.tx_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.tx_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

type Inner = vm_superio::Serial<IrqTrigger, Arc<SerialStats>, Box<dyn Write + Send>>;

/// A 16550A UART on the I/O bus. See the module documentation.
pub struct Serial {
    inner: Inner,
    stats: Arc<SerialStats>,
    rx_bytes: u64,
}

impl Serial {
    /// A UART that raises `irq` and writes the guest's output to `out`.
    pub fn new(irq: Arc<dyn Irq>, out: Box<dyn Write + Send>) -> Self {
        let stats = Arc::new(SerialStats::default());
        Serial {
            inner: vm_superio::Serial::with_events(IrqTrigger(irq), stats.clone(), out),
            stats,
            rx_bytes: 0,
        }
    }

    /// Feed `bytes` to the guest through the receive FIFO. Returns how many
    /// were accepted (possibly 0: the FIFO is full, or the UART is in
    /// loopback mode); the caller retries the rest later.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.inner.fifo_capacity() == 0 {
            return 0;
        }
        // The only possible errors are FullFifo (checked above) and a
        // trigger failure (IrqTrigger cannot fail).
        let n = self.inner.enqueue_raw_bytes(bytes).unwrap_or(0);
        self.rx_bytes += n as u64;
        n
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Bytes the guest transmitted and that reached the output writer.
    pub fn bytes_transmitted(&self) -> u64 {
        self.stats.tx_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the guest transmitted but the output writer failed to take.
    pub fn bytes_lost(&self) -> u64 {
        self.stats.tx_lost.load(Ordering::Relaxed)
    }

    /// Bytes accepted by [`Serial::enqueue_input`] so far.
    pub fn bytes_received(&self) -> u64 {
        self.rx_bytes
    }

    /// Read the 8-bit register at `offset` (0..=7; others read 0).
    pub fn read_reg(&mut self, offset: u64) -> u8 {
        match u8::try_from(offset) {
            Ok(off) if u64::from(off) < SERIAL_PORT_LEN => self.inner.read(off),
            _ => 0,
        }
    }

    /// Write the 8-bit register at `offset` (0..=7; others are ignored).
    pub fn write_reg(&mut self, offset: u64, value: u8) {
        if let Ok(off) = u8::try_from(offset) {
            if u64::from(off) < SERIAL_PORT_LEN {
                // Output errors are counted by SerialStats (tx_lost_byte);
                // the guest cannot be told, as a real UART has no such error.
                let _ = self.inner.write(off, value);
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, a: Access, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.read_reg(a.offset);
        }
    }

    fn write(&mut self, a: Access, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.write_reg(a.offset, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::FakeIrq;
    use std::sync::Mutex;

    /// A writer whose output the test can inspect.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("broken pipe"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn acc(offset: u64) -> Access {
        Access {
            base: COM1_BASE,
            offset,
            vcpu: 0,
        }
    }

    fn setup() -> (Serial, Arc<FakeIrq>, SharedBuf) {
        let irq = Arc::new(FakeIrq::new());
        let out = SharedBuf::default();
        let s = Serial::new(irq.clone(), Box::new(out.clone()));
        (s, irq, out)
    }

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0xaa];
        s.read(acc(off), &mut b);
        b[0]
    }

    #[test]
    fn transmit_goes_to_writer_and_is_counted() {
        let (mut s, _, out) = setup();
        for &c in b"hi\n" {
            s.write(acc(0), &[c]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert_eq!(s.bytes_transmitted(), 3);
        assert_eq!(s.bytes_lost(), 0);
        let lsr = rd(&mut s, u64::from(UART_LSR));
        assert_eq!(
            lsr & (UART_LSR_THRE | UART_LSR_TEMT),
            UART_LSR_THRE | UART_LSR_TEMT
        );
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let mut s = Serial::new(Arc::new(FakeIrq::new()), Box::new(Failing));
        s.write(acc(0), b"x");
        assert_eq!(s.bytes_transmitted(), 0);
        assert_eq!(s.bytes_lost(), 1);
    }

    #[test]
    fn input_is_received_with_interrupt() {
        let (mut s, irq, _) = setup();
        s.write(acc(u64::from(UART_IER)), &[UART_IER_RDI]);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(s.bytes_received(), 2);
        assert_eq!(irq.rising_edges(), 1);
        assert_eq!(rd(&mut s, u64::from(UART_IIR_FCR)) & 0x0f, UART_IIR_RDI);
        assert_eq!(rd(&mut s, u64::from(UART_LSR)) & UART_LSR_DR, UART_LSR_DR);
        assert_eq!(rd(&mut s, 0), b'a');
        assert_eq!(rd(&mut s, 0), b'b');
        assert_eq!(rd(&mut s, u64::from(UART_LSR)) & UART_LSR_DR, 0);
        // Empty FIFO reads 0.
        assert_eq!(rd(&mut s, 0), 0);
    }

    #[test]
    fn thr_empty_interrupt_on_enable_and_transmit() {
        let (mut s, irq, _) = setup();
        s.write(acc(u64::from(UART_IER)), &[UART_IER_THRI]);
        assert_eq!(irq.rising_edges(), 1);
        assert_eq!(rd(&mut s, u64::from(UART_IIR_FCR)) & 0x0f, UART_IIR_THRI);
        // IIR read acknowledged it.
        assert_eq!(rd(&mut s, u64::from(UART_IIR_FCR)) & 0x0f, UART_IIR_NO_INT);
        s.write(acc(0), b"z");
        assert_eq!(irq.rising_edges(), 2);
    }

    #[test]
    fn fifo_is_bounded_and_callers_retry() {
        let (mut s, _, _) = setup();
        let cap = s.fifo_capacity();
        assert!(cap > 0);
        let big = vec![b'x'; cap + 10];
        assert_eq!(s.enqueue_input(&big), cap);
        assert_eq!(s.fifo_capacity(), 0);
        assert_eq!(s.enqueue_input(b"more"), 0);
        assert_eq!(s.enqueue_input(b""), 0);
        rd(&mut s, 0);
        assert_eq!(s.fifo_capacity(), 1);
        assert_eq!(s.enqueue_input(b"yz"), 1);
        assert_eq!(s.bytes_received(), cap as u64 + 1);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut s, _, out) = setup();
        s.write(acc(u64::from(UART_LCR)), &[UART_LCR_DLAB | 0x03]);
        s.write(acc(0), &[0x01]);
        s.write(acc(1), &[0x00]);
        assert_eq!(rd(&mut s, 0), 0x01);
        assert_eq!(rd(&mut s, 1), 0x00);
        s.write(acc(u64::from(UART_LCR)), &[0x03]);
        // The divisor write did not transmit anything.
        assert!(out.0.lock().unwrap().is_empty());
        s.write(acc(u64::from(UART_SCR)), &[0x5a]);
        assert_eq!(rd(&mut s, u64::from(UART_SCR)), 0x5a);
    }

    #[test]
    fn loopback_echoes_and_refuses_host_input() {
        let (mut s, _, out) = setup();
        s.write(acc(u64::from(UART_MCR)), &[UART_MCR_LOOP]);
        s.write(acc(0), b"q");
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(s.enqueue_input(b"host"), 0);
        assert_eq!(rd(&mut s, 0), b'q');
    }

    #[test]
    fn wide_accesses_use_byte_zero_only() {
        let (mut s, _, out) = setup();
        s.write(acc(u64::from(UART_SCR)), &[0x11, 0x22, 0x33, 0x44]);
        let mut buf = [0xffu8; 4];
        s.read(acc(u64::from(UART_SCR)), &mut buf);
        assert_eq!(buf, [0x11, 0, 0, 0]);
        s.write(acc(0), b"ab");
        assert_eq!(&*out.0.lock().unwrap(), b"a");
        s.enqueue_input(b"xy");
        let mut buf = [0xffu8; 2];
        s.read(acc(0), &mut buf);
        assert_eq!(buf, [b'x', 0]);
        assert_eq!(rd(&mut s, 0), b'y');
    }

    #[test]
    fn any_access_is_safe() {
        let (mut s, _, _) = setup();
        let mut empty: [u8; 0] = [];
        s.read(acc(0), &mut empty);
        s.write(acc(0), &empty);
        for off in [0u64, 3, 7, 8, 255, 256, u64::MAX] {
            for len in [1usize, 2, 3, 4, 8, 16] {
                let mut buf = vec![0xeeu8; len];
                s.read(acc(off), &mut buf);
                if off >= SERIAL_PORT_LEN {
                    assert!(buf.iter().all(|&b| b == 0));
                }
                s.write(acc(off), &vec![0xffu8; len]);
            }
        }
        for off in 0..SERIAL_PORT_LEN {
            for v in 0..=255u8 {
                s.write(acc(off), &[v]);
                rd(&mut s, off);
            }
        }
        assert_eq!(s.read_reg(u64::MAX), 0);
        s.write_reg(1 << 40, 1);
    }
}
