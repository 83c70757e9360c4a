//! A foreground command's stdio attached to its process in the guest: this host's fds 0-2
//! pumped to and from the process's streams, output joined so the last byte precedes the exit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::thread::JoinHandle;

use crate::agent_client::{
    pump, AgentClient, OutputPumps, StdioSet, StdioStream, StreamKind, PUMP_CHUNK,
};

use super::Error;

fn dup(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<File, Error> {
    fd.try_clone_to_owned()
        .map(File::from)
        .map_err(|source| Error::Io {
            what: format!("duplicating {what}"),
            source,
        })
}

fn host_fd(n: i32) -> Result<File, Error> {
    // SAFETY: fds 0-2 of this process stay open for its lifetime; we only borrow them to dup.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
    dup(fd, &format!("fd {n}"))
}

/// The streams to announce for a process that [`attach`] will attach: none with a terminal
/// (the agent creates the one tty stream with the pty), otherwise all three.
pub fn announced(terminal: bool) -> StdioSet {
    if terminal {
        return StdioSet::default();
    }
    StdioSet {
        stdin: true,
        stdout: true,
        stderr: true,
    }
}

/// Opens the streams announced for (container, exec) and starts pumping: our stdin into the
/// process (EOF passed on), its stdout/stderr (or tty) to our fds 1/2.
pub fn attach(
    client: &AgentClient,
    container_id: &str,
    exec_id: &str,
    terminal: bool,
) -> Result<OutputPumps, Error> {
    let open = |kind| client.open_stream(container_id, exec_id, kind);
    let mut outputs = OutputPumps::default();
    if terminal {
        let tty = open(StreamKind::Tty)?;
        let input = tty.try_clone().map_err(|source| Error::Io {
            what: "cloning the tty stream".into(),
            source,
        })?;
        spawn_input(host_fd(0)?, input);
        outputs.push(spawn_output(tty, host_fd(1)?));
    } else {
        let stdin = open(StreamKind::Stdin)?;
        let stdout = open(StreamKind::Stdout)?;
        let stderr = open(StreamKind::Stderr)?;
        spawn_input(host_fd(0)?, stdin);
        outputs.push(spawn_output(stdout, host_fd(1)?));
        outputs.push(spawn_output(stderr, host_fd(2)?));
    }
    Ok(outputs)
}

/// Host input into a stream until EOF, then a half-close. Detached: it may block on our
/// stdin after the process has ended.
fn spawn_input(mut from: File, mut to: StdioStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; PUMP_CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = to.close_write();
    });
}

/// A stream's output to a host fd until EOF; a failing host side drops the stream, so the
/// process sees a broken pipe instead of blocking.
fn spawn_output(mut from: StdioStream, to: File) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = pump(&mut from, to);
    })
}
