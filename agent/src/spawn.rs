//! Starting a process in the guest from an OCI `process` object, with its stdio wired to pipes
//! or a pseudo-terminal whose far ends the stdio streams attach to later.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::unistd::{pipe2, Pid};
use serde::Deserialize;
use thiserror::Error;

/// Errors starting a process.
#[derive(Debug, Error)]
pub enum Error {
    #[error("process JSON is not an OCI process object: {0}")]
    BadJson(serde_json::Error),
    #[error("process.args is empty")]
    NoArgs,
    #[error("process.env entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("cannot create the {stream} pipe: {source}")]
    Pipe {
        stream: &'static str,
        source: nix::Error,
    },
    #[error("cannot open a pseudo-terminal: {0}")]
    Openpty(nix::Error),
    #[error("cannot duplicate the {what} descriptor: {source}")]
    Dup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// The user a process runs as (OCI `process.user`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// The parts of an OCI `process` object the agent needs to start a process itself.
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessSpec {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub user: User,
}

impl ProcessSpec {
    pub fn from_json(json: &str) -> Result<ProcessSpec, Error> {
        let spec: ProcessSpec = serde_json::from_str(json).map_err(Error::BadJson)?;
        if spec.args.is_empty() {
            return Err(Error::NoArgs);
        }
        if let Some(bad) = spec.env.iter().find(|e| !e.contains('=')) {
            return Err(Error::BadEnv(bad.clone()));
        }
        Ok(spec)
    }
}

/// Which streams the host will attach, and whether the process gets a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioPlan {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

/// The agent's ends of a process's stdio, waiting for streams to attach.
#[derive(Debug, Default)]
pub struct StdioEnds {
    /// Write end of the stdin pipe.
    pub stdin: Option<File>,
    /// Read end of the stdout pipe.
    pub stdout: Option<File>,
    /// Read end of the stderr pipe.
    pub stderr: Option<File>,
    /// The pseudo-terminal master, for the tty stream.
    pub tty: Option<File>,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub ends: StdioEnds,
    /// Another handle on the terminal master, kept for window resizes.
    pub tty_control: Option<File>,
}

/// The process's ends of its stdio pipes; `None` means /dev/null.
#[derive(Debug, Default)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A pipe for each announced stream: one end for the process, the other for the agent.
pub fn pipes(plan: StdioPlan) -> Result<(ChildStdio, StdioEnds), Error> {
    let mut child = ChildStdio::default();
    let mut ends = StdioEnds::default();
    if plan.stdin {
        let (read, write) = pipe("stdin")?;
        child.stdin = Some(read);
        ends.stdin = Some(File::from(write));
    }
    if plan.stdout {
        let (read, write) = pipe("stdout")?;
        child.stdout = Some(write);
        ends.stdout = Some(File::from(read));
    }
    if plan.stderr {
        let (read, write) = pipe("stderr")?;
        child.stderr = Some(write);
        ends.stderr = Some(File::from(read));
    }
    Ok((child, ends))
}

/// Starts `spec`; call inside `Reaper::spawn_locked` and record the pid before returning.
pub fn spawn(spec: &ProcessSpec, plan: StdioPlan) -> Result<Spawned, Error> {
    let mut cmd = Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..]).env_clear();
    for entry in &spec.env {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| Error::BadEnv(entry.clone()))?;
        cmd.env(key, value);
    }
    cmd.current_dir(if spec.cwd.is_empty() { "/" } else { &spec.cwd });

    let mut ends = StdioEnds::default();
    let mut tty_control = None;
    if plan.terminal {
        let pty = nix::pty::openpty(None, None).map_err(Error::Openpty)?;
        set_cloexec(&pty.master);
        set_cloexec(&pty.slave);
        let slave = File::from(pty.slave);
        cmd.stdin(Stdio::from(dup(&slave, "tty slave")?))
            .stdout(Stdio::from(dup(&slave, "tty slave")?))
            .stderr(Stdio::from(slave));
        let master = File::from(pty.master);
        tty_control = Some(dup(&master, "tty master")?);
        ends.tty = Some(master);
    } else {
        let (child, agent_ends) = pipes(plan)?;
        let to_stdio = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
        cmd.stdin(to_stdio(child.stdin))
            .stdout(to_stdio(child.stdout))
            .stderr(to_stdio(child.stderr));
        ends = agent_ends;
    }

    let user = spec.user.clone();
    let terminal = plan.terminal;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on values moved in before the fork.
    unsafe {
        cmd.pre_exec(move || child_setup(&user, terminal));
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        program: spec.args[0].clone(),
        source,
    })?;
    // The reaper, not std, collects the exit status; dropping `Child` does not wait.
    let pid = Pid::from_raw(child.id() as i32);
    Ok(Spawned {
        pid,
        ends,
        tty_control,
    })
}

/// In the child: new session (and controlling terminal), then the user's groups and ids.
fn child_setup(user: &User, terminal: bool) -> std::io::Result<()> {
    // SAFETY: plain system calls without pointers, or with pointers to memory owned by `user`
    // that lives until exec.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getuid() == 0 {
            let groups: &[u32] = &user.additional_gids;
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgid(user.gid) < 0 || libc::setuid(user.uid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn pipe(stream: &'static str) -> Result<(OwnedFd, OwnedFd), Error> {
    pipe2(OFlag::O_CLOEXEC).map_err(|source| Error::Pipe { stream, source })
}

fn dup(file: &File, what: &'static str) -> Result<File, Error> {
    file.try_clone()
        .map_err(|source| Error::Dup { what, source })
}

fn set_cloexec(fd: &OwnedFd) {
    if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        log::warn!("cannot set FD_CLOEXEC on a pty descriptor: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_json_needs_args_and_well_formed_env() {
        let spec = ProcessSpec::from_json(
            r#"{"args":["/bin/echo","hi"],"env":["PATH=/bin"],"cwd":"/tmp","user":{"uid":1,"gid":2,"additionalGids":[3]},"terminal":false}"#,
        )
        .unwrap();
        assert_eq!(spec.args, ["/bin/echo", "hi"]);
        assert_eq!(spec.user.uid, 1);
        assert_eq!(spec.user.additional_gids, [3]);
        assert!(matches!(
            ProcessSpec::from_json(r#"{"args":[]}"#),
            Err(Error::NoArgs)
        ));
        assert!(matches!(
            ProcessSpec::from_json(r#"{"args":["x"],"env":["NOEQUALS"]}"#),
            Err(Error::BadEnv(e)) if e == "NOEQUALS"
        ));
        assert!(matches!(
            ProcessSpec::from_json("[1]"),
            Err(Error::BadJson(_))
        ));
    }
}
