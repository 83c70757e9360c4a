//! cgroups v2 (linux.cgroupsPath, linux.resources): create the group, move the init into it,
//! apply limits, freeze/thaw, kill, stats and OOM events. cgroup v1 is not supported.

mod devices;
mod resources;

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

pub(crate) use resources::validate_resources;

/// Errors from the cgroup v2 manager; each names the file or spec field involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted and the spec needs one.
    #[error(
        "{field}: needs a cgroup v2 hierarchy, but none is mounted (this host has cgroup v1 only?)"
    )]
    NoHierarchy {
        /// The spec field that needs cgroups.
        field: String,
    },
    /// The hierarchy exists but the controller is bound elsewhere (hybrid v1/v2 host).
    #[error("{field}: the {controller} controller is not available in the cgroup v2 hierarchy at {root} (available: {available:?}); on a hybrid cgroup v1/v2 host the controllers belong to v1")]
    MissingController {
        /// The spec field that needs the controller.
        field: String,
        /// The controller, e.g. `memory`.
        controller: String,
        /// The cgroup2 mount point.
        root: PathBuf,
        /// What `cgroup.controllers` lists.
        available: String,
    },
    /// A cgroup file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A cgroup file held something unexpected.
    #[error("{path}: unexpected content {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds the cgroup2 mount point: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified`
/// on a hybrid one. None when no cgroup2 filesystem is mounted in this mount namespace.
pub fn find_hierarchy() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                found.push(PathBuf::from(unescape(mp)));
            }
        }
    }
    // The last mount over a path wins; prefer /sys/fs/cgroup itself.
    if found.iter().any(|p| p == Path::new("/sys/fs/cgroup")) {
        return Some(PathBuf::from("/sys/fs/cgroup"));
    }
    found.pop()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// One cgroup v2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    root: PathBuf,
    path: PathBuf,
}

impl Cgroup {
    /// A handle on `<root>/<relative>`; nothing is created.
    pub fn new(root: &Path, relative: &Path) -> Self {
        let rel = relative.strip_prefix("/").unwrap_or(relative);
        Cgroup {
            root: root.to_path_buf(),
            path: root.join(rel),
        }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that every controller `resources` needs is available at the hierarchy root.
    pub fn check_controllers(root: &Path, resources: &LinuxResources) -> Result<()> {
        let needed = resources::controllers(resources);
        if needed.is_empty() {
            return Ok(());
        }
        let file = root.join("cgroup.controllers");
        let available = fs::read_to_string(&file).map_err(io(&file))?;
        let available = available.trim().to_string();
        for (controller, field) in needed {
            if !available.split_whitespace().any(|c| c == controller) {
                return Err(CgroupError::MissingController {
                    field: format!("linux.resources.{field}"),
                    controller: controller.to_string(),
                    root: root.to_path_buf(),
                    available,
                });
            }
        }
        Ok(())
    }

    /// Creates the directory (and parents), enabling the needed controllers on the way down,
    /// and, as runc does, every other available controller where the kernel allows it (so
    /// memory, cpu, io and pids figures exist and a later `update` can set limits). Also
    /// serves `update`: existing directories are kept and the limits rewritten.
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<()> {
        let needed: Vec<&str> = resources
            .map(resources::controllers)
            .unwrap_or_default()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        let rel = self.path.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let mut dir = self.root.clone();
        for comp in rel.components() {
            let control = dir.join("cgroup.subtree_control");
            if !needed.is_empty() {
                let enable: Vec<String> = needed.iter().map(|c| format!("+{c}")).collect();
                fs::write(&control, enable.join(" ")).map_err(io(&control))?;
            }
            enable_available(&dir);
            dir.push(comp);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&dir)(e)),
            }
        }
        if let Some(r) = resources {
            resources::apply(&self.path, r)?;
        }
        Ok(())
    }

    /// Enforces linux.resources.devices (plus the default devices and `linux.devices`) with an
    /// eBPF program on this cgroup. Returns false when the kernel cannot (no cgroup BPF).
    pub fn apply_device_rules(
        &self,
        rules: &[oci_spec::runtime::LinuxDeviceCgroup],
        devices: &[oci_spec::runtime::LinuxDevice],
    ) -> Result<bool> {
        devices::apply(&self.path, &devices::rules(rules, devices))
    }

    /// Moves `pid` into this cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        let file = self.path.join("cgroup.procs");
        fs::write(&file, pid.to_string()).map_err(io(&file))
    }

    /// The PIDs in this cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let file = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&file).map_err(io(&file))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Freezes (`true`) or thaws every process in the cgroup and waits until the kernel agrees.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let file = self.path.join("cgroup.freeze");
        fs::write(&file, if frozen { "1" } else { "0" }).map_err(io(&file))?;
        for _ in 0..1000 {
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(CgroupError::Parse {
            path: self.path.join("cgroup.events"),
            content: format!("frozen never became {}", frozen as u8),
        })
    }

    /// Whether `cgroup.events` reports the group frozen.
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(self.events()?.get("frozen") == Some(&1))
    }

    /// Kills every process in the cgroup (cgroup.kill, or SIGKILL to each PID on older kernels).
    pub fn kill_all(&self) -> Result<()> {
        let file = self.path.join("cgroup.kill");
        if file.exists() {
            return fs::write(&file, "1").map_err(io(&file));
        }
        for pid in self.pids()? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    /// `cgroup.events` plus `memory.events` (oom, oom_kill...) when the memory controller is on.
    pub fn events(&self) -> Result<HashMap<String, u64>> {
        let mut map = read_flat_keyed(&self.path.join("cgroup.events"))?;
        let mem = self.path.join("memory.events");
        if mem.exists() {
            map.extend(read_flat_keyed(&mem)?);
        }
        Ok(map)
    }

    /// Usage numbers from the controllers that are enabled.
    pub fn stats(&self) -> Result<Stats> {
        let read_u64 = |name: &str| -> Option<u64> {
            fs::read_to_string(self.path.join(name))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let flat = |name: &str| read_flat_keyed(&self.path.join(name)).unwrap_or_default();
        let cpu = flat("cpu.stat");
        Ok(Stats {
            pids_current: read_u64("pids.current").unwrap_or(self.pids()?.len() as u64),
            pids_max: read_u64("pids.max"),
            memory_current: read_u64("memory.current"),
            memory_max: read_u64("memory.max"),
            memory_events: flat("memory.events"),
            cpu_usage_usec: cpu.get("usage_usec").copied(),
            cpu_stat: cpu,
            memory_stat: flat("memory.stat"),
            memory_peak: read_u64("memory.peak"),
            memory_swap_current: read_u64("memory.swap.current"),
            memory_swap_max: read_u64("memory.swap.max"),
            io: fs::read_to_string(self.path.join("io.stat"))
                .map(|t| parse_io_stat(&t))
                .unwrap_or_default(),
        })
    }

    /// Removes the cgroup, killing what is left in it first.
    pub fn destroy(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let _ = self.kill_all();
        let mut last = None;
        for _ in 0..500 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(io(&self.path)(last.expect("at least one attempt")))
    }
}

/// Resource usage of a container's cgroup.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// pids.current
    pub pids_current: u64,
    /// pids.max (None when unlimited or the controller is off)
    pub pids_max: Option<u64>,
    /// memory.current
    pub memory_current: Option<u64>,
    /// memory.max
    pub memory_max: Option<u64>,
    /// memory.events: low, high, max, oom, oom_kill
    pub memory_events: HashMap<String, u64>,
    /// cpu.stat usage_usec
    pub cpu_usage_usec: Option<u64>,
    /// all of cpu.stat
    pub cpu_stat: HashMap<String, u64>,
    /// all of memory.stat (anon, file, kernel_stack, slab, sock, pgfault...)
    pub memory_stat: HashMap<String, u64>,
    /// memory.peak (kernels from 5.19)
    pub memory_peak: Option<u64>,
    /// memory.swap.current
    pub memory_swap_current: Option<u64>,
    /// memory.swap.max (None when unlimited or swap accounting is off)
    pub memory_swap_max: Option<u64>,
    /// io.stat, one entry per device
    pub io: Vec<IoStat>,
}

/// One device's line of `io.stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoStat {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// Parses `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N` per line.
fn parse_io_stat(text: &str) -> Vec<IoStat> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (major, minor) = words.next()?.split_once(':')?;
            let mut s = IoStat {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..IoStat::default()
            };
            for word in words {
                let Some((k, v)) = word.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.rbytes = v,
                    "wbytes" => s.wbytes = v,
                    "rios" => s.rios = v,
                    "wios" => s.wios = v,
                    _ => {}
                }
            }
            Some(s)
        })
        .collect()
}

/// Best effort: turns on in `dir`'s subtree every controller `dir` has and does not pass
/// down yet. A refusal (e.g. a parent with processes of its own) only means fewer figures.
fn enable_available(dir: &Path) {
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    let available = read("cgroup.controllers");
    let enabled = read("cgroup.subtree_control");
    let control = dir.join("cgroup.subtree_control");
    for c in available.split_whitespace() {
        if !enabled.split_whitespace().any(|e| e == c) {
            if let Err(e) = fs::write(&control, format!("+{c}")) {
                tracing::debug!("{}: +{c}: {e}", control.display());
            }
        }
    }
}

fn read_flat_keyed(path: &Path) -> Result<HashMap<String, u64>> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_lines_become_entries() {
        let text = "254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n\
                    8:16 rbytes=1 wbytes=2 rios=3 wios=4\nbad line\n";
        let got = parse_io_stat(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].major, got[0].minor, got[0].rbytes, got[0].rios),
            (254, 0, 4096, 1)
        );
        assert_eq!((got[1].wbytes, got[1].wios), (2, 4));
    }
}
