//! The connection table of the vsock muxer: connections by (local port, peer port), the
//! epoll interest of their host sockets, and the queue of those with a packet for the guest.

use std::os::fd::AsRawFd;

use tracing::debug;
use vmm_sys_util::epoll::{ControlOperation, EventSet};

use super::{epoll_ctl, ConnKey, RxItem, VsockMuxer};
use crate::devices::virtio::vsock::connection::Connection;

/// First port handed to host-initiated connections.
pub(super) const FIRST_LOCAL_PORT: u32 = 1 << 30;

impl VsockMuxer {
    pub(super) fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    pub(super) fn insert_conn(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        self.epoll_ctl(ControlOperation::Add, fd, EventSet::empty());
        self.interest.insert(fd, EventSet::empty());
        self.fd_keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    pub(super) fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            debug!(
                local_port = key.0,
                peer_port = key.1,
                "vsock: connection closed"
            );
            let fd = conn.stream.as_raw_fd();
            if self.interest.remove(&fd).is_some() {
                self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
            }
            self.fd_keys.remove(&fd);
        }
    }

    pub(super) fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Level-triggered HUP would fire forever: stop polling, and let the reads
            // of the RX path find the end of the stream.
            debug!(
                local_port = key.0,
                peer_port = key.1,
                ?set,
                "vsock: host socket hung up"
            );
            conn.host_readable = true;
            if self.interest.remove(&fd).is_some() {
                epoll_ctl(&self.epoll, ControlOperation::Delete, fd, EventSet::empty());
            }
        }
        if set.contains(EventSet::IN) {
            conn.host_readable = true;
        }
        if set.contains(EventSet::OUT) && conn.flush_tx().is_err() {
            conn.kill();
        }
        self.refresh(key);
    }

    /// Re-registers the epoll interest of a connection and queues it for RX if needed.
    pub(super) fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        let mut want = EventSet::empty();
        if conn.wants_host_read() {
            want |= EventSet::IN;
        }
        if conn.wants_host_write() {
            want |= EventSet::OUT;
        }
        let has_rx = conn.has_rx();
        if let Some(current) = self.interest.get_mut(&fd) {
            if *current != want {
                *current = want;
                self.epoll_ctl(ControlOperation::Modify, fd, want);
            }
        }
        let queued = self
            .rx_queue
            .iter()
            .any(|item| matches!(item, RxItem::Conn(k) if *k == key));
        if has_rx && !queued {
            self.rx_queue.push_back(RxItem::Conn(key));
        }
    }
}
