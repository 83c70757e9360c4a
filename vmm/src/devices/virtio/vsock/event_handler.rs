//! What virtio-vsock does when the event loop wakes it: queue kicks, host socket activity
//! (through the muxer's epoll fd) and activation move packets in both directions.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::error;

use super::{Vsock, EVQ, RXQ, TXQ};
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
        let mut fds = vec![self.muxer.as_raw_fd(), self.activate_evt.as_raw_fd()];
        fds.extend(self.queue_events().iter().map(|e| e.as_raw_fd()));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                error!(fd, error = ?e, "vsock: cannot poll a device fd");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        // Event counters only wake us; draining them keeps level-triggered epoll quiet.
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
        }
        for index in [RXQ, TXQ, EVQ] {
            if fd == self.queue_events()[index].as_raw_fd() {
                let _ = self.queue_events()[index].read();
            }
        }
        self.process_all();
    }
}
