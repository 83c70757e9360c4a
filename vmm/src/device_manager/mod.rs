//! Device managers: place devices on buses, wire their interrupts and notifications.
pub mod legacy;
pub mod mmio;
