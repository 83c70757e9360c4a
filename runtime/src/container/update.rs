//! runc's `update`: new cgroup limits for a container that has not stopped; the given
//! `linux.resources` fields replace the ones in force.

use super::{Container, Error, Result};
use crate::cgroups::{self, Cgroup, CgroupError};
use crate::spec::SpecError;
use crate::state::Status;

impl Container {
    /// Changes the cgroup limits of a created, running or paused container (runc `update`):
    /// the values in `resources` replace the ones in force; fields left out stay as they are.
    /// Errors name the `linux.resources` field that is invalid or cannot be applied.
    pub fn update(&mut self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.status_for("update", |s| s != Status::Stopped)?;
        cgroups::validate_resources(resources)
            .map_err(|(field, msg)| SpecError::invalid(format!("linux.resources.{field}"), msg))?;
        let path = self
            .state
            .cgroup_path
            .clone()
            .ok_or_else(|| Error::NoCgroup(self.id().into()))?;
        let root = cgroups::find_hierarchy().ok_or_else(|| CgroupError::NoHierarchy {
            field: "linux.resources".into(),
        })?;
        Cgroup::check_controllers(&root, resources)?;
        let rel = path.strip_prefix(&root).unwrap_or(&path);
        Ok(Cgroup::new(&root, rel).create(Some(resources))?)
    }
}
