//! The process table: every process the agent started, keyed by (container id, exec id), with
//! its exit status once reaped and the stdio ends no stream has attached yet.

use std::collections::HashMap;
use std::fs::File;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::unistd::Pid;
use protocol::stream_header::StreamKind;
use thiserror::Error;

use crate::listener::Conn;
use crate::reaper::ExitStatus;
use crate::spawn::{Spawned, StdioEnds};

/// Errors looking up or operating on a process.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no process with container id {container_id:?} and exec id {exec_id:?}")]
    NotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("a process with container id {container_id:?} and exec id {exec_id:?} exists")]
    Exists {
        container_id: String,
        exec_id: String,
    },
    #[error("{kind} of {key} was not requested at start or is already attached")]
    StreamUnavailable { key: String, kind: StreamKind },
    #[error("process {key} has no terminal")]
    NoTerminal { key: String },
    #[error("process {key} (pid {pid}) has already exited")]
    Exited { key: String, pid: i32 },
    #[error("{what} of process {key} failed: {source}")]
    Sys {
        what: &'static str,
        key: String,
        source: nix::Error,
    },
}

/// What a stdio stream attached to; the stream's thread copies between it and the socket.
pub enum Attached {
    /// Bytes flow from the socket into this pipe.
    Stdin(File),
    /// Bytes flow from this pipe to the socket.
    Output(File),
    /// Both directions through the terminal master.
    Tty(File),
}

/// One process the agent started.
pub struct Process {
    pub container_id: String,
    pub exec_id: String,
    pub pid: Pid,
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
    stdio: Mutex<StdioState>,
    tty_control: Option<File>,
}

struct StdioState {
    ends: StdioEnds,
    /// The attached stdin stream, so CloseStdin can end it.
    stdin_conn: Option<Conn>,
}

impl Process {
    pub fn key(&self) -> String {
        format!("{:?}/{:?}", self.container_id, self.exec_id)
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *lock(&self.exit)
    }

    /// Blocks until the reaper reports this process's exit.
    pub fn wait(&self) -> ExitStatus {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(status) = *exit {
                return status;
            }
            exit = self
                .exited
                .wait(exit)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn set_exit(&self, status: ExitStatus) {
        *lock(&self.exit) = Some(status);
        self.exited.notify_all();
    }

    /// Sends `signal` unless the process has already been reaped (its pid may be reused).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), Error> {
        let exit = lock(&self.exit);
        if exit.is_some() {
            return Err(Error::Exited {
                key: self.key(),
                pid: self.pid.as_raw(),
            });
        }
        nix::sys::signal::kill(self.pid, signal).map_err(|source| Error::Sys {
            what: "kill",
            key: self.key(),
            source,
        })
    }

    /// Hands the requested stdio end to a stream; each end attaches once.
    pub fn attach(&self, kind: StreamKind, conn: &Conn) -> Result<Attached, Error> {
        let mut stdio = lock(&self.stdio);
        let unavailable = || Error::StreamUnavailable {
            key: self.key(),
            kind,
        };
        match kind {
            StreamKind::Stdin => {
                let pipe = stdio.ends.stdin.take().ok_or_else(unavailable)?;
                stdio.stdin_conn = conn.try_clone().ok();
                Ok(Attached::Stdin(pipe))
            }
            StreamKind::Stdout => stdio
                .ends
                .stdout
                .take()
                .map(Attached::Output)
                .ok_or_else(unavailable),
            StreamKind::Stderr => stdio
                .ends
                .stderr
                .take()
                .map(Attached::Output)
                .ok_or_else(unavailable),
            StreamKind::Tty => stdio
                .ends
                .tty
                .take()
                .map(Attached::Tty)
                .ok_or_else(unavailable),
        }
    }

    /// Ends the process's stdin: drops the pipe if no stream holds it, or stops reading the
    /// attached stream (bytes it already delivered are still written to the process).
    pub fn close_stdin(&self) {
        let mut stdio = lock(&self.stdio);
        stdio.ends.stdin = None;
        if let Some(conn) = stdio.stdin_conn.take() {
            let _ = conn.shutdown(Shutdown::Read);
        }
    }

    pub fn resize_tty(&self, rows: u16, cols: u16) -> Result<(), Error> {
        let master = self
            .tty_control
            .as_ref()
            .ok_or_else(|| Error::NoTerminal { key: self.key() })?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        nix::errno::Errno::result(rc)
            .map(drop)
            .map_err(|source| Error::Sys {
                what: "TIOCSWINSZ",
                key: self.key(),
                source,
            })
    }
}

/// All processes the agent started.
#[derive(Default)]
pub struct ProcessTable {
    by_key: Mutex<HashMap<(String, String), Arc<Process>>>,
}

impl ProcessTable {
    /// Records a freshly spawned process; call inside `Reaper::spawn_locked`.
    pub fn insert(&self, container_id: &str, exec_id: &str, spawned: Spawned) -> Arc<Process> {
        let process = Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid: spawned.pid,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            stdio: Mutex::new(StdioState {
                ends: spawned.ends,
                stdin_conn: None,
            }),
            tty_control: spawned.tty_control,
        });
        lock(&self.by_key).insert(
            (container_id.to_string(), exec_id.to_string()),
            process.clone(),
        );
        process
    }

    /// Fails if (container, exec) is taken; checked before spawning.
    pub fn ensure_free(&self, container_id: &str, exec_id: &str) -> Result<(), Error> {
        if lock(&self.by_key).contains_key(&(container_id.to_string(), exec_id.to_string())) {
            return Err(Error::Exists {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        Ok(())
    }

    pub fn get(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>, Error> {
        lock(&self.by_key)
            .get(&(container_id.to_string(), exec_id.to_string()))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            })
    }

    /// The processes of one container ("" for those run directly in the guest).
    pub fn of_container(&self, container_id: &str) -> Vec<Arc<Process>> {
        lock(&self.by_key)
            .values()
            .filter(|p| p.container_id == container_id)
            .cloned()
            .collect()
    }

    pub fn remove_container(&self, container_id: &str) {
        lock(&self.by_key).retain(|(c, _), _| c != container_id);
    }

    /// Called by the reaper thread; returns the process if it is one of ours.
    pub fn record_exit(&self, pid: Pid, status: ExitStatus) -> Option<Arc<Process>> {
        let process = lock(&self.by_key)
            .values()
            .find(|p| p.pid == pid && p.exit_status().is_none())
            .cloned()?;
        process.set_exit(status);
        Some(process)
    }

    pub fn all(&self) -> Vec<Arc<Process>> {
        lock(&self.by_key).values().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
