//! Sandbox-wide guest settings and figures: hostname, DNS, memory and load.
//! Read from /proc and applied with plain system calls.

use std::fs;
use std::path::Path;

use thiserror::Error;

/// Errors applying sandbox settings or reading guest figures.
#[derive(Debug, Error)]
pub enum Error {
    #[error("hostname {hostname:?}: sethostname failed: {source}")]
    Hostname {
        hostname: String,
        source: nix::Error,
    },
    #[error("cannot write {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Proc {
        path: &'static str,
        source: std::io::Error,
    },
}

pub fn set_hostname(hostname: &str) -> Result<(), Error> {
    nix::unistd::sethostname(hostname).map_err(|source| Error::Hostname {
        hostname: hostname.to_string(),
        source,
    })
}

/// The resolv.conf text for the given servers and search domains.
pub fn resolv_conf(servers: &[String], search: &[String]) -> String {
    let mut text = String::new();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text
}

pub fn write_resolv_conf(path: &Path, servers: &[String], search: &[String]) -> Result<(), Error> {
    fs::write(path, resolv_conf(servers, search)).map_err(|source| Error::ResolvConf {
        path: path.display().to_string(),
        source,
    })
}

/// Memory figures of /proc/meminfo, in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
}

pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let bytes = value.parse::<u64>().unwrap_or(0) * 1024;
        match key {
            "MemTotal:" => info.total = bytes,
            "MemFree:" => info.free = bytes,
            "MemAvailable:" => info.available = bytes,
            _ => {}
        }
    }
    info
}

pub fn meminfo() -> Result<MemInfo, Error> {
    let path = "/proc/meminfo";
    fs::read_to_string(path)
        .map(|t| parse_meminfo(&t))
        .map_err(|source| Error::Proc { path, source })
}

/// The 1, 5 and 15 minute load averages of /proc/loadavg, times 100.
pub fn parse_loadavg(text: &str) -> [u32; 3] {
    let mut out = [0; 3];
    for (slot, word) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = (word.parse::<f64>().unwrap_or(0.0) * 100.0).round() as u32;
    }
    out
}

pub fn loadavg() -> Result<[u32; 3], Error> {
    let path = "/proc/loadavg";
    fs::read_to_string(path)
        .map(|t| parse_loadavg(&t))
        .map_err(|source| Error::Proc { path, source })
}

/// Pids of every process in the guest.
pub fn pids() -> Result<Vec<i32>, Error> {
    let path = "/proc";
    let entries = fs::read_dir(path).map_err(|source| Error::Proc { path, source })?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// One process as /proc shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub cmdline: String,
}

/// Reads /proc/PID; `None` if the process went away meanwhile.
pub fn proc_entry(pid: i32) -> Option<ProcEntry> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(ProcEntry {
        pid,
        ppid: field("PPid:") as i32,
        uid: field("Uid:") as u32,
        cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_search_then_servers() {
        let text = resolv_conf(
            &["10.0.0.1".into(), "10.0.0.2".into()],
            &["a.example".into(), "b.example".into()],
        );
        assert_eq!(
            text,
            "search a.example b.example\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n"
        );
    }

    #[test]
    fn meminfo_and_loadavg_parse() {
        let m = parse_meminfo("MemTotal:  1000 kB\nMemFree: 200 kB\nMemAvailable: 500 kB\nX: 1\n");
        assert_eq!(
            m,
            MemInfo {
                total: 1024000,
                free: 204800,
                available: 512000
            }
        );
        assert_eq!(parse_loadavg("0.50 1.25 2.00 1/100 42\n"), [50, 125, 200]);
    }

    #[test]
    fn own_proc_entry_is_readable() {
        let me = proc_entry(std::process::id() as i32).unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(!me.cmdline.is_empty());
        assert!(pids().unwrap().contains(&(std::process::id() as i32)));
    }
}
