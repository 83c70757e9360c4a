//! The host end of one stdio stream of a process in the guest: a connection to the agent's
//! stdio port that starts with a header naming (container, exec, stream), then raw bytes.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use protocol::stream_header::{read_ack, StreamHeader, StreamKind};

use super::{Endpoint, Error};

/// An attached stdio stream. Reading a stdout/stderr stream ends at EOF once the process side
/// is closed; dropping or [`StdioStream::close_write`] on a stdin stream gives the process EOF.
#[derive(Debug)]
pub struct StdioStream {
    stream: UnixStream,
    kind: StreamKind,
}

impl StdioStream {
    pub(super) fn open(
        endpoint: &Endpoint,
        container_id: &str,
        exec_id: &str,
        kind: StreamKind,
        timeout: std::time::Duration,
    ) -> Result<StdioStream, Error> {
        let mut stream = endpoint.connect_stdio(timeout)?;
        let stdio_err = |source| Error::Stdio {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            kind,
            source,
        };
        let io_err = |e: io::Error| stdio_err(protocol::stream_header::Error::Io(e));
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        StreamHeader {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            kind,
        }
        .write_to(&mut stream)
        .map_err(stdio_err)?;
        read_ack(&mut stream).map_err(stdio_err)?;
        stream.set_read_timeout(None).map_err(io_err)?;
        stream.set_write_timeout(None).map_err(io_err)?;
        Ok(StdioStream { stream, kind })
    }

    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Signals end of input (stdin, tty) while still reading what the process writes.
    pub fn close_write(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    pub fn try_clone(&self) -> io::Result<StdioStream> {
        Ok(StdioStream {
            stream: self.stream.try_clone()?,
            kind: self.kind,
        })
    }

    pub fn into_inner(self) -> UnixStream {
        self.stream
    }
}

impl Read for StdioStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for StdioStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// The output threads of one process's relay (its stdout and stderr, or its tty), each
/// pumping a stream to the host until EOF.
#[derive(Debug, Default)]
pub struct OutputPumps {
    threads: Vec<JoinHandle<()>>,
}

impl OutputPumps {
    pub fn push(&mut self, thread: JoinHandle<()>) {
        self.threads.push(thread);
    }

    /// Waits until every output stream reached EOF and was written (or its host side failed),
    /// so the last byte precedes the exit that the caller reports next.
    pub fn drain(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Bytes [`pump`] moves per read.
pub const PUMP_CHUNK: usize = 128 * 1024;

/// Copies until EOF on `from` in large chunks (what the guest's stdio streams deliver);
/// an error on either side ends it. Both relays use it: the CLI's stdio attach and the
/// containerd shim's FIFO relay.
pub fn pump(from: &mut impl Read, mut to: impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; PUMP_CHUNK];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn pump_copies_everything_in_order() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let out = tempfile::tempfile().unwrap();
        let mut reader = out.try_clone().unwrap();
        let n = pump(&mut &data[..], out).unwrap();
        assert_eq!(n, data.len() as u64);
        use std::io::Seek;
        reader.rewind().unwrap();
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
