//! Disk image formats and locks.
