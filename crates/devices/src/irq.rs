//! Interrupt lines as seen by device models.
//!
//! A device holds an [`Irq`] and raises or lowers it; how that reaches the
//! guest (a KVM irqfd, an in-kernel IOAPIC pin, a test fake) is not its
//! business.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One interrupt line.
pub trait Irq: Send + Sync {
    /// Drive a level-triggered line high or low.
    fn set_level(&self, high: bool);
    /// Signal an edge: the line goes high and low again.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// An [`Irq`] for tests: remembers the level and counts edges.
#[derive(Debug, Default)]
pub struct FakeIrq {
    level: AtomicBool,
    rising_edges: AtomicU64,
}

impl FakeIrq {
    /// A line that starts low.
    pub fn new() -> Self {
        Self::default()
    }
    /// The current level.
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    /// How many times the line went from low to high.
    pub fn rising_edges(&self) -> u64 {
        self.rising_edges.load(Ordering::SeqCst)
    }
}

impl Irq for FakeIrq {
    fn set_level(&self, high: bool) {
        let was = self.level.swap(high, Ordering::SeqCst);
        if high && !was {
            self.rising_edges.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl<T: Irq + ?Sized> Irq for std::sync::Arc<T> {
    fn set_level(&self, high: bool) {
        (**self).set_level(high)
    }
    fn pulse(&self) {
        (**self).pulse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_irq_counts_rising_edges_only() {
        let irq = FakeIrq::new();
        irq.set_level(true);
        irq.set_level(true);
        assert!(irq.level());
        irq.set_level(false);
        irq.pulse();
        assert_eq!(irq.rising_edges(), 2);
        assert!(!irq.level());
    }
}
