//! A blocking client of containerd's CRI gRPC API (runtime.v1) over its Unix socket, for
//! tests: k8s-cri's generated tonic clients on a private current-thread tokio runtime, every
//! call bounded in time; pod and container configs with host networking; CRI log files.
//!
//! Compiled into `tests/containerd_cri.rs` only (`#[path]`): the gRPC dependencies are
//! dev-dependencies, so xtask, which links this crate's library, does not build them.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::{
    Container, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandbox, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatus,
};
use k8s_cri::v1::{
    ContainerFilter, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    ImageStatusRequest, ListContainersRequest, ListPodSandboxRequest, PodSandboxFilter,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The limit of one CRI call unless the caller gives another (the lab's CPU is emulated and
/// RunPodSandbox boots a VM there).
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the client's tokio runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot connect to the CRI socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("CRI {method} failed: {status}")]
    Rpc {
        method: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("CRI {method} did not answer within {limit:?}")]
    Timeout {
        method: &'static str,
        limit: Duration,
    },
    #[error("CRI {method} answered without {field}")]
    Missing {
        method: &'static str,
        field: &'static str,
    },
    #[error("cannot read the container log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
}

/// A connected client.
pub struct Client {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    limit: Duration,
}

impl Client {
    /// Connects to containerd's socket (the CRI plugin serves on containerd's gRPC socket).
    pub fn connect(socket: &Path) -> Result<Client, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let path = socket.to_owned();
        // The URI is required by tonic and ignored by the connector.
        let endpoint = Endpoint::from_static("http://localhost").connect_timeout(DEFAULT_LIMIT);
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                })),
            )
            .map_err(|source| Error::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        Ok(Client {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            limit: DEFAULT_LIMIT,
        })
    }

    /// The same client with another per-call limit.
    pub fn with_limit(mut self, limit: Duration) -> Client {
        self.limit = limit;
        self
    }

    fn call<T, F>(&self, method: &'static str, fut: F) -> Result<T, Error>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let limit = self.limit;
        // The timer must be created inside the runtime.
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
        {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(Error::Rpc {
                method,
                status: Box::new(status),
            }),
            Err(_) => Err(Error::Timeout { method, limit }),
        }
    }

    /// `Version`: the runtime's name and version (`containerd`, `1.6.x`).
    pub fn version(&self) -> Result<(String, String), Error> {
        let mut c = self.runtime.clone();
        let v = self.call("Version", c.version(VersionRequest::default()))?;
        Ok((v.runtime_name, v.runtime_version))
    }

    /// `ImageStatus`: whether the CRI plugin sees the image locally.
    pub fn image_present(&self, image: &str) -> Result<bool, Error> {
        let mut c = self.images.clone();
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .call("ImageStatus", c.image_status(req))?
            .image
            .is_some())
    }

    /// `RunPodSandbox` with the RuntimeClass handler `handler`; the pod's id.
    pub fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Error> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call("RunPodSandbox", c.run_pod_sandbox(req))?
            .pod_sandbox_id)
    }

    /// `PodSandboxStatus`.
    pub fn pod_sandbox_status(&self, pod: &str) -> Result<PodSandboxStatus, Error> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", c.pod_sandbox_status(req))?
            .status
            .ok_or(Error::Missing {
                method: "PodSandboxStatus",
                field: "status",
            })
    }

    /// `ListPodSandbox`, all of them.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, Error> {
        let mut c = self.runtime.clone();
        let req = ListPodSandboxRequest {
            filter: Some(PodSandboxFilter::default()),
        };
        Ok(self.call("ListPodSandbox", c.list_pod_sandbox(req))?.items)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, pod: &str) -> Result<(), Error> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("StopPodSandbox", c.stop_pod_sandbox(req))
            .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, pod: &str) -> Result<(), Error> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("RemovePodSandbox", c.remove_pod_sandbox(req))
            .map(drop)
    }

    /// `CreateContainer` in `pod` (whose config is `pod_config`); the container's id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, Error> {
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .call("CreateContainer", c.create_container(req))?
            .container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<(), Error> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", c.start_container(req))
            .map(drop)
    }

    /// `ExecSync` of `cmd` in container `id`, `timeout` seconds for the command (0: none).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, Error> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.call("ExecSync", c.exec_sync(req))
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, Error> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", c.container_status(req))?
            .status
            .ok_or(Error::Missing {
                method: "ContainerStatus",
                field: "status",
            })
    }

    /// `StopContainer`, SIGKILL after `timeout` seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Error> {
        let mut c = self.runtime.clone();
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.call("StopContainer", c.stop_container(req)).map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<(), Error> {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", c.remove_container(req))
            .map(drop)
    }

    /// `ListContainers`, of one pod or (None) of all.
    pub fn list_containers(&self, pod: Option<&str>) -> Result<Vec<Container>, Error> {
        let mut c = self.runtime.clone();
        let req = ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.unwrap_or_default().into(),
                ..Default::default()
            }),
        };
        Ok(self
            .call("ListContainers", c.list_containers(req))?
            .containers)
    }
}

/// A pod config on the host's network (no CNI, the host's hostname), with its own pid and
/// ipc namespaces; logs go under `log_dir`.
pub fn pod_config(name: &str, uid: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "sandbox-test".into(),
            attempt: 0,
        }),
        // A host-network pod shares the host's UTS namespace: no hostname of its own.
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: HashMap::from([("sandbox-test".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config: `image`, `command` (as the entrypoint), its log at `log_path`
/// (relative to the pod's log directory).
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    log_path: &str,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// One line of a CRI container log: `<RFC 3339 time> <stdout|stderr> <P|F> <content>`.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// `false` for a partial line (`P`) that the next entry continues.
    pub full: bool,
    pub content: String,
}

/// Parses the lines of a CRI log; malformed lines are skipped.
pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next()?.to_string();
            let stream = parts.next()?.to_string();
            let full = match parts.next()? {
                "F" => true,
                "P" => false,
                _ => return None,
            };
            let content = parts.next().unwrap_or_default().to_string();
            Some(LogLine {
                time,
                stream,
                full,
                content,
            })
        })
        .collect()
}

/// The text one stream (`stdout`/`stderr`) wrote, partial lines joined, one `\n` per full line.
pub fn stream_text(lines: &[LogLine], stream: &str) -> String {
    let mut out = String::new();
    for l in lines.iter().filter(|l| l.stream == stream) {
        out.push_str(&l.content);
        if l.full {
            out.push('\n');
        }
    }
    out
}

/// The log file's lines (an absent file is no lines yet).
pub fn read_log(path: &Path) -> Result<Vec<LogLine>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_log(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Log {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_parsed_and_partials_joined() {
        let text = "2026-11-23T13:00:00.000000001Z stdout F hello world\n\
                    2026-11-23T13:00:00.1Z stderr F oops\n\
                    2026-11-23T13:00:00.2Z stdout P part\n\
                    2026-11-23T13:00:00.3Z stdout F ial\n\
                    2026-11-23T13:00:00.4Z stdout F \n\
                    garbage\n";
        let lines = parse_log(text);
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[0],
            LogLine {
                time: "2026-11-23T13:00:00.000000001Z".into(),
                stream: "stdout".into(),
                full: true,
                content: "hello world".into(),
            }
        );
        assert_eq!(stream_text(&lines, "stdout"), "hello world\npartial\n\n");
        assert_eq!(stream_text(&lines, "stderr"), "oops\n");
    }

    #[test]
    fn the_pod_uses_the_host_network() {
        let p = pod_config("p", "u1", Path::new("/run/x/logs"));
        let ns = p
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, NamespaceMode::Node as i32);
        assert_eq!(ns.pid, NamespaceMode::Pod as i32);
        assert_eq!(p.log_directory, "/run/x/logs");
    }

    #[test]
    fn a_missing_log_is_empty() {
        assert!(read_log(Path::new("/nonexistent/log")).unwrap().is_empty());
    }
}
