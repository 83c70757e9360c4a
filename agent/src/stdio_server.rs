//! The guest side of the stdio streams: serves the stdio port, where each connection names a
//! process stream in its header (protocol::stream_header), then carries raw bytes.
//!
//! Socket backpressure paces the copy, so nothing is buffered beyond one chunk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use protocol::stream_header::{write_ack, StreamHeader};

use crate::listener::{Conn, Listener};
use crate::process_table::{Attached, ProcessTable};

/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 128 * 1024;

/// Accepts stdio connections forever, one thread per stream.
pub fn serve(listener: Listener, processes: Arc<ProcessTable>) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let processes = processes.clone();
                let spawned = thread::Builder::new()
                    .name("stdio".into())
                    .spawn(move || handle(conn, &processes));
                if let Err(e) = spawned {
                    log::error!("cannot start a stdio stream thread: {e}");
                }
            }
            Err(e) => {
                log::warn!("accepting a stdio stream failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle(mut conn: Conn, processes: &ProcessTable) {
    let _ = conn.set_read_timeout(Some(HEADER_TIMEOUT));
    let header = match StreamHeader::read_from(&mut conn) {
        Ok(header) => header,
        Err(e) => {
            log::warn!("dropping a stdio stream: {e}");
            let _ = write_ack(&mut conn, Err(&e.to_string()));
            return;
        }
    };
    let _ = conn.set_read_timeout(None);
    let attached = processes
        .get(&header.container_id, &header.exec_id)
        .and_then(|p| p.attach(header.kind, &conn));
    let attached = match attached {
        Ok(attached) => attached,
        Err(e) => {
            log::warn!("refusing a stdio stream: {e}");
            let _ = write_ack(&mut conn, Err(&e.to_string()));
            return;
        }
    };
    if let Err(e) = write_ack(&mut conn, Ok(())) {
        log::warn!("stdio stream went away before its ack: {e}");
        return;
    }
    log::debug!(
        "{} of {:?}/{:?} attached",
        header.kind,
        header.container_id,
        header.exec_id
    );
    match attached {
        Attached::Stdin(pipe) => copy_to_process(conn, pipe),
        Attached::Output(pipe) => copy_to_host(pipe, conn),
        Attached::Tty(master) => {
            let input = match (conn.try_clone(), master.try_clone()) {
                (Ok(c), Ok(m)) => Some(thread::spawn(move || copy_to_process(c, m))),
                _ => {
                    log::warn!("cannot clone the tty stream; terminal input is lost");
                    None
                }
            };
            let closer = conn.try_clone();
            copy_to_host(master, conn);
            // The terminal is done; wake the input copy, which may be blocked reading.
            if let Ok(c) = closer {
                let _ = c.shutdown(Shutdown::Both);
            }
            if let Some(input) = input {
                let _ = input.join();
            }
        }
    }
}

/// Host → process until the host closes its side; then the process sees EOF on stdin.
fn copy_to_process(mut conn: Conn, mut pipe: File) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("stdin stream read failed: {e}");
                return;
            }
        };
        if let Err(e) = pipe.write_all(&buf[..n]) {
            log::debug!("writing to the process's stdin failed: {e}");
            return;
        }
    }
}

/// Process → host until the process side closes; then the host sees EOF on the stream.
fn copy_to_host(mut pipe: File, mut conn: Conn) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A terminal master reads EIO once the last slave descriptor is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                log::debug!("reading the process's output failed: {e}");
                break;
            }
        };
        if let Err(e) = conn.write_all(&buf[..n]) {
            log::debug!("output stream write failed: {e}");
            return;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}
