//! Measuring processes: wall time from spawn to exit with the peak RSS from wait4's rusage,
//! and the memory of a live process from /proc (PSS, and the guest-RAM mapping's RSS).

use std::fs;
use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("wait4 on {program} failed: {source}")]
    Wait { program: String, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Proc { path: String, source: io::Error },
    #[error("{path} has no `{field}` line")]
    Field { path: String, field: &'static str },
}

/// A finished process.
#[derive(Debug, Clone)]
pub struct Exit {
    /// From just before spawn to wait4's return.
    pub wall: Duration,
    /// ru_maxrss: the peak resident set, KiB.
    pub max_rss_kib: u64,
    /// Exit code, or None when killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn wall_ms(&self) -> f64 {
        self.wall.as_secs_f64() * 1000.0
    }

    /// `exit 3` / `signal 9`, and the end of stderr, for error messages.
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "unknown status".into(),
        };
        let err = String::from_utf8_lossy(&self.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{how}; stderr: {}", tail.join("\n"))
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured; times it and reaps it with wait4.
pub fn run(cmd: &mut Command) -> Result<Exit, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id() as libc::pid_t;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();

    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child (std never waits on it: we do not call
        // wait/try_wait); status and usage are valid, writable locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(Error::Wait { program, source: e });
        }
    }
    let wall = start.elapsed();
    let mut out = readers.into_iter().map(|t| t.join().unwrap_or_default());
    let stdout = out.next().unwrap_or_default();
    let stderr = out.next().unwrap_or_default();
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Exit {
        wall,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        code,
        signal,
        stdout,
        stderr,
    })
}

/// Memory of a live process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Proportional set size of the whole process (guest RAM included), KiB.
    pub pss_kib: u64,
    /// Resident part of the largest mapping (the guest RAM), KiB.
    pub guest_rss_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory, Error> {
        let rollup = format!("/proc/{pid}/smaps_rollup");
        let pss_kib = field_kib(&read(&rollup)?, "Pss:").ok_or(Error::Field {
            path: rollup,
            field: "Pss:",
        })?;
        let smaps = format!("/proc/{pid}/smaps");
        let guest_rss_kib = largest_mapping_rss_kib(&read(&smaps)?);
        Ok(Memory {
            pss_kib,
            guest_rss_kib,
        })
    }

    pub fn pss_mib(&self) -> f64 {
        self.pss_kib as f64 / 1024.0
    }

    pub fn guest_mib(&self) -> f64 {
        self.guest_rss_kib as f64 / 1024.0
    }
}

fn read(path: &str) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Proc {
        path: path.into(),
        source,
    })
}

/// The value of a `Name:   123 kB` line.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Rss of the mapping with the largest Size in a /proc/PID/smaps text: the guest RAM of a VMM.
fn largest_mapping_rss_kib(smaps: &str) -> u64 {
    let mut best = (0u64, 0u64);
    let mut size = 0u64;
    for line in smaps.lines() {
        if let Some(v) = field_kib(line, "Size:") {
            size = v;
        } else if let Some(rss) = field_kib(line, "Rss:") {
            if size > best.0 {
                best = (size, rss);
            }
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_status_output_and_peak_rss() {
        let exit = run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(exit.code, Some(3));
        assert_eq!(exit.stdout, b"out\n");
        assert_eq!(exit.stderr, b"err\n");
        assert!(exit.max_rss_kib > 0);
        assert!(exit.describe().starts_with("exit 3; stderr: err"));
    }

    #[test]
    fn run_reports_a_signal() {
        let exit = run(Command::new("sh").args(["-c", "kill -9 $$"])).unwrap();
        assert_eq!((exit.code, exit.signal), (None, Some(9)));
        assert!(!exit.success());
    }

    #[test]
    fn peak_rss_sees_a_large_allocation() {
        // 64 MiB of touched memory in the child must show in ru_maxrss.
        let script = r#"x=$(head -c 67108864 /dev/zero | tr '\0' a); echo ${#x}"#;
        let exit = run(Command::new("sh").args(["-c", script])).unwrap();
        assert_eq!(exit.stdout, b"67108864\n");
        assert!(exit.success());
        assert!(exit.max_rss_kib >= 60 * 1024, "{}", exit.max_rss_kib);
    }

    #[test]
    fn largest_mapping_wins() {
        let smaps = "\
00400000-00401000 r-xp 00000000 08:01 1 /bin/vmm
Size:                  4 kB
Rss:                   4 kB
Pss:                   4 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               12288 kB
Pss:               12288 kB
7f2000000000-7f2000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
";
        assert_eq!(largest_mapping_rss_kib(smaps), 12288);
        assert_eq!(field_kib("Pss:   1234 kB\nRss: 5 kB", "Pss:"), Some(1234));
        assert_eq!(field_kib("Rss: 5 kB", "Pss:"), None);
    }

    #[test]
    fn memory_of_ourselves_is_plausible() {
        let m = Memory::of(std::process::id()).unwrap();
        assert!(m.pss_kib > 0 && m.guest_rss_kib <= m.pss_kib * 4);
    }
}
