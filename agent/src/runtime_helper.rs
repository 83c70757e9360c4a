//! Runs the runtime crate's forking calls (create, exec) in a short-lived child of the agent:
//! `sandbox-agent --runtime-helper ...`, single-threaded, with the container's stdio as its own.
//!
//! The runtime forks from its caller and hands the new processes the caller's fds 0-2, which a
//! multi-threaded PID 1 cannot rearrange safely. The helper can: the agent starts it with the
//! stdio pipes as 0-2 and a result pipe as fd 3, it calls the runtime, writes one line
//! (`ok <pid>` or `error <message>`) to fd 3 and exits. The container's processes outlive it
//! and are adopted by the agent (PID 1 or subreaper), whose reaper collects their exits.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use thiserror::Error;

use crate::spawn::ChildStdio;

/// The argument that switches the agent binary into helper mode.
pub const FLAG: &str = "--runtime-helper";
/// The descriptor the helper writes its result line to.
const RESULT_FD: i32 = 3;

/// Errors running the helper.
#[derive(Debug, Error)]
pub enum Error {
    #[error("runtime helper: cannot create the result pipe: {0}")]
    Pipe(nix::Error),
    #[error("runtime helper: cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime helper: waiting for it failed: {0}")]
    Wait(std::io::Error),
    #[error("{message}")]
    Runtime { kind: Kind, message: String },
    #[error("runtime helper ended ({status}) without a result")]
    NoResult { status: std::process::ExitStatus },
}

/// What kind of runtime failure the helper saw, so the agent can answer with the right code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Exists,
    NotFound,
    WrongState,
    Other,
}

impl Kind {
    pub fn of(e: &runtime::Error) -> Kind {
        match e {
            runtime::Error::InvalidId(_) | runtime::Error::Spec(_) => Kind::Invalid,
            runtime::Error::Exists(_) => Kind::Exists,
            runtime::Error::NotFound(_) => Kind::NotFound,
            runtime::Error::WrongState { .. } => Kind::WrongState,
            _ => Kind::Other,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Invalid => "invalid",
            Kind::Exists => "exists",
            Kind::NotFound => "notfound",
            Kind::WrongState => "state",
            Kind::Other => "other",
        }
    }

    fn from_word(word: &str) -> Kind {
        match word {
            "invalid" => Kind::Invalid,
            "exists" => Kind::Exists,
            "notfound" => Kind::NotFound,
            "state" => Kind::WrongState,
            _ => Kind::Other,
        }
    }
}

/// What the helper should do.
pub enum Job<'a> {
    Create {
        id: &'a str,
        bundle: &'a Path,
        state_root: &'a Path,
        console_socket: Option<PathBuf>,
    },
    Exec {
        id: &'a str,
        state_root: &'a Path,
        process_json: &'a str,
        console_socket: Option<PathBuf>,
    },
}

/// Runs the helper to completion, with `stdio` as its (and the container's) 0-2, each `None`
/// /dev/null, and returns the pid of the process it started. Call inside
/// `Reaper::spawn_locked`, so the helper's exit is std's to collect and the new process's
/// exit cannot be reaped before its pid is recorded.
pub fn run(job: &Job<'_>, stdio: ChildStdio) -> Result<i32, Error> {
    let exe = PathBuf::from("/proc/self/exe");
    let mut cmd = Command::new(&exe);
    cmd.arg(FLAG);
    let opt_path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.as_os_str().to_owned())
            .unwrap_or_default()
    };
    match job {
        Job::Create {
            id,
            bundle,
            state_root,
            console_socket,
        } => {
            cmd.arg("create").arg(id).arg(bundle).arg(state_root);
            cmd.arg(opt_path(console_socket));
        }
        Job::Exec {
            id,
            state_root,
            process_json,
            console_socket,
        } => {
            cmd.arg("exec").arg(id).arg(state_root).arg(process_json);
            cmd.arg(opt_path(console_socket));
        }
    }
    let to_stdio = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
    cmd.stdin(to_stdio(stdio.stdin))
        .stdout(to_stdio(stdio.stdout))
        .stderr(to_stdio(stdio.stderr));

    let (result_read, result_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
    let write_fd = result_write.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2 and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if write_fd == RESULT_FD {
                // dup2 onto itself would keep FD_CLOEXEC.
                if libc::fcntl(RESULT_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(write_fd, RESULT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Spawn { exe, source })?;
    drop(cmd);
    drop(result_write);
    let status = child.wait().map_err(Error::Wait)?;
    // Read one line, not to EOF: a created init keeps an inherited copy of fd 3 open until
    // it execs the user's program.
    let mut line = String::new();
    let _ = BufReader::new(File::from(result_read)).read_line(&mut line);
    parse_result(line.trim_end()).unwrap_or(Err(Error::NoResult { status }))
}

fn parse_result(line: &str) -> Option<Result<i32, Error>> {
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid.parse().ok().map(Ok);
    }
    let rest = line.strip_prefix("error ")?;
    let (word, message) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Err(Error::Runtime {
        kind: Kind::from_word(word),
        message: message.to_string(),
    }))
}

/// The helper's side: `args` are the words after [`FLAG`]. Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    // SAFETY: fd 3 was set up by `run` for this process alone; nothing else owns it.
    let mut result = unsafe { File::from_raw_fd(RESULT_FD) };
    let outcome = job_from_args(args);
    let line = match outcome {
        Ok(pid) => format!("ok {pid}\n"),
        Err((kind, message)) => format!("error {} {}\n", kind.word(), message.replace('\n', " ")),
    };
    let _ = result.write_all(line.as_bytes());
    i32::from(!line.starts_with("ok "))
}

fn job_from_args(args: &[String]) -> Result<i32, (Kind, String)> {
    let fail = |e: runtime::Error| (Kind::of(&e), e.to_string());
    let path_opt = |s: &String| (!s.is_empty()).then(|| PathBuf::from(s));
    match args {
        [verb, id, bundle, state_root, console] if verb == "create" => {
            let opts = runtime::CreateOptions {
                console_socket: path_opt(console),
                ..Default::default()
            };
            let container =
                runtime::Container::create(id, Path::new(bundle), Path::new(state_root), &opts)
                    .map_err(fail)?;
            Ok(container.pid())
        }
        [verb, id, state_root, process_json, console] if verb == "exec" => {
            let process = runtime::spec::parse_process(process_json)
                .map_err(|e| (Kind::Invalid, format!("process_json: {e}")))?;
            let opts = runtime::ExecOptions {
                console_socket: path_opt(console),
                ..Default::default()
            };
            let mut container =
                runtime::Container::load(id, Path::new(state_root)).map_err(fail)?;
            container.exec(&process, &opts).map_err(fail)
        }
        other => Err((
            Kind::Other,
            format!("runtime helper: bad arguments {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse() {
        assert!(matches!(parse_result("ok 42"), Some(Ok(42))));
        assert!(matches!(
            parse_result("error exists container c1 already exists"),
            Some(Err(Error::Runtime { kind: Kind::Exists, message })) if message == "container c1 already exists"
        ));
        assert!(matches!(
            parse_result("error invalid process.args: empty"),
            Some(Err(Error::Runtime {
                kind: Kind::Invalid,
                ..
            }))
        ));
        assert!(parse_result("").is_none());
        assert!(parse_result("ok x").is_none());
    }
}
