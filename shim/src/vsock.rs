//! Host side of the VMM's hybrid vsock: a Unix socket on which `CONNECT <port>\n` opens a
//! stream to a guest vsock port, answered by `OK <hostport>\n` (Firecracker's convention).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The longest reply line accepted ("OK " and a u32 fit easily).
const MAX_REPLY: usize = 64;

/// Errors opening a stream through the hybrid vsock socket.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot connect to the VMM's vsock socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("vsock socket {path}: sending CONNECT {port} failed: {source}")]
    Send {
        path: PathBuf,
        port: u32,
        source: io::Error,
    },
    #[error("vsock socket {path}: no reply to CONNECT {port} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        port: u32,
        timeout: Duration,
    },
    #[error("vsock socket {path}: reading the reply to CONNECT {port} failed: {source}")]
    Receive {
        path: PathBuf,
        port: u32,
        source: io::Error,
    },
    #[error(
        "vsock socket {path}: the VMM closed the connection to guest port {port} \
         (is anything listening on that port in the guest?)"
    )]
    Refused { path: PathBuf, port: u32 },
    #[error(
        "vsock socket {path}: unexpected reply {reply:?} to CONNECT {port}, expected \"OK <port>\""
    )]
    BadReply {
        path: PathBuf,
        port: u32,
        reply: String,
    },
}

/// Opens a stream to guest vsock `port` through the hybrid socket at `path`.
///
/// The handshake must finish within `timeout`; the returned stream has no timeouts set and
/// carries raw bytes from the first byte after the `OK` line.
pub fn connect(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, Error> {
    let mut stream = UnixStream::connect(path).map_err(|source| Error::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    handshake(&mut stream, path, port, timeout)?;
    Ok(stream)
}

fn handshake(
    stream: &mut UnixStream,
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<u32, Error> {
    let deadline = Instant::now() + timeout;
    let timed_out = || Error::Timeout {
        path: path.to_path_buf(),
        port,
        timeout,
    };
    let send_err = |source| Error::Send {
        path: path.to_path_buf(),
        port,
        source,
    };
    stream.set_write_timeout(Some(timeout)).map_err(send_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| {
            if is_timeout(&e) {
                timed_out()
            } else {
                send_err(e)
            }
        })?;

    // Byte by byte: whatever follows the newline already belongs to the guest's stream.
    let mut reply = Vec::with_capacity(16);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|source| Error::Receive {
                path: path.to_path_buf(),
                port,
                source,
            })?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) if reply.is_empty() => {
                return Err(Error::Refused {
                    path: path.to_path_buf(),
                    port,
                })
            }
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                reply.push(byte[0]);
                if reply.len() > MAX_REPLY {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            Err(source) => {
                return Err(Error::Receive {
                    path: path.to_path_buf(),
                    port,
                    source,
                })
            }
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let host_port = reply
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| Error::BadReply {
            path: path.to_path_buf(),
            port,
            reply: reply.clone(),
        })?;
    let clear = |source| Error::Receive {
        path: path.to_path_buf(),
        port,
        source,
    };
    stream.set_read_timeout(None).map_err(clear)?;
    stream.set_write_timeout(None).map_err(clear)?;
    Ok(host_port)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake VMM: accepts one connection, checks the CONNECT line, then acts as told.
    fn fake_vmm(dir: &Path, reply: Option<&'static [u8]>) -> (PathBuf, thread::JoinHandle<String>) {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut stream = stream;
            match reply {
                Some(reply) => {
                    stream.write_all(reply).unwrap();
                    // Echo what follows, like a guest service would answer.
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest);
                    let _ = stream.write_all(&rest);
                }
                None => {
                    // Say nothing until the client gives up.
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest);
                }
            }
            line
        });
        (path, handle)
    }

    #[test]
    fn handshake_then_raw_bytes_including_ones_sent_with_the_ok() {
        let dir = tempfile::tempdir().unwrap();
        // The fake sends stream bytes right behind the OK line; they must not be eaten.
        let (path, vmm) = fake_vmm(dir.path(), Some(b"OK 1073741824\nearly"));
        let mut stream = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        stream.write_all(b"ping").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        assert_eq!(got, "earlyping");
        assert_eq!(vmm.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn closed_connection_is_reported_as_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let vmm = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            io::BufReader::new(&stream).read_line(&mut line).unwrap();
            drop(stream);
        });
        let err = connect(&path, 1025, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::Refused { port: 1025, .. }), "{err}");
        vmm.join().unwrap();
    }

    #[test]
    fn garbage_reply_is_rejected_with_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), Some(b"NOPE 5\n"));
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, Error::BadReply { reply, .. } if reply == "NOPE 5"),
            "{err}"
        );
        vmm.join().unwrap();
    }

    #[test]
    fn silent_vmm_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), None);
        let err = connect(&path, 1024, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, Error::Timeout { port: 1024, .. }), "{err}");
        vmm.join().unwrap();
    }

    #[test]
    fn missing_socket_names_the_path() {
        let err = connect(
            Path::new("/nonexistent/vsock.sock"),
            1024,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vsock.sock"), "{err}");
    }
}
