//! OCI bundles for the runtime tests: a busybox-static rootfs plus a config.json (runc's
//! default spec without a terminal), edited as JSON. Lives under /var/tmp, removed on drop.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::binaries;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where bundles and state roots go (outside /tmp so the lab can reuse them).
pub const BASE: &str = "/var/tmp/sandbox-runtime-tests";

/// A unique name: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// runc's default spec (`runc spec`, the file `sandbox spec` writes) with `terminal: false`,
/// the probe as the process, and no cgroup mount (runc mounts v1 hierarchies there on a
/// hybrid host).
pub fn base_spec() -> Value {
    let mut spec: Value =
        serde_json::from_str(include_str!("../../shim/src/cli/default-spec.json"))
            .expect("default-spec.json is valid JSON");
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["sh", "/probe.sh"]);
    spec["hostname"] = json!("runc");
    spec["mounts"]
        .as_array_mut()
        .expect("mounts")
        .retain(|m| m["destination"] != "/sys/fs/cgroup");
    spec
}

/// The probe's last line: a probe that stopped early (its shell died, a section failed)
/// does not print it.
pub const PROBE_END: &str = "== probe end";

/// The probe: prints what the container sees, section by section, then [`PROBE_END`].
pub const PROBE: &str = r#"#!/bin/sh
echo "== ids"; id -u; id -g; grep '^Groups:' /proc/$$/status
echo "== idmaps"; cat /proc/self/uid_map /proc/self/gid_map | tr -s ' '
echo "== status"; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters|SigBlk):' /proc/$$/status
# Signals 32 and 33 belong to the C library; their disposition comes from the environment.
ign=$(sed -n 's/^SigIgn:\t//p' /proc/$$/status); printf 'SigIgn (without 32, 33): %016x\n' $((0x$ign & ~0x180000000))
echo "== uts"; hostname; cat /proc/sys/kernel/domainname
echo "== limits"; cat /proc/$$/limits
echo "== pid"; if [ $$ = 1 ]; then echo init; else echo not-init; fi
echo "== cgroup"; if [ -n "$PROBE_CGROUP" ]; then cat /proc/$$/cgroup; fi
echo "== mounts"; awk '$2 !~ /^\/sys\/fs\/cgroup/ {print $1, $2, $3, $4}' /proc/self/mounts
echo "== masked"
for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /sys/firmware /proc/acpi /proc/scsi /proc/cpuinfo /proc/version; do
  if [ -d $p ]; then echo "$p dir $(ls $p 2>/dev/null | wc -l)";
  elif [ -e $p ]; then echo "$p file $(head -c 16 $p 2>/dev/null | wc -c)";
  else echo "$p none"; fi
done
echo "== env"; env | sort
echo "== cwd"; pwd
echo "== umask"; umask
echo "== rootfs"; if touch /.probe-write 2>/dev/null; then echo writable; rm -f /.probe-write; else echo read-only; fi
echo "== dev"; for d in /dev/*; do echo "$d $(stat -c '%F %a %u %g %t:%T' $d)"; done
echo "== oom"; cat /proc/$$/oom_score_adj
echo "== fds"; ls /proc/self/fd
if [ -f /probe-extra.sh ]; then echo "== extra"; . /probe-extra.sh 2>&1; fi
echo "== probe end"
exit 0
"#;

/// A bundle directory; removed on drop.
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// A new bundle `<BASE>/<unique(name)>` with the busybox rootfs, the probe and base_spec.
    pub fn new(name: &str) -> Bundle {
        let dir = Path::new(BASE).join(unique(name));
        let root = dir.join("rootfs");
        for d in [
            "bin",
            "etc",
            "proc",
            "sys",
            "dev",
            "tmp",
            "root",
            "home/user",
            "mnt",
            "run",
        ] {
            fs::create_dir_all(root.join(d)).expect("create rootfs dirs");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod tmp");
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (busybox-static)");
        for applet in applets() {
            if applet != "busybox" {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        )
        .expect("write passwd");
        fs::write(
            root.join("etc/group"),
            "root:x:0:\ntty:x:5:\nuser:x:1000:\n",
        )
        .expect("write group");
        fs::write(root.join("probe.sh"), PROBE).expect("write probe");
        let b = Bundle { dir };
        b.set_config(&base_spec());
        b
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The rootfs directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The current config.json.
    pub fn config(&self) -> Value {
        serde_json::from_str(
            &fs::read_to_string(self.dir.join("config.json")).expect("read config"),
        )
        .expect("config is JSON")
    }

    /// Replaces config.json.
    pub fn set_config(&self, v: &Value) {
        fs::write(
            self.dir.join("config.json"),
            serde_json::to_string_pretty(v).unwrap(),
        )
        .expect("write config");
    }

    /// Edits config.json in place.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut v = self.config();
        f(&mut v);
        self.set_config(&v);
    }

    /// Writes a file into the rootfs.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.rootfs().join(rel.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn applets() -> &'static [String] {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let out = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("run busybox --list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
}

/// The `sandbox` CLI. Tests that run it first check that it is built (tests do not build
/// it): `require!(binaries::SANDBOX.path())`, a skip or, under CI, a failure.
pub fn sandbox_bin() -> PathBuf {
    binaries::SANDBOX
        .path()
        .unwrap_or_else(|e| panic!("{e} (a test checks this with require! first)"))
}

/// A state root for one test, removed on drop.
pub struct StateRoot(PathBuf);

impl StateRoot {
    /// A fresh, empty state root.
    pub fn new(name: &str) -> StateRoot {
        let p = Path::new(BASE).join("state").join(unique(name));
        fs::create_dir_all(&p).unwrap();
        StateRoot(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StateRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `sandbox --no-vm --root <root> <args...>` with stdin closed. stdout and stderr go through
/// files, not pipes: a created or detached container keeps them open after `sandbox` exits.
pub fn sandbox(root: &Path, args: &[&str]) -> Output {
    let dir = Path::new(BASE).join("out");
    fs::create_dir_all(&dir).unwrap();
    let (out_path, err_path) = (dir.join(unique("stdout")), dir.join(unique("stderr")));
    let status = Command::new(sandbox_bin())
        .arg("--no-vm")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .status()
        .expect("run sandbox");
    let output = Output {
        status,
        stdout: fs::read(&out_path).unwrap(),
        stderr: fs::read(&err_path).unwrap(),
    };
    let _ = fs::remove_file(out_path);
    let _ = fs::remove_file(err_path);
    output
}

/// `runc --root <root> <args...>` with stdin closed.
pub fn runc(root: &Path, args: &[&str]) -> Output {
    Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runc")
}

/// Leftovers of a container whose rootfs is `rootfs`: processes rooted there, mounts under it.
pub fn leftovers(rootfs: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let canon = fs::canonicalize(rootfs).unwrap_or_else(|_| rootfs.to_path_buf());
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
            else {
                continue;
            };
            if let Ok(root) = fs::read_link(format!("/proc/{pid}/root")) {
                if root.starts_with(&canon) {
                    out.push(format!("process {pid} rooted in {}", root.display()));
                }
            }
        }
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        if let Some(mp) = line.split_whitespace().nth(4) {
            if Path::new(mp).starts_with(&canon) {
                out.push(format!("mount {mp}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_prints_its_end_marker_last() {
        let last = PROBE.lines().rev().find(|l| l.starts_with("echo")).unwrap();
        assert_eq!(last, format!("echo \"{PROBE_END}\""));
    }
}
