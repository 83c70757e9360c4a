//! The shim v2 binary protocol's one-shot actions: `start` (launch or reuse the pod's shim
//! and print its ttrpc address) and `delete` (clean up after a task, also after the shim
//! serving it died: VM process, sockets, state, rootfs mount).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, Flags, StartOpts};

use crate::controller::{self, Sandbox};

use super::events::{Events, Sink};
use super::pod::{self, Role};
use super::service::Service;
use super::vm_removal::remove_vm;
use super::{config, rootfs};

/// Exit status containerd records for a task whose shim had to be cleaned up.
const KILLED_EXIT_STATUS: u32 = 128 + libc::SIGKILL as u32;
/// File in the bundle holding the shim's address (as runc's shim keeps it).
pub const ADDRESS_FILE: &str = "address";

/// The shim as the `containerd-shim` crate drives it for `start` and `delete`.
pub struct ShimV2 {
    namespace: String,
    id: String,
    cfg: controller::Config,
    exit: Arc<ExitSignal>,
}

/// The crate's settings: we reap our own children (the crate's SIGCHLD reaper would race
/// with the controller's waits for mkfs.erofs) and are no subreaper.
pub fn crate_config() -> Config {
    Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

#[async_trait]
impl Shim for ShimV2 {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let cfg = match config::controller_config(&args.namespace) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("containerd-shim-sandbox-v2: {e}");
                std::process::exit(1);
            }
        };
        ShimV2 {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            cfg,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        start_server(opts).await
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let cfg = self.cfg.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || cleanup(cfg, &id, &bundle))
            .await
            .map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let exit = super::process::Exit::new(KILLED_EXIT_STATUS);
        Ok(api::DeleteResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let events = Events::spawn(Sink::Remote {
            publisher,
            namespace: self.namespace.clone(),
        });
        Service::new(Sandbox::new(self.cfg.clone()), events, self.exit.clone())
    }
}

/// Starts the shim server for the task in the current directory (its bundle), or finds the
/// pod's running one; returns the ttrpc address and records it in `<bundle>/address`.
pub async fn start_server(opts: StartOpts) -> containerd_shim::Result<String> {
    let bundle = std::env::current_dir()
        .map_err(|e| containerd_shim::Error::Other(format!("current directory: {e}")))?;
    let spec = pod::read_spec(&bundle)
        .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
    let grouping = Role::from_spec(&spec).grouping(&opts.id);
    // A second container of a pod reaches the pod's socket: the new server finds it
    // taken and answering, and exits; we print the same address.
    let address = spawn(opts, &grouping, Vec::new()).await?;
    std::fs::write(bundle.join(ADDRESS_FILE), &address).map_err(|e| {
        containerd_shim::Error::Other(format!("{}: {e}", bundle.join(ADDRESS_FILE).display()))
    })?;
    Ok(address)
}

/// The `start` options of containerd 1.x: flags, `$TTRPC_ADDRESS`; the runtime options on
/// stdin are not used.
pub fn legacy_start_opts(flags: &Flags) -> StartOpts {
    StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    }
}

/// What `delete` does, idempotently: stop the task's VM and remove its state (from the
/// record alone), unmount the rootfs, and remove a shim socket nobody serves any more.
pub fn cleanup(cfg: controller::Config, id: &str, bundle: &Path) {
    let sandbox = Sandbox::new(cfg);
    if sandbox.root().load(&super::vm_id(id)).is_ok() {
        remove_vm(&sandbox, id);
    }
    rootfs::unmount(&bundle.join("rootfs"));
    if let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) {
        let path = socket_path(address.trim());
        if UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The filesystem path of a `unix://` address.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn test_config(root: &Path) -> controller::Config {
        controller::Config {
            root: root.join("state"),
            vmm: "/nonexistent/sandbox-vmm".into(),
            kernel: "/nonexistent/vmlinux".into(),
            guest_root: crate::controller::config::GuestRoot::Image(
                "/nonexistent/rootfs.erofs".into(),
            ),
            image_cache: root.join("images"),
            vcpus: 1,
            memory_mib: 256,
            agent_timeout: std::time::Duration::from_secs(1),
            debug: false,
        }
    }

    #[test]
    fn addresses_become_paths() {
        assert_eq!(
            socket_path("unix:///run/containerd/s/abc"),
            PathBuf::from("/run/containerd/s/abc")
        );
        assert_eq!(socket_path("/x/y"), PathBuf::from("/x/y"));
    }

    #[test]
    fn cleanup_is_idempotent_and_removes_a_dead_shims_socket_only() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        // A socket whose server is gone (the shim was killed).
        let dead = dir.path().join("dead.sock");
        drop(UnixListener::bind(&dead).unwrap());
        std::fs::write(
            bundle.join(ADDRESS_FILE),
            format!("unix://{}", dead.display()),
        )
        .unwrap();
        cleanup(test_config(dir.path()), "c1", &bundle);
        assert!(!dead.exists());
        cleanup(test_config(dir.path()), "c1", &bundle);

        // A socket still served (another container of the pod) stays.
        let live = dir.path().join("live.sock");
        let _listener = UnixListener::bind(&live).unwrap();
        std::fs::write(
            bundle.join(ADDRESS_FILE),
            format!("unix://{}", live.display()),
        )
        .unwrap();
        cleanup(test_config(dir.path()), "c1", &bundle);
        assert!(live.exists());
    }

    #[test]
    fn cleanup_removes_the_state_of_a_dead_vm() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        let sandbox = Sandbox::new(cfg.clone());
        let state_dir = sandbox.root().reserve("c2").unwrap();
        let record = controller::Record {
            oci_version: "1.0.2".into(),
            id: "c2".into(),
            // A pid that is not running: the VMM died with the shim.
            pid: i32::MAX,
            vmm_start_time: 1,
            status: runtime::Status::Running,
            bundle: dir.path().into(),
            rootfs: dir.path().into(),
            created: String::new(),
            owner: String::new(),
            state_dir: state_dir.clone(),
            vsock: state_dir.join("vsock.sock"),
            console_log: state_dir.join("console.log"),
            image: PathBuf::new(),
            image_key: String::new(),
            terminal: false,
        };
        sandbox.root().save(&record).unwrap();
        std::fs::write(state_dir.join("vsock.sock"), "").unwrap();
        cleanup(cfg, "c2", dir.path());
        assert!(!state_dir.exists());
    }
}
