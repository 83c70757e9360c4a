//! Turns an OCI bundle into a running container.
//! Shared by the in-guest agent and the host's `sandbox --no-vm`.
//!
//! The API is [`Container`]: [`Container::create`] validates `config.json` (errors name the
//! JSON path), sets up namespaces, rootfs, devices, cgroup and hooks, and leaves the init
//! blocked; [`Container::start`] releases it; then [`Container::kill`], [`Container::wait`],
//! [`Container::exec`], [`Container::ps`], [`Container::state`], [`Container::delete`].
//! State lives in `<state_root>/<id>/`. [`Container::load`] finds a container again.
//!
//! The container processes are forked from the caller. The init and exec'd processes are
//! created with CLONE_PARENT, so the caller is their parent and can `wait` for them (a
//! subreaper or PID 1 such as the guest agent sees their SIGCHLD). Call `create`/`exec` from a
//! thread that holds no locks the forked child needs (fork copies only the calling thread).

pub mod capabilities;
pub mod cgroups;
pub mod container;
pub mod container_id;
pub mod hooks;
pub mod namespaces;
pub mod process;
pub mod rlimits;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod tty;
pub mod user;

pub use container::{Container, CreateOptions, Error, ExecOptions};
pub use oci_spec::runtime::{LinuxResources, Process, Spec};
pub use state::{State, Status};
