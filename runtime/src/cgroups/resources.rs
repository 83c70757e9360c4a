//! linux.resources translated to cgroup v2 interface files (memory.max, cpu.max, io.max...).
//! Also the checks on resource values that run before anything is created.

use std::fs;
use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::{io, Result};

/// The controllers `r` needs, each with the spec field that needs it.
pub(crate) fn controllers(r: &LinuxResources) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    if let Some(m) = r.memory() {
        if m.limit().is_some() || m.reservation().is_some() || m.swap().is_some() {
            out.push(("memory", "memory".into()));
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some() || c.quota().is_some() || c.period().is_some() || c.idle().is_some()
        {
            out.push(("cpu", "cpu".into()));
        }
        if c.cpus().as_deref().is_some_and(|s| !s.is_empty())
            || c.mems().as_deref().is_some_and(|s| !s.is_empty())
        {
            out.push(("cpuset", "cpu.cpus".into()));
        }
    }
    if r.pids().is_some() {
        out.push(("pids", "pids".into()));
    }
    if let Some(b) = r.block_io() {
        if b.weight().is_some()
            || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
            || b.throttle_read_bps_device()
                .as_ref()
                .is_some_and(|v| !v.is_empty())
            || b.throttle_write_bps_device()
                .as_ref()
                .is_some_and(|v| !v.is_empty())
            || b.throttle_read_iops_device()
                .as_ref()
                .is_some_and(|v| !v.is_empty())
            || b.throttle_write_iops_device()
                .as_ref()
                .is_some_and(|v| !v.is_empty())
        {
            out.push(("io", "blockIO".into()));
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) {
        out.push(("hugetlb", "hugepageLimits".into()));
    }
    for key in r.unified().iter().flat_map(|u| u.keys()) {
        if let Some((c, _)) = key.split_once('.') {
            if c != "cgroup" {
                let c: &'static str = match c {
                    "memory" => "memory",
                    "cpu" => "cpu",
                    "cpuset" => "cpuset",
                    "pids" => "pids",
                    "io" => "io",
                    "hugetlb" => "hugetlb",
                    "rdma" => "rdma",
                    "misc" => "misc",
                    _ => continue,
                };
                out.push((c, format!("unified.{key}")));
            }
        }
    }
    out
}

fn valid_list(s: &str) -> bool {
    s.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().unwrap_or_default();
        let ok_a = !a.is_empty() && a.chars().all(|c| c.is_ascii_digit());
        match it.next() {
            None => ok_a,
            Some(b) => ok_a && !b.is_empty() && b.chars().all(|c| c.is_ascii_digit()),
        }
    })
}

/// Value checks; the error is (field under linux.resources, message).
pub(crate) fn validate_resources(r: &LinuxResources) -> std::result::Result<(), (String, String)> {
    if let Some(m) = r.memory() {
        if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
            if limit > 0 && swap > 0 && swap < limit {
                return Err((
                    "memory.swap".into(),
                    format!("{swap} is less than memory.limit {limit} (swap includes memory)"),
                ));
            }
        }
        if m.limit().is_some_and(|l| l == 0 || l < -1) {
            return Err(("memory.limit".into(), "must be positive or -1".into()));
        }
        if m.swappiness().is_some_and(|s| s > 100) {
            return Err(("memory.swappiness".into(), "must be 0..=100".into()));
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some_and(|s| !(2..=262144).contains(&s)) {
            return Err(("cpu.shares".into(), "must be in 2..=262144".into()));
        }
        if c.period().is_some_and(|p| !(1000..=1_000_000).contains(&p)) {
            return Err((
                "cpu.period".into(),
                "must be in 1000..=1000000 microseconds".into(),
            ));
        }
        if c.quota().is_some_and(|q| q == 0 || q < -1) {
            return Err(("cpu.quota".into(), "must be positive or -1".into()));
        }
        for (name, v) in [("cpu.cpus", c.cpus()), ("cpu.mems", c.mems())] {
            if let Some(s) = v.as_deref().filter(|s| !s.is_empty()) {
                if !valid_list(s) {
                    return Err((name.into(), format!("invalid list {s:?}")));
                }
            }
        }
        if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
            return Err((
                "cpu.realtimeRuntime".into(),
                "not supported on cgroup v2".into(),
            ));
        }
    }
    if let Some(b) = r.block_io() {
        if b.weight().is_some_and(|w| !(10..=1000).contains(&w)) {
            return Err(("blockIO.weight".into(), "must be in 10..=1000".into()));
        }
    }
    for key in r.unified().iter().flat_map(|u| u.keys()) {
        if key.contains('/') || !key.contains('.') {
            return Err((
                format!("unified.{key}"),
                "not a cgroup interface file name".into(),
            ));
        }
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: String) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(io(&path))
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Writes the limits in `r` into the cgroup at `dir`.
pub(crate) fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
    if let Some(m) = r.memory() {
        if let Some(low) = m.reservation() {
            write(dir, "memory.low", max_or(low))?;
        }
        if let Some(limit) = m.limit() {
            write(dir, "memory.max", max_or(limit))?;
        }
        if let Some(swap) = m.swap() {
            let v = match (swap, m.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 => (s - l).to_string(),
                (s, _) => s.to_string(),
            };
            write(dir, "memory.swap.max", v)?;
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares() {
            let weight = 1 + ((shares.saturating_sub(2)) * 9999) / 262142;
            write(dir, "cpu.weight", weight.to_string())?;
        }
        if c.quota().is_some() || c.period().is_some() {
            // A field left out keeps what is in force (an `update` of the period alone).
            let current = fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
            let mut current = current.split_whitespace();
            let (old_quota, old_period) = (current.next(), current.next());
            let quota = c
                .quota()
                .map(max_or)
                .or(old_quota.map(str::to_string))
                .unwrap_or_else(|| "max".into());
            let period = c
                .period()
                .or(old_period.and_then(|p| p.parse().ok()))
                .unwrap_or(100_000);
            write(dir, "cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(idle) = c.idle() {
            write(dir, "cpu.idle", idle.to_string())?;
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            write(dir, "cpuset.cpus", cpus.to_string())?;
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            write(dir, "cpuset.mems", mems.to_string())?;
        }
    }
    if let Some(p) = r.pids() {
        write(
            dir,
            "pids.max",
            if p.limit() <= 0 {
                "max".into()
            } else {
                p.limit().to_string()
            },
        )?;
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            write(dir, "io.weight", format!("default {w}"))?;
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                write(dir, "io.weight", format!("{}:{} {w}", d.major(), d.minor()))?;
            }
        }
        let throttles = [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ];
        for (key, list) in throttles {
            for d in list.iter().flatten() {
                write(
                    dir,
                    "io.max",
                    format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                )?;
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        write(
            dir,
            &format!("hugetlb.{}.max", h.page_size()),
            h.limit().to_string(),
        )?;
    }
    for (key, value) in r.unified().iter().flatten() {
        write(dir, key, value.clone())?;
    }
    Ok(())
}
