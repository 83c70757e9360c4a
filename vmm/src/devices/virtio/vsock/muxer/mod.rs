//! The host end of vsock: the muxer that owns the Unix sockets behind every connection of
//! one device and routes packets between them and the guest.
//!
//! Its parts: `host_connect` (the listener and the hybrid `CONNECT <port>` handshake of
//! host-initiated connections), `conn_table` (the connections, their epoll interest and the
//! queue of those with something for the guest), and here the dispatch of socket events and
//! of guest packets, including guest connections to `<path>_<port>`.

mod conn_table;
mod host_connect;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection};
use super::packet::{op, Packet, PacketHeader, TYPE_STREAM};
use super::{HOST_CID, MAX_CONNECTIONS};
use crate::unix_listener::{StaleSocket, UnixSocketListener};
use conn_table::FIRST_LOCAL_PORT;
use host_connect::{PendingHost, CONNECT_TIMEOUT};

/// Errors of muxer set-up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the vsock epoll instance: {0}")]
    Epoll(std::io::Error),
    #[error("cannot create the vsock connect timer: {0}")]
    Timer(std::io::Error),
}

/// (local port, peer port): identifies a connection.
type ConnKey = (u32, u32);

/// Something waiting to reach the guest.
#[derive(Debug, Clone, Copy)]
enum RxItem {
    Conn(ConnKey),
    /// A reset for a packet that matched no connection.
    Rst(PacketHeader),
}

/// All vsock connections of one device and the Unix sockets behind them.
pub struct VsockMuxer {
    guest_cid: u64,
    /// The socket the host connects to, removed when the muxer is dropped.
    listener: UnixSocketListener,
    epoll: Epoll,
    pending_hosts: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Connection>,
    fd_keys: HashMap<RawFd, ConnKey>,
    /// The epoll interest currently registered per connection fd.
    interest: HashMap<RawFd, EventSet>,
    rx_queue: VecDeque<RxItem>,
    next_local_port: u32,
    /// Fires at the first deadline of `connect_deadlines`.
    connect_timer: TimerFd,
    connect_timeout: Duration,
    /// Host-initiated connections by deadline (the timeout is fixed, so pushing keeps the
    /// order); entries whose connection was answered or closed are skipped when they expire.
    connect_deadlines: VecDeque<(Instant, ConnKey)>,
}

impl VsockMuxer {
    /// Listens on `path` (a stale socket file there is replaced).
    pub fn new(guest_cid: u64, path: &Path) -> Result<Self, MuxerError> {
        let listener = UnixSocketListener::bind(path, StaleSocket::Replace).map_err(|source| {
            MuxerError::Bind {
                path: path.to_owned(),
                source,
            }
        })?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let connect_timer = TimerFd::new().map_err(|e| MuxerError::Timer(errno_to_io(e)))?;
        for fd in [listener.as_raw_fd(), connect_timer.as_raw_fd()] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .map_err(MuxerError::Epoll)?;
        }
        Ok(Self {
            guest_cid,
            listener,
            epoll,
            pending_hosts: HashMap::new(),
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            interest: HashMap::new(),
            rx_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            connect_timer,
            connect_timeout: CONNECT_TIMEOUT,
            connect_deadlines: VecDeque::new(),
        })
    }

    /// The socket path the host connects to.
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a packet waits for an RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.rx_queue.is_empty()
    }

    /// Handles whatever the host sockets reported, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "vsock: epoll wait failed");
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let set = ev.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept_hosts();
            } else if fd == self.connect_timer.as_raw_fd() {
                self.expire_connects();
            } else if self.pending_hosts.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.fd_keys.get(&fd) {
                self.conn_event(key, set);
            }
        }
    }

    fn epoll_ctl(&self, op: ControlOperation, fd: RawFd, set: EventSet) {
        epoll_ctl(&self.epoll, op, fd, set);
    }
    /// The next packet for the guest, with at most `max_data` bytes of payload.
    pub fn recv_pkt(&mut self, max_data: usize) -> Option<Packet> {
        let item = self.rx_queue.pop_front()?;
        let key = match item {
            RxItem::Rst(hdr) => {
                return Some(Packet {
                    hdr,
                    data: Vec::new(),
                })
            }
            RxItem::Conn(key) => key,
        };
        let conn = self.conns.get_mut(&key)?;
        let pkt = conn.recv_pkt(max_data);
        if pkt.as_ref().is_some_and(|p| p.hdr.op == op::RST) {
            self.remove_conn(key);
        } else {
            self.refresh(key);
        }
        pkt
    }

    /// Handles a packet the guest sent.
    pub fn send_pkt(&mut self, pkt: &Packet) {
        let hdr = &pkt.hdr;
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            warn!(
                src = hdr.src_cid,
                dst = hdr.dst_cid,
                "vsock: packet with wrong CIDs dropped"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.reset_unknown(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op == op::REQUEST {
                self.connect_to_host(hdr);
            } else {
                self.reset_unknown(hdr);
            }
            return;
        };
        match conn.send_pkt(pkt) {
            Ok(true) => self.remove_conn(key),
            Ok(false) => self.refresh(key),
            Err(e) => {
                warn!(local_port = key.0, peer_port = key.1, error = %e, "vsock: resetting connection");
                conn.kill();
                self.refresh(key);
            }
        }
    }

    /// The guest connects to host port P: forward to the Unix socket `<path>_P`.
    fn connect_to_host(&mut self, hdr: &PacketHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.reset_unknown(hdr);
            return;
        }
        let mut target = self.path().as_os_str().to_owned();
        target.push(format!("_{}", hdr.dst_port));
        let stream = match UnixStream::connect(&target) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            Ok(_) | Err(_) => {
                debug!(
                    port = hdr.dst_port,
                    "vsock: no host listener for guest connection"
                );
                self.reset_unknown(hdr);
                return;
            }
        };
        self.insert_conn(Connection::from_guest(stream, self.guest_cid, hdr));
    }

    fn reset_unknown(&mut self, hdr: &PacketHeader) {
        if hdr.op == op::RST {
            return;
        }
        self.rx_queue.push_back(RxItem::Rst(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }));
    }

    /// Forgets every connection (device reset: the guest's driver lost them), closing the
    /// host sockets so their peers see the end.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        self.rx_queue.clear();
        self.connect_deadlines.clear();
        if let Err(e) = self.connect_timer.clear() {
            warn!(error = %e, "vsock: cannot disarm the connect timer");
        }
    }

    /// The state of a connection, for tests and diagnostics.
    pub fn conn_state(&self, local_port: u32, peer_port: u32) -> Option<ConnState> {
        self.conns.get(&(local_port, peer_port)).map(|c| c.state)
    }
}

impl AsRawFd for VsockMuxer {
    /// The muxer's epoll fd: readable when any of its sockets is ready.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

fn epoll_ctl(epoll: &Epoll, op: ControlOperation, fd: RawFd, set: EventSet) {
    if let Err(e) = epoll.ctl(op, fd, EpollEvent::new(set, fd as u64)) {
        warn!(fd, error = %e, "vsock: epoll_ctl failed");
    }
}

fn errno_to_io(e: vmm_sys_util::errno::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}
