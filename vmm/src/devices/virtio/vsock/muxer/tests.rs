//! Tests of the vsock muxer: both handshakes, data and credit in both directions, closes,
//! resets and hostile guests, against real Unix sockets.

use super::conn_table::FIRST_LOCAL_PORT;
use super::host_connect::parse_connect;
use super::*;
use crate::devices::virtio::vsock::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::devices::virtio::vsock::CONN_BUF_SIZE;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
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
