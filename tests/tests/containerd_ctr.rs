//! End to end: Debian's containerd 1.6 runs busybox through `containerd-shim-sandbox-v2`
//! (`ctr run --runtime io.containerd.sandbox.v2`): output and exit code, exec, pause/resume,
//! metrics, kill, a terminal,
//! and `kill -9` of the shim leaving nothing behind once containerd has cleaned up.
//! Needs real KVM: run in the lab (`cargo xtask test`). Binaries: the shim from the target dir
//! (or `$SANDBOX_SHIM_BIN`), `sandbox-vmm` (`$SANDBOX_VMM` or `<target>/release`), the guest
//! from `target/guest`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandbox_tests::binaries;
use sandbox_tests::containerd::{self, procs, Containerd, Ctr};
use sandbox_tests::image::BUSYBOX;
use sandbox_tests::require;

const NS: &str = "sbx-ctr";
const RUNTIME: &str = "io.containerd.sandbox.v2";
/// Longest containerd's cleanup after a dead shim may take.
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);
/// Longest a terminal session may take.
const TTY_LIMIT: Duration = Duration::from_secs(240);

/// A private containerd; fails when our shim or VMM is not built (the test then skips, or
/// fails under CI: `require!(daemon(..))`).
fn daemon(name: &str) -> Result<Containerd, binaries::Error> {
    binaries::paths(&[binaries::SHIM, binaries::VMM])?;
    Ok(containerd::start(name, &[NS]).unwrap_or_else(|e| panic!("starting containerd: {e}")))
}

/// The shim's state root of our namespace (one directory per task while it lives).
fn shim_state(d: &Containerd) -> PathBuf {
    d.dir().join("shim").join(NS)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn vmm_pids(d: &Containerd) -> Vec<u32> {
    d.processes_under_dir()
        .into_iter()
        .filter(|p| {
            procs::argv(*p)
                .first()
                .is_some_and(|a| a.ends_with("sandbox-vmm"))
        })
        .collect()
}

/// Nothing of ours is left: no task, no VMM, no shim, no state, no shim socket, no mount.
fn assert_nothing_left(d: &Containerd, ctr: &Ctr) {
    let begin = Instant::now();
    loop {
        let left = (
            vmm_pids(d),
            d.shim_pids(),
            entries(&shim_state(d)),
            d.mounts(),
        );
        if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() && left.3.is_empty() {
            break;
        }
        assert!(
            begin.elapsed() < CLEANUP_LIMIT,
            "left behind (vmm pids, shim pids, shim state, mounts): {left:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tasks = ctr.tasks().expect("ctr tasks ls");
    assert!(tasks.is_empty(), "tasks left: {tasks:?}");
}

fn run(ctr: &Ctr, args: &[&str]) -> containerd::command::Output {
    ctr.run(args)
        .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
}

/// `ctr run -d` of task `id`: busybox sleeping in its own VM.
fn start_sleeping_task(d: &Containerd, ctr: &Ctr, id: &str) {
    let out = run(
        ctr,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            BUSYBOX,
            id,
            "sleep",
            "1000",
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    assert_eq!(vmm_pids(d).len(), 1, "one VM for the task");
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn ctr_run_returns_output_and_exit_code() {
    let d = require!(daemon("ctr-run"));
    let ctr = d.ctr(NS);
    let out = run(
        &ctr,
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            BUSYBOX,
            "ctr-run-1",
            "sh",
            "-c",
            // The last line is written right before the exit: it must not be lost.
            "echo hello from the microVM; echo to-stderr >&2; seq 1 2000 | tail -n 1; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", d.log());
    assert!(out.stdout.contains("hello from the microVM"), "{out:?}");
    assert!(out.stdout.trim_end().ends_with("2000"), "{out:?}");
    assert!(out.stderr.contains("to-stderr"), "{out:?}");
    assert_nothing_left(&d, &ctr);
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn ctr_exec_kill_and_delete() {
    let d = require!(daemon("ctr-exec"));
    let ctr = d.ctr(NS);
    let id = "ctr-exec-1";
    let events = Events::follow(&ctr);
    start_sleeping_task(&d, &ctr, id);

    let out = run(
        &ctr,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo exec-out; cat /proc/1/cmdline | tr '\\0' ' '; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}\n{}", d.log());
    assert!(out.stdout.contains("exec-out"), "{out:?}");
    assert!(out.stdout.contains("sleep 1000"), "{out:?}");

    let ps = run(&ctr, &["tasks", "ps", id]);
    assert!(ps.status.success(), "{ps:?}");

    let status = |want: &str| {
        let ls = run(&ctr, &["tasks", "ls"]);
        assert!(
            ls.stdout
                .lines()
                .any(|l| l.contains(id) && l.contains(want)),
            "want {want}: {ls:?}"
        );
    };
    let out = run(&ctr, &["tasks", "pause", id]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    status("PAUSED");
    let out = run(&ctr, &["tasks", "resume", id]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    status("RUNNING");
    let metrics = run(&ctr, &["tasks", "metrics", id]);
    assert!(metrics.status.success(), "{metrics:?}\n{}", d.log());
    assert!(metrics.stdout.contains("pids"), "{metrics:?}");

    let out = run(&ctr, &["tasks", "kill", "--signal", "SIGKILL", id]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let begin = Instant::now();
    loop {
        let ls = run(&ctr, &["tasks", "ls"]);
        if ls
            .stdout
            .lines()
            .any(|l| l.contains(id) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(
            begin.elapsed() < CLEANUP_LIMIT,
            "task never stopped: {ls:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A second kill of a finished task fails instead of hanging.
    let again = run(&ctr, &["tasks", "kill", "--signal", "SIGKILL", id]);
    assert!(!again.status.success(), "{again:?}");
    let out = run(&ctr, &["tasks", "delete", id]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let out = run(&ctr, &["containers", "delete", id]);
    assert!(out.status.success(), "{out:?}");
    assert_nothing_left(&d, &ctr);

    // The shim's events reached containerd in lifecycle order.
    let topics = events.topics(id, "/tasks/delete");
    let first = |t: &str| {
        topics
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("no {t} event in {topics:?}"))
    };
    let order = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
    ];
    for pair in order.windows(2) {
        assert!(
            first(pair[0]) < first(pair[1]),
            "{pair:?} out of order: {topics:?}"
        );
    }
    let last_exit = topics.iter().rposition(|x| x == "/tasks/exit").unwrap();
    assert!(first("/tasks/delete") > last_exit, "{topics:?}");
}

/// `ctr events` running in the background, its lines collected.
struct Events {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Events {
    fn follow(ctr: &Ctr) -> Events {
        let mut child = ctr
            .command(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // Let the subscription start before anything happens.
        std::thread::sleep(Duration::from_secs(1));
        Events { child, lines }
    }

    /// The `/tasks/...` topics about container `id`, waiting (bounded) until `last` arrived.
    fn topics(&self, id: &str, last: &str) -> Vec<String> {
        let begin = Instant::now();
        loop {
            let topics: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(id) && l.contains(NS))
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
                .map(str::to_string)
                .collect();
            if topics.iter().any(|t| t == last) || begin.elapsed() > Duration::from_secs(20) {
                return topics;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn ctr_run_with_a_terminal() {
    let d = require!(daemon("ctr-tty"));
    let ctr = d.ctr(NS);
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
    let mut cmd = ctr.command(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        "ctr-tty-1",
        "sh",
    ]);
    cmd.stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave));
    let mut child = cmd.spawn().expect("spawn ctr run -t");
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    // SAFETY: fcntl on the pty master we own; O_NONBLOCK only changes how reads return.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    master
        .write_all(b"tty -s && echo is-a-$((6*7))-tty; exit 7\n")
        .unwrap();
    let begin = Instant::now();
    let mut seen = Vec::new();
    let status = loop {
        let mut buf = [0u8; 4096];
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if begin.elapsed() > TTY_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ctr run -t hung; terminal so far: {}\n{}",
                String::from_utf8_lossy(&seen),
                d.log()
            );
        }
    };
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("is-a-42-tty"),
        "terminal: {text}\n{}",
        d.log()
    );
    assert_eq!(status.code(), Some(7), "terminal: {text}");
    assert_nothing_left(&d, &ctr);
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn killing_the_shim_leaves_nothing_behind() {
    let d = require!(daemon("ctr-kill9"));
    let ctr = d.ctr(NS);
    let id = "ctr-kill9-1";
    start_sleeping_task(&d, &ctr, id);
    assert_eq!(entries(&shim_state(&d)), vec![id.to_string()]);
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd sees the shim's connection drop and runs `containerd-shim-sandbox-v2 delete`.
    let begin = Instant::now();
    while !(vmm_pids(&d).is_empty() && entries(&shim_state(&d)).is_empty()) {
        assert!(
            begin.elapsed() < CLEANUP_LIMIT,
            "after kill -9 of the shim: VMMs {:?}, state {:?}\n{}",
            vmm_pids(&d),
            entries(&shim_state(&d)),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The task is gone from containerd; the container record is ours to remove.
    let begin = Instant::now();
    while !ctr.tasks().expect("ctr tasks ls").is_empty() {
        assert!(begin.elapsed() < CLEANUP_LIMIT, "the task stays listed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run(&ctr, &["containers", "delete", id]);
    assert!(out.status.success(), "{out:?}");
    assert_nothing_left(&d, &ctr);
}
