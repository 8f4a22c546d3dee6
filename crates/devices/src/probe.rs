//! The vlab probe: a register window that only counts accesses.
//!
//! vlab places one at I/O port 0xf5 (4 ports) and one at MMIO 0xd000_0000
//! (one page). The guest kernel's `pio-loop`/`mmio-loop` tests and the
//! exit benchmarks write to them; tests read the counters back to prove
//! every access arrived. Reads return the low 32 bits of the write count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bus::{Access, BusDevice};

/// Counters shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct ProbeCounters {
    /// Writes seen.
    pub writes: AtomicU64,
    /// Reads seen.
    pub reads: AtomicU64,
    /// Bytes written, summed over all writes.
    pub bytes_written: AtomicU64,
}

/// A device that counts accesses.
#[derive(Debug, Default)]
pub struct Probe {
    counters: Arc<ProbeCounters>,
}

impl Probe {
    /// A probe reporting into `counters`.
    pub fn new(counters: Arc<ProbeCounters>) -> Self {
        Probe { counters }
    }
}

impl BusDevice for Probe {
    fn read(&mut self, _a: Access, data: &mut [u8]) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let n = self.counters.writes.load(Ordering::Relaxed).to_le_bytes();
        for (d, s) in data.iter_mut().zip(n.iter().chain(std::iter::repeat(&0))) {
            *d = *s;
        }
    }

    fn write(&mut self, _a: Access, data: &[u8]) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_writes_and_reads_back_the_count_at_any_width() {
        let c = Arc::new(ProbeCounters::default());
        let mut p = Probe::new(c.clone());
        let a = Access {
            base: 0xf5,
            offset: 0,
            vcpu: 0,
        };
        p.write(a, &[1, 2, 3, 4]);
        p.write(a, &[1]);
        let mut one = [0u8; 1];
        p.read(a, &mut one);
        assert_eq!(one, [2]);
        let mut sixteen = [0xaau8; 16];
        p.read(a, &mut sixteen);
        assert_eq!(&sixteen[..2], &[2, 0]);
        assert!(sixteen[8..].iter().all(|b| *b == 0));
        assert_eq!(c.writes.load(Ordering::Relaxed), 2);
        assert_eq!(c.bytes_written.load(Ordering::Relaxed), 5);
        assert_eq!(c.reads.load(Ordering::Relaxed), 2);
    }
}
