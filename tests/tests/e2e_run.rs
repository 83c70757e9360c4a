//! End to end: `sandbox` (microVM backend) runs busybox bundles in microVMs; output, exit codes,
//! stdin, tty, exec, ps, kill, state, delete, cleanup. Needs real KVM: run in the lab.
//!
//! Binaries: `$SANDBOX_BIN` / `$SANDBOX_VMM` (`cargo xtask test` builds and names them), else
//! the target dir's newest build (`sandbox_tests::binaries`); the guest from `target/guest`
//! (`cargo xtask setup`).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sandbox_tests::bundle::{unique, Bundle};
use sandbox_tests::{artifacts, binaries, require};
use serde_json::{json, Value};

/// Longest a single `sandbox` command may take before the test calls it hung.
const HANG_LIMIT: Duration = Duration::from_secs(180);
/// Longest a container may take to reach the status a test waits for.
const STATUS_LIMIT: Duration = Duration::from_secs(240);

/// A private state root and image cache; checks on drop that nothing is left.
struct Env {
    root: PathBuf,
    cache: PathBuf,
    sandbox: PathBuf,
    vmm: PathBuf,
}

impl Env {
    /// Fails when the `sandbox` CLI or the VMM is not built (the test then skips, or fails
    /// under CI: `require!(Env::new(..))`).
    fn new(name: &str) -> Result<Env, binaries::Error> {
        let base = Path::new("/run").join(unique(&format!("e2e-{name}")));
        Ok(Env {
            root: base.join("root"),
            cache: base.join("images"),
            sandbox: binaries::SANDBOX.path()?,
            vmm: binaries::VMM.path()?,
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.sandbox);
        c.arg("--root")
            .arg(&self.root)
            .env("SANDBOX_VMM", &self.vmm)
            .env("SANDBOX_KERNEL", artifacts::vmlinux().expect("vmlinux"))
            .env("SANDBOX_ROOTFS", artifacts::rootfs().expect("rootfs"))
            .env("SANDBOX_IMAGE_CACHE", &self.cache)
            .stdin(Stdio::null());
        c
    }

    /// `sandbox ARGS` to completion, stdin closed. A command still running after
    /// `HANG_LIMIT` is killed and fails the test (a hang guard, not a timing assertion).
    fn sandbox(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sandbox");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        let err_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.read_to_end(&mut v);
            v
        });
        let begin = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if begin.elapsed() > HANG_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                let err = err_thread.join().unwrap();
                panic!(
                    "sandbox {args:?} hung; stderr: {}",
                    String::from_utf8_lossy(&err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: out_thread.join().unwrap(),
            stderr: err_thread.join().unwrap(),
        }
    }

    /// `sandbox ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.sandbox(args);
        assert!(out.status.success(), "sandbox {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }

    /// Polls `state` until the container exists with status `want`; fails if `cli` (the
    /// command running the container) ends first, or after `STATUS_LIMIT`.
    fn wait_status(&self, id: &str, want: &str, mut cli: Option<&mut Child>) -> Value {
        let begin = std::time::Instant::now();
        let mut last = String::new();
        loop {
            assert!(
                begin.elapsed() < STATUS_LIMIT,
                "container {id} did not become {want} within {} s; last state: {last}",
                STATUS_LIMIT.as_secs()
            );
            if let Some(cli) = cli.as_mut() {
                if let Some(status) = cli.try_wait().unwrap() {
                    let mut stderr = String::new();
                    if let Some(mut e) = cli.stderr.take() {
                        let _ = e.read_to_string(&mut stderr);
                    }
                    panic!("sandbox run {id} ended ({status}) before {id} was {want}: {stderr}");
                }
            }
            let out = self.sandbox(&["state", id]);
            if out.status.success() {
                let s: Value = serde_json::from_slice(&out.stdout).expect("state is JSON");
                if s["status"] == want {
                    return s;
                }
                last = s.to_string();
            } else {
                last = show(&out);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn list_ids(&self) -> Vec<String> {
        self.ok(&["list", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn images(&self) -> Vec<String> {
        fs::read_dir(&self.cache)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing left: no container state, no image.
    fn assert_clean(&self) {
        assert_eq!(self.list_ids(), Vec::<String>::new(), "containers left");
        let left: Vec<_> = fs::read_dir(&self.root)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "state left: {left:?}");
        assert_eq!(self.images(), Vec::<String>::new(), "images left");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.list_ids_quiet() {
            let _ = self.sandbox(&["delete", "--force", &id]);
        }
        let _ = fs::remove_dir_all(self.root.parent().unwrap());
    }
}

impl Env {
    fn list_ids_quiet(&self) -> Vec<String> {
        let out = self.sandbox(&["list", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A busybox bundle running `sh -c SCRIPT`.
fn bundle(name: &str, script: &str) -> Bundle {
    let b = Bundle::new(name);
    b.edit(|c| c["process"]["args"] = json!(["sh", "-c", script]));
    b
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn vmm_alive(pid: i64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn run_returns_output_and_exit_code_and_removes_everything() {
    let env = require!(Env::new("run"));
    let b = bundle("e2e-run", "echo out; echo err >&2; exit 7");
    let out = env.sandbox(&["run", path_str(b.path())]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    env.assert_clean();
}

/// `Cached:` of a /proc/meminfo text, KiB.
fn cached_kib(meminfo: &str) -> i64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Cached:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no Cached: line in {meminfo}"))
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn the_container_image_is_mapped_with_dax_not_read_into_guest_ram() {
    // The image is a virtio-pmem device mounted with DAX: reading all of busybox (about 2 MB)
    // leaves the guest's page cache as it was. Through virtio-blk, or with an image whose file
    // tails are inlined (no DAX for such files), the whole file would land in it.
    let env = require!(Env::new("dax"));
    let b = bundle(
        "e2e-dax",
        "cat /proc/meminfo; cat /bin/busybox > /dev/null; echo ---; cat /proc/meminfo; \
         wc -c < /bin/busybox",
    );
    let out = env.sandbox(&["run", path_str(b.path())]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (before, after) = text.split_once("---").expect("two meminfo reads");
    let size: i64 = after.lines().last().unwrap().trim().parse().unwrap();
    assert!(size > 1 << 20, "busybox is {size} bytes: {text}");
    let grew = cached_kib(after) - cached_kib(before);
    assert!(
        grew < 512,
        "reading {size} bytes of the image added {grew} KiB to the guest page cache"
    );
    env.assert_clean();
}

/// Resident KiB of the mappings of `pid` whose file name ends with `suffix`.
fn mapped_rss_kib(pid: i64, suffix: &str) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut counting = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.contains('-') && !w.ends_with(':'))
        {
            counting = words.len() > 5 && words[5].ends_with(suffix);
        } else if counting && words.first() == Some(&"Rss:") {
            kib += words[1].parse::<u64>().unwrap();
        }
    }
    kib
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn an_idle_detached_sandbox_is_trimmed_and_keeps_working() {
    // The VMM unmaps the pages the guest read while starting 1 s after a detached start: the
    // agent and busybox pages (the root and container images, both erofs on virtio-pmem) leave
    // its address space, and the guest maps again what it touches next.
    let env = require!(Env::new("trim"));
    let b = bundle("e2e-trim", "exec sleep 1000");
    env.ok(&["run", "-d", "-b", path_str(b.path()), "trim"]);
    let vmm = env.state("trim")["pid"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut rss = u64::MAX;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        rss = mapped_rss_kib(vmm, ".erofs");
        if rss < 512 {
            break;
        }
    }
    assert!(
        rss < 512,
        "the idle guest still maps {rss} KiB of its images"
    );
    // Everything the guest needs comes back: the agent answers, busybox runs.
    assert_eq!(
        env.ok(&["exec", "trim", "echo", "after", "trim"]),
        "after trim\n"
    );
    assert!(mapped_rss_kib(vmm, ".erofs") > 0);
    env.ok(&["delete", "--force", "trim"]);
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn container_sees_the_guest_kernel_and_nothing_of_the_host() {
    let env = require!(Env::new("isolation"));
    let marker = Path::new("/var/tmp").join(unique("e2e-host-marker"));
    fs::write(&marker, "host").unwrap();
    let host_sleep = Command::new("sleep").arg("4321").spawn().unwrap();
    let script = format!(
        "uname -r; cat /proc/cmdline; test -e {m} && echo marker-visible || echo marker-hidden; \
         ps -o pid,args; ls /proc | grep -c '^[0-9]'",
        m = marker.display()
    );
    let b = bundle("e2e-iso", &script);
    let out = env.sandbox(&["run", "--bundle", path_str(b.path()), "iso"]);
    let mut host_sleep = host_sleep;
    let _ = host_sleep.kill();
    let _ = host_sleep.wait();
    let _ = fs::remove_file(&marker);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let guest_kernel = lines.next().unwrap();
    let host_kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest_kernel, host_kernel.trim(), "same kernel as the host");
    assert!(lines.next().unwrap().contains("virtio_mmio"), "{text}");
    assert!(text.contains("marker-hidden"), "{text}");
    assert!(!text.contains("4321"), "a host process is visible: {text}");
    let procs: usize = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(procs < 10, "{procs} processes visible: {text}");
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn guest_ram_is_the_default_plus_the_container_memory_limit() {
    let env = require!(Env::new("memsize"));
    let mem_total_mib = |limit: Option<u64>| {
        let b = bundle("e2e-memsize", "grep MemTotal /proc/meminfo");
        if let Some(bytes) = limit {
            b.edit(|c| c["linux"]["resources"]["memory"] = json!({ "limit": bytes }));
        }
        let out = env.sandbox(&["run", "--bundle", path_str(b.path()), "memsize"]);
        assert!(out.status.success(), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let kib: u64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib / 1024
    };
    // MemTotal is guest RAM less what the kernel reserved for itself (about 12 MiB).
    let default = mem_total_mib(None);
    assert!(
        (96..128).contains(&default),
        "default guest: MemTotal {default} MiB"
    );
    let limited = mem_total_mib(Some(200 << 20));
    assert!(
        (default + 195..default + 205).contains(&limited),
        "200 MiB limit: MemTotal {limited} MiB (default {default})"
    );
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn stdin_reaches_the_container_and_ends_with_eof() {
    let env = require!(Env::new("stdin"));
    let b = bundle("e2e-stdin", "cat; echo end");
    let input: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut child = env
        .cmd()
        .args(["run", path_str(b.path())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let mut want = input;
    want.extend_from_slice(b"end\n");
    assert!(
        out.stdout == want,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn large_output_arrives_intact_and_in_order() {
    // seq 1 13000000: 13 M lines, 105.9 MB.
    const LINES: u64 = 13_000_000;
    let env = require!(Env::new("large"));
    let b = bundle("e2e-large", &format!("seq 1 {LINES}"));
    let mut child = env
        .cmd()
        .args(["run", path_str(b.path())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let mut expected = 1u64;
    let mut bytes = 0u64;
    for line in reader.lines() {
        let line = line.unwrap();
        bytes += line.len() as u64 + 1;
        assert_eq!(line, expected.to_string(), "line {expected} out of order");
        expected += 1;
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(expected - 1, LINES);
    assert!(bytes > 100_000_000, "{bytes} bytes");
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn lifecycle_create_start_exec_ps_kill_delete_with_state_transitions() {
    let env = require!(Env::new("lifecycle"));
    let b = bundle("e2e-life", "exec sleep 1000");
    let pid_file = env.root.parent().unwrap().join("pid");
    fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
    env.ok(&[
        "create",
        "--bundle",
        path_str(b.path()),
        "--pid-file",
        path_str(&pid_file),
        "life",
    ]);
    let s = env.state("life");
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], "life");
    assert_eq!(
        s["bundle"].as_str().unwrap(),
        fs::canonicalize(b.path()).unwrap().to_str().unwrap()
    );
    let vmm = s["pid"].as_i64().unwrap();
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), vmm.to_string());
    assert!(vmm_alive(vmm));
    assert_eq!(env.list_ids(), ["life"]);

    env.ok(&["start", "life"]);
    assert_eq!(env.state("life")["status"], "running");

    // exec: output, exit code, stdin, 128+N after a signal.
    assert_eq!(env.ok(&["exec", "life", "echo", "hi"]), "hi\n");
    let out = env.sandbox(&["exec", "life", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let out = env.sandbox(&["exec", "life", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", show(&out));
    let mut child = env
        .cmd()
        .args(["exec", "life", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED\n");
    // exec -p process.json
    let proc_json = env.root.parent().unwrap().join("process.json");
    fs::write(
        &proc_json,
        json!({"args": ["sh", "-c", "echo $GREETING"], "env": ["GREETING=from-json"], "cwd": "/"})
            .to_string(),
    )
    .unwrap();
    assert_eq!(
        env.ok(&["exec", "-p", path_str(&proc_json), "life"]),
        "from-json\n"
    );

    // ps: the init is there.
    let ps = env.ok(&["ps", "life"]);
    assert!(ps.contains("sleep 1000"), "{ps}");
    let pids: Vec<u32> = serde_json::from_str(&env.ok(&["ps", "-f", "json", "life"])).unwrap();
    assert!(!pids.is_empty());

    // delete refuses a running container.
    let out = env.sandbox(&["delete", "life"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("running"));

    env.ok(&["kill", "life", "KILL"]);
    env.wait_status("life", "stopped", None);
    env.ok(&["delete", "life"]);
    assert!(!vmm_alive(vmm), "VMM {vmm} still runs");
    let out = env.sandbox(&["state", "life"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn foreground_run_killed_from_outside_exits_137() {
    let env = require!(Env::new("kill"));
    let b = bundle("e2e-kill", "echo started; exec sleep 1000");
    let mut child = env
        .cmd()
        .args(["run", "--bundle", path_str(b.path()), "victim"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_status("victim", "running", Some(&mut child));
    env.ok(&["kill", "victim", "SIGKILL"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn two_sandboxes_at_once_then_list_is_empty() {
    let env = require!(Env::new("two"));
    // Each waits for a line on stdin, so both are running together.
    let b1 = bundle("e2e-two-a", "read x; echo one $x; exit 1");
    let b2 = bundle("e2e-two-b", "read x; echo two $x; exit 2");
    let spawn = |b: &Bundle, id: &str| -> Child {
        env.cmd()
            .args(["run", "--bundle", path_str(b.path()), id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut c1 = spawn(&b1, "one");
    let mut c2 = spawn(&b2, "two");
    env.wait_status("one", "running", Some(&mut c1));
    env.wait_status("two", "running", Some(&mut c2));
    assert_eq!(env.list_ids(), ["one", "two"]);
    let s1 = env.state("one");
    let s2 = env.state("two");
    assert_ne!(s1["pid"], s2["pid"], "one VMM each");
    for c in [&mut c1, &mut c2] {
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let o1 = c1.wait_with_output().unwrap();
    let o2 = c2.wait_with_output().unwrap();
    assert_eq!(o1.status.code(), Some(1), "{}", show(&o1));
    assert_eq!(o2.status.code(), Some(2), "{}", show(&o2));
    assert_eq!(String::from_utf8_lossy(&o1.stdout), "one go\n");
    assert_eq!(String::from_utf8_lossy(&o2.stdout), "two go\n");
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn kill_9_of_the_cli_then_delete_force_leaves_nothing() {
    let env = require!(Env::new("orphan"));
    let b = bundle("e2e-orphan", "exec sleep 1000");
    let mut cli = env
        .cmd()
        .args(["run", "--bundle", path_str(b.path()), "orphan"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let s = env.wait_status("orphan", "running", Some(&mut cli));
    let vmm = s["pid"].as_i64().unwrap();
    cli.kill().unwrap();
    cli.wait().unwrap();
    assert!(vmm_alive(vmm), "the VMM should outlive the CLI");
    let dir = env.root.join("orphan");
    assert!(dir.join("vsock.sock").exists());
    assert_eq!(env.images().len(), 2, "{:?}", env.images());
    env.ok(&["delete", "--force", "orphan"]);
    assert!(!vmm_alive(vmm), "VMM {vmm} still runs");
    assert!(!dir.exists(), "{} left", dir.display());
    env.assert_clean();
    // Deleting again with --force is not an error (runc's behaviour).
    env.ok(&["delete", "--force", "orphan"]);
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn tty_reports_its_size_and_follows_resizes() {
    use nix::pty::{openpty, Winsize};
    let env = require!(Env::new("tty"));
    let b = bundle("e2e-tty", "stty size; while read x; do stty size; done");
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let size = |rows, cols| Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size(20, 70)), None).unwrap();
    let slave = |pty: &OwnedFd| Stdio::from(pty.try_clone().unwrap());
    let mut child = env
        .cmd()
        .args(["run", path_str(b.path())])
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap();
    drop(pty.slave);
    // A stalled terminal must fail the test, not hang the lab run: after the limit the CLI
    // is killed, its side of the pty closes and the reads below see the end.
    let cli = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            eprintln!("tty test: no progress in 120 s, killing the CLI");
            let _ = nix::sys::signal::kill(cli, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let mut master = fs::File::from(pty.master);
    let mut seen = String::new();
    let read_until = |master: &mut fs::File, want: &str, seen: &mut String| {
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let n = master.read(&mut buf).unwrap_or(0);
            assert!(n > 0, "tty closed before {want:?}; got {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until(&mut master, "20 70", &mut seen);
    let ws = size(30, 90);
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer; the fd is the open master.
    let rc = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    // Each line makes the shell print its size again, until the resize has arrived.
    let mut buf = [0u8; 4096];
    while !seen.contains("30 90") {
        master.write_all(b"\r").unwrap();
        let n = master.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "tty closed before the resize; got {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // EOF ends the loop and the container.
    master.write_all(&[4]).unwrap();
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    assert_eq!(status.code(), Some(0), "{seen}");
    env.assert_clean();
}

/// Reads lines of `from` into a channel, so the test can wait for them with a deadline.
fn line_channel(from: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Every line that arrives within `wait`.
fn lines_within(rx: &std::sync::mpsc::Receiver<String>, wait: Duration) -> Vec<String> {
    let end = std::time::Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(_) => break,
        }
    }
    out
}

/// The `data` object of `sandbox events --stats ID`.
fn stats_of(env: &Env, id: &str) -> Value {
    let line = env.ok(&["events", "--stats", id]);
    let v: Value = serde_json::from_str(line.trim()).expect("events --stats prints JSON");
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("stats"), Some(id)),
        "{v}"
    );
    v["data"].clone()
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn pause_resume_stats_and_update_of_a_running_container() {
    let env = require!(Env::new("pause"));
    let b = bundle(
        "e2e-pause",
        "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done",
    );
    // A cgroup mount (the spec has a cgroup namespace), so the container reads its own
    // memory.max.
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
        }));
    });
    let mut child = env
        .cmd()
        .args(["run", "--bundle", path_str(b.path()), "counter"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    env.wait_status("counter", "running", Some(&mut child));
    let counting = lines_within(&lines, Duration::from_secs(3));
    assert!(counting.len() >= 3, "not counting: {counting:?}");

    env.ok(&["pause", "counter"]);
    assert_eq!(env.state("counter")["status"], "paused");
    // What was in flight when the freezer closed may still arrive; then nothing.
    let _ = lines_within(&lines, Duration::from_secs(1));
    let frozen = lines_within(&lines, Duration::from_secs(3));
    assert!(frozen.is_empty(), "counted while paused: {frozen:?}");
    let out = env.sandbox(&["delete", "counter"]);
    assert!(
        !out.status.success(),
        "a paused container was deleted: {}",
        show(&out)
    );

    env.ok(&["resume", "counter"]);
    assert_eq!(env.state("counter")["status"], "running");
    let resumed = lines_within(&lines, Duration::from_secs(3));
    assert!(resumed.len() >= 3, "not counting after resume: {resumed:?}");
    let out = env.sandbox(&["resume", "counter"]);
    assert!(
        !out.status.success(),
        "resume of a running container: {}",
        show(&out)
    );

    // events --stats: runc's JSON with the guest's figures.
    let data = stats_of(&env, "counter");
    let usage = data["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    assert!(usage > 0, "no memory usage: {data}");
    assert!(data["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{data}");
    assert!(
        data["cpu"]["usage"]["total"].as_u64().unwrap_or(0) > 0,
        "{data}"
    );

    // update: limits reach the guest's cgroup.
    env.ok(&[
        "update",
        "--memory",
        "48m",
        "--pids-limit",
        "50",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        "counter",
    ]);
    let inside = env.ok(&[
        "exec",
        "counter",
        "cat",
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/pids.max",
        "/sys/fs/cgroup/cpu.max",
    ]);
    assert_eq!(inside, format!("{}\n50\n50000 100000\n", 48 << 20));
    let data = stats_of(&env, "counter");
    assert_eq!(data["memory"]["usage"]["limit"], 48 << 20, "{data}");
    assert_eq!(data["pids"]["limit"], 50, "{data}");
    let out = env.sandbox(&["update", "--memory", "lots", "counter"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--memory"),
        "{}",
        show(&out)
    );

    env.ok(&["kill", "counter", "KILL"]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    env.assert_clean();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn a_container_over_its_memory_limit_yields_an_oom_event() {
    let env = require!(Env::new("oom"));
    // tail keeps a line that never ends: it grows until the limit kills it.
    let b = bundle("e2e-oom", "sleep 1; exec tail /dev/zero");
    b.edit(|c| c["linux"]["resources"]["memory"] = json!({"limit": 24 << 20}));
    env.ok(&["run", "--detach", "--bundle", path_str(b.path()), "hog"]);
    let mut events = env
        .cmd()
        .args(["events", "--interval", "1s", "hog"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(events.stdout.take().unwrap());
    let begin = std::time::Instant::now();
    let mut seen = Vec::new();
    let oom = loop {
        if begin.elapsed() > Duration::from_secs(90) {
            break false;
        }
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let v: Value = serde_json::from_str(&l).expect("events prints JSON lines");
                if v["type"] == "oom" {
                    assert_eq!(v["id"], "hog");
                    break true;
                }
                seen.push(l);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break false,
        }
    };
    let _ = events.kill();
    let _ = events.wait();
    assert!(oom, "no oom event; events printed: {seen:?}");
    env.wait_status("hog", "stopped", None);
    let data = stats_of(&env, "hog");
    assert!(
        data["memory"]["usage"]["failcnt"].as_u64().unwrap_or(0) >= 1,
        "memory.events max not counted: {data}"
    );
    env.ok(&["delete", "hog"]);
    env.assert_clean();
}

/// Processes of this host whose command line contains every word of `words`.
fn host_processes_with(words: &[&str]) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| words.iter().all(|w| c.contains(w)))
        .collect()
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn create_with_console_socket_hands_over_a_pty_that_carries_the_container_terminal() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;

    let env = require!(Env::new("console"));
    let b = bundle(
        "e2e-console",
        "echo hello-tty; while read x; do echo got-$x; stty size; done",
    );
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let dir = env.root.parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // A terminal without a socket is refused for a detached container, as runc does.
    let out = env.sandbox(&["create", "--bundle", path_str(b.path()), "nosock"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--console-socket"));

    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut name = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        // SAFETY: SCM_RIGHTS gave us this new descriptor; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd.expect("a descriptor in the message")) }
    });
    env.ok(&[
        "create",
        "--console-socket",
        path_str(&sock),
        "--bundle",
        path_str(b.path()),
        "tty",
    ]);
    let master = receiver.join().unwrap();
    assert!(
        nix::unistd::isatty(master.as_raw_fd()).unwrap(),
        "not a pty"
    );
    env.ok(&["start", "tty"]);
    let mut master = fs::File::from(master);
    let chunks = {
        let mut reader = master.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx
                            .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        rx
    };
    let master_raw = master.as_raw_fd();
    let mut seen = String::new();
    // Waits for `want`; with `poke`, writes it every second (each line makes the shell
    // print the terminal size again, until a resize has arrived).
    let mut expect = |want: &str, poke: Option<&[u8]>, seen: &mut String| {
        let end = std::time::Instant::now() + Duration::from_secs(90);
        while !seen.contains(want) {
            assert!(
                std::time::Instant::now() < end,
                "no {want:?} on the pty; got {seen:?}"
            );
            if let Some(p) = poke {
                master.write_all(p).unwrap();
            }
            match chunks.recv_timeout(Duration::from_secs(1)) {
                Ok(s) => seen.push_str(&s),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => panic!("pty ended before {want:?}; got {seen:?}"),
            }
        }
    };
    expect("hello-tty", None, &mut seen);
    assert_eq!(env.state("tty")["status"], "running");
    // Sizes set on the master reach the guest's terminal.
    for (rows, cols) in [(25u16, 81u16), (40, 100)] {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer; the fd is the open master.
        let rc = unsafe { libc::ioctl(master_raw, libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
        expect(&format!("{rows} {cols}"), Some(b"abc\r"), &mut seen);
    }
    assert!(seen.contains("got-abc"), "{seen}");
    // EOF (^D) ends the loop and the container.
    master.write_all(&[4]).unwrap();
    env.wait_status("tty", "stopped", None);
    drop(master);
    env.ok(&["delete", "tty"]);
    // The relay ends with the container's terminal.
    let begin = std::time::Instant::now();
    while !host_processes_with(&["tty-relay", "tty"]).is_empty() {
        assert!(
            begin.elapsed() < Duration::from_secs(10),
            "relay left: {:?}",
            host_processes_with(&["tty-relay", "tty"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.assert_clean();
}
