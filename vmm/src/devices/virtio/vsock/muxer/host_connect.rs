//! Host-initiated vsock connections: the Unix listener, the hybrid handshake (the host
//! writes `CONNECT <port>\n`, and reads `OK <hostport>\n` once the guest accepted), and the
//! deadline after which a CONNECT the guest left unanswered is reset.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, EventSet};

use super::{epoll_ctl, VsockMuxer};
use crate::devices::virtio::vsock::connection::{ConnState, Connection};
use crate::devices::virtio::vsock::MAX_CONNECTIONS;

/// The longest `CONNECT <port>\n` line we accept.
const MAX_CONNECT_LINE: usize = 32;
/// How long the guest has to answer a host CONNECT before the host is turned away, so a
/// guest with nobody listening (or no driver) cannot leave the host waiting (Firecracker's
/// figure).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A host stream that has not finished its `CONNECT <port>\n` line.
pub(super) struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

impl VsockMuxer {
    pub(super) fn accept_hosts(&mut self) {
        let (epoll, pending_hosts) = (&self.epoll, &mut self.pending_hosts);
        self.listener.accept_all("vsock", |stream| {
            let fd = stream.as_raw_fd();
            epoll_ctl(epoll, ControlOperation::Add, fd, EventSet::IN);
            pending_hosts.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::new(),
                },
            );
        });
    }

    /// Reads the CONNECT line byte by byte so no payload byte is consumed with it.
    pub(super) fn read_connect_line(&mut self, fd: RawFd) {
        let Some(pending) = self.pending_hosts.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match pending.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&pending.line),
                Ok(1) if pending.line.len() < MAX_CONNECT_LINE => pending.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EOF, error or an overlong line.
                _ => break None,
            }
        };
        let pending = self
            .pending_hosts
            .remove(&fd)
            .expect("pending host present above");
        self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
        let Some(peer_port) = port else {
            warn!(line = %String::from_utf8_lossy(&pending.line), "vsock: bad CONNECT line from host");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!("vsock: too many connections, refusing host CONNECT");
            return;
        }
        let local_port = self.allocate_local_port(peer_port);
        let conn = Connection::from_host(pending.stream, self.guest_cid, local_port, peer_port);
        debug!(local_port, peer_port, "vsock: host connects to the guest");
        self.insert_conn(conn);
        let deadline = Instant::now() + self.connect_timeout;
        self.connect_deadlines
            .push_back((deadline, (local_port, peer_port)));
        if self.connect_deadlines.len() == 1 {
            self.arm_connect_timer(deadline);
        }
    }

    fn arm_connect_timer(&mut self, deadline: Instant) {
        // A zero duration would disarm the timer: wait at least a little.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if let Err(e) = self.connect_timer.reset(wait, None) {
            warn!(error = %e, "vsock: cannot arm the connect timer");
        }
    }

    /// Resets host-initiated connections the guest left unanswered past their deadline.
    pub(super) fn expire_connects(&mut self) {
        // Readable, so this does not block; it re-arms the level-triggered event.
        let _ = self.connect_timer.wait();
        let now = Instant::now();
        while let Some(&(deadline, key)) = self.connect_deadlines.front() {
            if deadline > now {
                self.arm_connect_timer(deadline);
                return;
            }
            self.connect_deadlines.pop_front();
            if let Some(conn) = self.conns.get_mut(&key) {
                if conn.state == ConnState::HostInit {
                    warn!(
                        local_port = key.0,
                        peer_port = key.1,
                        "vsock: the guest did not answer a host CONNECT in time"
                    );
                    conn.kill();
                    self.refresh(key);
                }
            }
        }
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}
