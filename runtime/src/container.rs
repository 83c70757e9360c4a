//! The lifecycle API used by the guest agent and the host CLI: create (init blocked on the
//! exec fifo), start, kill, wait, exec, ps, pause/resume, delete, with state in a directory.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{Process, Spec};

use crate::cgroups::{self, Cgroup, CgroupError};
use crate::hooks::{self, HookError, HookKind};
use crate::process::channel::{self, Channel, Msg};
use crate::process::{exec, init};
use crate::spec::{self, SpecError};
use crate::state::{self, State, StateError, Status};

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

/// Options for [`Container::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Console socket for a process with `terminal: true`.
    pub console_socket: Option<PathBuf>,
    /// stdin, stdout and stderr for the process; None inherits the caller's.
    pub stdio: Option<[RawFd; 3]>,
}

/// A container in a state root. Obtained from [`Container::create`] or [`Container::load`].
#[derive(Debug)]
pub struct Container {
    dir: PathBuf,
    state: State,
    spec: Spec,
    /// The init's sync channel while this process is the one that created it.
    init_chan: Option<Channel>,
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

    /// Loads container `id` from `state_root`.
    pub fn load(id: &str, state_root: &Path) -> Result<Container> {
        crate::container_id::validate(id)?;
        let dir = state_root.join(id);
        if !dir.join("state.json").exists() {
            return Err(Error::NotFound(id.into()));
        }
        let state = State::load(&dir)?;
        let text = fs::read_to_string(state.bundle.join("config.json")).unwrap_or_default();
        let spec = spec::parse(&text).unwrap_or_default();
        Ok(Container {
            dir,
            state,
            spec,
            init_chan: None,
        })
    }

    /// The states of every container under `state_root`, sorted by id.
    pub fn list(state_root: &Path) -> Result<Vec<State>> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(state_root) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            if let Ok(s) = State::load(&e.path()) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

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

    /// Starts the user process of a created container; runs the poststart hooks.
    pub fn start(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Created {
            return Err(Error::WrongState {
                id: self.id().into(),
                status,
                op: "start",
            });
        }
        let fifo = self.dir.join(EXEC_FIFO);
        let f = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(errno(format!("open {}", fifo.display())))?;
        // SAFETY: `f` was just returned by open and is owned here.
        let f: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(f) };
        loop {
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&f),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
            let mut b = [0u8; 1];
            match nix::unistd::read(f.as_raw_fd(), &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::Error::EAGAIN) => {}
                Err(e) => return Err(errno("read exec fifo")(e)),
            }
            if !matches!(state::process_info(self.state.pid), Some((s, _)) if s != 'Z') {
                let _ = fs::remove_file(&fifo);
                return Err(Error::Init(format!(
                    "container {} init exited before it could be started",
                    self.id()
                )));
            }
        }
        let _ = fs::remove_file(&fifo);
        // While we still hold the init's channel, an exec failure is reported here.
        if let Some(chan) = self.init_chan.take() {
            if let Ok(Some(Msg::Error(e))) = chan.recv() {
                return Err(Error::Init(e));
            }
        }
        self.state.status = Status::Running;
        if let Err(e) = hooks::run(
            HookKind::Poststart,
            self.spec.hooks().as_ref(),
            &self.state.oci_json(),
        ) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Sends `signal` to the init, or with `all` to every process of the container.
    pub fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped || status == Status::Creating {
            return Err(Error::WrongState {
                id: self.id().into(),
                status,
                op: "kill",
            });
        }
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

    /// Starts `process` inside the running container (same namespaces and cgroup) and
    /// returns its PID once it has exec'd. Its caps, user and no_new_privs come from `process`;
    /// the container's seccomp filter applies.
    pub fn exec(&mut self, process: &Process, opts: &ExecOptions) -> Result<i32> {
        let status = self.status();
        if status != Status::Running && status != Status::Created {
            return Err(Error::WrongState {
                id: self.id().into(),
                status,
                op: "exec",
            });
        }
        crate::spec::validate_process(process)?;
        let console = match (&opts.console_socket, process.terminal()) {
            (Some(path), Some(true)) => {
                Some(crate::tty::connect(path).map_err(|e| Error::Init(e.to_string()))?)
            }
            (None, Some(true)) => {
                return Err(SpecError::invalid(
                    "process.terminal",
                    "true, but no console socket was given",
                )
                .into())
            }
            _ => None,
        };
        let (parent_end, child_end) = channel::pair().map_err(sys("socketpair"))?;
        // SAFETY: as in create: the child runs only runtime setup code, then _exit or execve.
        let child = match unsafe { fork() }.map_err(errno("fork"))? {
            ForkResult::Child => {
                drop(parent_end);
                exec::intermediate(exec::ExecArgs {
                    spec: &self.spec,
                    process,
                    init_pid: self.state.pid,
                    chan: child_end,
                    console: console.as_ref().map(|c| c.as_raw_fd()),
                    stdio: opts.stdio,
                })
            }
            ForkResult::Parent { child } => child,
        };
        drop(child_end);
        drop(console);
        let result = (|| {
            if let Some(cg) = &self.state.cgroup_path {
                fs::write(cg.join("cgroup.procs"), child.to_string())
                    .map_err(sys(format!("join cgroup {}", cg.display())))?;
            }
            parent_end.send(&Msg::Go).map_err(sys("sync channel"))?;
            let mut pid = None;
            loop {
                match parent_end.recv().map_err(sys("sync channel"))? {
                    Some(Msg::Pid(p)) => pid = Some(p),
                    Some(Msg::Ready) => {}
                    Some(Msg::Error(e)) => {
                        if let Some(p) = pid {
                            reap(p);
                        }
                        return Err(Error::Init(e));
                    }
                    Some(other) => {
                        return Err(Error::Init(format!("sync channel: unexpected {other:?}")))
                    }
                    None => {
                        return pid.ok_or_else(|| {
                            Error::Init("exec: the process exited during setup".into())
                        })
                    }
                }
            }
        })();
        let _ = waitpid(child, None);
        result
    }

    /// PIDs of the container's processes: from its cgroup, or else every process sharing the
    /// init's PID namespace.
    pub fn ps(&mut self) -> Result<Vec<i32>> {
        if let Some(path) = &self.state.cgroup_path {
            if path.exists() {
                let root = path.parent().unwrap_or(path);
                return Ok(
                    Cgroup::new(root, Path::new(path.file_name().unwrap_or_default())).pids()?,
                );
            }
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

    /// Freezes every process of the container (cgroup v2 freezer).
    pub fn pause(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Running {
            return Err(Error::WrongState {
                id: self.id().into(),
                status,
                op: "pause",
            });
        }
        Ok(self.cgroup()?.set_frozen(true)?)
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Paused {
            return Err(Error::WrongState {
                id: self.id().into(),
                status,
                op: "resume",
            });
        }
        Ok(self.cgroup()?.set_frozen(false)?)
    }

    /// cgroup usage numbers.
    pub fn stats(&self) -> Result<cgroups::Stats> {
        Ok(self.cgroup()?.stats()?)
    }

    /// Changes the cgroup limits of a created, running or paused container (runc `update`):
    /// the values in `resources` replace the ones in force; fields left out stay as they are.
    /// Errors name the `linux.resources` field that is invalid or cannot be applied.
    pub fn update(&mut self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(Error::WrongState {
                id: self.id().into(),
                status,
                op: "update",
            });
        }
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

    /// cgroup.events and memory.events (`oom`, `oom_kill`...).
    /// The container cgroup's `memory.events` file (whose changes can be watched), if the
    /// container has a cgroup.
    pub fn memory_events_path(&self) -> Option<PathBuf> {
        self.state
            .cgroup_path
            .as_ref()
            .map(|p| p.join("memory.events"))
    }

    pub fn events(&self) -> Result<HashMap<String, u64>> {
        Ok(self.cgroup()?.events()?)
    }

    /// Deletes the container: a created or stopped one always, a running or paused one only
    /// with `force` (killed with SIGKILL). Runs the poststop hooks; removes cgroup and state.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let status = self.status();
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(Error::WrongState {
                    id: self.id().into(),
                    status,
                    op: "delete it without --force",
                })
            }
            Status::Stopped => {}
            _ => {
                if let Ok(cg) = self.cgroup() {
                    let _ = cg.set_frozen(false);
                    let _ = cg.kill_all();
                }
                // pid 0 (a create that died early) must not become "our process group".
                if self.state.pid > 0 {
                    let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
                    reap(self.state.pid);
                }
            }
        }
        if let Ok(cg) = self.cgroup() {
            cg.destroy()?;
        }
        self.state.status = Status::Stopped;
        if let Err(e) = hooks::run(
            HookKind::Poststop,
            self.spec.hooks().as_ref(),
            &self.state.oci_json(),
        ) {
            tracing::warn!("{e}");
        }
        fs::remove_dir_all(&self.dir).map_err(sys(format!("remove {}", self.dir.display())))
    }
}

/// Waits until `pid` is gone: reaps it if it is our child, else watches /proc.
fn reap(pid: i32) {
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
