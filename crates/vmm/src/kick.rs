//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! The controller sends the command first, then signals the thread. The
//! signal handler sets `immediate_exit` in that thread's own `kvm_run`
//! page, so a signal that lands between the thread's command check and its
//! next `KVM_RUN` still makes that `KVM_RUN` return at once: no lost
//! wake-ups. The pointer lives in a thread-local, set by the vCPU thread
//! for itself; nothing is shared between VMs.

use std::cell::Cell;
use std::sync::Once;

use crate::control::Kicker;

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Const-initialised thread-locals need no lazy setup: safe to touch in
    // a signal handler.
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer was set by this very thread to the
        // `immediate_exit` byte of its own mapped `kvm_run`, which outlives
        // the registration (see `register_current_thread`).
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Install the kick handler (once per process; the handler holds no state).
pub fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Remember where this thread's `immediate_exit` byte is.
///
/// # Safety
/// `p` must point to the `immediate_exit` byte of a `kvm_run` mapping that
/// stays mapped until [`unregister_current_thread`] is called on this thread.
pub unsafe fn register_current_thread(p: *mut u8) {
    IMMEDIATE_EXIT.with(|c| c.set(p));
}

/// Forget this thread's `immediate_exit` byte.
pub fn unregister_current_thread() {
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
}

/// Kicks one thread with [`kick_signal`].
pub struct ThreadKicker {
    thread: libc::pthread_t,
}

impl ThreadKicker {
    /// A kicker for the calling thread.
    pub fn current() -> Self {
        ThreadKicker {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
        }
    }
}

impl Kicker for ThreadKicker {
    fn kick(&self) {
        // SAFETY: the vCPU thread removes its kicker (under the control
        // lock the caller holds) before it exits, so `thread` is alive.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}
