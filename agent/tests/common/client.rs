//! The agent's tests' own client: protocol's generated ttrpc client on the agent's Unix socket,
//! or through a hybrid vsock socket as the VMM offers it, and the stdio streams.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::agent::*;
use protocol::agent_ttrpc;
use protocol::stream_header::{self, read_ack, StreamHeader};
use ttrpc::context::{self, Context};

pub use protocol::stream_header::StreamKind;

/// A failed call: the agent's ttrpc status, or the connection's failure.
#[derive(Debug)]
pub enum Error {
    Rpc(ttrpc::Error),
    Io(io::Error),
    Stream(stream_header::Error),
}

impl Error {
    /// The status code when the agent answered with an error.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            Error::Rpc(ttrpc::Error::RpcStatus(s)) => Some(s.code()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Rpc(ttrpc::Error::RpcStatus(s)) => write!(f, "{:?}: {}", s.code(), s.message),
            Error::Rpc(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Stream(e) => write!(f, "{e}"),
        }
    }
}

impl From<ttrpc::Error> for Error {
    fn from(e: ttrpc::Error) -> Error {
        Error::Rpc(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Where the agent listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An agent run on this host with `--listen unix://API --stdio-listen unix://STDIO`.
    Unix { api: PathBuf, stdio: PathBuf },
    /// A VMM's hybrid vsock socket: `CONNECT <port>\n`, `OK <hostport>\n`, then raw bytes.
    HybridVsock { socket: PathBuf },
}

impl Endpoint {
    fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let socket = match self {
            Endpoint::Unix { api, stdio } => {
                return UnixStream::connect(if port == protocol::AGENT_VSOCK_PORT {
                    api
                } else {
                    stdio
                })
            }
            Endpoint::HybridVsock { socket } => socket,
        };
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        if !line.starts_with(b"OK ") {
            let answer = String::from_utf8_lossy(&line).into_owned();
            let refused = format!("hybrid vsock port {port}: answered {answer:?}");
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, refused));
        }
        stream.set_read_timeout(None)?;
        Ok(stream)
    }
}

/// Which stdio streams the test will attach to a new process.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioSet {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl StdioSet {
    fn to_proto(self) -> protocol::agent::Stdio {
        let mut s = protocol::agent::Stdio::new();
        (s.stdin, s.stdout, s.stderr) = (self.stdin, self.stdout, self.stderr);
        s
    }
}

pub use protocol::ExitStatus;

/// A container's root filesystem: a guest block device, or on a host run a directory.
#[derive(Debug, Clone, Default)]
pub struct RootfsDevice {
    pub device: String,
    pub fstype: String,
}

/// One attached stdio stream.
#[derive(Debug)]
pub struct Stream(UnixStream);

impl Stream {
    /// Ends the input (stdin, tty) while the output can still be read.
    pub fn close_write(&self) -> io::Result<()> {
        self.0.shutdown(Shutdown::Write)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Calls whose request names only the container.
macro_rules! container_calls {
    ($($call:ident($request:ident) -> $response:ty;)*) => {$(
        pub fn $call(&self, container_id: &str) -> Result<$response> {
            let mut req = $request::new();
            req.container_id = container_id.into();
            Ok(self.rpc.$call(self.ctx(), &req)?)
        }
    )*};
}

/// A connected client; every call but WaitProcess and GetEvent has the deadline `timeout`.
#[derive(Clone)]
pub struct AgentClient {
    rpc: agent_ttrpc::AgentClient,
    endpoint: Endpoint,
    timeout: Duration,
}

impl AgentClient {
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<AgentClient> {
        let stream = endpoint.connect(protocol::AGENT_VSOCK_PORT, timeout)?;
        Ok(AgentClient {
            rpc: agent_ttrpc::AgentClient::new(ttrpc::Client::new(stream.into_raw_fd())?),
            endpoint: endpoint.clone(),
            timeout,
        })
    }

    /// Connects and calls Check until the agent answers; gives up after `wait` with the
    /// last error.
    pub fn wait_for_agent(
        endpoint: &Endpoint,
        wait: Duration,
        timeout: Duration,
    ) -> Result<AgentClient> {
        let deadline = Instant::now() + wait;
        loop {
            let attempt = AgentClient::connect(endpoint, timeout).and_then(|c| {
                c.check()?;
                Ok(c)
            });
            match attempt {
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                done => return done,
            }
        }
    }

    fn ctx(&self) -> Context {
        context::with_duration(self.timeout)
    }

    pub fn check(&self) -> Result<CheckResponse> {
        Ok(self.rpc.check(self.ctx(), &CheckRequest::new())?)
    }

    pub fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        dns_servers: &[String],
        dns_search: &[String],
    ) -> Result<()> {
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = sandbox_id.into();
        req.hostname = hostname.into();
        req.dns_servers = dns_servers.to_vec();
        req.dns_search = dns_search.to_vec();
        self.rpc.create_sandbox(self.ctx(), &req)?;
        Ok(())
    }

    /// Shutdown; the agent may close the connection before it replies, which is success.
    pub fn shutdown(&self) -> Result<()> {
        match self.rpc.shutdown(self.ctx(), &ShutdownRequest::new()) {
            Err(e @ ttrpc::Error::RpcStatus(_)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn stats(&self) -> Result<StatsResponse> {
        Ok(self.rpc.stats(self.ctx(), &StatsRequest::new())?)
    }

    /// The next exit or OOM event, or `None` if none came within `wait`.
    pub fn get_event(&self, wait: Option<Duration>) -> Result<Option<Event>> {
        let mut req = GetEventRequest::new();
        req.timeout_ms = wait.map_or(0, |w| w.as_millis().max(1) as u32);
        let event = self.rpc.get_event(context::with_timeout(0), &req)?;
        Ok((event.kind.enum_value_or_default() != EventKind::NONE).then_some(event))
    }

    pub fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: &str,
        rootfs: &RootfsDevice,
        stdio: StdioSet,
        terminal: bool,
    ) -> Result<u32> {
        let mut fs = Rootfs::new();
        fs.device = rootfs.device.clone();
        fs.fstype = rootfs.fstype.clone();
        let mut req = CreateContainerRequest::new();
        req.container_id = container_id.into();
        req.oci_spec_json = oci_spec_json.into();
        req.rootfs = Some(fs).into();
        req.stdio = Some(stdio.to_proto()).into();
        req.terminal = terminal;
        Ok(self.rpc.create_container(self.ctx(), &req)?.pid)
    }

    container_calls! {
        start_container(StartContainerRequest) -> Empty;
        container_state(ContainerStateRequest) -> ContainerStateResponse;
        pause_container(PauseContainerRequest) -> Empty;
        resume_container(ResumeContainerRequest) -> Empty;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
    }

    pub fn remove_container(&self, container_id: &str, force: bool) -> Result<()> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.into();
        req.force = force;
        self.rpc.remove_container(self.ctx(), &req)?;
        Ok(())
    }

    pub fn list_processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>> {
        let mut req = ListProcessesRequest::new();
        req.container_id = container_id.into();
        Ok(self.rpc.list_processes(self.ctx(), &req)?.processes)
    }

    pub fn update_container(&self, container_id: &str, resources_json: &str) -> Result<()> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.into();
        req.resources_json = resources_json.into();
        self.rpc.update_container(self.ctx(), &req)?;
        Ok(())
    }

    pub fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &str,
        stdio: StdioSet,
        terminal: bool,
    ) -> Result<u32> {
        let mut req = ExecProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.process_json = process_json.into();
        req.stdio = Some(stdio.to_proto()).into();
        req.terminal = terminal;
        Ok(self.rpc.exec_process(self.ctx(), &req)?.pid)
    }

    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.signal = signal as u32;
        req.all = all;
        self.rpc.signal_process(self.ctx(), &req)?;
        Ok(())
    }

    /// Blocks until the process has ended.
    pub fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus> {
        let mut req = WaitProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        let resp = self.rpc.wait_process(context::with_timeout(0), &req)?;
        Ok(ExitStatus::from_proto(&resp.status))
    }

    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<()> {
        let mut req = ResizeTtyRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        (req.rows, req.cols) = (rows.into(), cols.into());
        self.rpc.resize_tty(self.ctx(), &req)?;
        Ok(())
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let mut req = CloseStdinRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        self.rpc.close_stdin(self.ctx(), &req)?;
        Ok(())
    }

    /// Attaches one stdio stream of a process.
    pub fn open_stream(
        &self,
        container_id: &str,
        exec_id: &str,
        kind: StreamKind,
    ) -> Result<Stream> {
        let mut stream = self
            .endpoint
            .connect(protocol::STDIO_VSOCK_PORT, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        let header = StreamHeader {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            kind,
        };
        header.write_to(&mut stream).map_err(Error::Stream)?;
        read_ack(&mut stream).map_err(Error::Stream)?;
        stream.set_read_timeout(None)?;
        Ok(Stream(stream))
    }
}
