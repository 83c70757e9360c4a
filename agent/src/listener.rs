//! Listening addresses of the agent: AF_VSOCK in the guest, Unix sockets for host test runs.
//! `Conn` hides which kind of stream socket a stdio connection arrived on.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;
use vsock::{VsockAddr, VsockListener, VsockStream};

/// A malformed listening address.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address {0:?} must start with unix:// or vsock://")]
    Scheme(String),
    #[error("vsock address {0:?} must be vsock://CID:PORT (CID -1 for any)")]
    Vsock(String),
    #[error("unix address {0:?} has an empty path")]
    EmptyPath(String),
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Vsock { cid: u32, port: u32 },
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(AddressError::EmptyPath(s.to_string()));
            }
            return Ok(Address::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let bad = || AddressError::Vsock(s.to_string());
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            let cid = if cid == "-1" {
                libc::VMADDR_CID_ANY
            } else {
                cid.parse().map_err(|_| bad())?
            };
            let port = port.parse().map_err(|_| bad())?;
            return Ok(Address::Vsock { cid, port });
        }
        Err(AddressError::Scheme(s.to_string()))
    }
}

impl std::fmt::Display for Address {
    /// The form ttrpc's `Server::bind` understands.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Vsock { cid, port } if *cid == libc::VMADDR_CID_ANY => {
                write!(f, "vsock://-1:{port}")
            }
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// A bound stream listener.
pub enum Listener {
    Unix(UnixListener),
    Vsock(VsockListener),
}

impl Listener {
    pub fn bind(address: &Address) -> io::Result<Listener> {
        match address {
            Address::Unix(path) => UnixListener::bind(path).map(Listener::Unix),
            Address::Vsock { cid, port } => {
                VsockListener::bind(&VsockAddr::new(*cid, *port)).map(Listener::Vsock)
            }
        }
    }

    pub fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Listener::Vsock(l) => l.accept().map(|(s, _)| Conn::Vsock(s)),
        }
    }
}

/// One accepted stream connection.
pub enum Conn {
    Unix(UnixStream),
    Vsock(VsockStream),
}

impl Conn {
    pub fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
            Conn::Vsock(s) => s.try_clone().map(Conn::Vsock),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Vsock(s) => s.shutdown(how),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(timeout),
            Conn::Vsock(s) => s.set_read_timeout(timeout),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Vsock(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Vsock(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_in_ttrpc_form() {
        let any: Address = "vsock://-1:1024".parse().unwrap();
        assert_eq!(
            any,
            Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1024
            }
        );
        assert_eq!(any.to_string(), "vsock://-1:1024");
        let three: Address = "vsock://3:1025".parse().unwrap();
        assert_eq!(three.to_string(), "vsock://3:1025");
        let unix: Address = "unix:///run/a.sock".parse().unwrap();
        assert_eq!(unix.to_string(), "unix:///run/a.sock");
        assert!(matches!(
            "vsock://3".parse::<Address>(),
            Err(AddressError::Vsock(_))
        ));
        assert!(matches!(
            "unix://".parse::<Address>(),
            Err(AddressError::EmptyPath(_))
        ));
        assert!(matches!(
            "tcp://1:2".parse::<Address>(),
            Err(AddressError::Scheme(_))
        ));
    }
}
