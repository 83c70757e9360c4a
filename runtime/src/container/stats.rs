//! What a container's cgroup reports: usage figures (`stats`), event counters (`events`) and
//! the `memory.events` file an OOM watcher can wait on.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Container, Result};
use crate::cgroups;

impl Container {
    /// cgroup usage numbers.
    pub fn stats(&self) -> Result<cgroups::Stats> {
        Ok(self.cgroup()?.stats()?)
    }

    /// The container cgroup's `memory.events` file (whose changes can be watched), if the
    /// container has a cgroup.
    pub fn memory_events_path(&self) -> Option<PathBuf> {
        self.state
            .cgroup_path
            .as_ref()
            .map(|p| p.join("memory.events"))
    }

    /// cgroup.events and memory.events (`oom`, `oom_kill`...).
    pub fn events(&self) -> Result<HashMap<String, u64>> {
        Ok(self.cgroup()?.events()?)
    }
}
