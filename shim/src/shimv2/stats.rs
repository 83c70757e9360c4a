//! Task metrics in containerd's cgroup v2 format (`io.containerd.cgroups.v2.Metrics`), from
//! the container's cgroup figures the guest reports.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::reflect::ReflectValueBox;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageFull};

use crate::controller::ContainerStats;

/// The type URL containerd decodes cgroup v2 metrics by.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// containerd writes "max" as the largest u64.
fn limit(v: Option<u64>) -> u64 {
    v.unwrap_or(u64::MAX)
}

/// The container's figures as containerd's message.
pub fn metrics(s: &ContainerStats) -> Metrics {
    let mut memory = MemoryStat {
        usage: s.memory.usage,
        usage_limit: limit(s.memory.limit),
        swap_usage: s.memory.swap_usage,
        swap_limit: limit(s.memory.swap_limit),
        max_usage: s.memory.max_usage,
        ..Default::default()
    };
    // memory.stat keys carry the names of MemoryStat's fields; unknown keys are skipped.
    let descriptor = MemoryStat::descriptor();
    for (key, value) in &s.memory.stat {
        if let Some(field) = descriptor.field_by_name(key) {
            field.set_singular_field(&mut memory, ReflectValueBox::U64(*value));
        }
    }
    Metrics {
        pids: Some(PidsStat {
            current: s.pids.current,
            limit: limit(s.pids.limit),
            ..Default::default()
        })
        .into(),
        cpu: Some(CPUStat {
            usage_usec: s.cpu.usage_usec,
            user_usec: s.cpu.user_usec,
            system_usec: s.cpu.system_usec,
            nr_periods: s.cpu.nr_periods,
            nr_throttled: s.cpu.nr_throttled,
            throttled_usec: s.cpu.throttled_usec,
            ..Default::default()
        })
        .into(),
        memory: Some(memory).into(),
        memory_events: Some(MemoryEvents {
            low: s.memory_events.low,
            high: s.memory_events.high,
            max: s.memory_events.max,
            oom: s.memory_events.oom,
            oom_kill: s.memory_events.oom_kill,
            ..Default::default()
        })
        .into(),
        io: Some(IOStat {
            usage: s
                .io
                .iter()
                .map(|e| IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The metrics packed as containerd's StatsResponse wants them.
pub fn to_any(stats: &ContainerStats) -> Any {
    Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics(stats).write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_figures_map_to_containerds_fields() {
        let mut s = ContainerStats::default();
        s.pids.current = 3;
        s.memory.usage = 56 << 20;
        s.memory.stat.insert("anon".into(), 4096);
        s.memory.stat.insert("pgfault".into(), 9);
        s.memory.stat.insert("not_a_field".into(), 1);
        s.memory_events.oom_kill = 2;
        let any = to_any(&s);
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, u64::MAX, "no limit is \"max\"");
        assert_eq!(m.memory.usage, 56 << 20);
        assert_eq!((m.memory.anon, m.memory.pgfault), (4096, 9));
        assert_eq!(m.memory_events.oom_kill, 2);
    }
}
