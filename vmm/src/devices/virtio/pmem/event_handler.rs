//! What virtio-pmem does when the event loop wakes it: a kick of the request queue makes it
//! serve every pending flush.

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;

use super::Pmem;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Pmem {
    fn init(&mut self, ops: &mut EventOps) {
        self.common().poll_queue_events(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.common().take_queue_event(events.fd()).is_none() {
            return;
        }
        if let Err(e) = self.process_queue() {
            error!(path = %self.path().display(), error = %e, "virtio-pmem: queue processing failed");
        }
    }
}
