//! A container in a state root: the [`Container`] handle every lifecycle operation works on,
//! its errors and its state directory; each operation lives in the file named after it.
//!
//! create (the init blocks on the exec fifo) → start → kill, wait, exec, ps, pause/resume,
//! update, stats → delete; load and list find containers again.

mod create;
mod delete;
mod exec;
mod kill;
mod load;
mod pause;
mod ps;
mod start;
mod stats;
mod update;
mod wait;

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::cgroups::{Cgroup, CgroupError};
use crate::hooks::{self, HookError, HookKind};
use crate::process::channel::Channel;
use crate::spec::SpecError;
use crate::state::{State, StateError, Status};

pub use create::CreateOptions;
pub use exec::ExecOptions;

/// The file the init blocks on until `start` opens it.
pub(crate) const EXEC_FIFO: &str = "exec.fifo";

/// Lifecycle errors. Displayed as one line naming the container, field or file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id breaks [`crate::container_id`]'s rule.
    #[error(transparent)]
    InvalidId(#[from] crate::container_id::InvalidId),
    /// A container with this id exists in the state root.
    #[error("container {0} already exists")]
    Exists(String),
    /// No container with this id.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The operation does not fit the container's status.
    #[error("container {id} is {status}: cannot {op}")]
    WrongState {
        /// Container id.
        id: String,
        /// Its status.
        status: Status,
        /// The refused operation.
        op: &'static str,
    },
    /// config.json or process.json is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Setting up the container failed in the forked init.
    #[error("{0}")]
    Init(String),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The state directory could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The container has no cgroup, which the operation needs.
    #[error("container {0} has no cgroup (no usable cgroup v2 hierarchy when it was created)")]
    NoCgroup(String),
    /// A system call on the host side failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

fn errno(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |e| Error::Sys {
        what,
        source: e.into(),
    }
}

/// A container in a state root. Obtained from [`Container::create`] or [`Container::load`].
#[derive(Debug)]
pub struct Container {
    /// `<state_root>/<id>`: state.json and, until start, the exec fifo.
    dir: PathBuf,
    state: State,
    spec: Spec,
    /// The init's sync channel while this process is the one that created it.
    init_chan: Option<Channel>,
}

impl Container {
    /// Container id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// PID of the init process (in the caller's PID namespace).
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// The spec the container was created from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Current state, with the status refreshed from the live process.
    pub fn state(&mut self) -> State {
        self.state.refresh(&self.dir);
        self.state.clone()
    }

    fn status(&mut self) -> Status {
        self.state().status
    }

    /// The current status if `allowed` accepts it; else the refusal of `op`.
    fn status_for(
        &mut self,
        op: &'static str,
        allowed: impl FnOnce(Status) -> bool,
    ) -> Result<Status> {
        let status = self.status();
        if allowed(status) {
            Ok(status)
        } else {
            Err(Error::WrongState {
                id: self.id().into(),
                status,
                op,
            })
        }
    }

    /// Runs the `kind` hooks after the fact (poststart, poststop): runtime-spec has their
    /// failure logged, not the operation fail.
    fn run_hooks_logged(&self, kind: HookKind) {
        if let Err(e) = hooks::run(kind, self.spec.hooks().as_ref(), &self.state.oci_json()) {
            tracing::warn!("{e}");
        }
    }

    /// The container's cgroup, for the operations that need one.
    fn cgroup(&self) -> Result<Cgroup> {
        let path = self
            .state
            .cgroup_path
            .as_ref()
            .ok_or_else(|| Error::NoCgroup(self.id().into()))?;
        let root = path.parent().unwrap_or(path);
        Ok(Cgroup::new(
            root,
            Path::new(path.file_name().unwrap_or_default()),
        ))
    }
}
