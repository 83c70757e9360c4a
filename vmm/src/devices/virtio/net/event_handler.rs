//! What virtio-net does when the event loop wakes it: a frame in the tap or a kick of the
//! receive queue (buffers posted) receives, a kick of the transmit queue sends.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::error;

use super::{Net, RXQ, TXQ};
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.common().poll_queue_events(ops);
        // Edge-triggered: while a frame waits for buffers the tap is not read, and must not
        // wake the loop again and again; the receive path reads until the tap is empty
        // otherwise, so no frame is left without a wake-up to come.
        let tap = Events::new_raw(
            self.backend.raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        if let Err(e) = ops.add(tap) {
            error!(net = %self.label(), error = ?e, "virtio-net: cannot poll the tap");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.backend.raw_fd() {
            self.process_rx();
            return;
        }
        match self.common().take_queue_event(fd) {
            Some(RXQ) => self.process_rx(),
            Some(TXQ) => self.process_tx(),
            _ => {}
        }
    }
}
