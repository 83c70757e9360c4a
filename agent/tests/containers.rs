//! Containers through the agent on a host run: a busybox rootfs directory stands in for the
//! block device, under the agent's writable overlay; the runtime crate creates the container.
//! Needs root (namespaces, mounts) and a static busybox at /usr/bin/busybox.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use common::client::{ExitStatus, RootfsDevice, StdioSet, StreamKind};
use common::{process_json, TestAgent, ALL, OUT};
use protocol::agent::ContainerStatus;
use sandbox_tests::require;

const BUSYBOX: &str = "/usr/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "hostname", "ls", "true", "seq", "touch", "stty",
];

/// Returns from the test (a recorded skip; a failure under CI) unless this host can run the
/// container tests: root for namespaces and mounts, a static busybox for the rootfs.
macro_rules! require_container_host {
    () => {
        require!(
            nix::unistd::geteuid().is_root(),
            "container tests need root (namespaces, mounts)"
        );
        require!(
            Path::new(BUSYBOX).exists(),
            "no {BUSYBOX} for the container rootfs (cargo xtask setup installs busybox-static)"
        );
    };
}

/// A busybox rootfs directory in `dir`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("image");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

fn spec(args: &[&str]) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
        },
        "root": {"path": "/somewhere/on/the/host", "readonly": false},
        "hostname": "in-container",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ]
        }
    })
    .to_string()
}

fn unique_id(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn rootfs_device(image: &Path) -> RootfsDevice {
    RootfsDevice {
        device: image.display().to_string(),
        ..Default::default()
    }
}

/// Creates a container running `sleep 1000` without stdio streams; returns its id.
fn create_sleeper(agent: &TestAgent, prefix: &str) -> String {
    let image = busybox_rootfs(agent.dir.path());
    let id = unique_id(prefix);
    agent
        .client
        .create_container(
            &id,
            &spec(&["sleep", "1000"]),
            &rootfs_device(&image),
            StdioSet::default(),
            false,
        )
        .unwrap();
    id
}

fn state(agent: &TestAgent, id: &str) -> ContainerStatus {
    agent
        .client
        .container_state(id)
        .unwrap()
        .status
        .enum_value_or_default()
}

#[test]
fn container_runs_in_its_own_namespaces_on_an_overlay_and_is_removed() {
    require_container_host!();
    let agent = TestAgent::start();
    let image = busybox_rootfs(agent.dir.path());
    let id = unique_id("c");
    let script = "echo host=$(hostname) pid=$$; touch /written; ls /; exit 7";
    let pid = agent
        .client
        .create_container(
            &id,
            &spec(&["sh", "-c", script]),
            &rootfs_device(&image),
            OUT,
            false,
        )
        .unwrap();
    assert!(pid > 1);
    assert_eq!(state(&agent, &id), ContainerStatus::CREATED);

    let mut stdout = agent
        .client
        .open_stream(&id, "", StreamKind::Stdout)
        .unwrap();
    agent.client.start_container(&id).unwrap();
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("host=in-container pid=1\n"), "{out:?}");
    assert!(out.contains("written"), "{out:?}");
    let status = agent.client.wait_process(&id, "").unwrap();
    assert_eq!(status, ExitStatus::Exited(7));

    let st = agent.client.container_state(&id).unwrap();
    assert_eq!(st.status.enum_value_or_default(), ContainerStatus::STOPPED);
    assert_eq!(st.exit.exit_code, 7);

    // The write went to the overlay's upper layer, never to the image.
    assert!(!image.join("written").exists());
    agent.client.remove_container(&id, false).unwrap();
    assert!(!agent.path("run/containers").join(&id).exists());
    let err = agent.client.container_state(&id).unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::NOT_FOUND), "{err}");
}

#[test]
fn exec_joins_a_running_container_and_kill_reports_the_signal() {
    require_container_host!();
    let agent = TestAgent::start();
    let id = create_sleeper(&agent, "x");
    agent.client.start_container(&id).unwrap();
    assert_eq!(state(&agent, &id), ContainerStatus::RUNNING);

    // stdin in, stdout out, inside the container's namespaces.
    agent
        .client
        .exec_process(
            &id,
            "e1",
            &process_json(&["/bin/sh", "-c", "read x; echo got:$x; cat /proc/1/cmdline"]),
            ALL,
            false,
        )
        .unwrap();
    let mut stdin = agent
        .client
        .open_stream(&id, "e1", StreamKind::Stdin)
        .unwrap();
    stdin.write_all(b"hello\n").unwrap();
    stdin.close_write().unwrap();
    let mut stdout = agent
        .client
        .open_stream(&id, "e1", StreamKind::Stdout)
        .unwrap();
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"got:hello\nsleep\x001000\x00");
    assert_eq!(
        agent.client.wait_process(&id, "e1").unwrap(),
        ExitStatus::Exited(0)
    );

    let err = agent.client.remove_container(&id, false).unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{err}");

    agent
        .client
        .signal_process(&id, "", libc::SIGKILL, false)
        .unwrap();
    let status = agent.client.wait_process(&id, "").unwrap();
    assert_eq!(status.code(), 137);
    agent.client.remove_container(&id, false).unwrap();
}

#[test]
fn container_with_a_terminal_gets_its_pty() {
    require_container_host!();
    let agent = TestAgent::start();
    let image = busybox_rootfs(agent.dir.path());
    let id = unique_id("t");
    agent
        .client
        .create_container(
            &id,
            &spec(&["sh", "-c", "read x; [ -t 0 ] && echo tty:$x"]),
            &rootfs_device(&image),
            OUT,
            true,
        )
        .unwrap();
    let mut tty = agent.client.open_stream(&id, "", StreamKind::Tty).unwrap();
    agent.client.start_container(&id).unwrap();
    tty.write_all(b"yes\n").unwrap();
    let mut out = Vec::new();
    tty.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("tty:yes"), "{out:?}");
    assert_eq!(
        agent.client.wait_process(&id, "").unwrap(),
        ExitStatus::Exited(0)
    );
    agent.client.remove_container(&id, true).unwrap();
}

#[test]
fn removing_with_force_stops_a_created_container() {
    require_container_host!();
    let agent = TestAgent::start();
    let image = busybox_rootfs(agent.dir.path());
    let id = unique_id("f");
    agent
        .client
        .create_container(
            &id,
            &spec(&["true"]),
            &rootfs_device(&image),
            StdioSet::default(),
            false,
        )
        .unwrap();
    agent.client.remove_container(&id, true).unwrap();
    assert!(!agent.path("run/containers").join(&id).exists());
    assert_eq!(agent.client.stats().unwrap().container_count, 0);
}

#[test]
fn exec_with_a_terminal_sees_resizes() {
    require_container_host!();
    let agent = TestAgent::start();
    let id = create_sleeper(&agent, "r");
    agent.client.start_container(&id).unwrap();
    agent
        .client
        .exec_process(
            &id,
            "tty",
            &process_json(&["/bin/sh", "-c", "read x; stty size; echo $x"]),
            OUT,
            true,
        )
        .unwrap();
    agent.client.resize_tty(&id, "tty", 33, 77).unwrap();
    let mut tty = agent
        .client
        .open_stream(&id, "tty", StreamKind::Tty)
        .unwrap();
    tty.write_all(b"done\n").unwrap();
    let mut out = Vec::new();
    tty.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("33 77"), "{out:?}");
    assert_eq!(
        agent.client.wait_process(&id, "tty").unwrap(),
        ExitStatus::Exited(0)
    );
    agent.client.remove_container(&id, true).unwrap();
}

#[test]
fn a_bad_spec_is_an_invalid_argument_and_leaves_nothing() {
    require_container_host!();
    let agent = TestAgent::start();
    let image = busybox_rootfs(agent.dir.path());
    let id = unique_id("b");
    let err = agent
        .client
        .create_container(&id, &spec(&[]), &rootfs_device(&image), OUT, false)
        .unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{err}");
    assert!(err.to_string().contains("process.args"), "{err}");
    assert!(!agent.path("run/containers").join(&id).exists());
    assert_eq!(agent.client.stats().unwrap().container_count, 0);
}

#[test]
fn init_with_all_streams_gets_stdin_and_keeps_output_order() {
    require_container_host!();
    let agent = TestAgent::start();
    let image = busybox_rootfs(agent.dir.path());
    let id = unique_id("s");
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", "seq 1 100000; cat; echo bye >&2"],
                    "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    });
    agent
        .client
        .create_container(&id, &spec.to_string(), &rootfs_device(&image), ALL, false)
        .unwrap();
    let mut stdin = agent
        .client
        .open_stream(&id, "", StreamKind::Stdin)
        .unwrap();
    let mut stdout = agent
        .client
        .open_stream(&id, "", StreamKind::Stdout)
        .unwrap();
    let mut stderr = agent
        .client
        .open_stream(&id, "", StreamKind::Stderr)
        .unwrap();
    if let Err(e) = agent.client.start_container(&id) {
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        panic!("{e}; stderr {err:?}");
    }
    stdin.write_all(b"from stdin\n").unwrap();
    stdin.close_write().unwrap();
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let expected: String =
        (1..=100000).map(|n| format!("{n}\n")).collect::<String>() + "from stdin\n";
    assert!(out == expected, "stdout differs; stderr: {err:?}");
    assert_eq!(err, "bye\n");
    assert_eq!(
        agent.client.wait_process(&id, "").unwrap(),
        ExitStatus::Exited(0)
    );
    agent.client.remove_container(&id, false).unwrap();
}

#[test]
fn pause_and_update_are_refused_where_they_do_not_apply() {
    require_container_host!();
    let agent = TestAgent::start();
    let id = create_sleeper(&agent, "q");
    let c = &agent.client;
    // Only a running container can be paused.
    let err = c.pause_container(&id).unwrap_err().to_string();
    assert!(err.contains("FAILED_PRECONDITION"), "{err}");
    c.start_container(&id).unwrap();
    let err = c
        .update_container(&id, r#"{"cpu": {"period": 5}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("linux.resources.cpu.period"), "{err}");
    assert!(c.update_container(&id, "[1]").is_err());
    c.signal_process(&id, "", 9, false).unwrap();
    assert_eq!(
        c.wait_process(&id, "").unwrap(),
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    c.remove_container(&id, false).unwrap();
}

#[test]
fn pause_resume_stats_and_update() {
    require_container_host!();
    let agent = TestAgent::start();
    let id = create_sleeper(&agent, "p");
    let c = &agent.client;
    c.start_container(&id).unwrap();
    let no_cgroup = c.container_stats(&id).err();
    require!(
        no_cgroup.is_none(),
        "the container has no cgroup (this host has no usable cgroup v2 hierarchy): {}",
        no_cgroup.map(|e| e.to_string()).unwrap_or_default()
    );
    c.pause_container(&id).unwrap();
    assert_eq!(state(&agent, &id), ContainerStatus::PAUSED);
    c.resume_container(&id).unwrap();
    assert_eq!(state(&agent, &id), ContainerStatus::RUNNING);
    let stats = c.container_stats(&id).unwrap();
    assert!(stats.pids.current >= 1, "{stats:?}");
    // A limit: applied on a pure cgroup v2 host, refused naming the field on a hybrid one.
    match c.update_container(&id, r#"{"pids": {"limit": 20}}"#) {
        Ok(()) => assert_eq!(c.container_stats(&id).unwrap().pids.limit, 20),
        Err(e) => assert!(e.to_string().contains("linux.resources.pids"), "{e}"),
    }
    c.remove_container(&id, true).unwrap();
}
