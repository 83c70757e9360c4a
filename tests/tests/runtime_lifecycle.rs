//! `sandbox --no-vm` lifecycle: create/start/state/kill/delete, exit codes (128+N after a
//! signal), exec into a running container, ps, list, the six hook kinds and --console-socket.

use std::io::{IoSliceMut, Read};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Output;

use sandbox_tests::binaries;
use sandbox_tests::bundle::{leftovers, sandbox, unique, Bundle, StateRoot, BASE};
use sandbox_tests::require;
use serde_json::{json, Value};

/// Longest a test waits for output on a container's terminal.
const PTY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "sandbox failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn state(root: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(sandbox(root, &["state", id]))).expect("state is JSON")
}

fn wait_status(root: &Path, id: &str, want: &str) {
    for _ in 0..2000 {
        if state(root, id)["status"] == want {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("container {id} never became {want}: {}", state(root, id));
}

#[test]
fn create_start_exec_ps_list_kill_delete() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("life");
    b.edit(|c| c["process"]["args"] = json!(["sleep", "1000"]));
    let root = StateRoot::new("life");
    let r = root.path();
    let id = unique("life");
    let _guard = ForceDelete(r.to_path_buf(), id.clone());
    let pid_file = b.path().join("pid");
    ok(sandbox(
        r,
        &[
            "create",
            "-b",
            b.path().to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ],
    ));

    let s = state(r, &id);
    assert_eq!(s["status"], "created");
    assert_eq!(s["id"], id.as_str());
    let pid = s["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    assert_eq!(s["bundle"], b.path().to_str().unwrap());
    // The init is waiting: its command line is still the runtime's, not sleep.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).starts_with("sleep"));

    let list = ok(sandbox(r, &["list", "-q"]));
    assert_eq!(list.trim(), id);

    ok(sandbox(r, &["start", &id]));
    assert_eq!(state(r, &id)["status"], "running");
    let again = sandbox(r, &["start", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is running: cannot start"));

    let no_force = sandbox(r, &["delete", &id]);
    assert!(!no_force.status.success());
    assert!(String::from_utf8_lossy(&no_force.stderr).contains("without --force"));

    let out = sandbox(r, &["exec", &id, "sh", "-c", "echo hello-exec; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-exec\n");

    let out = ok(sandbox(
        r,
        &[
            "exec",
            "-e",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "-u",
            "1000:1000",
            &id,
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; echo $$",
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], &["bar", "/tmp", "1000"]);
    assert_ne!(lines[3], "1", "exec'd process is not the init");

    let process = json!({
        "args": ["sh", "-c", "hostname; grep NoNewPrivs /proc/self/status"],
        "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "noNewPrivileges": true
    });
    let pfile = b.path().join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let out = ok(sandbox(r, &["exec", "-p", pfile.to_str().unwrap(), &id]));
    assert_eq!(out, "runc\nNoNewPrivs:\t1\n");

    ok(sandbox(r, &["exec", "-d", &id, "sleep", "1000"]));
    let pids: Vec<i64> =
        serde_json::from_str(&ok(sandbox(r, &["ps", "--format", "json", &id]))).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks the init {pid}");
    assert_eq!(pids.len(), 2, "init and the detached exec: {pids:?}");
    let table = ok(sandbox(r, &["ps", &id]));
    assert!(table.contains("sleep 1000"), "{table}");

    let listed: Vec<Value> =
        serde_json::from_str(&ok(sandbox(r, &["list", "--format", "json"]))).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "running");

    ok(sandbox(r, &["kill", &id, "KILL"]));
    wait_status(r, &id, "stopped");
    let exec_stopped = sandbox(r, &["exec", &id, "true"]);
    assert!(!exec_stopped.status.success());
    assert!(String::from_utf8_lossy(&exec_stopped.stderr).contains("is stopped: cannot exec"));

    ok(sandbox(r, &["delete", &id]));
    assert!(!r.join(&id).exists());
    let gone = sandbox(r, &["state", &id]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains(&format!("container {id} does not exist"))
    );
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

#[test]
fn delete_force_kills_a_running_container() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("force");
    b.edit(|c| c["process"]["args"] = json!(["sleep", "1000"]));
    let root = StateRoot::new("force");
    let id = unique("force");
    let _guard = ForceDelete(root.path().to_path_buf(), id.clone());
    ok(sandbox(
        root.path(),
        &["run", "-d", "-b", b.path().to_str().unwrap(), &id],
    ));
    let pid = state(root.path(), &id)["pid"].as_i64().unwrap();
    ok(sandbox(root.path(), &["delete", "--force", &id]));
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false);
    assert!(!alive, "init {pid} still alive");
    assert!(!root.path().join(&id).exists());
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

#[test]
fn delete_created_container_without_force() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("created");
    let root = StateRoot::new("created");
    let id = unique("created");
    ok(sandbox(
        root.path(),
        &["create", "-b", b.path().to_str().unwrap(), &id],
    ));
    ok(sandbox(root.path(), &["delete", &id]));
    assert!(!root.path().join(&id).exists());
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

fn run_exit_code(name: &str, edit: impl FnOnce(&mut Value)) -> Option<i32> {
    let b = Bundle::new(name);
    b.edit(edit);
    let root = StateRoot::new(name);
    let out = sandbox(
        root.path(),
        &["run", "-b", b.path().to_str().unwrap(), &unique(name)],
    );
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "run leaves no state"
    );
    out.status.code()
}

#[test]
fn run_returns_the_exit_status() {
    require!(binaries::SANDBOX.path());
    assert_eq!(
        run_exit_code("exit3", |c| c["process"]["args"] =
            json!(["sh", "-c", "exit 3"])),
        Some(3)
    );
    assert_eq!(
        run_exit_code("exit0", |c| c["process"]["args"] = json!(["true"])),
        Some(0)
    );
}

#[test]
fn run_returns_128_plus_signal() {
    require!(binaries::SANDBOX.path());
    let no_pidns = |c: &mut Value, script: &str| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
        c["process"]["args"] = json!(["sh", "-c", script]);
    };
    assert_eq!(
        run_exit_code("sigkill", |c| no_pidns(c, "kill -9 $$")),
        Some(137)
    );
    assert_eq!(
        run_exit_code("sigterm", |c| no_pidns(c, "kill -TERM $$")),
        Some(143)
    );
}

#[test]
fn domainname_is_set() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("domain");
    b.edit(|c| {
        c["domainname"] = json!("example.org");
        c["process"]["args"] = json!(["cat", "/proc/sys/kernel/domainname"]);
    });
    let root = StateRoot::new("domain");
    let out = ok(sandbox(
        root.path(),
        &["run", "-b", b.path().to_str().unwrap(), &unique("domain")],
    ));
    assert_eq!(out, "example.org\n");
}

#[test]
fn all_six_hooks_run_with_the_state() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("hooks");
    let out_dir = b.path().join("hooks-out");
    std::fs::create_dir(&out_dir).unwrap();
    let host = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", out_dir.display())], "timeout": 30});
    let inside = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > /hooks/{name}.json")]});
    b.edit(|c| {
        c["process"]["args"] = json!(["true"]);
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/hooks", "type": "bind", "source": out_dir, "options": ["rbind"]}));
        c["hooks"] = json!({
            "prestart": [host("prestart")],
            "createRuntime": [host("createRuntime")],
            "createContainer": [host("createContainer")],
            "startContainer": [inside("startContainer")],
            "poststart": [host("poststart")],
            "poststop": [host("poststop")],
        });
    });
    let root = StateRoot::new("hooks");
    let id = unique("hooks");
    ok(sandbox(
        root.path(),
        &["run", "-b", b.path().to_str().unwrap(), &id],
    ));
    for (kind, status) in [
        ("prestart", "creating"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text = std::fs::read_to_string(out_dir.join(format!("{kind}.json")))
            .unwrap_or_else(|e| panic!("{kind} hook did not run: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], id.as_str(), "{kind}");
        assert_eq!(v["status"], status, "{kind}");
        assert_eq!(v["bundle"], b.path().to_str().unwrap(), "{kind}");
        if kind != "poststop" {
            assert!(v["pid"].as_i64().unwrap() > 0, "{kind}: {v}");
        }
    }
}

/// Receives one fd sent with SCM_RIGHTS on an accepted console-socket connection.
fn receive_pty(listener: &UnixListener) -> OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the fd was just received and is owned by nobody else in this process.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received on the console socket");
}

/// Reads the pty until `needle` arrived (or the terminal closed); fails after `PTY_LIMIT`.
fn read_until(master: OwnedFd, needle: &str) -> String {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + PTY_LIMIT;
    let mut f = std::fs::File::from(master);
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let wait = PollTimeout::from(u16::try_from(left.as_millis()).unwrap_or(u16::MAX));
        let ready = poll(&mut [PollFd::new(f.as_fd(), PollFlags::POLLIN)], wait).unwrap_or(0);
        assert!(
            ready > 0 || !left.is_zero(),
            "no {needle:?} on the pty within {} s; got {seen:?}",
            PTY_LIMIT.as_secs()
        );
        if ready == 0 {
            continue;
        }
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    seen
}

#[test]
fn console_socket_receives_the_pty() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("tty");
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 33, "width": 101});
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "echo hello-tty; tty; stty size; echo end-of-init; sleep 1000"
        ]);
    });
    let root = StateRoot::new("tty");
    let id = unique("tty");
    let _guard = ForceDelete(root.path().to_path_buf(), id.clone());
    let sock = Path::new(BASE).join(format!("{id}.sock"));
    let listener = UnixListener::bind(&sock).unwrap();
    let waiter = std::thread::spawn(move || read_until(receive_pty(&listener), "end-of-init"));
    ok(sandbox(
        root.path(),
        &[
            "run",
            "-d",
            "--console-socket",
            sock.to_str().unwrap(),
            "-b",
            b.path().to_str().unwrap(),
            &id,
        ],
    ));
    let seen = waiter.join().unwrap();
    assert!(seen.contains("hello-tty"), "{seen:?}");
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    assert!(seen.contains("33 101"), "{seen:?}");

    // exec -t into the same container, through a second console socket.
    let sock2 = Path::new(BASE).join(format!("{id}-exec.sock"));
    let listener2 = UnixListener::bind(&sock2).unwrap();
    let waiter2 = std::thread::spawn(move || read_until(receive_pty(&listener2), "end-of-exec"));
    ok(sandbox(
        root.path(),
        &[
            "exec",
            "-t",
            "-d",
            "--console-socket",
            sock2.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "tty; echo end-of-exec",
        ],
    ));
    let seen2 = waiter2.join().unwrap();
    assert!(seen2.contains("/dev/pts/1"), "{seen2:?}");

    ok(sandbox(root.path(), &["delete", "--force", &id]));
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&sock2);
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

#[test]
fn no_vm_flag_is_accepted_after_the_subcommand() {
    let sandbox_bin = require!(binaries::SANDBOX.path());
    let root = StateRoot::new("flagpos");
    let out = std::process::Command::new(&sandbox_bin)
        .args([
            "list",
            "--root",
            root.path().to_str().unwrap(),
            "--no-vm",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = std::process::Command::new(&sandbox_bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("runc-level isolation"));
}

#[test]
fn joins_namespaces_by_path() {
    require!(binaries::SANDBOX.path());
    let a = Bundle::new("ns-a");
    a.edit(|c| {
        c["hostname"] = json!("shared-uts");
        c["process"]["args"] = json!(["sleep", "1000"]);
    });
    let root = StateRoot::new("ns");
    let id_a = unique("ns-a");
    let _guard = ForceDelete(root.path().to_path_buf(), id_a.clone());
    ok(sandbox(
        root.path(),
        &["run", "-d", "-b", a.path().to_str().unwrap(), &id_a],
    ));
    let pid = state(root.path(), &id_a)["pid"].as_i64().unwrap();

    let b = Bundle::new("ns-b");
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("hostname");
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        for n in ns.iter_mut() {
            if n["type"] == "uts" || n["type"] == "network" || n["type"] == "ipc" {
                n["path"] = json!(format!(
                    "/proc/{pid}/ns/{}",
                    if n["type"] == "network" {
                        "net"
                    } else {
                        n["type"].as_str().unwrap()
                    }
                ));
            }
        }
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "hostname; readlink /proc/self/ns/net; readlink /proc/self/ns/uts"
        ]);
    });
    let out = ok(sandbox(
        root.path(),
        &["run", "-b", b.path().to_str().unwrap(), &unique("ns-b")],
    ));
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    assert_eq!(
        out,
        format!("shared-uts\n{}\n{}\n", net.display(), uts.display())
    );
    ok(sandbox(root.path(), &["delete", "--force", &id_a]));
}

#[test]
fn time_namespace_offsets() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("timens");
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 864000}});
        c["process"]["args"] = json!(["cut", "-d.", "-f1", "/proc/uptime"]);
    });
    let root = StateRoot::new("timens");
    let out = ok(sandbox(
        root.path(),
        &["run", "-b", b.path().to_str().unwrap(), &unique("timens")],
    ));
    let inside: u64 = out.trim().parse().unwrap();
    let host: u64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        inside >= host + 864000 - 5,
        "uptime inside {inside}, host {host}"
    );
}

/// Deletes a container with --force when dropped, so a failing test leaves nothing running.
struct ForceDelete(std::path::PathBuf, String);

impl Drop for ForceDelete {
    fn drop(&mut self) {
        if self.0.join(&self.1).exists() {
            let _ = sandbox(&self.0, &["delete", "--force", &self.1]);
        }
    }
}

#[test]
fn run_in_the_foreground_proxies_a_terminal() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("fg-tty");
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["args"] = json!(["sh", "-c", "tty; echo done; exit 4"]);
    });
    let root = StateRoot::new("fg-tty");
    let out = sandbox(
        root.path(),
        &["run", "-b", b.path().to_str().unwrap(), &unique("fg-tty")],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/dev/pts/0\r\ndone\r\n"
    );
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn run_forwards_signals_to_the_container() {
    use std::io::BufRead;
    let sandbox_bin = require!(binaries::SANDBOX.path());
    let b = Bundle::new("sigfwd");
    b.edit(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
        ]);
    });
    let root = StateRoot::new("sigfwd");
    let id = unique("sigfwd");
    let _guard = ForceDelete(root.path().to_path_buf(), id.clone());
    let mut child = std::process::Command::new(&sandbox_bin)
        .args([
            "--no-vm",
            "--root",
            root.path().to_str().unwrap(),
            "run",
            "-b",
            b.path().to_str().unwrap(),
            &id,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-term");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn delete_of_a_create_that_died_early() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("crashed");
    let root = StateRoot::new("crashed");
    let id = unique("crashed");
    let dir = root.path().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let state = json!({
        "ociVersion": "1.0.2", "id": id, "pid": 0, "status": "creating",
        "bundle": b.path(), "rootfs": b.rootfs(), "created": "2026-01-01T00:00:00.000000000Z", "owner": ""
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    assert_eq!(state_of(root.path(), &id), "creating");
    // pid 0 must not turn into "signal my process group" (which would kill this test).
    ok(sandbox(root.path(), &["delete", &id]));
    assert!(!dir.exists());
}

fn state_of(root: &Path, id: &str) -> String {
    state(root, id)["status"].as_str().unwrap().to_string()
}
