//! Task metrics in containerd's cgroup v2 format (`io.containerd.cgroups.v2.Metrics`), from
//! the figures the guest reports: the whole VM is the task's cgroup as seen from the host.

use containerd_shim_protos::cgroups_v2::metrics::{MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use protocol::agent::StatsResponse;

/// The type URL containerd decodes cgroup v2 metrics by.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Metrics of the guest: memory in use (total - available), the limit (the guest's RAM)
/// and the number of processes.
pub fn metrics(stats: &StatsResponse) -> Metrics {
    Metrics {
        memory: Some(MemoryStat {
            usage: stats
                .mem_total_bytes
                .saturating_sub(stats.mem_available_bytes),
            usage_limit: stats.mem_total_bytes,
            ..Default::default()
        })
        .into(),
        pids: Some(PidsStat {
            current: stats.process_count.into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The metrics packed as containerd's StatsResponse wants them.
pub fn from_guest(stats: &StatsResponse) -> Any {
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
    fn memory_in_use_is_total_minus_available() {
        let mut s = StatsResponse::new();
        s.mem_total_bytes = 256 << 20;
        s.mem_available_bytes = 200 << 20;
        s.process_count = 3;
        let any = from_guest(&s);
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage, 56 << 20);
        assert_eq!(m.memory.usage_limit, 256 << 20);
        assert_eq!(m.pids.current, 3);
    }
}
