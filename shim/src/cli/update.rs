//! `sandbox update`: runc's resource flags (those that map to cgroup v2) and `-r FILE`, turned
//! into one OCI `linux.resources` object; flags override the file.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use super::backend::CliError;

/// `update` flags (runc's names).
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A JSON file with an OCI linux.resources object ("-" reads stdin).
    #[arg(short = 'r', long, value_name = "FILE")]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with a k/m/g suffix; -1 for none).
    #[arg(short = 'm', long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory plus swap limit (-1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Memory soft limit (memory.low).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// CPU CFS quota in microseconds per period (-1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU shares (relative weight, mapped to cpu.weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// CPUs allowed (cpuset.cpus), e.g. 0-1.
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed (cpuset.mems).
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes (-1 or 0 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight, 10 to 1000.
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Container id.
    pub id: String,
}

/// runc's sizes: a number with an optional b/k/m/g/t suffix (binary multiples, a trailing
/// "b" allowed); -1 means no limit.
pub fn parse_bytes(flag: &str, s: &str) -> Result<i64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--{flag} {s:?}: expected bytes, e.g. 64m or 1g, or -1"
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        Some((i, 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: i64 = digits.trim().parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(1i64 << shift).ok_or_else(bad)
}

impl UpdateArgs {
    /// The linux.resources object to send: the `-r` file (if any) with the flags on top.
    pub fn resources(&self) -> Result<Value, CliError> {
        let mut r = match &self.resources {
            Some(path) => {
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(path)
                }
                .map_err(|source| CliError::File {
                    path: path.clone(),
                    source,
                })?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
                if !v.is_object() {
                    return Err(CliError::Usage(format!(
                        "{}: must hold a JSON object (OCI linux.resources)",
                        path.display()
                    )));
                }
                v
            }
            None => json!({}),
        };
        if let Some(m) = &self.memory {
            r["memory"]["limit"] = parse_bytes("memory", m)?.into();
        }
        if let Some(m) = &self.memory_swap {
            r["memory"]["swap"] = parse_bytes("memory-swap", m)?.into();
        }
        if let Some(m) = &self.memory_reservation {
            r["memory"]["reservation"] = parse_bytes("memory-reservation", m)?.into();
        }
        if let Some(q) = self.cpu_quota {
            r["cpu"]["quota"] = q.into();
        }
        if let Some(p) = self.cpu_period {
            r["cpu"]["period"] = p.into();
        }
        if let Some(s) = self.cpu_share {
            r["cpu"]["shares"] = s.into();
        }
        if let Some(c) = &self.cpuset_cpus {
            r["cpu"]["cpus"] = c.as_str().into();
        }
        if let Some(m) = &self.cpuset_mems {
            r["cpu"]["mems"] = m.as_str().into();
        }
        if let Some(p) = self.pids_limit {
            r["pids"]["limit"] = p.into();
        }
        if let Some(w) = self.blkio_weight {
            r["blockIO"]["weight"] = w.into();
        }
        if r.as_object().is_some_and(|o| o.is_empty()) {
            return Err(CliError::Usage(
                "update: nothing to change (give -r FILE or a resource flag such as --memory)"
                    .into(),
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> UpdateArgs {
        UpdateArgs {
            resources: None,
            memory: None,
            memory_swap: None,
            memory_reservation: None,
            cpu_quota: None,
            cpu_period: None,
            cpu_share: None,
            cpuset_cpus: None,
            cpuset_mems: None,
            pids_limit: None,
            blkio_weight: None,
            id: "c".into(),
        }
    }

    #[test]
    fn sizes_follow_runc() {
        assert_eq!(parse_bytes("memory", "1024").unwrap(), 1024);
        assert_eq!(parse_bytes("memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("memory", "64MB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("memory", "2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("memory", "-1").unwrap(), -1);
        let e = parse_bytes("memory", "lots").unwrap_err().to_string();
        assert!(e.contains("--memory"), "{e}");
        assert!(parse_bytes("memory", "-5").is_err());
    }

    #[test]
    fn flags_override_the_file_and_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.json");
        std::fs::write(&file, r#"{"memory":{"limit":1},"pids":{"limit":9}}"#).unwrap();
        let a = UpdateArgs {
            resources: Some(file),
            memory: Some("32m".into()),
            cpu_quota: Some(50000),
            cpu_period: Some(100000),
            ..args()
        };
        let r = a.resources().unwrap();
        assert_eq!(r["memory"]["limit"], 32 << 20);
        assert_eq!(r["pids"]["limit"], 9);
        assert_eq!(r["cpu"], json!({"quota": 50000, "period": 100000}));
        assert!(matches!(args().resources(), Err(CliError::Usage(_))));
        let missing = UpdateArgs {
            resources: Some(dir.path().join("absent.json")),
            ..args()
        };
        let e = missing.resources().unwrap_err().to_string();
        assert!(e.contains("absent.json"), "{e}");
    }
}
