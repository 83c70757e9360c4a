//! The host end of vsock: a Unix listener speaking the hybrid `CONNECT <port>` protocol,
//! outgoing connections to `<path>_<port>`, and the routing of packets to connections.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
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

/// The longest `CONNECT <port>\n` line we accept.
const MAX_CONNECT_LINE: usize = 32;
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long the guest has to answer a host CONNECT before the host is turned away, so a
/// guest with nobody listening (or no driver) cannot leave the host waiting (Firecracker's
/// figure).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// A host stream that has not finished its `CONNECT <port>\n` line.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

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

    fn accept_hosts(&mut self) {
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
    fn read_connect_line(&mut self, fd: RawFd) {
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
    fn expire_connects(&mut self) {
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

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
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

    fn insert_conn(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        self.epoll_ctl(ControlOperation::Add, fd, EventSet::empty());
        self.interest.insert(fd, EventSet::empty());
        self.fd_keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    fn remove_conn(&mut self, key: ConnKey) {
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

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
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
    fn refresh(&mut self, key: ConnKey) {
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

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};
    use crate::devices::virtio::vsock::CONN_BUF_SIZE;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    const GUEST_CID: u64 = 3;

    fn muxer(dir: &tempfile::TempDir) -> VsockMuxer {
        VsockMuxer::new(GUEST_CID, &dir.path().join("v.sock")).unwrap()
    }

    /// Lets the muxer handle socket events until it has something for the guest.
    fn pump(m: &mut VsockMuxer) -> bool {
        for _ in 0..50 {
            m.process_events();
            if m.has_pending_rx() {
                return true;
            }
        }
        false
    }

    fn guest_pkt(
        op: u16,
        src_port: u32,
        dst_port: u32,
        data: &[u8],
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> Packet {
        Packet {
            hdr: PacketHeader {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc,
                fwd_cnt,
            },
            data: data.to_vec(),
        }
    }

    /// Host connects to guest port 1024; returns the host stream and the host port.
    fn host_connect(m: &mut VsockMuxer, guest_buf_alloc: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(m.path()).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        assert!(pump(m));
        let req = m.recv_pkt(4096).unwrap();
        assert_eq!(req.hdr.op, op::REQUEST);
        assert_eq!((req.hdr.src_cid, req.hdr.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(req.hdr.dst_port, 1024);
        assert_eq!(req.hdr.buf_alloc, CONN_BUF_SIZE);
        let host_port = req.hdr.src_port;
        assert!(host_port >= FIRST_LOCAL_PORT);
        m.send_pkt(&guest_pkt(
            op::RESPONSE,
            1024,
            host_port,
            &[],
            guest_buf_alloc,
            0,
        ));
        let mut line = String::new();
        BufReader::new(&host).read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {host_port}\n"));
        (host, host_port)
    }

    #[test]
    fn host_connect_handshake_then_data_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let (mut host, hp) = host_connect(&mut m, 65536);
        assert_eq!(m.conn_state(hp, 1024), Some(ConnState::Established));

        m.send_pkt(&guest_pkt(op::RW, 1024, hp, b"ping", 65536, 0));
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        host.write_all(b"pong").unwrap();
        assert!(pump(&mut m));
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!(pkt.hdr.op, op::RW);
        assert_eq!((pkt.hdr.src_port, pkt.hdr.dst_port), (hp, 1024));
        assert_eq!(pkt.data, b"pong");
        assert_eq!(
            pkt.hdr.fwd_cnt, 4,
            "our fwd_cnt counts the 4 bytes the host took"
        );

        // The host half-closes: the guest learns the host sends no more, and data still
        // flows to the host.
        host.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(pump(&mut m));
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!(pkt.hdr.op, op::SHUTDOWN);
        assert_eq!(pkt.hdr.flags, SHUTDOWN_SEND);
        m.send_pkt(&guest_pkt(op::RW, 1024, hp, b"late", 65536, 0));
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"late");
        // The guest closes: both directions shut, we answer RST and the host sees EOF.
        let mut shut = guest_pkt(op::SHUTDOWN, 1024, hp, &[], 65536, 0);
        shut.hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.send_pkt(&shut);
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RST);
        assert_eq!(m.connection_count(), 0);
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        // A guest RST for a connection already gone is ignored.
        m.send_pkt(&guest_pkt(op::RST, 1024, hp, &[], 65536, 0));
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn host_reads_stop_when_guest_credit_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let (mut host, hp) = host_connect(&mut m, 8);
        host.write_all(&[7u8; 20]).unwrap();
        assert!(pump(&mut m));
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!((pkt.hdr.op, pkt.data.len()), (op::RW, 8));
        // Out of credit: we ask the guest for an update and read nothing more.
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!(pkt.hdr.op, op::CREDIT_REQUEST);
        assert!(!pump(&mut m));
        assert!(m.recv_pkt(4096).is_none());

        // The guest consumed the 8 bytes: 8 more may flow.
        m.send_pkt(&guest_pkt(op::CREDIT_UPDATE, 1024, hp, &[], 8, 8));
        assert!(pump(&mut m));
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!((pkt.hdr.op, pkt.data.len()), (op::RW, 8));
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::CREDIT_REQUEST);
        assert!(!pump(&mut m));

        // A larger buffer: the last 4 bytes come, never more than asked for per packet.
        m.send_pkt(&guest_pkt(op::CREDIT_UPDATE, 1024, hp, &[], 1024, 16));
        assert!(pump(&mut m));
        let pkt = m.recv_pkt(2).unwrap();
        assert_eq!(pkt.data, [7, 7]);
        assert!(pump(&mut m));
        assert_eq!(m.recv_pkt(4096).unwrap().data, [7, 7]);
    }

    #[test]
    fn guest_connection_to_port_reaches_path_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let mut target = m.path().as_os_str().to_owned();
        target.push("_5000");
        let listener = UnixListener::bind(&target).unwrap();

        m.send_pkt(&guest_pkt(op::REQUEST, 1234, 5000, &[], 65536, 0));
        let (mut peer, _) = listener.accept().unwrap();
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!(pkt.hdr.op, op::RESPONSE);
        assert_eq!((pkt.hdr.src_port, pkt.hdr.dst_port), (5000, 1234));

        m.send_pkt(&guest_pkt(op::RW, 1234, 5000, b"hello", 65536, 0));
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        // Guest closes both directions: we answer RST and forget the connection.
        let mut shut = guest_pkt(op::SHUTDOWN, 1234, 5000, &[], 65536, 0);
        shut.hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.send_pkt(&shut);
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RST);
        assert_eq!(m.connection_count(), 0);
        assert_eq!(peer.read(&mut buf).unwrap(), 0, "host peer sees EOF");
    }

    #[test]
    fn guest_connection_to_absent_port_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        m.send_pkt(&guest_pkt(op::REQUEST, 1234, 6000, &[], 65536, 0));
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!(pkt.hdr.op, op::RST);
        assert_eq!((pkt.hdr.src_port, pkt.hdr.dst_port), (6000, 1234));
        // Data for a connection that does not exist is reset too; RST is not answered.
        m.send_pkt(&guest_pkt(op::RW, 1, 2, b"x", 0, 0));
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RST);
        m.send_pkt(&guest_pkt(op::RST, 1, 2, &[], 0, 0));
        assert!(!m.has_pending_rx());
        // Packets with a forged source CID are dropped.
        let mut p = guest_pkt(op::REQUEST, 1, 2, &[], 0, 0);
        p.hdr.src_cid = 9;
        m.send_pkt(&p);
        assert!(!m.has_pending_rx());
    }

    #[test]
    fn guest_overrunning_our_buffer_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let mut target = m.path().as_os_str().to_owned();
        target.push("_5001");
        let listener = UnixListener::bind(&target).unwrap();
        m.send_pkt(&guest_pkt(op::REQUEST, 77, 5001, &[], 65536, 0));
        let (_peer, _) = listener.accept().unwrap();
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RESPONSE);
        // The host peer never reads: once the socket buffer is full we hold at most
        // CONN_BUF_SIZE bytes, and a guest ignoring its credit gets reset.
        let chunk = vec![1u8; 64 << 10];
        let mut reset = false;
        for _ in 0..256 {
            m.send_pkt(&guest_pkt(op::RW, 77, 5001, &chunk, 65536, 0));
            while let Some(p) = m.recv_pkt(4096) {
                reset |= p.hdr.op == op::RST;
            }
            if reset {
                break;
            }
        }
        assert!(reset);
        assert_eq!(m.connection_count(), 0);
    }

    /// Reads what the host socket has without blocking, until EOF; `None` while open.
    fn host_read_available(host: &mut UnixStream, out: &mut Vec<u8>) -> Option<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match host.read(&mut buf) {
                Ok(0) => return Some(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => panic!("host read failed: {e}"),
            }
        }
    }

    #[test]
    fn guest_close_with_data_still_buffered_ends_the_host_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let (mut host, hp) = host_connect(&mut m, 65536);
        host.set_nonblocking(true).unwrap();
        // The host reads nothing yet: the guest sends until the host socket is full and
        // our buffer holds the rest, staying within the credit we grant.
        let mut sent = 0usize;
        let mut fwd_cnt_seen = 0u32;
        let mut expected = Vec::new();
        loop {
            while let Some(p) = m.recv_pkt(4096) {
                assert_ne!(p.hdr.op, op::RST);
                fwd_cnt_seen = fwd_cnt_seen.max(p.hdr.fwd_cnt);
            }
            let credit = CONN_BUF_SIZE as usize - (sent - fwd_cnt_seen as usize);
            if credit == 0 {
                break;
            }
            let chunk: Vec<u8> = (0..credit.min(32 << 10))
                .map(|i| ((sent + i) % 253) as u8)
                .collect();
            m.send_pkt(&guest_pkt(op::RW, 1024, hp, &chunk, 65536, 0));
            expected.extend_from_slice(&chunk);
            sent += chunk.len();
        }
        assert!(sent > CONN_BUF_SIZE as usize, "the host socket took some");
        // shutdown(SHUT_WR) then close() in the guest, while bytes are still buffered.
        let mut shut = guest_pkt(op::SHUTDOWN, 1024, hp, &[], 65536, 0);
        shut.hdr.flags = SHUTDOWN_SEND;
        m.send_pkt(&shut);
        shut.hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.send_pkt(&shut);
        assert_eq!(m.connection_count(), 1, "buffered bytes keep it alive");

        // Now the host reads: it gets every byte, then the end of the stream, and the
        // guest gets its RST.
        let mut got = Vec::new();
        let mut rst = false;
        let mut eof = false;
        for _ in 0..10_000 {
            eof = host_read_available(&mut host, &mut got).is_some();
            m.process_events();
            while let Some(p) = m.recv_pkt(4096) {
                rst |= p.hdr.op == op::RST;
            }
            if eof && rst {
                break;
            }
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "host got different bytes");
        assert!(eof, "the host saw the end of the stream");
        assert!(rst, "the guest got its RST");
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn host_connect_the_guest_never_answers_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        m.connect_timeout = Duration::from_millis(20);
        // One connection the guest answers; it outlives its deadline untouched.
        let (_answered, hp) = host_connect(&mut m, 65536);
        let mut host = UnixStream::connect(m.path()).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        assert!(pump(&mut m));
        let req = m.recv_pkt(4096).unwrap();
        assert_eq!(req.hdr.op, op::REQUEST);
        // The guest stays silent: once the timer fires the guest gets a RST for it.
        let mut rst = None;
        for _ in 0..1000 {
            m.process_events();
            if let Some(p) = m.recv_pkt(4096) {
                rst = Some(p);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let rst = rst.expect("the unanswered CONNECT is reset");
        assert_eq!(rst.hdr.op, op::RST);
        assert_eq!(
            (rst.hdr.src_port, rst.hdr.dst_port),
            (req.hdr.src_port, 1024)
        );
        // The host is turned away without an OK line, and the answered one lives on.
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        assert_eq!(m.connection_count(), 1);
        assert_eq!(m.conn_state(hp, 1024), Some(ConnState::Established));
        assert!(m.recv_pkt(4096).is_none());
    }

    #[test]
    fn stale_socket_is_replaced_but_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        drop(UnixListener::bind(&path).unwrap());
        let m = VsockMuxer::new(GUEST_CID, &path).unwrap();
        drop(m);
        assert!(!path.exists(), "the muxer removes its socket when dropped");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            VsockMuxer::new(GUEST_CID, &path),
            Err(MuxerError::Bind { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn reset_closes_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let (mut host, _) = host_connect(&mut m, 65536);
        m.send_pkt(&guest_pkt(
            op::CREDIT_REQUEST,
            1024,
            FIRST_LOCAL_PORT,
            &[],
            65536,
            0,
        ));
        assert!(m.has_pending_rx());
        m.reset();
        assert_eq!(m.connection_count(), 0);
        assert!(!m.has_pending_rx());
        let mut buf = [0u8; 1];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn bad_connect_line_closes_the_host_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let mut host = UnixStream::connect(m.path()).unwrap();
        host.write_all(b"HELLO 1024\n").unwrap();
        assert!(!pump(&mut m));
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    }

    #[test]
    fn guest_gets_credit_update_once_the_host_consumed_enough() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(&dir);
        let mut target = m.path().as_os_str().to_owned();
        target.push("_5002");
        let listener = UnixListener::bind(&target).unwrap();
        m.send_pkt(&guest_pkt(op::REQUEST, 9, 5002, &[], 65536, 0));
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RESPONSE);
        // Below the threshold the guest is not bothered.
        let small = vec![5u8; 1000];
        m.send_pkt(&guest_pkt(op::RW, 9, 5002, &small, 65536, 0));
        assert!(!m.has_pending_rx());
        let chunk = vec![6u8; CONN_BUF_SIZE as usize / 4];
        m.send_pkt(&guest_pkt(op::RW, 9, 5002, &chunk, 65536, 0));
        let mut got = vec![0u8; small.len() + chunk.len()];
        peer.read_exact(&mut got).unwrap();
        // Whatever the host socket took counts; the update carries our fwd_cnt.
        let pkt = m.recv_pkt(4096).unwrap();
        assert_eq!(pkt.hdr.op, op::CREDIT_UPDATE);
        assert_eq!(pkt.hdr.fwd_cnt as usize, small.len() + chunk.len());
        assert_eq!(pkt.hdr.buf_alloc, CONN_BUF_SIZE);
        // A credit request is answered with an update.
        m.send_pkt(&guest_pkt(op::CREDIT_REQUEST, 9, 5002, &[], 65536, 0));
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::CREDIT_UPDATE);
    }
}
