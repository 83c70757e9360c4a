//! runtime-spec `create`: validate the bundle, plan the cgroup, record the state, fork the init
//! and drive it through setup (id maps, hooks) until it blocks on the exec fifo.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Spec;

use super::{errno, sys, wait::reap, Container, Error, Result, EXEC_FIFO};
use crate::cgroups::{self, Cgroup, CgroupError};
use crate::hooks::{self, HookKind};
use crate::process::channel::{self, Channel, Msg};
use crate::process::init;
use crate::spec::{self, SpecError};
use crate::state::{self, State, Status};

/// Options for [`Container::create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Unix socket that receives the pty master when `process.terminal` is true (runc's
    /// `--console-socket`).
    pub console_socket: Option<PathBuf>,
    /// The cgroup path used when the spec has no `linux.cgroupsPath`, relative to the cgroup2
    /// root; `{id}` is replaced by the container id. Default: `sandbox/{id}`.
    pub default_cgroup_path: Option<String>,
    /// Descriptors to use as the process's stdin, stdout and stderr (e.g. the agent's pipes).
    /// None: the caller's own 0, 1 and 2 are inherited. Ignored for a terminal.
    pub stdio: Option<[RawFd; 3]>,
}

fn owner() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Decides the container's cgroup: None when the host has no cgroup2 hierarchy and the spec
/// asks for no limits; an error when it asks for limits the hierarchy cannot give.
fn plan_cgroup(id: &str, spec: &Spec, opts: &CreateOptions) -> Result<Option<Cgroup>> {
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let Some(root) = cgroups::find_hierarchy() else {
        if resources.is_some_and(|r| r.devices().as_ref().is_some_and(|d| !d.is_empty())) {
            tracing::warn!(
                "linux.resources.devices: no cgroup v2 hierarchy; device rules are not enforced"
            );
        }
        if let Some(r) = resources {
            if let Some((_, field)) = cgroups_needed(r).into_iter().next() {
                return Err(CgroupError::NoHierarchy { field }.into());
            }
        }
        return Ok(None);
    };
    if let Some(r) = resources {
        Cgroup::check_controllers(&root, r)?;
    }
    let rel = match linux.and_then(|l| l.cgroups_path().as_ref()) {
        Some(p) => p.clone(),
        None => PathBuf::from(
            opts.default_cgroup_path
                .as_deref()
                .unwrap_or("sandbox/{id}")
                .replace("{id}", id),
        ),
    };
    Ok(Some(Cgroup::new(&root, &rel)))
}

fn cgroups_needed(r: &oci_spec::runtime::LinuxResources) -> Vec<(&'static str, String)> {
    let mut probe = r.clone();
    probe.set_devices(None);
    let root = Path::new("/nonexistent");
    match Cgroup::check_controllers(root, &probe) {
        Ok(()) => Vec::new(),
        Err(_) => vec![("", "linux.resources".into())],
    }
}

impl Container {
    /// Creates container `id` from the bundle at `bundle`, recording it under `state_root`.
    /// On return the init is set up and blocked until [`Container::start`]; on error nothing
    /// is left behind (no state entry, cgroup or process).
    pub fn create(
        id: &str,
        bundle: &Path,
        state_root: &Path,
        opts: &CreateOptions,
    ) -> Result<Container> {
        crate::container_id::validate(id)?;
        let dir = state_root.join(id);
        if dir.exists() {
            return Err(Error::Exists(id.into()));
        }
        let bundle =
            fs::canonicalize(bundle).map_err(sys(format!("bundle {}", bundle.display())))?;
        let spec = spec::load(&bundle)?;
        let process = spec.process().as_ref().expect("validated");
        if process.terminal() == Some(true) && opts.console_socket.is_none() {
            return Err(SpecError::invalid(
                "process.terminal",
                "true, but no console socket was given (--console-socket)",
            )
            .into());
        }
        let cgroup = plan_cgroup(id, &spec, opts)?;
        let rootfs = bundle.join(spec.root().as_ref().expect("validated").path());
        let rootfs =
            fs::canonicalize(&rootfs).map_err(sys(format!("root.path {}", rootfs.display())))?;

        fs::create_dir_all(state_root)
            .map_err(sys(format!("state root {}", state_root.display())))?;
        fs::create_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists(id.into())
            } else {
                sys(format!("state dir {}", dir.display()))(e)
            }
        })?;
        let state = State {
            oci_version: spec.version().clone(),
            id: id.into(),
            pid: 0,
            status: Status::Creating,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: state::now_rfc3339(),
            owner: owner(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            init_start_time: 0,
            cgroup_path: cgroup.as_ref().map(|c| c.path().to_path_buf()),
        };
        let mut container = Container {
            dir,
            state,
            spec,
            init_chan: None,
        };
        match container.spawn_init(&rootfs, cgroup.as_ref(), opts) {
            Ok(()) => Ok(container),
            Err(e) => {
                container.cleanup(cgroup.as_ref());
                Err(e)
            }
        }
    }

    fn spawn_init(
        &mut self,
        rootfs: &Path,
        cgroup: Option<&Cgroup>,
        opts: &CreateOptions,
    ) -> Result<()> {
        self.state.save(&self.dir)?;
        let fifo_path = self.dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(errno(format!("mkfifo {}", fifo_path.display())))?;
        // mkfifo is subject to the umask; make sure any container user can open it for writing.
        nix::sys::stat::fchmodat(
            None,
            &fifo_path,
            nix::sys::stat::Mode::from_bits_truncate(0o622),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(errno("chmod exec fifo"))?;
        let fifo = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(errno("open exec fifo"))?;
        // SAFETY: `fifo` was just returned by open and is owned by nobody else.
        let fifo: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fifo) };
        if let Some(cg) = cgroup {
            let resources = self
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref());
            cg.create(resources)?;
            if let Some(rules) = resources
                .and_then(|r| r.devices().as_deref())
                .filter(|r| !r.is_empty())
            {
                let devices = self
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.devices().as_deref())
                    .unwrap_or_default();
                if !cg.apply_device_rules(rules, devices)? {
                    tracing::warn!("linux.resources.devices: the kernel has no cgroup BPF; device rules are not enforced");
                }
            }
        }
        let console = match (
            &opts.console_socket,
            self.spec.process().as_ref().and_then(|p| p.terminal()),
        ) {
            (Some(path), Some(true)) => {
                Some(crate::tty::connect(path).map_err(|e| Error::Init(e.to_string()))?)
            }
            _ => None,
        };
        let (parent_end, child_end) = channel::pair().map_err(sys("socketpair"))?;

        // SAFETY: the child only runs the runtime's own setup code and leaves with _exit or
        // execve; see the crate docs on calling this from a multi-threaded process.
        let child = match unsafe { fork() }.map_err(errno("fork"))? {
            ForkResult::Child => {
                drop(parent_end);
                init::intermediate(init::InitArgs {
                    spec: &self.spec,
                    rootfs: rootfs.to_path_buf(),
                    chan: child_end,
                    fifo: fifo.as_raw_fd(),
                    console: console.as_ref().map(|c| c.as_raw_fd()),
                    stdio: opts.stdio,
                })
            }
            ForkResult::Parent { child } => child,
        };
        drop(child_end);
        drop(console);
        drop(fifo);
        let result = self.drive_init(&parent_end, child, cgroup);
        let _ = waitpid(child, None);
        result?;
        self.init_chan = Some(parent_end);
        Ok(())
    }

    fn drive_init(
        &mut self,
        chan: &Channel,
        intermediate: Pid,
        cgroup: Option<&Cgroup>,
    ) -> Result<()> {
        if let Some(cg) = cgroup {
            cg.add_pid(intermediate.as_raw())?;
        }
        let linux = self.spec.linux().clone().unwrap_or_default();
        chan.send(&Msg::Go).map_err(sys("sync channel"))?;
        loop {
            let msg = chan.recv().map_err(sys("sync channel"))?;
            match msg {
                Some(Msg::NeedIdMaps) => {
                    let r = crate::namespaces::write_id_maps(
                        intermediate.as_raw(),
                        linux.uid_mappings().as_deref().unwrap_or_default(),
                        linux.gid_mappings().as_deref().unwrap_or_default(),
                    );
                    match r {
                        Ok(()) => chan.send(&Msg::Go).map_err(sys("sync channel"))?,
                        Err(e) => {
                            let _ = chan.send(&Msg::Error(e.to_string()));
                            return Err(Error::Init(e.to_string()));
                        }
                    }
                }
                Some(Msg::Pid(pid)) => self.record_pid(pid)?,
                Some(Msg::RunHooks) => {
                    // The init and the intermediate both write to the channel: the init may
                    // get here before the intermediate reported its PID.
                    while self.state.pid == 0 {
                        match chan.recv().map_err(sys("sync channel"))? {
                            Some(Msg::Pid(pid)) => self.record_pid(pid)?,
                            Some(Msg::Error(e)) => return Err(Error::Init(e)),
                            other => {
                                return Err(Error::Init(format!(
                                    "sync channel: expected the init's pid, got {other:?}"
                                )))
                            }
                        }
                    }
                    let json = self.state.oci_json();
                    let r = hooks::run(HookKind::Prestart, self.spec.hooks().as_ref(), &json)
                        .and_then(|_| {
                            hooks::run(HookKind::CreateRuntime, self.spec.hooks().as_ref(), &json)
                        });
                    match r {
                        Ok(()) => chan.send(&Msg::State(json)).map_err(sys("sync channel"))?,
                        Err(e) => {
                            let _ = chan.send(&Msg::Error(e.to_string()));
                            return Err(e.into());
                        }
                    }
                }
                Some(Msg::Ready) => {
                    self.state.status = Status::Created;
                    self.state.save(&self.dir)?;
                    return Ok(());
                }
                Some(Msg::Error(e)) => return Err(Error::Init(e)),
                Some(other) => {
                    return Err(Error::Init(format!("sync channel: unexpected {other:?}")))
                }
                None => return Err(Error::Init("container init exited during setup".into())),
            }
        }
    }

    fn record_pid(&mut self, pid: i32) -> Result<()> {
        self.state.pid = pid;
        self.state.init_start_time = state::process_info(pid).map(|(_, t)| t).unwrap_or(0);
        Ok(self.state.save(&self.dir)?)
    }

    /// Kills whatever was started and removes the cgroup and state directory.
    fn cleanup(&mut self, cgroup: Option<&Cgroup>) {
        if self.state.pid > 0 && state::process_info(self.state.pid).is_some() {
            let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
            reap(self.state.pid);
        }
        if let Some(cg) = cgroup {
            let _ = cg.destroy();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
