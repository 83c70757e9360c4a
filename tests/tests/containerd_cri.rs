//! containerd end to end: a private containerd 1.6 (`sandbox_tests::containerd`) driven with
//! `ctr` and through its CRI gRPC API, first with the `runc` handler (which proves the
//! harness), then with our `sandbox` RuntimeClass handler (`containerd-shim-sandbox-v2`):
//! pod lifecycle, ExecSync, logs, two containers sharing one VM, nothing left after removal.
//! Needs root, containerd, umoci, busybox-static; the sandbox handler needs real KVM: run by
//! `cargo xtask test` in the lab (with the shim built: `$SANDBOX_SHIM_BIN` or the target dir).

// The client's whole API is compiled here, not only what these tests call.
#[allow(dead_code)]
#[path = "../src/cri.rs"]
mod cri;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use sandbox_tests::binaries;
use sandbox_tests::bundle::unique;
use sandbox_tests::containerd::{self, procs, Containerd, CRI_NAMESPACE};
use sandbox_tests::image;
use sandbox_tests::require;

/// Where containerd 1.6's shims put their sockets (`/run/containerd/s/<hash>`).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// How long a state the test waits for may take (a VM boots in the lab's emulated CPU).
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// How long leftovers may take to go away after RemovePodSandbox.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// A daemon with the test images in the CRI namespace, a CRI client and a log directory.
struct Env {
    cri: cri::Client,
    logs: PathBuf,
    shim_sockets_before: BTreeSet<PathBuf>,
    daemon: Containerd,
}

impl Env {
    fn new(name: &str) -> Env {
        let shim_sockets_before = shim_sockets();
        let daemon = containerd::start(name, &[CRI_NAMESPACE]).expect("start containerd");
        let cri = cri::Client::connect(&daemon.socket()).expect("connect to CRI");
        let logs = daemon.dir().join("pod-logs");
        fs::create_dir_all(&logs).unwrap();
        let env = Env {
            cri,
            logs,
            shim_sockets_before,
            daemon,
        };
        let (name, version) = env.cri.version().expect("CRI Version");
        assert_eq!(name, "containerd", "runtime {name} {version}");
        assert!(
            env.cri.image_present(image::PAUSE).expect("ImageStatus"),
            "CRI does not see the pause image {}",
            image::PAUSE
        );
        env
    }

    /// Panics with containerd's log tail, so a CRI failure shows containerd's side.
    fn fail(&self, what: &str, err: impl std::fmt::Display) -> ! {
        let log = self.daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{what}: {err}\n--- containerd log (tail) ---\n{}",
            tail.join("\n")
        );
    }

    fn ok<T>(&self, what: &str, r: Result<T, cri::Error>) -> T {
        r.unwrap_or_else(|e| self.fail(what, e))
    }

    /// RunPodSandbox of a new pod (named `name` and a unique suffix) with `handler`.
    fn run_pod(&self, name: &str, handler: &str) -> Pod {
        let config = cri::pod_config(&unique(name), &unique("uid"), &self.logs);
        let id = self.ok("RunPodSandbox", self.cri.run_pod_sandbox(&config, handler));
        Pod { id, config }
    }

    /// Creates and starts `talking_container(name)` in `pod`, and waits until it runs.
    fn start_talking(&self, pod: &Pod, name: &str) -> String {
        let id = self.ok(
            "CreateContainer",
            self.cri
                .create_container(&pod.id, &talking_container(name), &pod.config),
        );
        self.ok("StartContainer", self.cri.start_container(&id));
        self.wait_state(&id, cri::ContainerState::ContainerRunning);
        id
    }

    /// StopPodSandbox and RemovePodSandbox of `pod`; then no pod and nothing of it is left.
    fn remove_pod(&self, pod: &Pod) {
        self.ok("StopPodSandbox", self.cri.stop_pod_sandbox(&pod.id));
        self.ok("RemovePodSandbox", self.cri.remove_pod_sandbox(&pod.id));
        assert!(self
            .ok("ListPodSandbox", self.cri.list_pod_sandboxes())
            .is_empty());
        self.assert_clean();
    }

    /// Waits until container `id` is in `state`.
    fn wait_state(&self, id: &str, state: cri::ContainerState) -> cri::ContainerStatus {
        let begin = Instant::now();
        loop {
            let s = self.ok("ContainerStatus", self.cri.container_status(id));
            if s.state == state as i32 {
                return s;
            }
            if begin.elapsed() > WAIT_LIMIT {
                self.fail(
                    &format!("container {id} never reached {state:?}"),
                    format!("{s:?}"),
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the container's log (relative to the pod's log dir) has `want` on `stream`.
    fn wait_log(&self, log: &str, stream: &str, want: &str) -> String {
        let path = self.logs.join(log);
        let begin = Instant::now();
        loop {
            let lines = self.ok("read log", cri::read_log(&path));
            let text = cri::stream_text(&lines, stream);
            if text.contains(want) {
                return text;
            }
            if begin.elapsed() > WAIT_LIMIT {
                self.fail(
                    &format!("{} never had {want:?} on {stream}", path.display()),
                    format!("log so far: {lines:?}"),
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Our VMM processes: those of this daemon's shims (descendants, or run from its dir).
    fn vmms(&self) -> Vec<u32> {
        let ours: BTreeSet<u32> = procs::with_descendants(&self.daemon.shim_pids())
            .into_iter()
            .chain(self.daemon.processes_under_dir())
            .collect();
        procs::named("sandbox-vmm")
            .into_iter()
            .filter(|p| ours.contains(p))
            .collect()
    }

    /// What is left of this daemon's pods and containers: shims, VMMs, mounts under its
    /// directory, shim sockets, our shim's state.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pid in self.daemon.shim_pids() {
            out.push(format!("shim {pid}: {:?}", procs::argv(pid)));
        }
        for pid in procs::named("sandbox-vmm") {
            out.push(format!("sandbox-vmm {pid}: {:?}", procs::argv(pid)));
        }
        for m in self.daemon.mounts() {
            out.push(format!("mount {}", m.display()));
        }
        for s in shim_sockets().difference(&self.shim_sockets_before) {
            out.push(format!("shim socket {}", s.display()));
        }
        out.extend(files_under(&self.daemon.dir().join("shim")));
        // Images no container uses any more are removed (docs/sandbox-run.md).
        out.extend(
            files_under(&self.daemon.dir().join("images"))
                .into_iter()
                .filter(|f| f.ends_with(".erofs")),
        );
        out
    }

    /// Waits until `leftovers` is empty; fails with what is still there.
    fn assert_clean(&self) {
        let begin = Instant::now();
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if begin.elapsed() > CLEANUP_LIMIT {
                self.fail("left behind after RemovePodSandbox", format!("{left:#?}"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A pod the test runs, with the config its containers are created against.
struct Pod {
    id: String,
    config: cri::PodSandboxConfig,
}

fn shim_sockets() -> BTreeSet<PathBuf> {
    fs::read_dir(SHIM_SOCKET_DIR)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Files (not directories) under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        } else {
            out.push(format!("file {}", p.display()));
        }
    }
    out
}

/// A container that writes to both streams and then stays up.
fn talking_container(name: &str) -> cri::ContainerConfig {
    let script = format!("echo out-{name}; echo err-{name} >&2; exec sleep 100000");
    cri::container_config(
        name,
        image::BUSYBOX,
        &["sh", "-c", &script],
        &format!("{name}.log"),
    )
}

/// One pod with `handler`: two containers (each logs to stdout and stderr, ExecSync in it),
/// stop and remove one, then StopPodSandbox and RemovePodSandbox; nothing may be left.
/// `check_running` runs while both containers run.
fn pod_lifecycle(env: &Env, handler: &str, check_running: impl FnOnce(&Env)) {
    let pod = env.run_pod(&format!("pod-{handler}"), handler);
    let status = env.ok("PodSandboxStatus", env.cri.pod_sandbox_status(&pod.id));
    assert_eq!(
        status.state,
        cri::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );

    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let id = env.start_talking(&pod, name);
        env.wait_log(&format!("{name}.log"), "stdout", &format!("out-{name}\n"));
        env.wait_log(&format!("{name}.log"), "stderr", &format!("err-{name}\n"));
        ids.push(id);
    }
    let listed: BTreeSet<String> = env
        .ok("ListContainers", env.cri.list_containers(Some(&pod.id)))
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect(), "ListContainers");

    for (i, id) in ids.iter().enumerate() {
        let r = env.ok(
            "ExecSync",
            env.cri.exec_sync(
                id,
                &[
                    "sh",
                    "-c",
                    &format!("echo exec-{i}; echo exec-err >&2; exit 7"),
                ],
                60,
            ),
        );
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("exec-{i}\n"));
        assert_eq!(String::from_utf8_lossy(&r.stderr), "exec-err\n");
        assert_eq!(r.exit_code, 7);
    }
    // Containers of one pod share its IPC namespace (the pod's, not the host's).
    let ipc: Vec<String> = ids
        .iter()
        .map(|id| {
            let r = env.ok(
                "ExecSync",
                env.cri
                    .exec_sync(id, &["readlink", "/proc/self/ns/ipc"], 60),
            );
            assert_eq!(r.exit_code, 0, "{r:?}");
            String::from_utf8_lossy(&r.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(ipc[0], ipc[1], "the pod's containers do not share IPC");

    check_running(env);

    // A container that exits right after writing: nothing of its output is lost, and its
    // exit code is reported.
    let quick = cri::container_config(
        "quick",
        image::BUSYBOX,
        &["sh", "-c", "echo bye; echo bye-err >&2; exit 3"],
        "quick.log",
    );
    let quick = env.ok(
        "CreateContainer",
        env.cri.create_container(&pod.id, &quick, &pod.config),
    );
    env.ok("StartContainer", env.cri.start_container(&quick));
    let exited = env.wait_state(&quick, cri::ContainerState::ContainerExited);
    assert_eq!(exited.exit_code, 3, "{exited:?}");
    assert_eq!(env.wait_log("quick.log", "stdout", "bye\n"), "bye\n");
    assert_eq!(
        env.wait_log("quick.log", "stderr", "bye-err\n"),
        "bye-err\n"
    );
    env.ok("RemoveContainer", env.cri.remove_container(&quick));

    // The pod's PID namespace has the pause process as PID 1, so sleep dies of SIGTERM.
    env.ok("StopContainer", env.cri.stop_container(&ids[0], 10));
    let stopped = env.wait_state(&ids[0], cri::ContainerState::ContainerExited);
    assert_eq!(stopped.exit_code, 128 + 15, "{stopped:?}");
    env.ok("RemoveContainer", env.cri.remove_container(&ids[0]));
    let left = env.ok("ListContainers", env.cri.list_containers(Some(&pod.id)));
    assert_eq!(left.len(), 1, "{left:?}");

    env.ok("StopPodSandbox", env.cri.stop_pod_sandbox(&pod.id));
    let status = env.ok("PodSandboxStatus", env.cri.pod_sandbox_status(&pod.id));
    assert_eq!(
        status.state,
        cri::PodSandboxState::SandboxNotready as i32,
        "{status:?}"
    );
    env.ok("RemovePodSandbox", env.cri.remove_pod_sandbox(&pod.id));
    assert!(env
        .ok("ListPodSandbox", env.cri.list_pod_sandboxes())
        .is_empty());
    assert!(env
        .ok("ListContainers", env.cri.list_containers(None))
        .is_empty());
    env.assert_clean();
}

/// The harness itself, through `ctr`: the image runs with runc, output and exit status come
/// back, and stopping the daemon leaves no process, mount or directory.
#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn harness_ctr_runs_busybox_with_runc() {
    let daemon = containerd::start("ctr", &["sandbox-test"]).expect("start containerd");
    let ctr = daemon.ctr("sandbox-test");
    let images = ctr.images().unwrap();
    assert!(images.iter().any(|i| i == image::BUSYBOX), "{images:?}");
    let id = unique("ctr-runc");
    let out = ctr
        .run(&[
            "run",
            "--rm",
            "--runtime",
            containerd::config::RUNC_RUNTIME,
            image::BUSYBOX,
            &id,
            "sh",
            "-c",
            "echo hello from busybox; echo to-stderr >&2; exit 3",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", daemon.log());
    assert!(out.stdout.contains("hello from busybox"), "{out:?}");
    assert!(ctr.containers().unwrap().is_empty());
    let dir = daemon.dir().to_owned();
    let pid = daemon.pid().unwrap();
    drop(daemon);
    assert!(!procs::alive(pid), "containerd {pid} still runs");
    assert!(procs::mounts_under(&dir).is_empty());
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// The CRI pod lifecycle with runc: proves the harness and the client.
#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn cri_pod_lifecycle_with_runc() {
    let env = Env::new("cri-runc");
    pod_lifecycle(&env, "runc", |_| {});
}

/// The same pod with our RuntimeClass handler: one VM for the pod (pause and both
/// containers), gone with the pod.
#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn cri_pod_lifecycle_with_sandbox() {
    require!(binaries::paths(&[binaries::SHIM, binaries::VMM]));
    let env = Env::new("cri-sandbox");
    pod_lifecycle(&env, "sandbox", |env| {
        let vmms = env.vmms();
        assert_eq!(vmms.len(), 1, "one VM per pod, found {vmms:?}");
        let shims = env.daemon.shim_pids();
        assert_eq!(shims.len(), 1, "one shim per pod, found {shims:?}");
    });
}

/// `kill -9` of the pod's shim while its container runs: containerd notices, and after
/// StopPodSandbox and RemovePodSandbox no VMM, shim, socket, mount or state is left.
#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn cri_killed_shim_leaves_nothing_with_sandbox() {
    require!(binaries::paths(&[binaries::SHIM, binaries::VMM]));
    let env = Env::new("cri-kill9");
    let pod = env.run_pod("pod-kill9", "sandbox");
    let id = env.start_talking(&pod, "victim");
    env.wait_log("victim.log", "stdout", "out-victim\n");
    assert_eq!(env.vmms().len(), 1, "one VM for the pod");

    let shims = env.daemon.shim_pids();
    assert_eq!(shims.len(), 1, "one shim per pod, found {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the shim");
    // containerd sees the shim disconnect and marks the container exited.
    env.wait_state(&id, cri::ContainerState::ContainerExited);
    env.remove_pod(&pod);
}

/// containerd restarted while a pod runs: it reconnects to the live shim, the container
/// still runs and answers ExecSync, and the pod is removed cleanly afterwards.
fn restart_reconnects(handler: &str) {
    let mut env = Env::new(&format!("restart-{handler}"));
    let pod = env.run_pod("pod-restart", handler);
    let id = env.start_talking(&pod, "survivor");
    let shims = env.daemon.shim_pids();
    let vmms = env.vmms();

    if let Err(e) = env.daemon.restart() {
        env.fail("restarting containerd", e);
    }
    env.cri = cri::Client::connect(&env.daemon.socket()).expect("reconnect to CRI");
    assert_eq!(
        env.daemon.shim_pids(),
        shims,
        "the shims survive the restart"
    );
    assert_eq!(env.vmms(), vmms, "the VMs survive the restart");
    env.wait_state(&id, cri::ContainerState::ContainerRunning);
    let r = env.ok(
        "ExecSync",
        env.cri.exec_sync(&id, &["echo", "still-here"], 60),
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still-here\n", "{r:?}");
    assert_eq!(r.exit_code, 0);
    env.remove_pod(&pod);
}

/// The harness's restart with runc.
#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn cri_restarted_containerd_reconnects_with_runc() {
    restart_reconnects("runc");
}

/// A restarted containerd reconnects to our live shim; the pod's one VM survives.
#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn cri_restarted_containerd_reconnects_with_sandbox() {
    require!(binaries::paths(&[binaries::SHIM, binaries::VMM]));
    restart_reconnects("sandbox");
}
