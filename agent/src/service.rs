//! The agent API server: each ttrpc call of proto/agent.proto mapped onto the agent's parts.
//! Errors become ttrpc statuses whose code tells the host what kind of failure it was.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::agent::*;
use protocol::agent_ttrpc;
use ttrpc::{Code, TtrpcContext};

use crate::config::Config;
use crate::console::ConsoleSocket;
use crate::containers::{self, Containers, RootfsSource};
use crate::events::EventQueue;
use crate::oom::OomWatch;
use crate::spawn::{self as process, ProcessSpec, Spawned, StdioEnds, StdioPlan};
use crate::process_table::{self as table, Process, ProcessTable};
use crate::reaper::{ExitStatus as Status, Reaper};
use crate::runtime_helper::{self, HelperStdio, Job};
use crate::sandbox;
use crate::stats;

type Result<T> = ttrpc::Result<T>;

/// The state every call works on.
pub struct AgentService {
    pub config: Config,
    pub containers: Containers,
    pub reaper: Arc<Reaper>,
    pub processes: Arc<ProcessTable>,
    pub events: Arc<EventQueue>,
    /// Whether sethostname affects only this agent (PID 1 or a private UTS namespace).
    pub own_uts: bool,
    /// Tells main to stop serving and power off (or exit on a host run).
    pub shutdown: Sender<()>,
    /// Told when containers come or go.
    pub oom: Arc<OomWatch>,
}

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_string()))
}

impl From<table::Error> for ttrpc::Error {
    fn from(e: table::Error) -> Self {
        let code = match e {
            table::Error::NotFound { .. } => Code::NOT_FOUND,
            table::Error::Exists { .. } => Code::ALREADY_EXISTS,
            table::Error::StreamUnavailable { .. }
            | table::Error::NoTerminal { .. }
            | table::Error::Exited { .. } => Code::FAILED_PRECONDITION,
            table::Error::Sys { .. } => Code::INTERNAL,
        };
        status(code, e)
    }
}

impl From<containers::Error> for ttrpc::Error {
    fn from(e: containers::Error) -> Self {
        let code = match e {
            containers::Error::BadId(_)
            | containers::Error::BadSpec(_)
            | containers::Error::Device { .. } => Code::INVALID_ARGUMENT,
            containers::Error::Exists(_) => Code::ALREADY_EXISTS,
            containers::Error::NotFound(_) => Code::NOT_FOUND,
            _ => Code::INTERNAL,
        };
        status(code, e)
    }
}

fn runtime_status(e: runtime::Error) -> ttrpc::Error {
    let code = match e {
        runtime::Error::InvalidId(_) | runtime::Error::Spec(_) => Code::INVALID_ARGUMENT,
        runtime::Error::Exists(_) => Code::ALREADY_EXISTS,
        runtime::Error::NotFound(_) => Code::NOT_FOUND,
        runtime::Error::WrongState { .. } => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    status(code, e)
}

fn helper_status(e: runtime_helper::Error) -> ttrpc::Error {
    use runtime_helper::Kind;
    let code = match e {
        runtime_helper::Error::Runtime { kind, .. } => match kind {
            Kind::Invalid => Code::INVALID_ARGUMENT,
            Kind::Exists => Code::ALREADY_EXISTS,
            Kind::NotFound => Code::NOT_FOUND,
            Kind::WrongState | Kind::Other => Code::FAILED_PRECONDITION,
        },
        _ => Code::INTERNAL,
    };
    status(code, e)
}

/// The OCI process JSON with `terminal` set as the request says.
fn with_terminal(process_json: &str, terminal: bool) -> Result<String> {
    let bad = |e: String| status(Code::INVALID_ARGUMENT, format!("process_json: {e}"));
    let mut process: serde_json::Value =
        serde_json::from_str(process_json).map_err(|e| bad(e.to_string()))?;
    let object = process
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    object.insert("terminal".into(), terminal.into());
    Ok(process.to_string())
}

/// An exec id made safe for a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect()
}

/// The protocol's form of an exit.
pub fn exit_status(status: Status) -> ExitStatus {
    let mut out = ExitStatus::new();
    match status {
        Status::Exited(code) => out.exit_code = code,
        Status::Signaled {
            signal,
            core_dumped,
        } => {
            out.signal = signal as u32;
            out.core_dumped = core_dumped;
        }
    }
    out
}

fn uptime_ms() -> u64 {
    crate::init::uptime_ms().unwrap_or(0)
}

impl AgentService {
    fn check_container_id(&self, container_id: &str) -> Result<()> {
        if container_id.is_empty() || self.containers.exists(container_id) {
            Ok(())
        } else {
            Err(status(
                Code::NOT_FOUND,
                format!("container_id: no container {container_id:?}"),
            ))
        }
    }

    fn runtime_container(&self, id: &str) -> Result<runtime::Container> {
        self.check_container_id(id)?;
        runtime::Container::load(id, &self.containers.state_root()).map_err(runtime_status)
    }

    /// Runs the runtime helper with the stdio the host announced and records the process.
    fn start_with_runtime(
        &self,
        container_id: &str,
        exec_id: &str,
        mut job: Job<'_>,
        plan: StdioPlan,
        console_path: std::path::PathBuf,
    ) -> Result<Arc<Process>> {
        let internal = |e: process::Error| status(Code::INTERNAL, e);
        let (child, ends, console) = if plan.terminal {
            let console =
                ConsoleSocket::bind(&console_path).map_err(|e| status(Code::INTERNAL, e))?;
            (HelperStdio::default(), StdioEnds::default(), Some(console))
        } else {
            let (child, ends) = process::pipes(plan).map_err(internal)?;
            let child = HelperStdio {
                stdin: child.stdin,
                stdout: child.stdout,
                stderr: child.stderr,
            };
            (child, ends, None)
        };
        let console_socket = console.as_ref().map(|c| c.path().to_path_buf());
        match &mut job {
            Job::Create {
                console_socket: c, ..
            }
            | Job::Exec {
                console_socket: c, ..
            } => *c = console_socket,
        }
        self.reaper.spawn_locked(|| {
            let pid = runtime_helper::run(&job, child).map_err(helper_status)?;
            let mut ends = ends;
            let mut tty_control = None;
            if let Some(console) = &console {
                let master = console.receive().map_err(|e| status(Code::INTERNAL, e))?;
                tty_control = Some(master.try_clone().map_err(|e| status(Code::INTERNAL, e))?);
                ends.tty = Some(master);
            }
            let spawned = Spawned {
                pid: nix::unistd::Pid::from_raw(pid),
                ends,
                tty_control,
            };
            Ok(self.processes.insert(container_id, exec_id, spawned))
        })
    }

    /// Kills a container's processes and waits for its init, so the runtime finds it stopped
    /// and never has to wait for it itself (the reaper owns every exit status).
    fn stop_container(&self, id: &str) {
        if let Ok(mut c) = runtime::Container::load(id, &self.containers.state_root()) {
            let _ = c.kill(Signal::SIGKILL, true);
        }
        for p in self.processes.of_container(id) {
            let _ = p.signal(Signal::SIGKILL);
        }
        if let Ok(init) = self.processes.get(id, "") {
            init.wait();
        }
    }

    fn delete_container(&self, id: &str) -> Result<()> {
        self.stop_container(id);
        let deleted = runtime::Container::load(id, &self.containers.state_root())
            .and_then(|c| c.delete(true));
        if let Err(e) = deleted {
            log::warn!("runtime delete of {id}: {e}");
        }
        self.processes.remove_container(id);
        self.containers.remove(id)?;
        self.oom.containers_changed();
        Ok(())
    }

    /// RemoveContainer of "": forgets the processes run directly in the guest.
    fn remove_guest_processes(&self, force: bool) -> Result<Empty> {
        let running: Vec<_> = self
            .processes
            .of_container("")
            .into_iter()
            .filter(|p| p.exit_status().is_none())
            .collect();
        if !running.is_empty() && !force {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "container_id \"\": {} processes still run; use force",
                    running.len()
                ),
            ));
        }
        for p in &running {
            let _ = p.signal(Signal::SIGKILL);
        }
        for p in &running {
            p.wait();
        }
        self.processes.remove_container("");
        Ok(Empty::new())
    }

    /// Every container's id and cgroup `memory.events` file, for the OOM watch.
    pub fn oom_watch_list(&self) -> Vec<(String, std::path::PathBuf)> {
        let root = self.containers.state_root();
        self.containers
            .ids()
            .into_iter()
            .filter_map(|id| {
                let path = runtime::Container::load(&id, &root)
                    .ok()?
                    .memory_events_path()?;
                Some((id, path))
            })
            .collect()
    }

    /// Queues an OOM event: container `id`'s cgroup counted `kills` OOM kills, more than before.
    pub fn report_oom(&self, id: &str, kills: u64) {
        log::warn!("container {id}: OOM kill (count {kills})");
        let mut event = Event::new();
        event.kind = EventKind::OOM.into();
        event.container_id = id.to_string();
        event.time_ms = uptime_ms();
        self.events.push(event);
    }

    /// Removes every container (Shutdown): their cgroups and mounts go with them.
    pub fn teardown(&self) {
        for id in self.containers.ids() {
            if let Err(e) = self.delete_container(&id) {
                log::warn!("removing container {id}: {e}");
            }
        }
    }
}

impl agent_ttrpc::Agent for AgentService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> Result<CheckResponse> {
        let mut resp = CheckResponse::new();
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        resp.uptime_ms = uptime_ms();
        Ok(resp)
    }

    fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> Result<Empty> {
        log::info!(
            "CreateSandbox id={:?} hostname={:?}",
            req.sandbox_id,
            req.hostname
        );
        if !req.hostname.is_empty() {
            if !self.own_uts {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    "hostname: not PID 1 and no private UTS namespace; refusing to rename the host",
                ));
            }
            sandbox::set_hostname(&req.hostname).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        }
        if !req.dns_servers.is_empty() || !req.dns_search.is_empty() {
            match &self.config.resolv_conf {
                Some(path) => sandbox::write_resolv_conf(path, &req.dns_servers, &req.dns_search)
                    .map_err(|e| status(Code::INTERNAL, e))?,
                None => log::warn!("dns settings ignored: no --resolv-conf on a host run"),
            }
        }
        Ok(Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> Result<Empty> {
        log::info!("Shutdown requested");
        let _ = self.shutdown.send(());
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, _req: StatsRequest) -> Result<StatsResponse> {
        let internal = |e: sandbox::Error| status(Code::INTERNAL, e);
        let mem = sandbox::meminfo().map_err(internal)?;
        let load = sandbox::loadavg().map_err(internal)?;
        let mut resp = StatsResponse::new();
        resp.uptime_ms = uptime_ms();
        resp.mem_total_bytes = mem.total;
        resp.mem_free_bytes = mem.free;
        resp.mem_available_bytes = mem.available;
        [resp.load1_x100, resp.load5_x100, resp.load15_x100] = load;
        resp.process_count = sandbox::pids().map_err(internal)?.len() as u32;
        resp.container_count = self.containers.count() as u32;
        Ok(resp)
    }

    fn get_event(&self, _ctx: &TtrpcContext, req: GetEventRequest) -> Result<Event> {
        let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms.into()));
        Ok(self.events.pop(timeout).unwrap_or_else(|| {
            let mut none = Event::new();
            none.kind = EventKind::NONE.into();
            none.time_ms = uptime_ms();
            none
        }))
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        let id = req.container_id.as_str();
        let rootfs = req.rootfs.clone().unwrap_or_default();
        let source = RootfsSource {
            device: rootfs.device,
            fstype: rootfs.fstype,
            options: rootfs.options,
            upper_device: rootfs.upper_device,
            upper_fstype: rootfs.upper_fstype,
        };
        self.processes.ensure_free(id, "")?;
        let bundle = self
            .containers
            .prepare(id, &req.oci_spec_json, &source, req.terminal)?;
        let plan = StdioPlan {
            stdin: req.stdio.stdin,
            stdout: req.stdio.stdout,
            stderr: req.stdio.stderr,
            terminal: req.terminal,
        };
        let state_root = self.containers.state_root();
        let created = self.start_with_runtime(
            id,
            "",
            Job::Create {
                id,
                bundle: &bundle,
                state_root: &state_root,
                console_socket: None,
            },
            plan,
            bundle.join("console.sock"),
        );
        let init = match created {
            Ok(init) => init,
            Err(e) => {
                let _ = self.containers.remove(id);
                return Err(e);
            }
        };
        self.oom.containers_changed();
        log::info!("CreateContainer {id}: init pid {}", init.pid);
        let mut resp = CreateContainerResponse::new();
        resp.pid = init.pid.as_raw() as u32;
        Ok(resp)
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: StartContainerRequest) -> Result<Empty> {
        let mut container = self.runtime_container(&req.container_id)?;
        container.start().map_err(runtime_status)?;
        log::info!("StartContainer {}", req.container_id);
        Ok(Empty::new())
    }

    fn container_state(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerStateRequest,
    ) -> Result<ContainerStateResponse> {
        let mut container = self.runtime_container(&req.container_id)?;
        let state = container.state();
        let init = self.processes.get(&req.container_id, "").ok();
        let exit = init.as_ref().and_then(|p| p.exit_status());
        let mut resp = ContainerStateResponse::new();
        resp.container_id = req.container_id.clone();
        resp.pid = state.pid as u32;
        resp.status = match (state.status, exit) {
            (_, Some(_)) | (runtime::Status::Stopped, _) => ContainerStatus::STOPPED,
            (runtime::Status::Created | runtime::Status::Creating, _) => ContainerStatus::CREATED,
            (runtime::Status::Running, _) => ContainerStatus::RUNNING,
            (runtime::Status::Paused, _) => ContainerStatus::PAUSED,
        }
        .into();
        if let Some(exit) = exit {
            resp.exit = Some(exit_status(exit)).into();
        }
        Ok(resp)
    }

    fn remove_container(&self, _ctx: &TtrpcContext, req: RemoveContainerRequest) -> Result<Empty> {
        let id = req.container_id.as_str();
        if id.is_empty() {
            return self.remove_guest_processes(req.force);
        }
        let mut container = self.runtime_container(id)?;
        let init_running = self
            .processes
            .get(id, "")
            .map(|p| p.exit_status().is_none())
            .unwrap_or(false);
        let started = matches!(
            container.state().status,
            runtime::Status::Running | runtime::Status::Paused
        );
        if init_running && started && !req.force {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {id} is running; stop it first or use force"),
            ));
        }
        self.delete_container(id)?;
        log::info!("RemoveContainer {id}");
        Ok(Empty::new())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> Result<ListProcessesResponse> {
        let pids = if req.container_id.is_empty() {
            sandbox::pids().map_err(|e| status(Code::INTERNAL, e))?
        } else {
            self.runtime_container(&req.container_id)?
                .ps()
                .map_err(runtime_status)?
        };
        let ours = self.processes.all();
        let mut resp = ListProcessesResponse::new();
        for pid in pids {
            let Some(entry) = sandbox::proc_entry(pid) else {
                continue;
            };
            let mut info = ProcessInfo::new();
            info.pid = entry.pid as u32;
            info.ppid = entry.ppid as u32;
            info.uid = entry.uid;
            info.cmdline = entry.cmdline;
            if let Some(p) = ours
                .iter()
                .find(|p| p.pid.as_raw() == pid && p.exit_status().is_none())
            {
                info.exec_id = p.exec_id.clone();
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: PauseContainerRequest) -> Result<Empty> {
        self.runtime_container(&req.container_id)?
            .pause()
            .map_err(runtime_status)?;
        log::info!("PauseContainer {}", req.container_id);
        Ok(Empty::new())
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ResumeContainerRequest) -> Result<Empty> {
        self.runtime_container(&req.container_id)?
            .resume()
            .map_err(runtime_status)?;
        log::info!("ResumeContainer {}", req.container_id);
        Ok(Empty::new())
    }

    fn container_stats(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse> {
        let stats = self
            .runtime_container(&req.container_id)?
            .stats()
            .map_err(runtime_status)?;
        let mut resp = stats::to_proto(&stats);
        resp.container_id = req.container_id;
        Ok(resp)
    }

    fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> Result<Empty> {
        let resources: runtime::LinuxResources = serde_json::from_str(&req.resources_json)
            .map_err(|e| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("resources_json: not an OCI linux.resources object: {e}"),
                )
            })?;
        self.runtime_container(&req.container_id)?
            .update(&resources)
            .map_err(runtime_status)?;
        log::info!(
            "UpdateContainer {}: {}",
            req.container_id,
            req.resources_json
        );
        Ok(Empty::new())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Result<ExecProcessResponse> {
        self.check_container_id(&req.container_id)?;
        if req.exec_id.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec_id: must not be empty (the empty id names a container's init)",
            ));
        }
        let plan = StdioPlan {
            stdin: req.stdio.stdin,
            stdout: req.stdio.stdout,
            stderr: req.stdio.stderr,
            terminal: req.terminal,
        };
        self.processes
            .ensure_free(&req.container_id, &req.exec_id)?;
        let process = if req.container_id.is_empty() {
            let spec = ProcessSpec::from_json(&req.process_json)
                .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
            let spawned = self.reaper.spawn_locked(|| {
                let spawned = process::spawn(&spec, plan)?;
                Ok::<_, process::Error>(self.processes.insert("", &req.exec_id, spawned))
            });
            spawned.map_err(|e| {
                let code = match e {
                    process::Error::Spawn { .. } => Code::FAILED_PRECONDITION,
                    _ => Code::INTERNAL,
                };
                status(code, e)
            })?
        } else {
            let process_json = with_terminal(&req.process_json, req.terminal)?;
            let state_root = self.containers.state_root();
            let console_path = self
                .containers
                .bundle_dir(&req.container_id)
                .join(format!("console-{}.sock", sanitize(&req.exec_id)));
            self.start_with_runtime(
                &req.container_id,
                &req.exec_id,
                Job::Exec {
                    id: &req.container_id,
                    state_root: &state_root,
                    process_json: &process_json,
                    console_socket: None,
                },
                plan,
                console_path,
            )?
        };
        log::info!(
            "ExecProcess {:?}/{:?} pid {}",
            req.container_id,
            req.exec_id,
            process.pid
        );
        let mut resp = ExecProcessResponse::new();
        resp.pid = process.pid.as_raw() as u32;
        Ok(resp)
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> Result<Empty> {
        self.check_container_id(&req.container_id)?;
        let signal = Signal::try_from(req.signal as i32).map_err(|_| {
            status(
                Code::INVALID_ARGUMENT,
                format!("signal: {} is not a signal number", req.signal),
            )
        })?;
        if req.all && !req.container_id.is_empty() {
            self.runtime_container(&req.container_id)?
                .kill(signal, true)
                .map_err(runtime_status)?;
            return Ok(Empty::new());
        }
        if req.all {
            for p in self.processes.of_container(&req.container_id) {
                let _ = p.signal(signal);
            }
            return Ok(Empty::new());
        }
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .signal(signal)?;
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> Result<WaitProcessResponse> {
        self.check_container_id(&req.container_id)?;
        let process = self.processes.get(&req.container_id, &req.exec_id)?;
        let mut resp = WaitProcessResponse::new();
        resp.status = Some(exit_status(process.wait())).into();
        resp.pid = process.pid.as_raw() as u32;
        Ok(resp)
    }

    fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> Result<Empty> {
        self.check_container_id(&req.container_id)?;
        let too_big = |field: &str, v: u32| {
            status(
                Code::INVALID_ARGUMENT,
                format!("{field}: {v} does not fit a terminal size"),
            )
        };
        let rows = u16::try_from(req.rows).map_err(|_| too_big("rows", req.rows))?;
        let cols = u16::try_from(req.cols).map_err(|_| too_big("cols", req.cols))?;
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .resize_tty(rows, cols)?;
        Ok(Empty::new())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> Result<Empty> {
        self.check_container_id(&req.container_id)?;
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .close_stdin();
        Ok(Empty::new())
    }
}
