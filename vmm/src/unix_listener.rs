//! The Unix socket listeners of the VMM (the API socket, the vsock host socket): bound at a
//! path that is removed again on drop, non-blocking, drained of every pending connection.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::warn;

/// What to do when the path is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleSocket {
    /// Fail: the path may be another VMM's live socket.
    Refuse,
    /// Remove a socket file left by an earlier run; any other file is not ours to remove.
    Replace,
}

/// A listening Unix socket; the socket file goes when this is dropped.
#[derive(Debug)]
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocketListener {
    /// Listens on `path`, non-blocking.
    pub fn bind(path: &Path, stale: StaleSocket) -> std::io::Result<Self> {
        if stale == StaleSocket::Replace {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
        }
        let listener = Self {
            listener: UnixListener::bind(path)?,
            path: path.to_owned(),
        };
        listener.listener.set_nonblocking(true)?;
        Ok(listener)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts every pending connection and hands each, made non-blocking, to `on_stream`;
    /// returns once none is left. Errors other than that are logged with `name`.
    pub fn accept_all(&self, name: &str, mut on_stream: impl FnMut(UnixStream)) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        on_stream(stream);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "{name}: accept failed");
                    return;
                }
            }
        }
    }
}

impl AsRawFd for UnixSocketListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_pending_stream_non_blocking_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixSocketListener::bind(&path, StaleSocket::Refuse).unwrap();
        let _a = UnixStream::connect(&path).unwrap();
        let _b = UnixStream::connect(&path).unwrap();
        let mut accepted = Vec::new();
        listener.accept_all("test", |s| accepted.push(s));
        assert_eq!(accepted.len(), 2);
        let mut buf = [0u8; 1];
        let e = std::io::Read::read(&mut accepted[0], &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        listener.accept_all("test", |_| panic!("nothing is pending"));
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn a_taken_path_is_refused_or_its_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(UnixSocketListener::bind(&path, StaleSocket::Refuse).is_err());
        assert!(path.exists(), "a refused bind leaves the file alone");
        UnixSocketListener::bind(&path, StaleSocket::Replace).unwrap();
    }
}
