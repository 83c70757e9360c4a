//! What virtio-vsock does when the event loop wakes it: queue kicks, host socket activity
//! (through the muxer's epoll fd) and activation move packets in both directions.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::error;

use super::Vsock;
use crate::devices::virtio::VirtioDevice;

impl Vsock {
    /// One pass over everything pending; what the event loop runs on any wake-up.
    pub fn process_all(&mut self) {
        self.muxer.process_events();
        if let Err(e) = self.process_tx() {
            error!(error = %e, "vsock: TX processing failed");
        }
        if let Err(e) = self.process_rx() {
            error!(error = %e, "vsock: RX processing failed");
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.muxer.as_raw_fd(), self.activate_evt.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                error!(fd, error = ?e, "vsock: cannot poll a device fd");
            }
        }
        self.common().poll_queue_events(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        // Event counters only wake us; draining them keeps level-triggered epoll quiet.
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
        }
        self.common().take_queue_event(fd);
        self.process_all();
    }
}
