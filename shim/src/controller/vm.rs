//! The microVM of one container: `/dev/kvm` checks, spawning `sandbox-vmm` (rootfs image as a
//! read-only virtio-pmem, hybrid vsock, serial to a log), waiting for the agent, and stopping.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agent_client::{self, AgentClient, Endpoint};

use super::config::Config;

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Guest CID (docs/CONVENTIONS.md).
pub const GUEST_CID: u32 = 3;
/// Deadline of each ordinary agent call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the guest gets to power off after Shutdown before the VMM is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lines of the serial log quoted when the VM fails.
const LOG_TAIL_LINES: usize = 20;
/// While waiting for the agent's ready connection: how often the VMM's liveness is checked,
/// and how often the agent is asked directly (in case its notification was lost).
const READY_POLL: Duration = Duration::from_millis(50);
const DIRECT_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Errors starting, reaching or stopping the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{KVM_DEVICE}: {source} (a KVM host is needed to run microVMs)")]
    KvmOpen { source: io::Error },
    #[error("{KVM_DEVICE} has no hardware virtualisation (no vmx/svm in /proc/cpuinfo): it cannot boot the Linux guest; run on a KVM host or in the lab (cargo xtask lab)")]
    KvmNoHardware,
    #[error("socket path {} is {len} bytes, more than a Unix socket address holds ({SUN_PATH_MAX}): use a shorter container id or state root", .path.display())]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("cannot start {vmm}: {source}")]
    Spawn { vmm: PathBuf, source: io::Error },
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("sandbox-vmm (pid {pid}) exited ({status}) before the agent was ready; {log_name} ends with:\n{tail}")]
    EarlyExit {
        pid: i32,
        status: String,
        log_name: String,
        tail: String,
    },
    #[error("the agent did not answer within {} s (is {KVM_DEVICE} usable?): {source}; {log_name} ends with:\n{tail}", .waited.as_secs())]
    AgentTimeout {
        waited: Duration,
        source: Box<agent_client::Error>,
        log_name: String,
        tail: String,
    },
}

/// Fails early and clearly when this host cannot run our guest.
pub fn check_kvm() -> Result<(), Error> {
    File::options()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map_err(|source| Error::KvmOpen { source })?;
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hardware {
        Ok(())
    } else {
        Err(Error::KvmNoHardware)
    }
}

/// A running VMM process.
#[derive(Debug)]
pub struct Vmm {
    pub pid: i32,
    pub start_time: u64,
    /// Present when this process spawned it (then we reap it).
    child: Option<Child>,
    /// Where the agent says it is ready (protocol::READY_VSOCK_PORT), until it has.
    ready: Option<UnixListener>,
}

/// Files of one VM inside its container directory.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub vsock: PathBuf,
    /// The VMM's control API socket (the controller asks it to `trim`; docs/vmm-api.md).
    pub api: PathBuf,
    pub console_log: PathBuf,
    pub vmm_log: PathBuf,
    /// The host end of the agent's ready connection: `<vsock>_<READY_VSOCK_PORT>`.
    pub ready: PathBuf,
}

/// Longest path a Unix socket address holds (`sun_path` less its terminating NUL).
pub const SUN_PATH_MAX: usize = 107;

impl VmPaths {
    /// Fails when a socket path (the longest is the agent's ready socket) does not fit in a
    /// Unix socket address: a long container id or state root.
    pub fn check_socket_paths(&self) -> Result<(), Error> {
        for path in [&self.vsock, &self.api, &self.ready] {
            let len = path.as_os_str().len();
            if len > SUN_PATH_MAX {
                return Err(Error::SocketPathTooLong {
                    path: path.clone(),
                    len,
                });
            }
        }
        Ok(())
    }

    pub fn new(dir: &Path) -> VmPaths {
        let vsock = dir.join("vsock.sock");
        VmPaths {
            vsock: vsock.clone(),
            api: dir.join("api.sock"),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            ready: hybrid_port_path(&vsock, protocol::READY_VSOCK_PORT),
        }
    }
}

impl Vmm {
    /// Starts `sandbox-vmm` in its own process group (terminal signals stay with us), with
    /// `memory_mib` of guest RAM, the container image as a read-only virtio-pmem device after
    /// the root image's (the guest maps it with DAX) and read-only virtio-blk `disks` (vda,
    /// vdb, ... in the guest).
    pub fn spawn(
        cfg: &Config,
        memory_mib: u32,
        paths: &VmPaths,
        image: &Path,
        disks: &[PathBuf],
    ) -> Result<Vmm, Error> {
        let log = File::create(&paths.vmm_log).map_err(|source| Error::File {
            what: "VMM log",
            path: paths.vmm_log.clone(),
            source,
        })?;
        let ready_err = |source| Error::File {
            what: "agent ready socket",
            path: paths.ready.clone(),
            source,
        };
        let _ = fs::remove_file(&paths.ready);
        let ready = UnixListener::bind(&paths.ready).map_err(ready_err)?;
        ready.set_nonblocking(true).map_err(ready_err)?;
        let mut cmd = Command::new(&cfg.vmm);
        cmd.arg("--kernel")
            .arg(&cfg.kernel)
            .args(cfg.guest_root.vmm_args())
            .args(["--vcpus", &cfg.vcpus.to_string()])
            .args(["--memory", &memory_mib.to_string()])
            .arg("--serial")
            .arg(&paths.console_log)
            .arg("--api-sock")
            .arg(&paths.api)
            .arg("--pmem")
            .arg(format!("{},ro", image.display()));
        for disk in disks {
            cmd.arg("--block").arg(format!("{},ro", disk.display()));
        }
        cmd.arg("--vsock")
            .arg(format!("{GUEST_CID},{}", paths.vsock.display()))
            // Free page reporting: what the guest frees (page cache it dropped, an initramfs
            // it unpacked) goes back to the host instead of staying in this sandbox's footprint.
            .arg("--balloon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        if cfg.debug {
            cmd.arg("--debug");
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            vmm: cfg.vmm.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        Ok(Vmm {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            child: Some(child),
            ready: Some(ready),
        })
    }

    /// A VMM started by an earlier command (not our child).
    pub fn adopt(pid: i32, start_time: u64) -> Vmm {
        Vmm {
            pid,
            start_time,
            child: None,
            ready: None,
        }
    }

    /// Whether the process is still this VMM (not exited, not a reused pid).
    pub fn alive(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        alive(self.pid, self.start_time)
    }

    fn exit_status(&mut self) -> String {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => s.to_string(),
            _ => "exited".into(),
        }
    }

    /// Waits for the agent to say it is ready (it connects to the host's ready port, so the
    /// host needs no polling that would cost the booting guest an interrupt per attempt), then
    /// connects to it. Asks the agent directly now and then too, in case its notification was
    /// lost. Reports an early VMM exit or the deadline with the end of the serial log.
    pub fn wait_for_agent(
        &mut self,
        paths: &VmPaths,
        timeout: Duration,
    ) -> Result<AgentClient, Error> {
        let endpoint = Endpoint::HybridVsock {
            socket: paths.vsock.clone(),
        };
        let begin = Instant::now();
        let mut next_direct = begin + DIRECT_CHECK_EVERY;
        let ready = self.ready.take();
        let result = loop {
            let notified = ready.as_ref().is_some_and(|l| wait_ready(l, READY_POLL));
            let timed_out = begin.elapsed() >= timeout;
            if notified || timed_out || Instant::now() >= next_direct {
                let wait = if notified {
                    Duration::from_secs(2)
                } else {
                    Duration::ZERO
                };
                match AgentClient::wait_for_agent(&endpoint, wait, CALL_TIMEOUT) {
                    Ok(client) => break Ok(client),
                    Err(e) if timed_out || begin.elapsed() >= timeout => {
                        break Err(Error::AgentTimeout {
                            waited: begin.elapsed(),
                            source: Box::new(e),
                            log_name: paths.console_log.display().to_string(),
                            tail: tail_of(&paths.console_log, &paths.vmm_log),
                        })
                    }
                    Err(_) => next_direct = Instant::now() + DIRECT_CHECK_EVERY,
                }
            }
            if ready.is_none() {
                std::thread::sleep(READY_POLL);
            }
            if !self.alive() {
                break Err(Error::EarlyExit {
                    pid: self.pid,
                    status: self.exit_status(),
                    log_name: paths.console_log.display().to_string(),
                    tail: tail_of(&paths.console_log, &paths.vmm_log),
                });
            }
        };
        drop(ready);
        let _ = fs::remove_file(&paths.ready);
        result
    }

    /// Asks the guest to power off (if a client is given), waits `grace`, then kills the VMM.
    pub fn stop(&mut self, client: Option<&AgentClient>, grace: Duration) {
        if let Some(c) = client {
            if self.alive() {
                let _ = c.shutdown();
            }
        }
        let begin = Instant::now();
        while self.alive() && begin.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        match &mut self.child {
            Some(child) => {
                let _ = child.wait();
            }
            None => {
                // Not our child: its parent (or init) reaps it; wait until it is gone.
                let begin = Instant::now();
                while alive(self.pid, self.start_time) && begin.elapsed() < grace {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Lets the VMM outlive this process (it is reparented and reaped by init).
    pub fn detach(mut self) {
        self.child = None;
    }
}

/// Has the VMM unmap, `delay` from now, the file pages the guest has only read (the kernel,
/// agent and image pages of its start; docs/vmm-api.md): they stay in the host's page cache
/// and come back on the guest's next touch.
pub fn trim_vm_later(api: &Path, delay: Duration) -> Result<(), Error> {
    let request = format!(
        r#"{{"action": "trim", "delay_ms": {}}}"#,
        delay.as_millis().max(1)
    );
    vm_request(api, "trim", &request).map(|_| ())
}

/// `request` (a JSON line asking for `action`) to the VMM's control API; its reply when `ok`.
fn vm_request(api: &Path, action: &str, request: &str) -> Result<serde_json::Value, Error> {
    use std::io::{BufRead, BufReader, Write};
    let fail = |source: io::Error| Error::File {
        what: "VMM control socket",
        path: api.to_path_buf(),
        source,
    };
    let mut conn = std::os::unix::net::UnixStream::connect(api).map_err(fail)?;
    conn.set_read_timeout(Some(CALL_TIMEOUT)).map_err(fail)?;
    conn.write_all(format!("{request}\n").as_bytes())
        .map_err(fail)?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply).map_err(fail)?;
    let v: serde_json::Value = serde_json::from_str(reply.trim()).map_err(|e| {
        fail(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply {reply:?}: {e}"),
        ))
    })?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(fail(io::Error::other(format!(
            "{action}: {}",
            v["error"].as_str().unwrap_or("refused")
        ))))
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    // Fields from 3 (state) on; start time is field 22.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` runs and is the process that started at `start` (0: not checked).
pub fn alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return false;
    };
    let mut fields = after.split_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return false;
    }
    start == 0 || fields.nth(18).and_then(|s| s.parse().ok()) == Some(start)
}

/// The last lines of the serial log (or of the VMM's stderr when the console is empty).
fn tail_of(console: &Path, vmm_log: &Path) -> String {
    let mut out = String::new();
    for path in [console, vmm_log] {
        let text = fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        if !tail.trim().is_empty() {
            if !out.is_empty() {
                out.push_str("\n-- ");
                out.push_str(&path.display().to_string());
                out.push_str(":\n");
            }
            out.push_str(&tail);
        }
    }
    if out.is_empty() {
        "(empty)".into()
    } else {
        out
    }
}

/// Where the VMM's hybrid vsock forwards a guest connection to host port `port`:
/// `<socket>_<port>` (docs/CONVENTIONS.md).
fn hybrid_port_path(socket: &Path, port: u32) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(format!("_{port}"));
    path.into()
}

/// Waits up to `timeout` for the agent's ready connection on `listener`; true once it came
/// and said [`protocol::READY_LINE`].
fn wait_ready(listener: &UnixListener, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    if !matches!(poll(&mut fds, ms), Ok(n) if n > 0) {
        return false;
    }
    let Ok((mut conn, _)) = listener.accept() else {
        return false;
    };
    let mut line = [0u8; 16];
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let n = conn.read(&mut line).unwrap_or(0);
    line[..n].starts_with(protocol::READY_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_must_fit_a_unix_socket_address() {
        let short = VmPaths::new(Path::new("/run/sandbox").join("a".repeat(64)).as_path());
        short.check_socket_paths().unwrap();
        let long = VmPaths::new(Path::new("/run/sandbox").join("a".repeat(80)).as_path());
        let err = long.check_socket_paths().unwrap_err().to_string();
        assert!(
            err.contains("vsock.sock_1026") && err.contains("shorter"),
            "{err}"
        );
    }

    #[test]
    fn start_time_identifies_this_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(alive(me, t));
        assert!(alive(me, 0));
        assert!(!alive(me, t + 1));
        assert!(!alive(i32::MAX, 0));
    }

    #[test]
    fn vm_requests_speak_the_control_protocol() {
        use std::io::{BufRead, BufReader, Write};
        let dir = tempfile::tempdir().unwrap();
        let api = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&api).unwrap();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            for reply in [
                r#"{"ok": true, "state": "paused"}"#,
                r#"{"ok": false, "error": "nope"}"#,
                r#"{"ok": true, "state": "running", "trim_in_ms": 1000}"#,
            ] {
                let (conn, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                got.push(line);
                (&conn).write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
            got
        });
        vm_request(&api, "pause", r#"{"action": "pause"}"#).unwrap();
        let err = vm_request(&api, "resume", r#"{"action": "resume"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("resume: nope"), "{err}");
        trim_vm_later(&api, Duration::from_secs(1)).unwrap();
        let got = server.join().unwrap();
        assert_eq!(got[0].trim(), r#"{"action": "pause"}"#);
        assert_eq!(got[1].trim(), r#"{"action": "resume"}"#);
        assert_eq!(got[2].trim(), r#"{"action": "trim", "delay_ms": 1000}"#);
        let err = vm_request(
            &dir.path().join("absent"),
            "pause",
            r#"{"action": "pause"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn early_exit_is_reported_with_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path());
        fs::write(&paths.console_log, "line1\nKernel panic - not syncing\n").unwrap();
        let child = Command::new("true").spawn().unwrap();
        let mut vmm = Vmm {
            pid: child.id() as i32,
            start_time: 0,
            child: Some(child),
            ready: Some(UnixListener::bind(&paths.ready).unwrap()),
        };
        let Err(err) = vmm.wait_for_agent(&paths, Duration::from_secs(60)) else {
            panic!("a VMM that exited cannot have an agent");
        };
        let msg = err.to_string();
        assert!(matches!(err, Error::EarlyExit { .. }), "{msg}");
        assert!(msg.contains("Kernel panic"), "{msg}");
        assert!(!paths.ready.exists(), "the ready socket is left behind");
    }

    #[test]
    fn the_agent_is_ready_once_it_connected_and_said_so() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_1026");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        assert!(
            !wait_ready(&listener, Duration::from_millis(20)),
            "nobody connected"
        );

        let mut agent = UnixStream::connect(&path).unwrap();
        agent.write_all(protocol::READY_LINE).unwrap();
        assert!(wait_ready(&listener, Duration::from_secs(5)));

        let mut other = UnixStream::connect(&path).unwrap();
        other.write_all(b"hello\n").unwrap();
        drop(other);
        assert!(
            !wait_ready(&listener, Duration::from_secs(5)),
            "not the ready line"
        );
    }
}
