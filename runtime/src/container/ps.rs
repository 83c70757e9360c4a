//! `ps`: the PIDs of a container's processes, from its cgroup or else from its PID namespace.

use std::fs;

use super::{sys, Container, Result};

impl Container {
    /// PIDs of the container's processes: from its cgroup, or else every process sharing the
    /// init's PID namespace.
    pub fn ps(&mut self) -> Result<Vec<i32>> {
        if self.state.cgroup_path.as_ref().is_some_and(|p| p.exists()) {
            return Ok(self.cgroup()?.pids()?);
        }
        let Ok(ns) = fs::read_link(format!("/proc/{}/ns/pid", self.state.pid)) else {
            return Ok(Vec::new());
        };
        let mut pids: Vec<i32> = fs::read_dir("/proc")
            .map_err(sys("read /proc"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|pid: &i32| fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l == ns))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }
}
