//! vlab's own guest kernel, built from `guest/` by build.rs and embedded.

/// The guest kernel ELF (PVH entry).
pub static GUEST_ELF: &[u8] = include_bytes!(env!("VLAB_GUEST_ELF"));

/// The name the built-in guest is reported under.
pub const GUEST_NAME: &str = "<built-in vlab guest>";
