//! One stdio stream of a process in the guest: a connection to the agent's stdio port that
//! starts with a header naming (container, exec, stream), then carries raw bytes.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

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
