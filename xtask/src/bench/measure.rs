//! Measuring processes: wall time from spawn to exit with the peak RSS from wait4's rusage,
//! and the memory of a live process from /proc (PSS, and the guest-RAM mapping's RSS).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
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
    /// Its part in file pages (the kernel and images mapped into the guest, the binary), KiB.
    pub pss_file_kib: u64,
    /// Resident guest RAM, KiB: see [`guest_rss_kib`].
    pub guest_rss_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory, Error> {
        Memory::of_vm(pid, &[])
    }

    /// [`Memory::of`] a VMM that may map `guest_files` (kernel, initrd, pmem images) into guest RAM.
    pub fn of_vm(pid: u32, guest_files: &[&Path]) -> Result<Memory, Error> {
        let rollup = format!("/proc/{pid}/smaps_rollup");
        let text = read(&rollup)?;
        let pss_kib = field_kib(&text, "Pss:").ok_or(Error::Field {
            path: rollup,
            field: "Pss:",
        })?;
        let pss_file_kib = field_kib(&text, "Pss_File:").unwrap_or(0);
        let smaps = format!("/proc/{pid}/smaps");
        let files: Vec<PathBuf> = guest_files
            .iter()
            .map(|f| f.canonicalize().unwrap_or_else(|_| f.to_path_buf()))
            .collect();
        let guest_rss_kib = guest_rss_kib(&read(&smaps)?, &files);
        Ok(Memory {
            pss_kib,
            pss_file_kib,
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

/// Whether the words of a /proc/PID/smaps line are a mapping's header
/// (`start-end perms offset dev inode [path]`) rather than one of its `Field: value` lines.
pub fn is_smaps_header(words: &[&str]) -> bool {
    words.len() >= 5
        && words[0].contains('-')
        && words[0].chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The value of a `Name:   123 kB` line.
pub fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident guest RAM in a /proc/PID/smaps text: the Rss of every private writable mapping
/// that is anonymous and at least [`GUEST_PIECE_KIB`] large (guest RAM, which files mapped
/// into it split into pieces; a VMM's thread stacks match too, with a few KiB resident) or maps
/// one of `guest_files` (the kernel, initrd and pmem images our VMM maps into the guest).
fn guest_rss_kib(smaps: &str, guest_files: &[PathBuf]) -> u64 {
    // (counted, Size, Rss) of each mapping.
    let mut maps: Vec<(bool, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if is_smaps_header(&words) {
            let counted = words[1] == "rw-p"
                && match words.get(5) {
                    None => true,
                    Some(p) => guest_files.iter().any(|f| Path::new(p) == f),
                };
            // Anonymous pieces count when large, file pieces whatever their size.
            let min = if words.len() > 5 { 0 } else { GUEST_PIECE_KIB };
            maps.push((counted, min, 0));
        } else if let (Some(m), Some(v)) = (maps.last_mut(), field_kib(line, "Size:")) {
            m.0 &= v >= m.1;
        } else if let (Some(m), Some(v)) = (maps.last_mut(), field_kib(line, "Rss:")) {
            m.2 = v;
        }
    }
    maps.iter().filter(|m| m.0).map(|m| m.2).sum()
}

/// Smallest anonymous mapping counted as guest RAM.
const GUEST_PIECE_KIB: u64 = 2048;

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
    fn guest_ram_is_large_anonymous_mappings_and_the_guest_files() {
        let smaps = "\
00400000-00401000 r-xp 00000000 08:01 1 /bin/vmm
Size:                  4 kB
Rss:                   4 kB
Pss:                   4 kB
00600000-00601000 rw-p 00000000 08:01 1 /bin/vmm
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0001000000 rw-p 00000000 00:00 0
Size:              16384 kB
Rss:                4096 kB
7f0001000000-7f0001800000 rw-p 00000000 08:01 2 /g/vmlinux
Size:               8192 kB
Rss:                6000 kB
7f0001800000-7f0010000000 rw-p 00000000 00:00 0
Size:             237568 kB
Rss:               12288 kB
7f0010000000-7f0010400000 rw-p 00000000 08:01 3 /g/initramfs.cpio
Size:               4096 kB
Rss:                1000 kB
7f2000000000-7f2000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
";
        let files = [
            PathBuf::from("/g/vmlinux"),
            PathBuf::from("/g/initramfs.cpio"),
        ];
        assert_eq!(guest_rss_kib(smaps, &files), 4096 + 6000 + 12288 + 1000);
        assert_eq!(guest_rss_kib(smaps, &[]), 4096 + 12288);
        assert_eq!(field_kib("Pss:   1234 kB\nRss: 5 kB", "Pss:"), Some(1234));
        assert_eq!(field_kib("Rss: 5 kB", "Pss:"), None);
    }

    #[test]
    fn memory_of_ourselves_is_plausible() {
        let m = Memory::of(std::process::id()).unwrap();
        assert!(m.pss_kib > 0 && m.guest_rss_kib <= m.pss_kib * 4);
    }
}
