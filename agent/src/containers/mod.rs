//! The containers of this sandbox: each one's bundle (bundle.rs), its init and execs started
//! through the runtime helper (launch.rs), and the runtime crate's lifecycle calls on it.

mod bundle;
mod launch;

use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use thiserror::Error;

pub use bundle::{Error as BundleError, RootfsSource};

use crate::oom::OomWatch;
use crate::process_table::{Process, ProcessTable};
use crate::reaper::{ExitStatus, Reaper};
use crate::runtime_helper::{self, Job};
use crate::spawn::{self, StdioPlan};
use bundle::Bundles;

/// Errors of a container operation; each names the container, field or file.
#[derive(Debug, Error)]
pub enum Error {
    #[error("container_id: no container {0:?}")]
    Unknown(String),
    #[error("container {0} is running; stop it first or use force")]
    Running(String),
    #[error("process_json: {0}")]
    BadProcess(String),
    #[error(transparent)]
    Bundle(#[from] bundle::Error),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Helper(#[from] runtime_helper::Error),
    #[error(transparent)]
    Process(#[from] crate::process_table::Error),
    #[error(transparent)]
    Console(#[from] crate::console::Error),
    #[error(transparent)]
    Stdio(#[from] spawn::Error),
    #[error(transparent)]
    Tty(std::io::Error),
}

/// A container's status as the runtime sees it, with its init's exit once reaped.
#[derive(Debug)]
pub struct InitState {
    pub pid: i32,
    pub status: runtime::Status,
    pub exit: Option<ExitStatus>,
}

/// The containers of this sandbox.
pub struct Containers {
    bundles: Bundles,
    processes: Arc<ProcessTable>,
    reaper: Arc<Reaper>,
    /// Told when containers come or go.
    oom: Arc<OomWatch>,
}

impl Containers {
    pub fn new(
        run_dir: PathBuf,
        processes: Arc<ProcessTable>,
        reaper: Arc<Reaper>,
        oom: Arc<OomWatch>,
    ) -> Containers {
        Containers {
            bundles: Bundles::new(run_dir),
            processes,
            reaper,
            oom,
        }
    }

    pub fn count(&self) -> usize {
        self.bundles.count()
    }

    /// Accepts the id of an existing container, or "" (the processes run in the guest itself).
    pub fn check(&self, container_id: &str) -> Result<(), Error> {
        if container_id.is_empty() || self.bundles.exists(container_id) {
            Ok(())
        } else {
            Err(Error::Unknown(container_id.to_string()))
        }
    }

    /// The runtime's handle on container `id`.
    fn load(&self, id: &str) -> Result<runtime::Container, Error> {
        self.check(id)?;
        Ok(runtime::Container::load(id, &self.bundles.state_root())?)
    }

    /// Prepares the bundle and creates the container with its init blocked until `start`;
    /// on error the bundle is removed again.
    pub fn create(
        &self,
        id: &str,
        spec_json: &str,
        rootfs: &RootfsSource,
        plan: StdioPlan,
    ) -> Result<Arc<Process>, Error> {
        self.processes.ensure_free(id, "")?;
        let bundle = self.bundles.prepare(id, spec_json, rootfs, plan.terminal)?;
        let state_root = self.bundles.state_root();
        let created = self.launch(
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
                let _ = self.bundles.remove(id);
                return Err(e);
            }
        };
        self.oom.containers_changed();
        Ok(init)
    }

    /// Starts the container's init and returns once it has left the runtime's code: its
    /// program exec'd (or the process gone), not merely released. Whatever the host does next
    /// (the VMM's trim of start-up pages, a benchmark's clock) then sees the workload started.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        let mut container = self.load(id)?;
        let pid = container.pid();
        let before = init_exe(pid);
        container.start()?;
        wait_for_exec(pid, before.as_deref());
        Ok(())
    }

    pub fn state(&self, id: &str) -> Result<InitState, Error> {
        let state = self.load(id)?.state();
        let exit = self
            .processes
            .get(id, "")
            .ok()
            .and_then(|p| p.exit_status());
        Ok(InitState {
            pid: state.pid,
            status: state.status,
            exit,
        })
    }

    /// Starts `process_json` (an OCI process) in container `id`, with a terminal if asked.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &str,
        plan: StdioPlan,
    ) -> Result<Arc<Process>, Error> {
        self.processes.ensure_free(id, exec_id)?;
        let process_json = with_terminal(process_json, plan.terminal)?;
        let state_root = self.bundles.state_root();
        let console_path = self
            .bundles
            .bundle_dir(id)
            .join(format!("console-{}.sock", sanitize(exec_id)));
        self.launch(
            id,
            exec_id,
            Job::Exec {
                id,
                state_root: &state_root,
                process_json: &process_json,
                console_socket: None,
            },
            plan,
            console_path,
        )
    }

    pub fn ps(&self, id: &str) -> Result<Vec<i32>, Error> {
        Ok(self.load(id)?.ps()?)
    }

    /// Sends `signal` to every process of the container.
    pub fn kill_all(&self, id: &str, signal: Signal) -> Result<(), Error> {
        Ok(self.load(id)?.kill(signal, true)?)
    }

    pub fn pause(&self, id: &str) -> Result<(), Error> {
        Ok(self.load(id)?.pause()?)
    }

    pub fn resume(&self, id: &str) -> Result<(), Error> {
        Ok(self.load(id)?.resume()?)
    }

    pub fn stats(&self, id: &str) -> Result<runtime::cgroups::Stats, Error> {
        Ok(self.load(id)?.stats()?)
    }

    pub fn update(&self, id: &str, resources: &runtime::LinuxResources) -> Result<(), Error> {
        Ok(self.load(id)?.update(resources)?)
    }

    /// Removes container `id`; one that was started and whose init still runs only with
    /// `force`.
    pub fn remove(&self, id: &str, force: bool) -> Result<(), Error> {
        let mut container = self.load(id)?;
        let init_running = self
            .processes
            .get(id, "")
            .map(|p| p.exit_status().is_none())
            .unwrap_or(false);
        let started = matches!(
            container.state().status,
            runtime::Status::Running | runtime::Status::Paused
        );
        if init_running && started && !force {
            return Err(Error::Running(id.to_string()));
        }
        self.delete(id)
    }

    /// Kills a container's processes and waits for its init, so the runtime finds it stopped
    /// and never has to wait for it itself (the reaper owns every exit status).
    fn stop(&self, id: &str) {
        if let Ok(mut c) = runtime::Container::load(id, &self.bundles.state_root()) {
            let _ = c.kill(Signal::SIGKILL, true);
        }
        for p in self.processes.of_container(id) {
            let _ = p.signal(Signal::SIGKILL);
        }
        if let Ok(init) = self.processes.get(id, "") {
            init.wait();
        }
    }

    fn delete(&self, id: &str) -> Result<(), Error> {
        self.stop(id);
        let deleted =
            runtime::Container::load(id, &self.bundles.state_root()).and_then(|c| c.delete(true));
        if let Err(e) = deleted {
            log::warn!("runtime delete of {id}: {e}");
        }
        self.processes.remove_container(id);
        self.bundles.remove(id)?;
        self.oom.containers_changed();
        Ok(())
    }

    /// Removes every container (Shutdown): their cgroups and mounts go with them.
    pub fn teardown(&self) {
        for id in self.bundles.ids() {
            if let Err(e) = self.delete(&id) {
                log::warn!("removing container {id}: {e}");
            }
        }
    }

    /// Every container's id and cgroup `memory.events` file, for the OOM watch.
    pub fn oom_watch_list(&self) -> Vec<(String, PathBuf)> {
        let root = self.bundles.state_root();
        self.bundles
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
}

/// The OCI process JSON with `terminal` set as the request says.
fn with_terminal(process_json: &str, terminal: bool) -> Result<String, Error> {
    let bad = |e: String| Error::BadProcess(e);
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

/// The program a process runs (`/proc/PID/exe`), `None` once it is gone.
fn init_exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Longest wait for an init to exec its program after `start`.
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until `pid` runs another program than `before` or is gone, at most [`EXEC_WAIT`].
fn wait_for_exec(pid: i32, before: Option<&std::path::Path>) {
    let Some(before) = before else { return };
    let deadline = std::time::Instant::now() + EXEC_WAIT;
    let mut pause = std::time::Duration::from_micros(200);
    while std::time::Instant::now() < deadline {
        match init_exe(pid) {
            Some(exe) if exe == before => {}
            _ => return,
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
    log::warn!(
        "container init {pid} has not exec'd its program {} s after start",
        EXEC_WAIT.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_waits_for_the_init_to_exec_its_program() {
        // A shell that execs sleep after 300 ms: the wait ends with the exec, not before.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3; exec sleep 5"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id() as i32;
        let before = init_exe(pid).expect("sh's exe");
        let begin = std::time::Instant::now();
        wait_for_exec(pid, Some(&before));
        let waited = begin.elapsed();
        let after = init_exe(pid).expect("sleep's exe");
        let _ = child.kill();
        let _ = child.wait();
        assert_ne!(after, before, "returned before the exec");
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "{waited:?}"
        );
        assert!(waited < EXEC_WAIT, "{waited:?}");
        // A process that is gone ends the wait at once.
        let begin = std::time::Instant::now();
        wait_for_exec(pid, Some(&before));
        assert!(begin.elapsed() < std::time::Duration::from_secs(1));
    }
}
