//! Runs a helper program (`ctr`, `umoci`, `tar`) to completion with a time limit, its output
//! captured through files: a daemon it starts may keep pipes open long after it returns.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often a running command is looked at.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("cannot capture the output of {program}: {source}")]
    Capture { program: String, source: io::Error },
    #[error("{command} did not finish within {limit:?} and was killed; stdout: {stdout} stderr: {stderr}")]
    Timeout {
        command: String,
        limit: Duration,
        stdout: String,
        stderr: String,
    },
    #[error("{command} failed ({status}); stdout: {stdout} stderr: {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// What a finished command printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The output itself if the command succeeded, else `Error::Failed` with everything.
    pub fn success(self) -> Result<Output, Error> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(Error::Failed {
                command: self.command,
                status: self.status,
                stdout: self.stdout,
                stderr: self.stderr,
            })
        }
    }
}

/// `cmd` rendered for messages: program and arguments, space separated.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` (stdin closed unless the caller set it) and waits at most `limit`; a command
/// still running then is killed and reported as `Error::Timeout` with what it printed.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output, Error> {
    let command = describe(cmd);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let capture = |source| Error::Capture {
        program: program.clone(),
        source,
    };
    let mut out = tempfile::tempfile().map_err(capture)?;
    let mut err = tempfile::tempfile().map_err(capture)?;
    let mut child = cmd
        .stdout(out.try_clone().map_err(capture)?)
        .stderr(err.try_clone().map_err(capture)?)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    let begin = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(capture)? {
            break Some(status);
        }
        if begin.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    let stdout = read_all(&mut out).map_err(capture)?;
    let stderr = read_all(&mut err).map_err(capture)?;
    match status {
        Some(status) => Ok(Output {
            command,
            status,
            stdout,
            stderr,
        }),
        None => Err(Error::Timeout {
            command,
            limit,
            stdout,
            stderr,
        }),
    }
}

/// Like `run`, and a command that fails is an error too.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Result<Output, Error> {
    run(cmd, limit)?.success()
}

/// Default stdin for helper commands: closed.
pub fn no_stdin(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
}

fn read_all(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run(
            no_stdin(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"])),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
        let msg = out.success().unwrap_err().to_string();
        assert!(msg.contains("sh -c") && msg.contains("err"), "{msg}");
    }

    #[test]
    fn a_command_past_its_limit_is_killed() {
        let begin = Instant::now();
        let err = run(
            no_stdin(Command::new("sh").args(["-c", "echo started; exec sleep 30"])),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(begin.elapsed() < Duration::from_secs(10));
        match err {
            Error::Timeout { stdout, .. } => assert_eq!(stdout, "started\n"),
            other => panic!("expected a timeout, got {other}"),
        }
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run(
            &mut Command::new("/nonexistent/ctr"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ctr"), "{err}");
    }
}
