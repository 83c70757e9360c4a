//! Where an idle sandbox's memory goes: the VMM's mappings grouped by what they hold (guest
//! RAM, the kernel and image files mapped into the guest, the VMM's own binary and heap), and
//! the guest's own view of its RAM from `/proc/meminfo`. Logged beside `memory-per-sandbox`.

use std::fmt::Write as _;
use std::path::Path;

use super::measure::{field_kib, is_smaps_header};

/// Resident and proportional KiB of a group of mappings, and how much of it is anonymous
/// (for a private file mapping: the pages the guest wrote, copied from the file).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Group {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub anon_kib: u64,
}

/// The VMM's mappings, grouped: each file by its name, anonymous mappings as `[anon]`.
pub fn vmm_groups(smaps: &str) -> Vec<(String, Group)> {
    let mut groups: Vec<(String, Group)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if is_smaps_header(&words) {
            let name = match words.get(5) {
                Some(p) if p.starts_with('/') => Path::new(p)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.to_string()),
                Some(p) => p.to_string(),
                None => "[anon]".to_string(),
            };
            current = Some(match groups.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    groups.push((name, Group::default()));
                    groups.len() - 1
                }
            });
            continue;
        }
        let Some(g) = current.map(|i| &mut groups[i].1) else {
            continue;
        };
        if let Some(v) = field_kib(line, "Rss:") {
            g.rss_kib += v;
        } else if let Some(v) = field_kib(line, "Pss:") {
            g.pss_kib += v;
        } else if let Some(v) = field_kib(line, "Anonymous:") {
            g.anon_kib += v;
        }
    }
    groups.retain(|(_, g)| g.rss_kib > 0);
    groups.sort_by_key(|(_, g)| std::cmp::Reverse(g.pss_kib));
    groups
}

/// One line: `name pss/rss(anon)` per group, largest first.
pub fn describe_groups(groups: &[(String, Group)]) -> String {
    let mut out = String::new();
    for (name, g) in groups {
        let _ = write!(
            out,
            "{name} {:.1}/{:.1} MiB (anon {:.1}); ",
            g.pss_kib as f64 / 1024.0,
            g.rss_kib as f64 / 1024.0,
            g.anon_kib as f64 / 1024.0
        );
    }
    out.trim_end_matches("; ").to_string()
}

/// The `/proc/meminfo` fields that say where a small guest's RAM is, in MiB, with `Used` =
/// MemTotal − MemFree first.
pub fn describe_meminfo(meminfo: &str) -> String {
    const FIELDS: &[&str] = &[
        "MemTotal",
        "Cached",
        "Shmem",
        "AnonPages",
        "Slab",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
        "VmallocUsed",
        "Percpu",
    ];
    let kib = |name: &str| {
        meminfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.split_whitespace().next()?.parse::<u64>().ok())?
        })
    };
    let mut out = String::new();
    if let (Some(total), Some(free)) = (kib("MemTotal"), kib("MemFree")) {
        let _ = write!(
            out,
            "Used {:.1}",
            total.saturating_sub(free) as f64 / 1024.0
        );
    }
    for f in FIELDS {
        if let Some(v) = kib(f) {
            let _ = write!(out, ", {f} {:.1}", v as f64 / 1024.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00401000 r-xp 00000000 08:01 1 /bin/sandbox-vmm
Rss:                  40 kB
Pss:                  40 kB
Anonymous:             0 kB
7f0000000000-7f0001000000 rw-p 00000000 00:00 0
Rss:                4096 kB
Pss:                4096 kB
Anonymous:          4096 kB
7f0001000000-7f0001800000 rw-p 00000000 08:01 2 /g/vmlinux
Rss:                6000 kB
Pss:                3000 kB
Anonymous:          1000 kB
7f0001800000-7f0010000000 rw-p 00000000 00:00 0
Rss:               12288 kB
Pss:               12288 kB
Anonymous:         12288 kB
7f0002000000-7f0003000000 r--s 00000000 08:01 3 /g/rootfs.erofs
Rss:                   0 kB
Pss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn groups_add_up_per_file_and_anonymous_and_sort_by_pss() {
        let g = vmm_groups(SMAPS);
        let names: Vec<&str> = g.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["[anon]", "vmlinux", "sandbox-vmm"]);
        assert_eq!(
            g[0].1,
            Group {
                rss_kib: 16384,
                pss_kib: 16384,
                anon_kib: 16384
            }
        );
        assert_eq!(describe_groups(&g[1..2]), "vmlinux 2.9/5.9 MiB (anon 1.0)");
    }

    #[test]
    fn meminfo_is_summarised_in_mib() {
        let m = "MemTotal:  131072 kB\nMemFree:  102400 kB\nSlab:   3072 kB\nFoo: 1 kB\n";
        assert_eq!(describe_meminfo(m), "Used 28.0, MemTotal 128.0, Slab 3.0");
    }
}
