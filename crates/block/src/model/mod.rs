//! Disk timing models (pure, deterministic, simulated clock).
