//! A container's cgroup v2 figures from the guest as plain Rust values, shaped like
//! containerd's cgroups v2 `Metrics` (pids, cpu, memory, memory_events, io), and runc's
//! `events --stats` JSON made from them.

use std::collections::BTreeMap;

use protocol::agent::ContainerStatsResponse;
use runtime::cgroups::IoStat;
use serde::Serialize;
use serde_json::json;

/// `pids.current` / `pids.max`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pids {
    pub current: u64,
    /// `None`: no limit ("max").
    pub limit: Option<u64>,
}

/// `cpu.stat`, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cpu {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// `memory.*` files, bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// memory.current
    pub usage: u64,
    /// memory.max; `None`: no limit.
    pub limit: Option<u64>,
    /// memory.swap.current
    pub swap_usage: u64,
    /// memory.swap.max; `None`: no limit.
    pub swap_limit: Option<u64>,
    /// memory.peak (0 on kernels without it).
    pub max_usage: u64,
    /// Every key of memory.stat (anon, file, kernel_stack, slab, sock, pgfault...), named as
    /// the kernel and containerd's v2 `MemoryStat` name them.
    pub stat: BTreeMap<String, u64>,
}

/// `memory.events` counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
}

/// Everything the guest reports for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerStats {
    pub pids: Pids,
    pub cpu: Cpu,
    pub memory: Memory,
    pub memory_events: MemoryEvents,
    /// One entry per device of `io.stat`.
    pub io: Vec<IoStat>,
}

/// The protocol writes "max" as 2^64-1.
fn limit(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

impl ContainerStats {
    pub fn from_proto(r: &ContainerStatsResponse) -> ContainerStats {
        let (p, c, m, e) = (&r.pids, &r.cpu, &r.memory, &r.memory_events);
        ContainerStats {
            pids: Pids {
                current: p.current,
                limit: limit(p.limit),
            },
            cpu: Cpu {
                usage_usec: c.usage_usec,
                user_usec: c.user_usec,
                system_usec: c.system_usec,
                nr_periods: c.nr_periods,
                nr_throttled: c.nr_throttled,
                throttled_usec: c.throttled_usec,
            },
            memory: Memory {
                usage: m.usage,
                limit: limit(m.usage_limit),
                swap_usage: m.swap_usage,
                swap_limit: limit(m.swap_limit),
                max_usage: m.max_usage,
                stat: m.stat.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            },
            memory_events: MemoryEvents {
                low: e.low,
                high: e.high,
                max: e.max,
                oom: e.oom,
                oom_kill: e.oom_kill,
            },
            io: r
                .io
                .iter()
                .map(|d| IoStat {
                    major: d.major,
                    minor: d.minor,
                    rbytes: d.rbytes,
                    wbytes: d.wbytes,
                    rios: d.rios,
                    wios: d.wios,
                })
                .collect(),
        }
    }

    /// The runtime's figures of a container on this host (`sandbox --no-vm`).
    pub fn from_runtime(s: &runtime::cgroups::Stats) -> ContainerStats {
        let cpu = |k: &str| s.cpu_stat.get(k).copied().unwrap_or(0);
        let event = |k: &str| s.memory_events.get(k).copied().unwrap_or(0);
        ContainerStats {
            pids: Pids {
                current: s.pids_current,
                limit: s.pids_max,
            },
            cpu: Cpu {
                usage_usec: cpu("usage_usec"),
                user_usec: cpu("user_usec"),
                system_usec: cpu("system_usec"),
                nr_periods: cpu("nr_periods"),
                nr_throttled: cpu("nr_throttled"),
                throttled_usec: cpu("throttled_usec"),
            },
            memory: Memory {
                usage: s.memory_current.unwrap_or(0),
                limit: s.memory_max,
                swap_usage: s.memory_swap_current.unwrap_or(0),
                swap_limit: s.memory_swap_max,
                max_usage: s.memory_peak.unwrap_or(0),
                stat: s.memory_stat.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            },
            memory_events: MemoryEvents {
                low: event("low"),
                high: event("high"),
                max: event("max"),
                oom: event("oom"),
                oom_kill: event("oom_kill"),
            },
            io: s.io.clone(),
        }
    }

    /// runc's `events --stats` `data` object (libcontainer's `types.Stats` as runc fills it
    /// on cgroup v2): cpu times in nanoseconds, "max" limits as 2^64-1, memory.stat as `raw`.
    pub fn to_runc(&self) -> serde_json::Value {
        let ns = |usec: u64| usec.saturating_mul(1000);
        let m = &self.memory;
        let blkio = |op_r: &str, op_w: &str, pick: fn(&IoStat) -> (u64, u64)| {
            let mut out = Vec::new();
            for d in &self.io {
                let (r, w) = pick(d);
                out.push(json!({"major": d.major, "minor": d.minor, "op": op_r, "value": r}));
                out.push(json!({"major": d.major, "minor": d.minor, "op": op_w, "value": w}));
            }
            out
        };
        json!({
            "cpu": {
                "usage": {
                    "total": ns(self.cpu.usage_usec),
                    "kernel": ns(self.cpu.system_usec),
                    "user": ns(self.cpu.user_usec),
                },
                "throttling": {
                    "periods": self.cpu.nr_periods,
                    "throttledPeriods": self.cpu.nr_throttled,
                    "throttledTime": ns(self.cpu.throttled_usec),
                },
            },
            "memory": {
                "cache": m.stat.get("file").copied().unwrap_or(0),
                "usage": {
                    "limit": m.limit.unwrap_or(u64::MAX),
                    "usage": m.usage,
                    "max": m.max_usage,
                    "failcnt": self.memory_events.max,
                },
                "swap": {
                    "limit": m.swap_limit.unwrap_or(u64::MAX),
                    "usage": m.swap_usage,
                    "failcnt": 0,
                },
                "raw": m.stat,
            },
            "pids": {
                "current": self.pids.current,
                "limit": self.pids.limit.unwrap_or(0),
            },
            "blkio": {
                "ioServiceBytesRecursive": blkio("Read", "Write", |d| (d.rbytes, d.wbytes)),
                "ioServicedRecursive": blkio("Read", "Write", |d| (d.rios, d.wios)),
            },
            "hugetlb": {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_max_becomes_none_and_runc_json_uses_nanoseconds() {
        let mut r = ContainerStatsResponse::new();
        r.pids.mut_or_insert_default().current = 2;
        r.pids.mut_or_insert_default().limit = u64::MAX;
        r.memory.mut_or_insert_default().usage = 5 << 20;
        r.memory.mut_or_insert_default().usage_limit = 64 << 20;
        r.memory.mut_or_insert_default().swap_limit = u64::MAX;
        r.memory
            .mut_or_insert_default()
            .stat
            .insert("file".into(), 4096);
        r.cpu.mut_or_insert_default().usage_usec = 3;
        let s = ContainerStats::from_proto(&r);
        assert_eq!(s.pids.limit, None);
        assert_eq!(s.memory.limit, Some(64 << 20));
        assert_eq!(s.memory.swap_limit, None);
        let v = s.to_runc();
        assert_eq!(v["cpu"]["usage"]["total"], 3000);
        assert_eq!(v["memory"]["usage"]["usage"], 5 << 20);
        assert_eq!(v["memory"]["usage"]["limit"], 64 << 20);
        assert_eq!(v["memory"]["cache"], 4096);
        assert_eq!(v["memory"]["raw"]["file"], 4096);
        assert_eq!(v["pids"]["current"], 2);
    }
}
