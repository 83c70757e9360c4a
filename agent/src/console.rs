//! The console socket of a container with a terminal: the runtime sends the pty master over it
//! (runc's protocol, one SCM_RIGHTS message) while it sets the container up.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use thiserror::Error;

/// Errors receiving a terminal.
#[derive(Debug, Error)]
pub enum Error {
    #[error("console socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("console socket {path}: the runtime never connected: {source}")]
    Accept {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("console socket {path}: receiving the pty master failed: {source}")]
    Receive { path: PathBuf, source: nix::Error },
    #[error("console socket {path}: the message carried no descriptor")]
    NoFd { path: PathBuf },
}

/// A listening console socket; removed on drop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> Result<ConsoleSocket, Error> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ConsoleSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the pty master. Call once the runtime has returned: its connection and message
    /// are already queued, so nothing here waits.
    pub fn receive(&self) -> Result<File, Error> {
        let accept_err = |source| Error::Accept {
            path: self.path.clone(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(accept_err)?;
        let (stream, _) = self.listener.accept().map_err(accept_err)?;
        stream.set_nonblocking(true).map_err(accept_err)?;
        let mut name = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|source| Error::Receive {
            path: self.path.clone(),
            source,
        })?;
        let cmsgs = msg.cmsgs().map_err(|source| Error::Receive {
            path: self.path.clone(),
            source,
        })?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed `fd` in this process for us alone.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        Err(Error::NoFd {
            path: self.path.clone(),
        })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
