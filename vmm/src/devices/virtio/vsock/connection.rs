//! One vsock stream between a guest port and a host Unix socket: its state, the credit
//! both sides grant each other, and the bytes buffered for a slow host peer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use tracing::debug;

use super::packet::{op, Packet, PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{CONN_BUF_SIZE, HOST_CID};

/// Send a CREDIT_UPDATE once the host consumed this much since the guest last heard.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The host asked (CONNECT); we sent or will send REQUEST and wait for RESPONSE.
    HostInit,
    /// Both sides agreed; data flows.
    Established,
    /// We reset the connection; it is dropped once the RST reaches the guest.
    Killed,
}

/// A protocol violation that kills the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnError {
    #[error("guest sent {len} bytes while {buffered} are buffered, beyond the {CONN_BUF_SIZE}-byte credit")]
    CreditExceeded { len: usize, buffered: usize },
    #[error("guest sent op {0} in state {1:?}")]
    UnexpectedOp(u16, ConnState),
    #[error("host socket failed")]
    HostSocket,
}

/// One connection; `local_port` is the host side, `peer_port` the guest side.
pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    guest_cid: u64,
    pub state: ConnState,
    /// Guest → host bytes not yet accepted by the host socket.
    tx_buf: VecDeque<u8>,
    /// Bytes we handed to the host socket (our credit counter).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer and how much of it the guest consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Host → guest bytes sent.
    rx_cnt: Wrapping<u32>,
    /// The host socket reported readable and we have not drained it yet.
    pub host_readable: bool,
    host_eof: bool,
    peer_shutdown: u32,
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    pending_credit_request: bool,
    credit_requested: bool,
    /// "OK <port>\n" still to write to the host (host-initiated connections).
    pending_ok: bool,
}

impl Connection {
    /// A connection the guest asked for (REQUEST to a host port), already established.
    pub fn from_guest(stream: UnixStream, guest_cid: u64, hdr: &PacketHeader) -> Self {
        let mut c = Self::new(stream, guest_cid, hdr.dst_port, hdr.src_port);
        c.state = ConnState::Established;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c.pending_response = true;
        c
    }

    /// A connection the host asked for; the guest has yet to accept it.
    pub fn from_host(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.pending_request = true;
        c
    }

    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state: ConnState::HostInit,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_readable: false,
            host_eof: false,
            peer_shutdown: 0,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_credit_request: false,
            credit_requested: false,
            pending_ok: false,
        }
    }

    /// How many bytes the guest can still receive.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the host socket should be polled for reading.
    pub fn wants_host_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.host_readable
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the host socket should be polled for writing.
    pub fn wants_host_write(&self) -> bool {
        !self.tx_buf.is_empty() || self.pending_ok
    }

    /// Whether the connection has a packet for the guest right now.
    pub fn has_rx(&self) -> bool {
        self.state == ConnState::Killed
            || self.pending_request
            || self.pending_response
            || self.pending_credit_update
            || self.pending_credit_request
            || (self.host_readable && self.can_read_host())
    }

    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Marks the connection for reset: the next packet to the guest is RST.
    pub fn kill(&mut self) {
        self.state = ConnState::Killed;
    }

    fn header(&mut self, op: u16) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn control(&mut self, op: u16) -> Packet {
        Packet {
            hdr: self.header(op),
            data: Vec::new(),
        }
    }

    /// The next packet for the guest, with at most `max_data` bytes of payload (at least 1:
    /// a zero-length read of the host socket returns 0, which would be taken for EOF).
    pub fn recv_pkt(&mut self, max_data: usize) -> Option<Packet> {
        debug_assert!(max_data > 0, "an RX buffer without room for a payload");
        if self.state == ConnState::Killed {
            return Some(self.control(op::RST));
        }
        if std::mem::take(&mut self.pending_request) {
            return Some(self.control(op::REQUEST));
        }
        if std::mem::take(&mut self.pending_response) {
            return Some(self.control(op::RESPONSE));
        }
        if std::mem::take(&mut self.pending_credit_update) {
            return Some(self.control(op::CREDIT_UPDATE));
        }
        if std::mem::take(&mut self.pending_credit_request) {
            return Some(self.control(op::CREDIT_REQUEST));
        }
        if !self.host_readable || !self.can_read_host() {
            return None;
        }
        let want = max_data.min(self.peer_credit() as usize);
        let mut data = vec![0u8; want];
        match self.stream.read(&mut data) {
            Ok(0) => {
                // The host will send no more; it may still read (a half-close), so the
                // guest is told only about our sending side.
                self.host_eof = true;
                self.host_readable = false;
                let mut p = self.control(op::SHUTDOWN);
                p.hdr.flags = SHUTDOWN_SEND;
                Some(p)
            }
            Ok(n) => {
                data.truncate(n);
                self.rx_cnt += Wrapping(n as u32);
                if self.peer_credit() == 0 && !self.credit_requested {
                    self.credit_requested = true;
                    self.pending_credit_request = true;
                }
                Some(Packet {
                    hdr: self.header(op::RW),
                    data,
                })
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.host_readable = false;
                None
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => None,
            Err(_) => {
                self.kill();
                Some(self.control(op::RST))
            }
        }
    }

    /// Applies a packet from the guest. Returns `Ok(true)` when the connection is closed
    /// and must be dropped without a reply.
    pub fn send_pkt(&mut self, pkt: &Packet) -> Result<bool, ConnError> {
        // Every packet carries the guest's view of its receive buffer.
        let credit_before = self.peer_credit();
        self.peer_buf_alloc = pkt.hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(pkt.hdr.fwd_cnt);
        if self.peer_credit() > credit_before {
            self.credit_requested = false;
        }
        match (pkt.hdr.op, self.state) {
            (op::RST, _) => {
                debug!(
                    local_port = self.local_port,
                    peer_port = self.peer_port,
                    buffered = self.tx_buf.len(),
                    "vsock: guest reset the connection"
                );
                return Ok(true);
            }
            (op::RESPONSE, ConnState::HostInit) => {
                self.state = ConnState::Established;
                self.pending_ok = true;
                self.flush_tx()?;
            }
            (op::RW, ConnState::Established) => self.forward_to_host(&pkt.data)?,
            (op::CREDIT_UPDATE, ConnState::Established) => {}
            (op::CREDIT_REQUEST, ConnState::Established) => self.pending_credit_update = true,
            (op::SHUTDOWN, ConnState::Established) => {
                self.peer_shutdown |= pkt.hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                debug!(
                    local_port = self.local_port,
                    peer_port = self.peer_port,
                    flags = pkt.hdr.flags,
                    buffered = self.tx_buf.len(),
                    "vsock: guest shut down"
                );
                return Ok(self.try_finish_shutdown());
            }
            (op, state) => return Err(ConnError::UnexpectedOp(op, state)),
        }
        Ok(false)
    }

    /// Once the guest will send no more and its data reached the host, pass the
    /// half-close on; when both directions are shut, reset (what Linux waits for).
    fn try_finish_shutdown(&mut self) -> bool {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() {
            let res = self.stream.shutdown(Shutdown::Write);
            debug!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                ok = res.is_ok(),
                "vsock: host socket half-closed"
            );
            if self.peer_shutdown & SHUTDOWN_RCV != 0 {
                self.kill();
            }
        }
        false
    }

    fn forward_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditExceeded {
                len: data.len(),
                buffered: self.tx_buf.len(),
            });
        }
        self.tx_buf.extend(data);
        self.flush_tx()
    }

    /// Writes what the host socket accepts; called on RW and when it becomes writable.
    pub fn flush_tx(&mut self) -> Result<(), ConnError> {
        if self.pending_ok {
            let line = format!("OK {}\n", self.local_port);
            // A fresh socket has room for a few bytes: a short write here means the host
            // end is broken.
            match self.stream.write(line.as_bytes()) {
                Ok(n) if n == line.len() => self.pending_ok = false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                _ => return Err(ConnError::HostSocket),
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnError::HostSocket),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(ConnError::HostSocket),
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
        if self.tx_buf.is_empty() && self.peer_shutdown != 0 {
            self.try_finish_shutdown();
        }
        Ok(())
    }
}
