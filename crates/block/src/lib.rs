//! vlab disks, without KVM: image formats (raw, qcow2 with backing files),
//! image locks compatible with QEMU's, and disk timing models that hold a
//! request until a physical disk would have finished it.

pub mod image;
pub mod model;
