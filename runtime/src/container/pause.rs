//! `pause` and `resume`: freezing and thawing every process of a container with the cgroup v2
//! freezer.

use super::{Container, Result};
use crate::state::Status;

impl Container {
    /// Freezes every process of the container (cgroup v2 freezer).
    pub fn pause(&mut self) -> Result<()> {
        self.status_for("pause", |s| s == Status::Running)?;
        Ok(self.cgroup()?.set_frozen(true)?)
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<()> {
        self.status_for("resume", |s| s == Status::Paused)?;
        Ok(self.cgroup()?.set_frozen(false)?)
    }
}
