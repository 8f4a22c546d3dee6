//! Minimal synchronisation primitives (no `static mut` anywhere).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// An `UnsafeCell` that may be placed in a `static`.
///
/// Used for memory shared with hardware or firmware (page tables, GDT,
/// IDT, TSS, pvclock pages). Every access goes through a raw pointer from
/// [`RacyCell::get`] and must be justified by a `// SAFETY:` comment
/// (typically: written by one CPU before other CPUs can observe it).
#[repr(transparent)]
pub struct RacyCell<T>(UnsafeCell<T>);

// SAFETY: callers of `get` are responsible for synchronisation; the type is
// only used for data whose accesses are ordered by the boot sequence.
unsafe impl<T> Sync for RacyCell<T> {}

impl<T> RacyCell<T> {
    /// Wrap `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Raw pointer to the contents.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// A test-and-set spin lock protecting a value.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// Create an unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Run `f` with the lock held. If the lock cannot be taken within
    /// `max_spins` iterations (e.g. an exception handler interrupted the
    /// holder on this CPU) `f` runs anyway: losing mutual exclusion is
    /// better than deadlocking while reporting a crash.
    pub fn with<R>(&self, max_spins: u64, f: impl FnOnce(&mut T) -> R) -> R {
        let mut spins = 0u64;
        let mut acquired = false;
        while spins < max_spins {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                acquired = true;
                break;
            }
            core::hint::spin_loop();
            spins += 1;
        }
        // SAFETY: either we hold the lock, or we deliberately break it (see
        // above); in both cases no other reference to `value` is live on
        // this CPU.
        let r = f(unsafe { &mut *self.value.get() });
        if acquired {
            self.locked.store(false, Ordering::Release);
        }
        r
    }
}
