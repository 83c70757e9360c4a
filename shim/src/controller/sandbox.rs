//! The container lifecycle on top of the VM, the image cache and the state root: create,
//! start, run in the foreground, exec, kill, state, delete; what runc's commands need.

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::agent::{ContainerStatus, ProcessInfo};

use crate::agent_client::{AgentClient, Endpoint, RootfsDevice, StdioSet};

use super::config::{self, Config};
use super::console;
use super::container::ContainerHandle;
use super::image::{Cache, Image};
use super::state::{self, Record, Root, Status};
use super::stats::ContainerStats;
use super::stdio;
use super::timing::Phases;
use super::tty::{window_size, RawMode};
use super::vm::{self, VmPaths, Vmm};
use super::{signals, Error};

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

/// A process to run in a container with `exec`.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// An OCI `process` object.
    pub process: serde_json::Value,
    /// Return once started, with no stdio attached.
    pub detach: bool,
    /// With a terminal: the pty master goes to this socket instead of our stdio.
    pub console_socket: Option<PathBuf>,
}

/// The controller for one state root.
pub struct Sandbox {
    cfg: Config,
    root: Root,
    cache: Cache,
}

/// What `create` leaves behind for the caller that goes on to start the container.
struct Created {
    record: Record,
    vmm: Vmm,
    client: AgentClient,
}

/// The parts of config.json the controller reads.
struct BundleSpec {
    dir: PathBuf,
    rootfs: PathBuf,
    json: String,
    value: serde_json::Value,
    terminal: bool,
}

impl BundleSpec {
    fn load(bundle: &Path) -> Result<BundleSpec, Error> {
        let bad = |reason: String| Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason,
        };
        let dir = fs::canonicalize(bundle).map_err(|e| bad(e.to_string()))?;
        let json = fs::read_to_string(dir.join("config.json"))
            .map_err(|e| bad(format!("config.json: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| bad(format!("config.json: {e}")))?;
        let root = value["root"]["path"]
            .as_str()
            .ok_or_else(|| bad("config.json: root.path is missing".into()))?;
        let rootfs = dir.join(root);
        if !rootfs.is_dir() {
            return Err(bad(format!(
                "root.path {} is not a directory",
                rootfs.display()
            )));
        }
        if !value["process"].is_object() {
            return Err(bad("config.json: process is missing".into()));
        }
        let terminal = value["process"]["terminal"].as_bool().unwrap_or(false);
        Ok(BundleSpec {
            dir,
            rootfs,
            json,
            value,
            terminal,
        })
    }
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
    fn create_vm(
        &self,
        id: &str,
        bundle: &Path,
        stdio: StdioSet,
        phases: &mut Phases,
        fwd: Option<&Forwarder>,
        slots: usize,
    ) -> Result<Created, Error> {
        let spec = BundleSpec::load(bundle)?;
        let dir = self.root.reserve(id)?;
        let paths = VmPaths::new(&dir);
        let mut record = Record {
            oci_version: spec.value["ociVersion"]
                .as_str()
                .unwrap_or("1.0.2")
                .to_string(),
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
            let v = vmm.insert(Vmm::spawn_with_disks(
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
    fn forget(&self, record: &Record) {
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
        let terminal = BundleSpec::load(bundle)?.terminal;
        check_console(terminal, console_socket).map_err(|reason| Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason,
        })?;
        let created = self.create_vm(id, bundle, StdioSet::default(), &mut phases, None, 0)?;
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
    fn hand_over_tty(
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

    /// `create` for a caller that relays stdio itself (the containerd shim): the streams of
    /// `stdio` (or the tty, when the spec asks for a terminal) are announced and wait for the
    /// caller to attach them; the VMM keeps running after we return. A pod's VM gets `slots`
    /// empty disks on which the pod's other containers later receive their images
    /// (`join_pod`). Returns the record, a connected client and the init's pid in the guest.
    pub fn create_pod(
        &self,
        id: &str,
        bundle: &Path,
        stdio: StdioSet,
        slots: usize,
    ) -> Result<(Record, AgentClient, u32), Error> {
        let mut phases = Phases::new(self.cfg.debug);
        let created = self.create_vm(id, bundle, stdio, &mut phases, None, slots)?;
        created.vmm.detach();
        let pid = created
            .client
            .container_state(id)
            .map(|s| s.pid)
            .unwrap_or(0);
        Ok((created.record, created.client, pid))
    }

    /// Creates container `id` (spec `spec_json`, rootfs from `bundle`) in the running VM of
    /// pod `pod_id`: its image is written to the pod's next unused disk slot and mounted from
    /// there. Returns the init's pid in the guest.
    pub fn join_pod(
        &self,
        pod_id: &str,
        id: &str,
        bundle: &Path,
        spec_json: &str,
        stdio: StdioSet,
        client: &AgentClient,
    ) -> Result<u32, Error> {
        let spec = BundleSpec::load(bundle)?;
        let pod = self.root.load(pod_id)?;
        let member = pod.state_dir.join("members").join(id);
        fs::create_dir_all(&member).map_err(|source| Error::Io {
            what: format!("creating {}", member.display()),
            source,
        })?;
        let result = (|| {
            let Image { key, path } = self.cache.acquire(&spec.rootfs, &member)?;
            fs::write(member.join("image-key"), &key).map_err(|source| Error::Io {
                what: format!("writing {}", member.join("image-key").display()),
                source,
            })?;
            let (slot, device) = claim_slot(&pod.state_dir, id)?;
            copy_into_slot(&path, &slot)?;
            let rootfs = RootfsDevice {
                device,
                fstype: ROOTFS_FSTYPE.into(),
                ..RootfsDevice::default()
            };
            client.create_container(id, spec_json, &rootfs, stdio, spec.terminal)?;
            Ok(client.container_state(id).map(|s| s.pid).unwrap_or(0))
        })();
        if result.is_err() {
            self.leave_pod(pod_id, id);
        }
        result
    }

    /// Forgets a container that joined pod `pod_id` (after RemoveContainer): its claim on its
    /// image. Its disk slot stays used: the guest may still cache the old blocks.
    pub fn leave_pod(&self, pod_id: &str, id: &str) {
        let Ok(pod) = self.root.load(pod_id) else {
            return;
        };
        let member = pod.state_dir.join("members").join(id);
        if let Ok(key) = fs::read_to_string(member.join("image-key")) {
            if let Err(e) = self.cache.release(&key, &member) {
                tracing::warn!("releasing image {key}: {e}");
            }
        }
        let _ = fs::remove_dir_all(&member);
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
        if console_socket.is_some() {
            let terminal = BundleSpec::load(bundle)?.terminal;
            check_console(terminal, console_socket).map_err(|reason| Error::Bundle {
                bundle: bundle.to_path_buf(),
                reason,
            })?;
        }
        let sigset = signals::block().map_err(|e| Error::Io {
            what: "blocking signals".into(),
            source: e.into(),
        })?;
        let fwd = Forwarder::spawn(sigset);
        let mut phases = Phases::new(self.cfg.debug);
        let spec = BundleSpec::load(bundle)?;
        let stdio_set = if spec.terminal {
            StdioSet::default()
        } else {
            StdioSet {
                stdin: true,
                stdout: true,
                stderr: true,
            }
        };
        let Created {
            mut record,
            mut vmm,
            client,
        } = self.create_vm(id, bundle, stdio_set, &mut phases, Some(&fwd), 0)?;
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
                wait_relay(relay);
                return Ok(status.code());
            }
            let raw = if spec.terminal {
                RawMode::enable(stdin_fd())
            } else {
                None
            };
            let attached = stdio::attach(&client, id, "", spec.terminal)?;
            client.start_container(id)?;
            record.status = Status::Running;
            self.root.save(&record)?;
            phases.mark("start");
            fwd.started(&client, id, "", spec.terminal);
            let status = client.wait_process(id, "")?;
            attached.finish();
            drop(raw);
            phases.mark("exit");
            Ok(status.code())
        })();
        vmm.stop(Some(&client), vm::SHUTDOWN_GRACE);
        phases.mark("vm stop");
        self.forget(&record);
        result
    }

    /// `exec`: a new process in a running container; its exit code unless detached.
    pub fn exec(&self, id: &str, req: &ExecRequest) -> Result<i32, Error> {
        let sigset = if req.detach {
            None
        } else {
            Some(signals::block().map_err(|e| Error::Io {
                what: "blocking signals".into(),
                source: e.into(),
            })?)
        };
        let record = self.root.load(id)?;
        let client = self.connect(&record)?;
        let terminal = req.process["terminal"].as_bool().unwrap_or(false);
        let exec_id = state::generate_id().replacen("sbx", "exec", 1);
        let process_json = req.process.to_string();
        if req.detach || req.console_socket.is_some() {
            check_console(terminal, req.console_socket.as_deref()).map_err(|reason| {
                Error::Container {
                    id: id.to_string(),
                    reason: format!("exec: {reason}"),
                }
            })?;
        }
        if let Some(socket) = &req.console_socket {
            client.exec_process(id, &exec_id, &process_json, StdioSet::default(), true)?;
            let relay = self.hand_over_tty(&client, &record, &exec_id, socket)?;
            let Some(sigset) = sigset else {
                return Ok(0);
            };
            Forwarder::spawn(sigset).started(&client, id, &exec_id, false);
            let status = client.wait_process(id, &exec_id)?;
            wait_relay(relay);
            return Ok(status.code());
        }
        let Some(sigset) = sigset else {
            client.exec_process(id, &exec_id, &process_json, StdioSet::default(), false)?;
            return Ok(0);
        };
        let stdio_set = if terminal {
            StdioSet::default()
        } else {
            StdioSet {
                stdin: true,
                stdout: true,
                stderr: true,
            }
        };
        client.exec_process(id, &exec_id, &process_json, stdio_set, terminal)?;
        let raw = if terminal {
            RawMode::enable(stdin_fd())
        } else {
            None
        };
        let attached = stdio::attach(&client, id, &exec_id, terminal)?;
        Forwarder::spawn(sigset).started(&client, id, &exec_id, terminal);
        let status = client.wait_process(id, &exec_id)?;
        attached.finish();
        drop(raw);
        Ok(status.code())
    }

    /// The container's process spec from its bundle (the base of an `exec` process).
    pub fn bundle_process(&self, id: &str) -> Result<serde_json::Value, Error> {
        let record = self.root.load(id)?;
        Ok(BundleSpec::load(&record.bundle)?.value["process"].clone())
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
            Ok(s) => match s.status.enum_value_or_default() {
                ContainerStatus::CREATED => Status::Created,
                ContainerStatus::RUNNING => Status::Running,
                ContainerStatus::PAUSED => Status::Paused,
                ContainerStatus::STOPPED => Status::Stopped,
                ContainerStatus::UNKNOWN => record.status,
            },
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
                reason: format!(
                    "cannot delete a {} container: stop it first or use --force",
                    status.as_str()
                ),
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

    fn connect(&self, record: &Record) -> Result<AgentClient, Error> {
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
fn check_console(terminal: bool, console_socket: Option<&Path>) -> Result<(), String> {
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

/// Lets the relay pass the last output on (it ends at the guest terminal's EOF), at most a
/// few seconds, then reaps it.
fn wait_relay(pid: u32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let begin = std::time::Instant::now();
    while begin.elapsed() < Duration::from_secs(5) {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

/// Size of each empty disk slot of a pod VM (sparse; an image must fit).
pub const POD_SLOT_BYTES: u64 = 1 << 30;

/// The sparse slot files of a new pod VM in its state directory.
fn pod_slots(dir: &Path, slots: usize) -> Result<Vec<PathBuf>, Error> {
    (0..slots)
        .map(|n| {
            let path = dir.join(format!("slot-{n}.img"));
            fs::File::create(&path)
                .and_then(|f| f.set_len(POD_SLOT_BYTES))
                .map_err(|source| Error::Io {
                    what: format!("creating disk slot {}", path.display()),
                    source,
                })?;
            Ok(path)
        })
        .collect()
}

/// Takes the first unused slot of a pod for container `id`: its file and guest device
/// (slot n is the n-th virtio-blk disk: vda, vdb, ...; the pod's own image is on virtio-pmem).
fn claim_slot(dir: &Path, id: &str) -> Result<(PathBuf, String), Error> {
    for n in 0.. {
        let slot = dir.join(format!("slot-{n}.img"));
        if !slot.exists() || n >= 24 {
            break;
        }
        let marker = dir.join(format!("slot-{n}.used"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(&mut f, id.as_bytes());
                let device = format!("vd{}", (b'a' + n as u8) as char);
                return Ok((slot, device));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(Error::Io {
                    what: format!("claiming {}", marker.display()),
                    source,
                })
            }
        }
    }
    Err(Error::Container {
        id: id.to_string(),
        reason: format!(
            "its pod's VM has no unused disk slot left in {} (a pod VM takes a fixed number of containers over its life)",
            dir.display()
        ),
    })
}

/// Writes an image over the start of a slot (the slot keeps its size: the guest sized the
/// disk at boot).
fn copy_into_slot(image: &Path, slot: &Path) -> Result<(), Error> {
    let io = |what: String| move |source| Error::Io { what, source };
    let len = fs::metadata(image)
        .map_err(io(format!("reading {}", image.display())))?
        .len();
    if len > POD_SLOT_BYTES {
        return Err(Error::Io {
            what: format!("image {} ({len} bytes)", image.display()),
            source: std::io::Error::other(format!(
                "larger than a pod disk slot ({POD_SLOT_BYTES} bytes)"
            )),
        });
    }
    let mut from = fs::File::open(image).map_err(io(format!("reading {}", image.display())))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(io(format!("writing {}", slot.display())))?;
    std::io::copy(&mut from, &mut to).map_err(io(format!("writing {}", slot.display())))?;
    to.sync_all()
        .map_err(io(format!("writing {}", slot.display())))?;
    Ok(())
}

/// Writes `pid` (the VMM's) to a `--pid-file`.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), Error> {
    fs::write(path, pid.to_string()).map_err(|source| Error::Io {
        what: format!("--pid-file {}", path.display()),
        source,
    })
}

fn endpoint(record: &Record) -> Endpoint {
    Endpoint::HybridVsock {
        socket: record.vsock.clone(),
    }
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process; we only borrow it.
    unsafe { BorrowedFd::borrow_raw(0) }
}

fn stdout_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 1 stays open for the life of the process; we only borrow it.
    unsafe { BorrowedFd::borrow_raw(1) }
}

/// Where the signals of a foreground command go: while the VM boots, SIGINT, SIGTERM, SIGHUP
/// and SIGQUIT kill the VMM (the start then fails and cleans up); once the process runs, every
/// signal is forwarded to it and SIGWINCH resizes its terminal.
pub struct Forwarder {
    state: std::sync::Arc<std::sync::Mutex<Forwarding>>,
}

#[derive(Default)]
struct Forwarding {
    vmm_pid: i32,
    interrupted: Option<Signal>,
    target: Option<Target>,
}

struct Target {
    client: AgentClient,
    id: String,
    exec_id: String,
    terminal: bool,
}

impl Target {
    fn resize(&self) {
        if let Some((rows, cols)) = window_size(stdout_fd()).or(window_size(stdin_fd())) {
            let _ = self.client.resize_tty(&self.id, &self.exec_id, rows, cols);
        }
    }
}

impl Forwarder {
    /// Takes the (blocked) signals of `set` from now on.
    pub fn spawn(set: nix::sys::signal::SigSet) -> Forwarder {
        let state = std::sync::Arc::new(std::sync::Mutex::new(Forwarding::default()));
        let shared = state.clone();
        signals::spawn_forwarder(set, move |sig| {
            let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
            match (&st.target, sig) {
                (Some(t), Signal::SIGWINCH) => {
                    if t.terminal {
                        t.resize();
                    }
                }
                (Some(t), _) => {
                    if let Err(e) = t
                        .client
                        .signal_process(&t.id, &t.exec_id, sig as i32, false)
                    {
                        tracing::debug!("forwarding {sig}: {e}");
                    }
                }
                (None, Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT) => {
                    st.interrupted = Some(sig);
                    kill_vmm(st.vmm_pid);
                }
                (None, _) => {}
            }
        });
        Forwarder { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Forwarding> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VMM is up: an interruption from now on kills it (at once if one came already).
    fn booting(&self, vmm_pid: i32) {
        let mut st = self.lock();
        st.vmm_pid = vmm_pid;
        if st.interrupted.is_some() {
            kill_vmm(vmm_pid);
        }
    }

    /// The signal that interrupted the start, if any.
    fn interrupted(&self) -> Option<Signal> {
        self.lock().interrupted
    }

    /// The process runs: send the window size, then forward everything to it.
    pub fn started(&self, client: &AgentClient, id: &str, exec_id: &str, terminal: bool) {
        let target = Target {
            client: client.clone(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            terminal,
        };
        if terminal {
            target.resize();
        }
        self.lock().target = Some(target);
    }
}

fn kill_vmm(pid: i32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}
