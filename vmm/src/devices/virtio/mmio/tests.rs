//! Tests of the virtio-mmio transport, driving its registers as a driver would against a
//! device that records what the transport does to it.

use super::*;
use crate::devices::virtio::test_utils::guest_memory;
use crate::devices::virtio::{ActivateError, IrqType, VirtioCommon};

/// A device that records what the transport does to it.
struct DummyDevice {
    common: VirtioCommon,
    activated: Option<Vec<Queue>>,
    resets: usize,
}

impl DummyDevice {
    fn new() -> Self {
        Self {
            common: VirtioCommon::new(42, 0b101, &[16, 32], vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap(),
            activated: None,
            resets: 0,
        }
    }

    fn config_byte(&self, offset: u64) -> u8 {
        let mut b = [0u8];
        self.read_config(offset, &mut b);
        b[0]
    }
}

impl VirtioDevice for DummyDevice {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.common.write_config(offset, data);
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.activated = Some(queues);
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<DummyDevice>>) {
    let dev = Arc::new(Mutex::new(DummyDevice::new()));
    let t = MmioTransport::new(guest_memory(), dev.clone()).unwrap();
    (t, dev)
}

fn rd(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

/// Drives the driver side up to FEATURES_OK and sets up both queues.
fn negotiate(t: &mut MmioTransport) {
    wr(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    wr(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, 0b1);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(
        rd(t, VIRTIO_MMIO_STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    for (q, base) in [(0u32, 0x1_0000u32), (1, 0x2_0000)] {
        wr(t, VIRTIO_MMIO_QUEUE_SEL, q);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
        wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
}

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0b101);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 32);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    // Non 32-bit register accesses read as zero.
    let mut b = [0xffu8; 2];
    t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn config_space_reads_and_writes_go_to_the_device() {
    let (mut t, dev) = transport();
    let mut b = [0u8; 2];
    t.read(CONFIG_SPACE_OFFSET + 2, &mut b);
    assert_eq!(b, [3, 4]);
    // Before DRIVER is set, config writes are dropped.
    t.write(CONFIG_SPACE_OFFSET, &[9]);
    assert_eq!(dev.lock().unwrap().config_byte(0), 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    let gen = rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    t.write(CONFIG_SPACE_OFFSET, &[9]);
    assert_eq!(dev.lock().unwrap().config_byte(0), 9);
    assert_ne!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), gen);
}

#[test]
fn status_state_machine_activates_on_driver_ok() {
    let (mut t, dev) = transport();
    negotiate(&mut t);
    assert_eq!(dev.lock().unwrap().acked_features(), (1 << 32) | 1);
    assert!(dev.lock().unwrap().activated.is_none());
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );
    let d = dev.lock().unwrap();
    let queues = d.activated.as_ref().expect("device activated");
    assert_eq!(queues.len(), 2);
    assert!(queues[0].ready());
    assert_eq!(queues[1].desc_table(), 0x2_0000);
    assert_eq!(queues[1].avail_ring(), 0x2_1000);
    assert_eq!(queues[1].used_ring(), 0x2_2000);
    assert_eq!(queues[1].size(), 16);
}

#[test]
fn invalid_status_transitions_are_ignored() {
    let (mut t, dev) = transport();
    // Skipping ACKNOWLEDGE.
    wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    // Jumping straight to DRIVER_OK.
    wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    // FEATURES_OK refused without VERSION_1.
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
    );
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
    // FEATURES_OK refused with a feature the device does not offer.
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 | 2);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
    );
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
    assert!(dev.lock().unwrap().activated.is_none());
    // FAILED is accepted at any time.
    wr(&mut t, VIRTIO_MMIO_STATUS, FAILED);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_STATUS),
        ACKNOWLEDGE | DRIVER | FAILED
    );
}

#[test]
fn queue_registers_only_change_during_setup() {
    let (mut t, _) = transport();
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    negotiate(&mut t);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn invalid_queue_sets_device_needs_reset() {
    let (mut t, dev) = transport();
    negotiate(&mut t);
    // A descriptor table outside guest memory.
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_ne!(rd(&mut t, VIRTIO_MMIO_STATUS) & DEVICE_NEEDS_RESET, 0);
    assert!(dev.lock().unwrap().activated.is_none());
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        IrqType::Config as u32
    );
}

#[test]
fn queue_notify_signals_the_queue_event() {
    let (mut t, dev) = transport();
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(dev.lock().unwrap().queue_events()[1].read().unwrap(), 1);
    // Unknown queue: ignored, no panic.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
    assert!(dev.lock().unwrap().queue_events()[0].read().is_err());
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport();
    t.interrupt().trigger(IrqType::Vring).unwrap();
    t.interrupt().trigger(IrqType::Config).unwrap();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
}

#[test]
fn writing_zero_status_resets_device_and_transport() {
    let (mut t, dev) = transport();
    negotiate(&mut t);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    t.interrupt().trigger(IrqType::Vring).unwrap();
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert!(dev.lock().unwrap().activated.is_none());
    // The device can be brought up again.
    negotiate(&mut t);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(dev.lock().unwrap().activated.is_some());
}
