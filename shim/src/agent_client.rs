//! Typed client of the in-guest agent: the ttrpc API over the VMM's hybrid vsock socket
//! (or plain Unix sockets for host tests), plus opening stdio streams to processes.

mod stdio_stream;

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use protocol::agent::*;
use protocol::agent_ttrpc;
use thiserror::Error;

pub use protocol::stream_header::StreamKind;
pub use stdio_stream::{pump, OutputPumps, StdioStream, PUMP_CHUNK};

use crate::vsock;

/// Pause between attempts while waiting for the agent to come up.
const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Errors talking to the agent.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    #[error("cannot connect to the agent's Unix socket {path}: {source}")]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the ttrpc client: {0}")]
    Client(ttrpc::Error),
    #[error("agent call {call} failed: {code:?}: {message}")]
    Status {
        call: &'static str,
        code: ttrpc::Code,
        message: String,
    },
    #[error("agent call {call} failed: {source}")]
    Transport {
        call: &'static str,
        source: ttrpc::Error,
    },
    #[error("the agent at {endpoint} did not answer within {waited:?}; last error: {last}")]
    NotReady {
        endpoint: String,
        waited: Duration,
        last: Box<Error>,
    },
    #[error("the agent's event stream has ended (the VM is gone)")]
    EventsEnded,
    #[error("{kind} stream of {container_id:?}/{exec_id:?}: {source}")]
    Stdio {
        container_id: String,
        exec_id: String,
        kind: StreamKind,
        source: protocol::stream_header::Error,
    },
}

impl Error {
    /// The ttrpc status code when the agent answered with an error.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Where the agent listens, as seen from the host.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The VMM's hybrid vsock socket; the agent's API and stdio ports are the conventional
    /// ones (1024, 1025).
    HybridVsock { socket: PathBuf },
    /// An agent run on the host with `--listen unix://API --stdio-listen unix://STDIO`.
    Unix { api: PathBuf, stdio: PathBuf },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::HybridVsock { socket } => {
                write!(f, "{} (hybrid vsock)", socket.display())
            }
            Endpoint::Unix { api, .. } => write!(f, "{}", api.display()),
        }
    }
}

impl Endpoint {
    fn connect_port(
        &self,
        port: u32,
        unix: &PathBuf,
        timeout: Duration,
    ) -> Result<UnixStream, Error> {
        match self {
            Endpoint::HybridVsock { socket } => Ok(vsock::connect(socket, port, timeout)?),
            Endpoint::Unix { .. } => UnixStream::connect(unix).map_err(|source| Error::Unix {
                path: unix.clone(),
                source,
            }),
        }
    }

    fn connect_api(&self, timeout: Duration) -> Result<UnixStream, Error> {
        let path = match self {
            Endpoint::HybridVsock { socket } => socket,
            Endpoint::Unix { api, .. } => api,
        };
        self.connect_port(protocol::AGENT_VSOCK_PORT, path, timeout)
    }

    pub(crate) fn connect_stdio(&self, timeout: Duration) -> Result<UnixStream, Error> {
        let path = match self {
            Endpoint::HybridVsock { socket } => socket,
            Endpoint::Unix { stdio, .. } => stdio,
        };
        self.connect_port(protocol::STDIO_VSOCK_PORT, path, timeout)
    }
}

/// Which stdio streams the host will attach to a new process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioSet {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl StdioSet {
    fn to_proto(self) -> protocol::agent::Stdio {
        let mut s = protocol::agent::Stdio::new();
        s.stdin = self.stdin;
        s.stdout = self.stdout;
        s.stderr = self.stderr;
        s
    }
}

pub use protocol::ExitStatus;

/// The container's root filesystem on a guest block device.
#[derive(Debug, Clone, Default)]
pub struct RootfsDevice {
    pub device: String,
    pub fstype: String,
    pub options: Vec<String>,
    /// Empty: a tmpfs upper layer in the guest.
    pub upper_device: String,
    pub upper_fstype: String,
}

/// A connected agent client.
#[derive(Clone)]
pub struct AgentClient {
    inner: agent_ttrpc::AgentClient,
    endpoint: Endpoint,
    /// Deadline of each ordinary call (not of WaitProcess or GetEvent, which block by design).
    timeout: Duration,
}

impl AgentClient {
    /// Connects once; `timeout` bounds the handshake and each later ordinary call.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<AgentClient, Error> {
        let stream = endpoint.connect_api(timeout)?;
        let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(Error::Client)?;
        Ok(AgentClient {
            inner: agent_ttrpc::AgentClient::new(client),
            endpoint: endpoint.clone(),
            timeout,
        })
    }

    /// Connects and calls Check until the agent answers or `wait` has passed: the VM may
    /// still be booting, in which case the VMM refuses the port.
    pub fn wait_for_agent(
        endpoint: &Endpoint,
        wait: Duration,
        call_timeout: Duration,
    ) -> Result<AgentClient, Error> {
        let start = Instant::now();
        loop {
            let attempt = AgentClient::connect(endpoint, call_timeout).and_then(|c| {
                c.check()?;
                Ok(c)
            });
            match attempt {
                Ok(client) => return Ok(client),
                Err(e) if start.elapsed() >= wait => {
                    return Err(Error::NotReady {
                        endpoint: endpoint.to_string(),
                        waited: start.elapsed(),
                        last: Box::new(e),
                    })
                }
                Err(_) => thread::sleep(RETRY_INTERVAL),
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_duration(self.timeout)
    }

    fn unbounded() -> ttrpc::context::Context {
        ttrpc::context::with_timeout(0)
    }

    /// The agent's version and the guest's uptime in milliseconds.
    pub fn check(&self) -> Result<CheckResponse, Error> {
        self.inner
            .check(self.ctx(), &CheckRequest::new())
            .map_err(call_error("Check"))
    }

    pub fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        dns_servers: &[String],
        dns_search: &[String],
    ) -> Result<(), Error> {
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = sandbox_id.to_string();
        req.hostname = hostname.to_string();
        req.dns_servers = dns_servers.to_vec();
        req.dns_search = dns_search.to_vec();
        self.inner
            .create_sandbox(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("CreateSandbox"))
    }

    /// Asks the agent to end the sandbox. The agent may drop the connection before its reply
    /// arrives; that counts as success.
    pub fn shutdown(&self) -> Result<(), Error> {
        match self.inner.shutdown(self.ctx(), &ShutdownRequest::new()) {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) => Err(Error::Status {
                call: "Shutdown",
                code: s.code(),
                message: s.message,
            }),
            Err(_) => Ok(()),
        }
    }

    pub fn stats(&self) -> Result<StatsResponse, Error> {
        self.inner
            .stats(self.ctx(), &StatsRequest::new())
            .map_err(call_error("Stats"))
    }

    /// The next exit or OOM event; `None` if none came within `wait` (`None` waits forever).
    pub fn get_event(&self, wait: Option<Duration>) -> Result<Option<Event>, Error> {
        let mut req = GetEventRequest::new();
        req.timeout_ms = wait.map_or(0, |w| w.as_millis().clamp(1, u32::MAX as u128) as u32);
        let event = self
            .inner
            .get_event(Self::unbounded(), &req)
            .map_err(call_error("GetEvent"))?;
        Ok((event.kind.enum_value_or_default() != EventKind::NONE).then_some(event))
    }

    pub fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: &str,
        rootfs: &RootfsDevice,
        stdio: StdioSet,
        terminal: bool,
    ) -> Result<u32, Error> {
        let mut fs = Rootfs::new();
        fs.device = rootfs.device.clone();
        fs.fstype = rootfs.fstype.clone();
        fs.options = rootfs.options.clone();
        fs.upper_device = rootfs.upper_device.clone();
        fs.upper_fstype = rootfs.upper_fstype.clone();
        let mut req = CreateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.oci_spec_json = oci_spec_json.to_string();
        req.rootfs = Some(fs).into();
        req.stdio = Some(stdio.to_proto()).into();
        req.terminal = terminal;
        self.inner
            .create_container(self.ctx(), &req)
            .map(|r| r.pid)
            .map_err(call_error("CreateContainer"))
    }

    pub fn start_container(&self, container_id: &str) -> Result<(), Error> {
        let mut req = StartContainerRequest::new();
        req.container_id = container_id.to_string();
        self.inner
            .start_container(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("StartContainer"))
    }

    pub fn container_state(&self, container_id: &str) -> Result<ContainerStateResponse, Error> {
        let mut req = ContainerStateRequest::new();
        req.container_id = container_id.to_string();
        self.inner
            .container_state(self.ctx(), &req)
            .map_err(call_error("ContainerState"))
    }

    pub fn remove_container(&self, container_id: &str, force: bool) -> Result<(), Error> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.to_string();
        req.force = force;
        self.inner
            .remove_container(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("RemoveContainer"))
    }

    pub fn list_processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>, Error> {
        let mut req = ListProcessesRequest::new();
        req.container_id = container_id.to_string();
        self.inner
            .list_processes(self.ctx(), &req)
            .map(|r| r.processes)
            .map_err(call_error("ListProcesses"))
    }

    /// Freezes every process of the container (cgroup v2 freezer in the guest).
    pub fn pause_container(&self, container_id: &str) -> Result<(), Error> {
        let mut req = PauseContainerRequest::new();
        req.container_id = container_id.to_string();
        self.inner
            .pause_container(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("PauseContainer"))
    }

    /// Thaws a paused container.
    pub fn resume_container(&self, container_id: &str) -> Result<(), Error> {
        let mut req = ResumeContainerRequest::new();
        req.container_id = container_id.to_string();
        self.inner
            .resume_container(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("ResumeContainer"))
    }

    /// The container's cgroup v2 figures.
    pub fn container_stats(&self, container_id: &str) -> Result<ContainerStatsResponse, Error> {
        let mut req = ContainerStatsRequest::new();
        req.container_id = container_id.to_string();
        self.inner
            .container_stats(self.ctx(), &req)
            .map_err(call_error("ContainerStats"))
    }

    /// New cgroup limits: `resources_json` is an OCI `linux.resources` object.
    pub fn update_container(&self, container_id: &str, resources_json: &str) -> Result<(), Error> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.resources_json = resources_json.to_string();
        self.inner
            .update_container(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("UpdateContainer"))
    }

    /// Starts a process (an OCI `process` object as JSON); returns its pid in the guest.
    /// An empty `container_id` runs it directly in the guest.
    pub fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &str,
        stdio: StdioSet,
        terminal: bool,
    ) -> Result<u32, Error> {
        let mut req = ExecProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.process_json = process_json.to_string();
        req.stdio = Some(stdio.to_proto()).into();
        req.terminal = terminal;
        self.inner
            .exec_process(self.ctx(), &req)
            .map(|r| r.pid)
            .map_err(call_error("ExecProcess"))
    }

    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal as u32;
        req.all = all;
        self.inner
            .signal_process(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("SignalProcess"))
    }

    /// Blocks until the process ends.
    pub fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus, Error> {
        let mut req = WaitProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        let resp = self
            .inner
            .wait_process(Self::unbounded(), &req)
            .map_err(call_error("WaitProcess"))?;
        let status = resp.status.into_option().unwrap_or_default();
        Ok(ExitStatus::from_proto(&status))
    }

    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), Error> {
        let mut req = ResizeTtyRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.rows = rows.into();
        req.cols = cols.into();
        self.inner
            .resize_tty(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("ResizeTty"))
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), Error> {
        let mut req = CloseStdinRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        self.inner
            .close_stdin(self.ctx(), &req)
            .map(drop)
            .map_err(call_error("CloseStdin"))
    }

    /// Opens one stdio stream of a process; output that the process wrote before the stream
    /// attached waits in the guest (the process blocks once the pipe is full).
    pub fn open_stream(
        &self,
        container_id: &str,
        exec_id: &str,
        kind: StreamKind,
    ) -> Result<StdioStream, Error> {
        StdioStream::open(&self.endpoint, container_id, exec_id, kind, self.timeout)
    }
}

fn call_error(call: &'static str) -> impl Fn(ttrpc::Error) -> Error {
    move |e| match e {
        ttrpc::Error::RpcStatus(s) => Error::Status {
            call,
            code: s.code(),
            message: s.message,
        },
        source => Error::Transport { call, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_exit_maps_to_128_plus_n() {
        let mut s = protocol::agent::ExitStatus::new();
        s.signal = 9;
        assert_eq!(ExitStatus::from_proto(&s).code(), 137);
        let mut s = protocol::agent::ExitStatus::new();
        s.exit_code = 3;
        assert_eq!(ExitStatus::from_proto(&s), ExitStatus::Exited(3));
        assert_eq!(ExitStatus::from_proto(&s).code(), 3);
    }

    #[test]
    fn waiting_for_a_missing_agent_gives_up_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::HybridVsock {
            socket: dir.path().join("absent.sock"),
        };
        let err = AgentClient::wait_for_agent(
            &endpoint,
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .err()
        .unwrap();
        match err {
            Error::NotReady { last, .. } => {
                assert!(matches!(*last, Error::Vsock(vsock::Error::Connect { .. })))
            }
            other => panic!("unexpected error {other}"),
        }
    }
}
