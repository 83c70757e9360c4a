//! One process of a task (a container's init or an exec): its stdio paths, status, pid and
//! how it ended, with a watch that `Wait` calls block on.

use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use runtime::Status;
use tokio::sync::watch;

/// The stdio containerd passed: FIFO paths (empty: none) and whether it is a terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
        StdioPaths {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal,
        }
    }
}

/// How and when a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128+N after signal N (containerd's convention).
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn new(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        let d = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
            ..Default::default()
        }
    }
}

/// A process of a task.
#[derive(Debug)]
pub struct Process {
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The pid in the guest (the shim's own pid for a pause container without a VM).
    pub pid: u32,
    pub status: Status,
    /// An OCI process object (JSON) for exec processes.
    pub spec: Vec<u8>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            pid: 0,
            status: Status::Created,
            spec,
            exit: watch::channel(None).0,
        }
    }

    /// Records the end (once; a later call keeps the first exit).
    pub fn set_exit(&mut self, exit: Exit) {
        self.status = Status::Stopped;
        self.exit.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                true
            } else {
                false
            }
        });
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// A receiver that sees the exit once it is recorded.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }
}

/// Waits until the process behind `rx` has ended.
pub async fn wait_exit(mut rx: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|e| e.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_see_the_first_exit() {
        let mut p = Process::new("", StdioPaths::default(), Vec::new());
        let rx = p.subscribe();
        let waiter = tokio::spawn(wait_exit(rx));
        p.set_exit(Exit::new(137));
        p.set_exit(Exit::new(0));
        assert_eq!(waiter.await.unwrap().unwrap().status, 137);
        assert_eq!(p.exit().unwrap().status, 137);
        assert_eq!(p.status, Status::Stopped);
        // A waiter that comes after the exit returns at once.
        assert_eq!(wait_exit(p.subscribe()).await.unwrap().status, 137);
    }
}
