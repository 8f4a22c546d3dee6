//! Register pages: a page of device registers the guest reads without a
//! VM exit.
//!
//! A device that wants its status polls to be cheap keeps the values of
//! some registers in a [`RegisterPage`] and returns it from
//! `PciDevice::register_page(bar)`. The page backs the first 4 KiB of that
//! memory BAR. The VMM maps the page into the guest **read-only** at the
//! BAR's current address (a `KVM_MEM_READONLY` memslot whose
//! `userspace_addr` is [`RegisterPage::as_ptr`]) while memory decoding is
//! on, and moves or removes the memslot when the PCI bus reports a
//! `BarRemap` for that BAR. Guest reads then hit host memory directly;
//! guest writes fault out as MMIO exits and reach the model's `bar_write`
//! as usual, which updates its state and the page.
//!
//! # How the model updates it
//!
//! The page is 1024 `AtomicU32`s, page-aligned and exactly one page long,
//! shared by `Arc` between the model and the VMM. The model stores register
//! values with [`RegisterPage::set`] (a release store); a guest's aligned
//! 32-bit load sees either the old or the new value, never a torn one.
//! The model should also serve trapped reads of the page (before the VMM
//! maps it, or if it cannot) from the page with [`RegisterPage::read`], so
//! both paths agree.
//!
//! The VMM must keep an `Arc` clone for as long as the memslot exists.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Size of a register page.
pub const REGISTER_PAGE_SIZE: usize = 4096;

/// A page of 32-bit registers shared with the guest. See the module
/// documentation.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct RegisterPage {
    words: [AtomicU32; REGISTER_PAGE_SIZE / 4],
}

impl RegisterPage {
    /// A zeroed page.
    pub fn new() -> Arc<Self> {
        Arc::new(RegisterPage {
            words: std::array::from_fn(|_| AtomicU32::new(0)),
        })
    }

    /// Store `value` in the dword at byte `offset` (rounded down to a dword;
    /// offsets past the page are ignored).
    pub fn set(&self, offset: usize, value: u32) {
        if let Some(w) = self.words.get(offset / 4) {
            w.store(value, Ordering::Release);
        }
    }

    /// The dword at byte `offset` (rounded down; 0 past the page).
    pub fn get(&self, offset: usize) -> u32 {
        self.words
            .get(offset / 4)
            .map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// A trapped guest read of `data.len()` bytes at `offset` (any width,
    /// any offset; bytes past the page read 0).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|&o| o < REGISTER_PAGE_SIZE);
            *b = o.map_or(0, |o| self.get(o).to_le_bytes()[o % 4]);
        }
    }

    /// The host address of the page, for the VMM's read-only memslot.
    pub fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_one_aligned_page() {
        let p = RegisterPage::new();
        assert_eq!(std::mem::size_of::<RegisterPage>(), REGISTER_PAGE_SIZE);
        assert_eq!(p.as_ptr() as usize % REGISTER_PAGE_SIZE, 0);
    }

    #[test]
    fn set_get_and_bytewise_reads() {
        let p = RegisterPage::new();
        p.set(8, 0x4433_2211);
        p.set(REGISTER_PAGE_SIZE, 5); // ignored
        assert_eq!(p.get(9), 0x4433_2211);
        let mut b = [0u8; 3];
        p.read(9, &mut b);
        assert_eq!(b, [0x22, 0x33, 0x44]);
        let mut b = [0xffu8; 4];
        p.read(REGISTER_PAGE_SIZE as u64 - 2, &mut b);
        assert_eq!(b, [0; 4]);
        p.read(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        // The host address sees the stored value.
        // SAFETY: the page is 4096 valid bytes; we read 4 aligned ones.
        let v = unsafe { std::ptr::read_volatile(p.as_ptr().add(8).cast::<u32>()) };
        assert_eq!(v, 0x4433_2211);
    }
}
