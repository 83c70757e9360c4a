//! runtime-spec `kill`: a signal to the init, or with `all` to every process of the container.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{errno, Container, Result};
use crate::state::Status;

impl Container {
    /// Sends `signal` to the init, or with `all` to every process of the container.
    pub fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        self.status_for("kill", |s| s != Status::Stopped && s != Status::Creating)?;
        let pids = if all {
            self.ps()?
        } else {
            vec![self.state.pid]
        };
        for pid in pids.into_iter().filter(|p| *p > 0) {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(errno(format!("kill {pid}"))(e)),
            }
        }
        Ok(())
    }
}
