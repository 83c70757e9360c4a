//! The `--no-vm` backend: the runtime crate directly on this host (runc-level isolation).
//! State lives under `--root` (default /run/sandbox-novm).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use runtime::{Container, CreateOptions, ExecOptions, Process, State};

use super::backend::{Backend, CliError};
use super::{CreateArgs, DeleteArgs, EventsArgs, ExecArgs, KillArgs, ListArgs, PsArgs, RunArgs};

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
        let opts = CreateOptions {
            console_socket: a.console_socket.clone(),
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

/// Parses "KILL", "SIGKILL" or "9".
pub fn parse_signal(s: &str) -> Result<Signal, CliError> {
    let bad = || CliError::Usage(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// runc's view of the state (without the runtime's bookkeeping fields).
fn state_json(s: &State) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ociVersion": s.oci_version,
        "id": s.id,
        "pid": s.pid,
        "status": s.status,
        "bundle": s.bundle,
        "rootfs": s.rootfs,
        "created": s.created,
        "owner": s.owner,
    });
    if !s.annotations.is_empty() {
        v["annotations"] = serde_json::json!(s.annotations);
    }
    v
}

/// Forwards the usual terminating signals to `pid` from a helper thread while we wait.
fn forward_signals(pid: i32) {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        if let Ok(sig) = set.wait() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
        }
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
        let mut c = self.create_container(&a.create)?;
        if let Err(e) = c.start() {
            let _ = c.delete(true);
            return Err(e.into());
        }
        if a.detach {
            return Ok(0);
        }
        forward_signals(c.pid());
        let code = c.wait()?.unwrap_or(0);
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
            serde_json::to_string_pretty(&state_json(&s)).expect("serialises")
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
            let v: Vec<_> = states.iter().map(state_json).collect();
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
        let c = self.load(&a.id)?;
        let v = serde_json::json!({
            "type": "stats",
            "id": a.id,
            "data": c.stats()?,
            "events": c.events()?,
        });
        println!("{v}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("BOGUS").is_err());
    }
}
