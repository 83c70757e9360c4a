//! What virtio-pmem does when the event loop wakes it: a kick of the request queue makes it
//! serve every pending flush.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::error;

use super::Pmem;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Pmem {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events()[0], EventSet::IN)) {
            error!(path = %self.path().display(), error = ?e, "virtio-pmem: cannot poll the queue event");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != std::os::fd::AsRawFd::as_raw_fd(&self.queue_events()[0]) {
            return;
        }
        // The counter only wakes us; its value does not matter.
        let _ = self.queue_events()[0].read();
        if let Err(e) = self.process_queue() {
            error!(path = %self.path().display(), error = %e, "virtio-pmem: queue processing failed");
        }
    }
}
