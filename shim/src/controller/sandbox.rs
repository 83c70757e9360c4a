//! The container lifecycle on top of the VM, the image cache and the state root: create,
//! start, run in the foreground, kill, pause, state, delete; what runc's commands need.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::agent::ProcessInfo;
use runtime::Status;

use crate::agent_client::{AgentClient, Endpoint, RootfsDevice, StdioSet};

use super::bundle::BundleSpec;
use super::config::{self, Config};
use super::console;
use super::container::{status_from_proto, ContainerHandle};
use super::image::{Cache, Image};
use super::pod::pod_slots;
use super::signals::{self, Forwarder};
use super::state::{self, Record, Root};
use super::stats::ContainerStats;
use super::stdio_attach;
use super::timing::Phases;
use super::tty::{stdin_fd, RawMode};
use super::vm::{self, VmPaths, Vmm};
use super::Error;

/// The container image's filesystem.
pub const ROOTFS_FSTYPE: &str = "erofs";
/// Mount options of the image on virtio-pmem: the guest maps its files from the host's page
/// cache (shared by every sandbox with this image) instead of reading them into its own.
pub const ROOTFS_PMEM_OPTIONS: &str = "dax=always";
/// How long after a detached start the VMM trims the guest's start-up pages: StartContainer
/// returns before the container's process has executed its program.
const TRIM_AFTER: Duration = Duration::from_secs(1);
/// Deadline for reaching an agent that should already be up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The controller for one state root.
pub struct Sandbox {
    pub(super) cfg: Config,
    pub(super) root: Root,
    pub(super) cache: Cache,
}

/// What `create` leaves behind for the caller that goes on to start the container.
pub(super) struct Created {
    pub record: Record,
    pub vmm: Vmm,
    pub client: AgentClient,
}

impl Sandbox {
    pub fn new(cfg: Config) -> Sandbox {
        let root = Root::new(cfg.root.clone());
        let cache = Cache::new(cfg.image_cache.clone());
        Sandbox { cfg, root, cache }
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Image, VM, agent and CreateContainer; on failure nothing is left.
    pub(super) fn create_vm(
        &self,
        id: &str,
        spec: &BundleSpec,
        stdio: StdioSet,
        phases: &mut Phases,
        fwd: Option<&Forwarder>,
        slots: usize,
    ) -> Result<Created, Error> {
        let dir = self.root.reserve(id)?;
        let paths = VmPaths::new(&dir);
        let mut record = Record {
            oci_version: spec.oci_version().to_string(),
            id: id.to_string(),
            pid: 0,
            vmm_start_time: 0,
            status: Status::Creating,
            bundle: spec.dir.clone(),
            rootfs: spec.rootfs.clone(),
            created: state::now_rfc3339(),
            owner: String::new(),
            state_dir: dir.clone(),
            vsock: paths.vsock.clone(),
            console_log: paths.console_log.clone(),
            image: PathBuf::new(),
            image_key: String::new(),
            terminal: spec.terminal,
        };
        let mut vmm: Option<Vmm> = None;
        let result = (|| {
            paths.check_socket_paths()?;
            self.root.save(&record)?;
            self.cfg.check_guest()?;
            vm::check_kvm()?;
            let Image { key, path } = self.cache.acquire(&spec.rootfs, &dir)?;
            record.image = path;
            record.image_key = key;
            self.root.save(&record)?;
            phases.mark("image");
            let disks = pod_slots(&dir, slots)?;
            let memory_mib = config::guest_memory_mib(self.cfg.memory_mib, &spec.value, slots > 0);
            let v = vmm.insert(Vmm::spawn(
                &self.cfg,
                memory_mib,
                &paths,
                &record.image,
                &disks,
            )?);
            if let Some(f) = fwd {
                f.booting(v.pid);
            }
            record.pid = v.pid;
            record.vmm_start_time = v.start_time;
            self.root.save(&record)?;
            phases.mark("vmm spawn");
            let client = v
                .wait_for_agent(&paths, self.cfg.agent_timeout)
                .map_err(|e| match fwd.and_then(Forwarder::interrupted) {
                    Some(sig) => Error::Container {
                        id: id.to_string(),
                        reason: format!("start interrupted by {sig}"),
                    },
                    None => e.into(),
                })?;
            phases.mark("agent ready");
            client.create_sandbox(id, id, &[], &[])?;
            let rootfs = RootfsDevice {
                device: self.cfg.guest_root.container_image_device().into(),
                fstype: ROOTFS_FSTYPE.into(),
                options: vec![ROOTFS_PMEM_OPTIONS.into()],
                ..RootfsDevice::default()
            };
            client.create_container(id, &spec.json, &rootfs, stdio, spec.terminal)?;
            record.status = Status::Created;
            self.root.save(&record)?;
            phases.mark("create");
            Ok(client)
        })();
        match result {
            Ok(client) => Ok(Created {
                record,
                vmm: vmm.expect("spawned before the agent answered"),
                client,
            }),
            Err(e) => {
                if let Some(mut v) = vmm {
                    v.stop(None, Duration::ZERO);
                }
                self.forget(&record);
                Err(e)
            }
        }
    }

    /// Removes the container's directory and its claim on the image.
    pub(super) fn forget(&self, record: &Record) {
        let _ = self.root.remove(&record.id);
        if let Err(e) = self.cache.release(&record.image_key, &record.state_dir) {
            tracing::warn!("releasing image {}: {e}", record.image_key);
        }
    }

    /// `create`: the VM and a container waiting for `start`; the VMM keeps running after we
    /// return. A detached container's stdio is /dev/null in the guest.
    pub fn create(&self, id: &str, bundle: &Path) -> Result<Record, Error> {
        self.create_with_console(id, bundle, None)
    }

    /// `create --console-socket`: as `create`; a container with `process.terminal` needs the
    /// socket, which receives a host pty relayed to the guest's terminal (see `console`).
    pub fn create_with_console(
        &self,
        id: &str,
        bundle: &Path,
        console_socket: Option<&Path>,
    ) -> Result<Record, Error> {
        let mut phases = Phases::new(self.cfg.debug);
        let spec = BundleSpec::load(bundle)?;
        check_console(spec.terminal, console_socket).map_err(|reason| Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason,
        })?;
        let created = self.create_vm(id, &spec, StdioSet::default(), &mut phases, None, 0)?;
        if let Some(socket) = console_socket {
            if let Err(e) = self.hand_over_tty(&created.client, &created.record, "", socket) {
                let Created {
                    record, mut vmm, ..
                } = created;
                vmm.stop(None, Duration::ZERO);
                self.forget(&record);
                return Err(e);
            }
        }
        created.vmm.detach();
        Ok(created.record)
    }

    /// Sends a host pty to `socket` and starts the relay to the process's guest terminal.
    pub(super) fn hand_over_tty(
        &self,
        client: &AgentClient,
        record: &Record,
        exec_id: &str,
        socket: &Path,
    ) -> Result<u32, Error> {
        let tty = client.open_stream(&record.id, exec_id, crate::agent_client::StreamKind::Tty)?;
        let target = console::RelayTarget {
            vsock: record.vsock.clone(),
            container_id: record.id.clone(),
            exec_id: exec_id.to_string(),
        };
        Ok(console::hand_over(
            socket,
            tty,
            &target,
            &console::current_exe()?,
        )?)
    }

    /// Once the container of VM `id` has run for [`TRIM_AFTER`], the VMM drops the kernel,
    /// agent and image pages the guest only needed to start (vm::trim_vm_later), so an idle
    /// sandbox holds its working set. Best effort: a VMM that cannot trim keeps them.
    pub fn trim_vm_later(&self, id: &str) {
        let paths = VmPaths::new(&self.root.container_dir(id));
        if let Err(e) = vm::trim_vm_later(&paths.api, TRIM_AFTER) {
            tracing::warn!("{id}: {e}");
        }
    }

    /// `start` of a created container.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        let mut record = self.root.load(id)?;
        let client = self.connect(&record)?;
        client.start_container(id)?;
        record.status = Status::Running;
        self.root.save(&record)?;
        self.trim_vm_later(id);
        Ok(())
    }

    /// `run --detach`: create + start, returning with the VM running.
    pub fn run_detached(&self, id: &str, bundle: &Path) -> Result<Record, Error> {
        self.run_detached_with_console(id, bundle, None)
    }

    /// `run --detach --console-socket`.
    pub fn run_detached_with_console(
        &self,
        id: &str,
        bundle: &Path,
        console_socket: Option<&Path>,
    ) -> Result<Record, Error> {
        let mut record = self.create_with_console(id, bundle, console_socket)?;
        let client = self.connect(&record)?;
        client.start_container(id)?;
        record.status = Status::Running;
        self.root.save(&record)?;
        self.trim_vm_later(id);
        Ok(record)
    }

    /// `run` in the foreground: stdio attached (a terminal in raw mode when the spec asks for
    /// one), signals forwarded; returns the exit code (128+N after signal N) once everything
    /// is removed.
    pub fn run(&self, id: &str, bundle: &Path, pid_file: Option<&Path>) -> Result<i32, Error> {
        self.run_with_console(id, bundle, pid_file, None)
    }

    /// `run --console-socket` in the foreground: the terminal goes to the socket (through the
    /// relay) instead of our stdio; we wait, forward signals and clean up as `run` does.
    pub fn run_with_console(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: Option<&Path>,
        console_socket: Option<&Path>,
    ) -> Result<i32, Error> {
        let mut phases = Phases::new(self.cfg.debug);
        let spec = BundleSpec::load(bundle)?;
        if console_socket.is_some() {
            check_console(spec.terminal, console_socket).map_err(|reason| Error::Bundle {
                bundle: bundle.to_path_buf(),
                reason,
            })?;
        }
        let fwd = Forwarder::spawn(signals::block_for_vm()?);
        let Created {
            mut record,
            mut vmm,
            client,
        } = self.create_vm(
            id,
            &spec,
            stdio_attach::announced(spec.terminal),
            &mut phases,
            Some(&fwd),
            0,
        )?;
        let result = (|| {
            if let Some(path) = pid_file {
                write_pid_file(path, record.pid)?;
            }
            if let Some(socket) = console_socket {
                let relay = self.hand_over_tty(&client, &record, "", socket)?;
                client.start_container(id)?;
                record.status = Status::Running;
                self.root.save(&record)?;
                phases.mark("start");
                fwd.started(&client, id, "", false);
                let status = client.wait_process(id, "")?;
                console::wait_relay(relay);
                return Ok(status.code());
            }
            let raw = if spec.terminal {
                RawMode::enable(stdin_fd())
            } else {
                None
            };
            let attached = stdio_attach::attach(&client, id, "", spec.terminal)?;
            client.start_container(id)?;
            record.status = Status::Running;
            self.root.save(&record)?;
            phases.mark("start");
            fwd.started(&client, id, "", spec.terminal);
            let status = client.wait_process(id, "")?;
            attached.drain();
            drop(raw);
            phases.mark("exit");
            Ok(status.code())
        })();
        vmm.stop(Some(&client), vm::SHUTDOWN_GRACE);
        phases.mark("vm stop");
        self.forget(&record);
        result
    }

    /// The container's process spec from its bundle (the base of an `exec` process).
    pub fn bundle_process(&self, id: &str) -> Result<serde_json::Value, Error> {
        let record = self.root.load(id)?;
        Ok(BundleSpec::load(&record.bundle)?.process().clone())
    }

    /// The record and the live status (asked from the agent while the VM runs).
    pub fn state(&self, id: &str) -> Result<(Record, Status), Error> {
        let record = self.root.load(id)?;
        let status = self.live_status(&record);
        Ok((record, status))
    }

    fn live_status(&self, record: &Record) -> Status {
        if record.pid == 0 || !vm::alive(record.pid, record.vmm_start_time) {
            return Status::Stopped;
        }
        let Ok(client) = AgentClient::connect(&endpoint(record), CONNECT_TIMEOUT) else {
            return record.status;
        };
        match client.container_state(&record.id) {
            Ok(s) => status_from_proto(s.status.enum_value_or_default()).unwrap_or(record.status),
            Err(_) => record.status,
        }
    }

    /// Every container with its live status.
    pub fn list(&self) -> Result<Vec<(Record, Status)>, Error> {
        let mut out = Vec::new();
        for id in self.root.ids()? {
            if let Ok(record) = self.root.load(&id) {
                let status = self.live_status(&record);
                out.push((record, status));
            }
        }
        Ok(out)
    }

    /// `kill`: a signal to the init (or every process with `all`).
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), Error> {
        let record = self.root.load(id)?;
        let client = self.connect(&record)?;
        client.signal_process(id, "", signal as i32, all)?;
        Ok(())
    }

    /// The container in its running VM, for the calls of [`ContainerHandle`].
    pub fn handle(&self, id: &str) -> Result<ContainerHandle, Error> {
        let record = self.root.load(id)?;
        Ok(ContainerHandle::new(self.connect(&record)?, id))
    }

    /// `pause`: freezes the container's processes (cgroup v2 freezer in the guest).
    pub fn pause(&self, id: &str) -> Result<(), Error> {
        self.set_paused(id, true)
    }

    /// `resume` of a paused container.
    pub fn resume(&self, id: &str) -> Result<(), Error> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: &str, pause: bool) -> Result<(), Error> {
        let mut record = self.root.load(id)?;
        let handle = ContainerHandle::new(self.connect(&record)?, id);
        if pause {
            handle.pause()?;
        } else {
            handle.resume()?;
        }
        record.status = if pause {
            Status::Paused
        } else {
            Status::Running
        };
        self.root.save(&record)?;
        Ok(())
    }

    /// `events --stats`: the container's cgroup figures from the guest.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, Error> {
        self.handle(id)?.stats()
    }

    /// `update`: new cgroup limits (an OCI `linux.resources` object).
    pub fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), Error> {
        self.handle(id)?.update(resources)
    }

    /// `ps`: the processes of the container, as the guest sees them.
    pub fn ps(&self, id: &str) -> Result<Vec<ProcessInfo>, Error> {
        let record = self.root.load(id)?;
        let client = self.connect(&record)?;
        Ok(client.list_processes(id)?)
    }

    /// `delete`: stops the VM (a running container only with `force`) and removes the state,
    /// sockets and the image if no other container uses it. Works from the record alone, so
    /// also after the command that created the container was killed.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let record = self.root.load(id)?;
        let status = self.live_status(&record);
        if !force && matches!(status, Status::Running | Status::Paused | Status::Creating) {
            return Err(Error::Container {
                id: id.to_string(),
                reason: format!("cannot delete a {status} container: stop it first or use --force"),
            });
        }
        if record.pid != 0 {
            let mut vmm = Vmm::adopt(record.pid, record.vmm_start_time);
            if vmm.alive() {
                let client = AgentClient::connect(&endpoint(&record), CONNECT_TIMEOUT).ok();
                vmm.stop(client.as_ref(), vm::SHUTDOWN_GRACE);
            }
        }
        self.forget(&record);
        Ok(())
    }

    pub(super) fn connect(&self, record: &Record) -> Result<AgentClient, Error> {
        if record.pid == 0 || !vm::alive(record.pid, record.vmm_start_time) {
            return Err(Error::Container {
                id: record.id.clone(),
                reason: "its microVM is not running".into(),
            });
        }
        Ok(AgentClient::connect(&endpoint(record), CONNECT_TIMEOUT)?)
    }
}

/// runc's rules: a terminal needs a console socket when nobody attaches to it here (checked
/// by the callers that detach), and a console socket needs a terminal.
pub(super) fn check_console(terminal: bool, console_socket: Option<&Path>) -> Result<(), String> {
    match (terminal, console_socket) {
        (true, None) => Err(
            "process.terminal is true: a detached process with a terminal needs --console-socket"
                .into(),
        ),
        (false, Some(_)) => Err(
            "--console-socket is only for a process with a terminal (process.terminal / -t)".into(),
        ),
        _ => Ok(()),
    }
}

/// Writes `pid` (the VMM's) to a `--pid-file`.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), Error> {
    fs::write(path, pid.to_string()).map_err(|source| Error::Io {
        what: format!("--pid-file {}", path.display()),
        source,
    })
}

pub(super) fn endpoint(record: &Record) -> Endpoint {
    Endpoint::HybridVsock {
        socket: record.vsock.clone(),
    }
}
