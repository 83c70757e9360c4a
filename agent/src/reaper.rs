//! The one place the agent collects dead children: PID 1 inherits every orphan of the guest.
//! Spawning and reaping share a lock, so a child is registered before its exit can be seen.

use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use thiserror::Error;

/// Errors setting up child reaping.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot block SIGCHLD for the agent's threads: {0}")]
    BlockSigchld(nix::Error),
    #[error("cannot become the child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(nix::Error),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

/// Serialises spawning against reaping.
///
/// Whoever forks a child the agent will wait for does it inside [`Reaper::spawn_locked`] and
/// records the pid before returning; [`Reaper::reap`] takes the same lock, so it never hands
/// out an exit before the pid is known. Nothing else in the agent calls `waitpid`.
pub struct Reaper {
    lock: Mutex<()>,
}

impl Reaper {
    /// Blocks SIGCHLD in the calling thread, which every later thread inherits; the reaper
    /// thread then takes it with `sigwait`. Call before any thread is started. Children get
    /// an empty mask again from std's spawn.
    pub fn new() -> Result<Reaper, Error> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(Error::BlockSigchld)?;
        Ok(Reaper {
            lock: Mutex::new(()),
        })
    }

    /// Outside PID 1 (host test runs), orphans of our children come to us instead of init.
    pub fn become_subreaper(&self) -> Result<(), Error> {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Errno::result(rc).map(drop).map_err(Error::Subreaper)
    }

    /// Runs `spawn` (which forks and records the child) with reaping held off.
    pub fn spawn_locked<R>(&self, spawn: impl FnOnce() -> R) -> R {
        let _guard = self.guard();
        spawn()
    }

    /// Collects every child that has exited, without blocking.
    pub fn reap(&self) -> Vec<(Pid, ExitStatus)> {
        let _guard = self.guard();
        let mut exited = Vec::new();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => exited.push((pid, ExitStatus::Exited(code))),
                Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => exited.push((
                    pid,
                    ExitStatus::Signaled {
                        signal: signal as i32,
                        core_dumped,
                    },
                )),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid failed: {e}");
                    break;
                }
            }
        }
        exited
    }

    /// Reaps forever, handing each exit to `on_exit`; run on its own thread.
    pub fn run(&self, mut on_exit: impl FnMut(Pid, ExitStatus)) -> ! {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        loop {
            for (pid, status) in self.reap() {
                on_exit(pid, status);
            }
            if let Err(e) = set.wait() {
                log::warn!("sigwait for SIGCHLD failed: {e}");
            }
        }
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, so a panic while it was held leaves nothing inconsistent.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
