//! Device managers: place devices on buses, wire their interrupts and notifications.
