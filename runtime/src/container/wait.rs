//! Waiting for a container's processes to end: the init's exit code for its parent, or
//! watching /proc for anyone else.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{errno, Container, Result};
use crate::state;

impl Container {
    /// Waits for the init to exit. Returns its exit code (128+N after signal N) when this
    /// process is its parent (the creator, via CLONE_PARENT), None when it can only watch.
    pub fn wait(&mut self) -> Result<Option<i32>> {
        if self.state.pid <= 0 {
            return Ok(None);
        }
        let pid = Pid::from_raw(self.state.pid);
        loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECHILD) => break,
                Err(e) => return Err(errno("waitpid")(e)),
            }
        }
        while matches!(state::process_info(self.state.pid), Some((s, t)) if s != 'Z' && t == self.state.init_start_time)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(None)
    }
}

/// Waits until `pid` is gone: reaps it if it is our child, else watches /proc.
pub(super) fn reap(pid: i32) {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => return,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
    }
    while matches!(state::process_info(pid), Some((s, _)) if s != 'Z' && s != 'X') {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
