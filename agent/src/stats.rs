//! A container's cgroup v2 figures (the runtime's `Stats`) in the protocol's shape, which
//! follows containerd's cgroups v2 `Metrics` so the shim can copy fields one to one.

use protocol::agent::{
    ContainerStatsResponse, CpuStats, IoEntry, MemoryEvents, MemoryStats, PidsStats,
};
use runtime::cgroups::Stats;

/// A limit read as "max" (the runtime gives `None` for it).
const UNLIMITED: u64 = u64::MAX;

pub fn to_proto(s: &Stats) -> ContainerStatsResponse {
    let cpu_key = |k: &str| s.cpu_stat.get(k).copied().unwrap_or(0);
    let event = |k: &str| s.memory_events.get(k).copied().unwrap_or(0);

    let mut pids = PidsStats::new();
    pids.current = s.pids_current;
    pids.limit = s.pids_max.unwrap_or(UNLIMITED);

    let mut cpu = CpuStats::new();
    cpu.usage_usec = cpu_key("usage_usec");
    cpu.user_usec = cpu_key("user_usec");
    cpu.system_usec = cpu_key("system_usec");
    cpu.nr_periods = cpu_key("nr_periods");
    cpu.nr_throttled = cpu_key("nr_throttled");
    cpu.throttled_usec = cpu_key("throttled_usec");

    let mut memory = MemoryStats::new();
    memory.usage = s.memory_current.unwrap_or(0);
    memory.usage_limit = s.memory_max.unwrap_or(UNLIMITED);
    memory.swap_usage = s.memory_swap_current.unwrap_or(0);
    memory.swap_limit = s.memory_swap_max.unwrap_or(UNLIMITED);
    memory.max_usage = s.memory_peak.unwrap_or(0);
    memory.stat = s.memory_stat.iter().map(|(k, v)| (k.clone(), *v)).collect();

    let mut events = MemoryEvents::new();
    events.low = event("low");
    events.high = event("high");
    events.max = event("max");
    events.oom = event("oom");
    events.oom_kill = event("oom_kill");

    let mut resp = ContainerStatsResponse::new();
    resp.pids = Some(pids).into();
    resp.cpu = Some(cpu).into();
    resp.memory = Some(memory).into();
    resp.memory_events = Some(events).into();
    resp.io =
        s.io.iter()
            .map(|d| {
                let mut e = IoEntry::new();
                e.major = d.major;
                e.minor = d.minor;
                e.rbytes = d.rbytes;
                e.wbytes = d.wbytes;
                e.rios = d.rios;
                e.wios = d.wios;
                e
            })
            .collect();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_limits_become_u64_max_and_figures_are_copied() {
        let mut s = Stats {
            pids_current: 3,
            memory_current: Some(4096),
            memory_max: Some(1 << 20),
            ..Stats::default()
        };
        s.cpu_stat.insert("usage_usec".into(), 77);
        s.memory_events.insert("oom_kill".into(), 2);
        s.memory_stat.insert("anon".into(), 1234);
        let p = to_proto(&s);
        assert_eq!((p.pids.current, p.pids.limit), (3, u64::MAX));
        assert_eq!((p.memory.usage, p.memory.usage_limit), (4096, 1 << 20));
        assert_eq!(p.memory.swap_limit, u64::MAX);
        assert_eq!(p.memory.stat.get("anon"), Some(&1234));
        assert_eq!(p.cpu.usage_usec, 77);
        assert_eq!(p.memory_events.oom_kill, 2);
    }
}
