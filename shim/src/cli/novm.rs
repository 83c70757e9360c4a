//! The `--no-vm` backend: the runtime crate directly on this host (runc-level isolation).
//! State lives under `--root` (default /run/sandbox-novm).

use std::path::{Path, PathBuf};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use runtime::{Container, CreateOptions, ExecOptions, Process, State};

use crate::controller::signals;

use super::backend::{Backend, CliError};
use super::signal::parse_signal;
use super::{
    CreateArgs, DeleteArgs, EventsArgs, ExecArgs, KillArgs, ListArgs, PsArgs, RunArgs, UpdateArgs,
};

/// The backend; `root` is the state directory.
pub struct NoVm {
    root: PathBuf,
}

impl NoVm {
    /// A backend keeping state under `root`.
    pub fn new(root: PathBuf) -> Self {
        NoVm { root }
    }

    fn load(&self, id: &str) -> Result<Container, CliError> {
        Ok(Container::load(id, &self.root)?)
    }

    fn create_container(&self, a: &CreateArgs) -> Result<Container, CliError> {
        self.create_with_console(a, a.console_socket.clone())
    }

    fn create_with_console(
        &self,
        a: &CreateArgs,
        console_socket: Option<PathBuf>,
    ) -> Result<Container, CliError> {
        let opts = CreateOptions {
            console_socket,
            default_cgroup_path: None,
            stdio: None,
        };
        let c = Container::create(&a.id, &a.bundle, &self.root, &opts)?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, c.pid())?;
        }
        Ok(c)
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), CliError> {
    std::fs::write(path, pid.to_string()).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// runc's view of the state (without the runtime's bookkeeping fields). Like runc, `state`
/// leaves `owner` empty and `list` fills it in.
fn state_json(s: &State, with_owner: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ociVersion": s.oci_version,
        "id": s.id,
        "pid": s.pid,
        "status": s.status,
        "bundle": s.bundle,
        "rootfs": s.rootfs,
        "created": s.created,
        "owner": if with_owner { s.owner.as_str() } else { "" },
    });
    if !s.annotations.is_empty() {
        v["annotations"] = serde_json::json!(s.annotations);
    }
    v
}

/// Blocks the forwarded signals before the container exists, so one that arrives while it
/// starts is delivered to it instead of killing us. (The runtime clears the mask before exec.)
fn block_forwarded() {
    let _ = signals::block(signals::FORWARDED);
}

/// Forwards the blocked signals to `pid` from a helper thread while we wait.
fn forward_signals(pid: i32) {
    signals::spawn_forwarder(signals::set_of(signals::FORWARDED), move |sig| {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    });
}

/// Waits for a child process; its exit code, or 128+N after signal N.
fn wait_child(pid: i32) -> Result<i32, CliError> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(CliError::Usage(format!("wait for process {pid}: {e}"))),
        }
    }
}

impl Backend for NoVm {
    fn run(&self, a: &RunArgs) -> Result<i32, CliError> {
        // Like runc: in the foreground, a terminal without --console-socket is proxied here.
        let proxy =
            if !a.detach && a.create.console_socket.is_none() && wants_terminal(&a.create.bundle) {
                Some(console::Proxy::listen(&self.root, &a.create.id)?)
            } else {
                None
            };
        if !a.detach {
            block_forwarded();
        }
        let socket = proxy
            .as_ref()
            .map(|p| p.path().to_path_buf())
            .or_else(|| a.create.console_socket.clone());
        let mut c = self.create_with_console(&a.create, socket)?;
        if let Err(e) = c.start() {
            let _ = c.delete(true);
            return Err(e.into());
        }
        if a.detach {
            return Ok(0);
        }
        let attached = match proxy {
            Some(p) => Some(p.attach()?),
            None => None,
        };
        forward_signals(c.pid());
        let code = c.wait()?.unwrap_or(0);
        drop(attached);
        c.delete(true)?;
        Ok(code)
    }

    fn create(&self, a: &CreateArgs) -> Result<(), CliError> {
        self.create_container(a).map(drop)
    }

    fn start(&self, id: &str) -> Result<(), CliError> {
        Ok(self.load(id)?.start()?)
    }

    fn state(&self, id: &str) -> Result<(), CliError> {
        let s = self.load(id)?.state();
        println!(
            "{}",
            serde_json::to_string_pretty(&state_json(&s, false)).expect("serialises")
        );
        Ok(())
    }

    fn kill(&self, a: &KillArgs) -> Result<(), CliError> {
        let sig = parse_signal(&a.signal)?;
        Ok(self.load(&a.id)?.kill(sig, a.all)?)
    }

    fn delete(&self, a: &DeleteArgs) -> Result<(), CliError> {
        Ok(self.load(&a.id)?.delete(a.force)?)
    }

    fn exec(&self, a: &ExecArgs) -> Result<i32, CliError> {
        let mut c = self.load(&a.id)?;
        let process: Process = match &a.process {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
                    path: path.clone(),
                    source,
                })?;
                runtime::spec::parse_process(&text).map_err(runtime::Error::from)?
            }
            None => {
                if a.command.is_empty() {
                    return Err(CliError::Usage(
                        "exec: no command given (args or -p process.json)".into(),
                    ));
                }
                let mut p = c.spec().process().clone().unwrap_or_default();
                p.set_args(Some(a.command.clone()));
                p.set_terminal(Some(a.tty));
                p.set_console_size(None);
                let mut env = p.env().clone().unwrap_or_default();
                env.extend(a.env.iter().cloned());
                p.set_env(Some(env));
                if let Some(cwd) = &a.cwd {
                    p.set_cwd(cwd.clone());
                }
                if let Some(u) = &a.user {
                    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                    let parse = |s: &str| {
                        s.parse::<u32>()
                            .map_err(|_| CliError::Usage(format!("--user {u:?}: want UID[:GID]")))
                    };
                    let user = p.user_mut();
                    user.set_uid(parse(uid)?);
                    user.set_gid(parse(gid)?);
                }
                p
            }
        };
        let opts = ExecOptions {
            console_socket: a.console_socket.clone(),
            stdio: None,
        };
        if !a.detach {
            block_forwarded();
        }
        let pid = c.exec(&process, &opts)?;
        if let Some(f) = &a.pid_file {
            write_pid_file(f, pid)?;
        }
        if a.detach {
            return Ok(0);
        }
        forward_signals(pid);
        wait_child(pid)
    }

    fn ps(&self, a: &PsArgs) -> Result<(), CliError> {
        let pids = self.load(&a.id)?.ps()?;
        if a.format == "json" {
            println!("{}", serde_json::to_string(&pids).expect("serialises"));
            return Ok(());
        }
        println!("{:>8} CMD", "PID");
        for pid in pids {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            println!("{pid:>8} {}", cmd.join(" "));
        }
        Ok(())
    }

    fn list(&self, a: &ListArgs) -> Result<(), CliError> {
        let states = Container::list(&self.root)?;
        if a.quiet {
            for s in &states {
                println!("{}", s.id);
            }
        } else if a.format == "json" {
            let v: Vec<_> = states.iter().map(|s| state_json(s, true)).collect();
            println!("{}", serde_json::to_string(&v).expect("serialises"));
        } else {
            println!(
                "{:<20} {:<10} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &states {
                let pid = if s.status == runtime::Status::Stopped {
                    0
                } else {
                    s.pid
                };
                println!(
                    "{:<20} {:<10} {:<10} {:<40} {:<32} {}",
                    s.id,
                    pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                );
            }
        }
        Ok(())
    }

    fn pause(&self, id: &str, pause: bool) -> Result<(), CliError> {
        let mut c = self.load(id)?;
        if pause {
            Ok(c.pause()?)
        } else {
            Ok(c.resume()?)
        }
    }

    fn events(&self, a: &EventsArgs) -> Result<(), CliError> {
        let interval = super::events::parse_interval(&a.interval)?;
        let c = self.load(&a.id)?;
        let stats = |c: &Container| -> Result<String, CliError> {
            let s = crate::controller::ContainerStats::from_runtime(&c.stats()?);
            Ok(super::events::stats_line(&a.id, &s))
        };
        if a.stats {
            // runc's line, plus the raw cgroup.events/memory.events counters.
            let mut v: serde_json::Value =
                serde_json::from_str(&stats(&c)?).map_err(|e| CliError::Usage(e.to_string()))?;
            v["events"] = serde_json::json!(c.events()?);
            println!("{v}");
            return Ok(());
        }
        let mut oom_kills = c.events()?.get("oom_kill").copied().unwrap_or(0);
        let mut next_stats = std::time::Instant::now();
        loop {
            let Ok(c) = self.load(&a.id) else {
                return Ok(());
            };
            let Ok(events) = c.events() else {
                return Ok(());
            };
            let kills = events.get("oom_kill").copied().unwrap_or(0);
            if kills > oom_kills {
                println!("{}", super::events::oom_line(&a.id));
            }
            oom_kills = kills;
            if std::time::Instant::now() >= next_stats {
                println!("{}", stats(&c)?);
                next_stats += interval;
            }
            std::thread::sleep(interval.min(std::time::Duration::from_millis(500)));
        }
    }

    fn update(&self, a: &UpdateArgs) -> Result<(), CliError> {
        let resources: runtime::LinuxResources = serde_json::from_value(a.resources()?)
            .map_err(|e| CliError::Usage(format!("linux.resources: {e}")))?;
        Ok(self.load(&a.id)?.update(&resources)?)
    }
}

/// Whether the bundle's config.json asks for a terminal (read before create to set up a proxy).
fn wants_terminal(bundle: &Path) -> bool {
    std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["process"]["terminal"] == true)
}

/// A console socket served by `sandbox run` itself: receives the pty master and copies it to
/// and from our stdio, with our terminal in raw mode meanwhile.
mod console {
    use std::io::{IoSliceMut, Read, Write};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::thread::JoinHandle;

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

    use super::CliError;

    /// The listening socket, removed on drop.
    pub struct Proxy {
        path: PathBuf,
        receiver: Option<JoinHandle<std::io::Result<OwnedFd>>>,
    }

    /// Copying threads plus our saved terminal settings, restored on drop.
    pub struct Attached {
        saved: Option<Termios>,
        output: Option<JoinHandle<()>>,
    }

    fn receive(listener: UnixListener) -> std::io::Result<OwnedFd> {
        let (conn, _) = listener.accept()?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the descriptor was just received and nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        Err(std::io::Error::other(
            "no pty master received on the console socket",
        ))
    }

    impl Proxy {
        /// Binds `<root>/<id>.console.sock` and waits for the pty master in a thread.
        pub fn listen(root: &Path, id: &str) -> Result<Proxy, CliError> {
            std::fs::create_dir_all(root).map_err(|source| CliError::File {
                path: root.into(),
                source,
            })?;
            let path = root.join(format!("{id}.console.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })?;
            let receiver = std::thread::spawn(move || receive(listener));
            Ok(Proxy {
                path,
                receiver: Some(receiver),
            })
        }

        /// The socket path to give the runtime.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Takes the pty master and starts copying stdin → pty → stdout.
        pub fn attach(mut self) -> Result<Attached, CliError> {
            let master = self
                .receiver
                .take()
                .expect("attach is called once")
                .join()
                .map_err(|_| CliError::Usage("console proxy thread panicked".into()))?
                .map_err(|source| CliError::File {
                    path: self.path.clone(),
                    source,
                })?;
            let stdin = std::io::stdin();
            let saved = tcgetattr(stdin.as_fd()).ok();
            if let Some(t) = &saved {
                let mut raw = t.clone();
                cfmakeraw(&mut raw);
                let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
            }
            let mut to_pty =
                std::fs::File::from(master.try_clone().map_err(|source| CliError::File {
                    path: self.path.clone(),
                    source,
                })?);
            let mut from_pty = std::fs::File::from(master);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = std::io::stdin().read(&mut buf) {
                    if n == 0 || to_pty.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let output = std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut out = std::io::stdout();
                while let Ok(n) = from_pty.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        break;
                    }
                }
            });
            Ok(Attached {
                saved,
                output: Some(output),
            })
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    impl Drop for Attached {
        fn drop(&mut self) {
            // The copy ends when the last holder of the pty slave (the container) is gone.
            if let Some(t) = self.output.take() {
                let _ = t.join();
            }
            if let Some(t) = &self.saved {
                let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
            }
        }
    }
}
