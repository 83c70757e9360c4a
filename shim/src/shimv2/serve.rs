//! The long-running shim: serves the Task API on the socket `start` chose, under both the
//! `containerd.task.v2.Task` name (containerd 1.x) and `containerd.task.v3.Task` (2.x), whose
//! messages are the same; exits once containerd has deleted every task and said Shutdown.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use containerd_shim::asynchronous::Shim;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Flags;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;

use super::start::{self, ShimV2};
use super::Error;

/// The Task service's name in containerd 1.x and in 2.x.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

/// Serves until Shutdown after the last task.
pub async fn serve(runtime_id: &str, flags: Flags) -> Result<(), Error> {
    if flags.socket.is_empty() {
        return Err(Error::Flag {
            flag: "-socket",
            reason: "is required to serve".into(),
        });
    }
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .map_err(|e| Error::Shim(e.to_string()))?;
    let path = start::socket_path(&flags.socket);
    let Some(listener) = listen(&path)? else {
        // Another shim of the pod serves this socket already: containerd uses it.
        std::fs::write(start::ADDRESS_FILE, &flags.socket).map_err(|source| Error::Io {
            what: start::ADDRESS_FILE.into(),
            source,
        })?;
        server_started();
        return Ok(());
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").map_err(|_| Error::Flag {
        flag: "$TTRPC_ADDRESS",
        reason: "is not set (containerd sets it for the shim)".into(),
    })?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .await
        .map_err(|e| Error::Shim(format!("connecting to {ttrpc_address}: {e}")))?;
    let mut config = start::crate_config();
    let mut shim = ShimV2::new(runtime_id, &flags, &mut config).await;
    let task: Arc<dyn containerd_shim::Task + Send + Sync> =
        Arc::new(shim.create_task_service(publisher).await);
    let services = task_services(task);
    let listener = Listener::try_from(listener).map_err(|source| Error::Io {
        what: format!("listening on {}", path.display()),
        source,
    })?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| Error::Shim(format!("starting the ttrpc server: {e}")))?;
    server_started();
    log::info!("serving {} on {}", flags.id, flags.socket);
    shim.wait().await;
    log::info!("shutting down");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// The Task service under both names containerd may call it by.
fn task_services(
    task: Arc<dyn containerd_shim::Task + Send + Sync>,
) -> HashMap<String, containerd_shim_protos::ttrpc::r#async::Service> {
    let mut services = create_task(task.clone());
    if let Some(v3) = create_task(task).remove(TASK_SERVICE_V3) {
        services.insert(TASK_SERVICE_V2.to_string(), v3);
    }
    services
}

/// Binds the socket; `None` when a live server already owns it. A stale socket (its shim
/// died) is replaced.
fn listen(path: &std::path::Path) -> Result<Option<UnixListener>, Error> {
    let io_err = |source| Error::Io {
        what: format!("listening on {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(io_err)?;
            UnixListener::bind(path).map(Some).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Tells `start` (reading our stdout until EOF) that the server is up: stdout becomes a
/// copy of stderr, closing the pipe.
fn server_started() {
    // SAFETY: dup2 on our own standard descriptors; no Rust object owns fd 1 exclusively.
    let rc = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    if rc < 0 {
        log::warn!("closing stdout: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_socket_is_reused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join("shim.sock");
        let first = listen(&path).unwrap().expect("a fresh socket binds");
        assert!(listen(&path).unwrap().is_none(), "a live server is reused");
        drop(first);
        assert!(
            listen(&path).unwrap().is_some(),
            "a stale socket is replaced"
        );
    }

    #[test]
    fn the_task_service_answers_to_both_names() {
        struct Nothing;
        #[async_trait::async_trait]
        impl containerd_shim::Task for Nothing {}
        let services = task_services(Arc::new(Nothing));
        let mut names: Vec<_> = services.keys().cloned().collect();
        names.sort();
        assert_eq!(names, [TASK_SERVICE_V2, TASK_SERVICE_V3]);
    }
}
