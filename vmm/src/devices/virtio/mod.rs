//! Virtio devices and their MMIO transport.
