//! The sync channel between the runtime and the processes it forks: a SOCK_SEQPACKET
//! socketpair carrying small tagged messages (go, id maps needed, pid, hooks, ready, error).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// One message on the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Parent → child: continue.
    Go,
    /// Child → parent: a user namespace was created; write its uid/gid maps.
    NeedIdMaps,
    /// Intermediate → parent: the container process' PID (in the parent's PID namespace).
    Pid(i32),
    /// Child → parent: run the prestart/createRuntime hooks now.
    RunHooks,
    /// Parent → child: the hooks ran; the state JSON for the container-side hooks.
    State(String),
    /// Child → parent: set up and waiting to be started (or about to exec, for exec).
    Ready,
    /// Either way: a one-line error; the sender gives up.
    Error(String),
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel(OwnedFd);

/// A connected pair, close-on-exec so an exec closes the child's end.
pub fn pair() -> std::io::Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    /// Sends one message.
    pub fn send(&self, msg: &Msg) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(16);
        match msg {
            Msg::Go => buf.push(b'g'),
            Msg::NeedIdMaps => buf.push(b'm'),
            Msg::Pid(p) => {
                buf.push(b'p');
                buf.extend_from_slice(&p.to_le_bytes());
            }
            Msg::RunHooks => buf.push(b'h'),
            Msg::State(s) => {
                buf.push(b's');
                buf.extend_from_slice(s.as_bytes());
            }
            Msg::Ready => buf.push(b'r'),
            Msg::Error(e) => {
                buf.push(b'e');
                buf.extend_from_slice(e.as_bytes());
            }
        }
        send(self.0.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Receives one message; None when the other end is closed (it exited or exec'd).
    pub fn recv(&self) -> std::io::Result<Option<Msg>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let body = &buf[1..n];
        let text = || String::from_utf8_lossy(body).into_owned();
        Ok(Some(match buf[0] {
            b'g' => Msg::Go,
            b'm' => Msg::NeedIdMaps,
            b'p' if body.len() == 4 => {
                Msg::Pid(i32::from_le_bytes(body.try_into().expect("4 bytes")))
            }
            b'h' => Msg::RunHooks,
            b's' => Msg::State(text()),
            b'r' => Msg::Ready,
            b'e' => Msg::Error(text()),
            other => Msg::Error(format!("sync channel: unknown message tag {other}")),
        }))
    }

    /// Receives and expects a specific message kind, mapping EOF and errors to a message.
    pub fn expect_go(&self) -> Result<(), String> {
        match self.recv() {
            Ok(Some(Msg::Go)) => Ok(()),
            Ok(Some(Msg::Error(e))) => Err(e),
            Ok(other) => Err(format!("sync channel: expected go, got {other:?}")),
            Err(e) => Err(format!("sync channel: {e}")),
        }
    }

    /// The raw descriptor (kept open across fork).
    pub fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}
