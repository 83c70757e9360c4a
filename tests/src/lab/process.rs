//! Supervision of a child process (QEMU, or the command itself on a KVM host): copying its
//! output pipes, and killing it on timeout or cancellation so nothing is left behind.

use std::fs::File;
use std::io::{self, Read, Write};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often the supervisor looks at the child, the deadline and the cancel flag.
const POLL: Duration = Duration::from_millis(20);

/// Where a pump copies the bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
    Discard,
}

/// A thread copying one pipe to a sink and, optionally, into a buffer.
pub struct Pump {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Receiver<()>,
    /// When the pipe last delivered bytes (or the pump started).
    last_read: Arc<Mutex<Instant>>,
}

impl Pump {
    pub fn start(mut pipe: File, sink: Sink, capture: bool) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let shared = buf.clone();
        let last_read = Arc::new(Mutex::new(Instant::now()));
        let stamp = last_read.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                let n = match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let data = &chunk[..n];
                *stamp.lock().unwrap() = Instant::now();
                // A closed stdout/stderr of ours must not stop the copy (the buffer matters).
                let _ = match sink {
                    Sink::Stdout => io::stdout().lock().write_all(data),
                    Sink::Stderr => io::stderr().lock().write_all(data),
                    Sink::Discard => Ok(()),
                };
                if capture {
                    shared.lock().unwrap().extend_from_slice(data);
                }
            }
            let _ = tx.send(());
        });
        Self {
            buf,
            done,
            last_read,
        }
    }

    /// How long the pipe has been silent.
    pub fn idle(&self) -> Duration {
        self.last_read.lock().unwrap().elapsed()
    }

    /// A copy of what was captured so far.
    pub fn snapshot(&self) -> Vec<u8> {
        self.buf.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for the end of the pipe and returns what was captured.
    /// A pipe still held open by an orphaned grandchild does not block the caller forever.
    pub fn finish(self, limit: Duration) -> Vec<u8> {
        let _ = self.done.recv_timeout(limit);
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}

/// Why the supervised child is gone.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    /// `Watch::stalled` said the child makes no progress any more.
    Stalled,
}

/// Limits on a supervised child.
pub struct Watch<'a> {
    pub deadline: Instant,
    pub cancel: Option<&'a AtomicBool>,
    /// Says the child is stuck (e.g. no output for too long): it is then killed.
    pub stalled: Option<&'a dyn Fn() -> bool>,
}

impl Watch<'_> {
    /// Waits for `child`; kills it (with `kill`) at the deadline or on cancellation.
    /// `finished` says the child's work is done: it then gets `grace` to exit by itself.
    pub fn wait(
        &self,
        child: &mut Child,
        kill: impl Fn(&mut Child),
        mut finished: impl FnMut() -> bool,
        grace: Duration,
    ) -> io::Result<Ended> {
        let mut grace_end: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Ended::Exited(status));
            }
            let now = Instant::now();
            let reason = if self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                Some(Ended::Cancelled)
            } else if now >= self.deadline {
                Some(Ended::TimedOut)
            } else if grace_end.is_none() && self.stalled.is_some_and(|stalled| stalled()) {
                Some(Ended::Stalled)
            } else {
                None
            };
            if let Some(reason) = reason {
                kill(child);
                child.wait()?;
                return Ok(reason);
            }
            if grace_end.is_none() && finished() {
                grace_end = Some(now + grace);
            }
            if grace_end.is_some_and(|end| now >= end) {
                kill(child);
                return Ok(Ended::Exited(child.wait()?));
            }
            thread::sleep(POLL);
        }
    }
}

/// Sends SIGKILL to the child's process group (the child leads it).
pub fn kill_group(child: &mut Child) {
    // SAFETY: killpg only sends a signal; the pid is our live child's, which leads its group.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
    }
}

/// Sends SIGKILL to the child itself.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
}

/// Maps an exit status to the shell's convention: the code, or 128 + the signal number.
pub fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
