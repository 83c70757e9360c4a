//! The stdio stream header: the first bytes of every connection to the stdio port.
//! It names the process and the stream; the agent answers with an ack, then bytes flow raw.
//!
//! Request (host → agent), integers big-endian:
//! `"SBXS"` · version u8 (1) · kind u8 · container id (u16 length + UTF-8) · exec id (same).
//! Reply (agent → host): status u8 (0 = attached) · message (u16 length + UTF-8, empty on success).

use std::io::{self, Read, Write};

use thiserror::Error;

const MAGIC: &[u8; 4] = b"SBXS";
const VERSION: u8 = 1;
/// Longest container or exec id accepted in a header.
pub const MAX_ID_LEN: usize = 1024;
/// Longest error message carried by an ack.
const MAX_MESSAGE_LEN: usize = 4096;

/// Errors reading or writing a stdio header or ack.
#[derive(Debug, Error)]
pub enum Error {
    #[error("stdio header: I/O on the stream failed: {0}")]
    Io(#[from] io::Error),
    #[error("stdio header: bad magic {0:?}, expected \"SBXS\"")]
    BadMagic([u8; 4]),
    #[error("stdio header: unsupported version {0}, expected {VERSION}")]
    BadVersion(u8),
    #[error("stdio header: unknown stream kind {0}")]
    BadKind(u8),
    #[error("stdio header: {field} is {len} bytes, longer than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("stdio header: {field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("stdio stream refused by the agent: {0}")]
    Refused(String),
}

/// Which of a process's streams a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Host → process.
    Stdin,
    /// Process → host.
    Stdout,
    /// Process → host.
    Stderr,
    /// Both directions through the process's pseudo-terminal.
    Tty,
}

impl StreamKind {
    fn to_byte(self) -> u8 {
        match self {
            StreamKind::Stdin => 0,
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
            StreamKind::Tty => 3,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, Error> {
        match byte {
            0 => Ok(StreamKind::Stdin),
            1 => Ok(StreamKind::Stdout),
            2 => Ok(StreamKind::Stderr),
            3 => Ok(StreamKind::Tty),
            other => Err(Error::BadKind(other)),
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
        };
        f.write_str(name)
    }
}

/// The header naming the process and stream of a stdio connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Empty for a process run directly in the guest.
    pub container_id: String,
    /// Empty for a container's init process.
    pub exec_id: String,
    pub kind: StreamKind,
}

impl StreamHeader {
    /// Writes the header in one `write_all`, so it never interleaves with stream bytes.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(10 + self.container_id.len() + self.exec_id.len());
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.push(self.kind.to_byte());
        put_str(&mut buf, "container id", &self.container_id, MAX_ID_LEN)?;
        put_str(&mut buf, "exec id", &self.exec_id, MAX_ID_LEN)?;
        w.write_all(&buf)?;
        Ok(())
    }

    /// Reads a header; reads exactly its bytes and nothing after.
    pub fn read_from(r: &mut impl Read) -> Result<Self, Error> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let mut version_kind = [0u8; 2];
        r.read_exact(&mut version_kind)?;
        if version_kind[0] != VERSION {
            return Err(Error::BadVersion(version_kind[0]));
        }
        let kind = StreamKind::from_byte(version_kind[1])?;
        let container_id = get_str(r, "container id", MAX_ID_LEN)?;
        let exec_id = get_str(r, "exec id", MAX_ID_LEN)?;
        Ok(StreamHeader {
            container_id,
            exec_id,
            kind,
        })
    }
}

/// Writes the agent's answer to a header: `Ok(())` attached, `Err(message)` refused.
pub fn write_ack(w: &mut impl Write, result: Result<(), &str>) -> Result<(), Error> {
    let mut buf = Vec::new();
    match result {
        Ok(()) => {
            buf.push(0);
            put_str(&mut buf, "ack message", "", MAX_MESSAGE_LEN)?;
        }
        Err(message) => {
            buf.push(1);
            let message = truncate(message, MAX_MESSAGE_LEN);
            put_str(&mut buf, "ack message", message, MAX_MESSAGE_LEN)?;
        }
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Reads the agent's answer; a refusal becomes `Error::Refused` with the agent's reason.
pub fn read_ack(r: &mut impl Read) -> Result<(), Error> {
    let mut status = [0u8; 1];
    r.read_exact(&mut status)?;
    let message = get_str(r, "ack message", MAX_MESSAGE_LEN)?;
    if status[0] == 0 {
        Ok(())
    } else {
        Err(Error::Refused(message))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(buf: &mut Vec<u8>, field: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.len() > max {
        return Err(Error::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    // max is far below u16::MAX, so the length fits.
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

fn get_str(r: &mut impl Read, field: &'static str, max: usize) -> Result<String, Error> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::TooLong { field, len, max });
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| Error::NotUtf8 { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_leaves_following_bytes() {
        let header = StreamHeader {
            container_id: "c1".into(),
            exec_id: "e-ü".into(),
            kind: StreamKind::Stderr,
        };
        let mut wire = Vec::new();
        header.write_to(&mut wire).unwrap();
        wire.extend_from_slice(b"payload");
        let mut reader = &wire[..];
        assert_eq!(StreamHeader::read_from(&mut reader).unwrap(), header);
        assert_eq!(reader, b"payload");
    }

    #[test]
    fn bad_magic_and_kind_are_rejected() {
        let err = StreamHeader::read_from(&mut &b"XXXX\x01\x00\x00\x00\x00\x00"[..]).unwrap_err();
        assert!(matches!(err, Error::BadMagic(m) if &m == b"XXXX"), "{err}");
        let err = StreamHeader::read_from(&mut &b"SBXS\x01\x09\x00\x00\x00\x00"[..]).unwrap_err();
        assert!(matches!(err, Error::BadKind(9)), "{err}");
        let err = StreamHeader::read_from(&mut &b"SBXS\x02\x00\x00\x00\x00\x00"[..]).unwrap_err();
        assert!(matches!(err, Error::BadVersion(2)), "{err}");
    }

    #[test]
    fn overlong_id_is_rejected_on_both_sides() {
        let header = StreamHeader {
            container_id: "x".repeat(MAX_ID_LEN + 1),
            exec_id: String::new(),
            kind: StreamKind::Stdin,
        };
        assert!(matches!(
            header.write_to(&mut Vec::new()),
            Err(Error::TooLong {
                field: "container id",
                ..
            })
        ));
        let mut wire = b"SBXS\x01\x00".to_vec();
        wire.extend_from_slice(&0xffffu16.to_be_bytes());
        assert!(matches!(
            StreamHeader::read_from(&mut &wire[..]),
            Err(Error::TooLong { len: 0xffff, .. })
        ));
    }

    #[test]
    fn ack_carries_refusal_reason() {
        let mut wire = Vec::new();
        write_ack(&mut wire, Ok(())).unwrap();
        write_ack(&mut wire, Err("no process c1/e1")).unwrap();
        let mut reader = &wire[..];
        read_ack(&mut reader).unwrap();
        let err = read_ack(&mut reader).unwrap_err();
        assert!(
            matches!(&err, Error::Refused(m) if m == "no process c1/e1"),
            "{err}"
        );
        assert!(reader.is_empty());
    }
}
