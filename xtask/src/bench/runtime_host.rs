//! `runtime-host`: `sandbox run --no-vm` of /bin/true on this host, whole command, against
//! crun (the main ratio) and runc running the same busybox bundle.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use indicatif::ProgressBar;
use sandbox_tests::bundle::{Bundle, StateRoot};

use super::measure::{self, Exit};
use super::report::Row;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Measure(#[from] measure::Error),
    #[error("`{runtime} run` of /bin/true failed: {detail}")]
    Failed { runtime: String, detail: String },
}

/// The three runtimes, each with its own state root.
struct Runtime {
    name: &'static str,
    program: String,
    /// Leading flags (`--no-vm` for ours).
    flags: &'static [&'static str],
    root: StateRoot,
    samples: Vec<f64>,
    /// Run in a private mount namespace without /sys/fs/cgroup/unified: crun refuses a hybrid
    /// cgroup layout whose v2 part holds a controller (this host's), and works on plain v1.
    v1_only: bool,
}

impl Runtime {
    fn new(name: &'static str, program: String, flags: &'static [&'static str]) -> Self {
        Runtime {
            name,
            program,
            flags,
            root: StateRoot::new(&format!("bench-{name}")),
            samples: Vec::new(),
            v1_only: false,
        }
    }

    /// `<program> [flags] --root R run -b BUNDLE ID`.
    fn command(&self, bundle: &Path, id: &str) -> Command {
        let mut c = Command::new(&self.program);
        c.args(self.flags)
            .arg("--root")
            .arg(self.root.path())
            .arg("run")
            .arg("-b")
            .arg(bundle)
            .arg(id);
        if self.v1_only {
            // SAFETY: only async-signal-safe system calls on static C strings, in the child
            // between fork and exec.
            unsafe {
                c.pre_exec(hide_unified_cgroup);
            }
        }
        c
    }

    fn run_once(&self, bundle: &Path, id: &str) -> Result<Exit, Error> {
        let exit = measure::run(&mut self.command(bundle, id))?;
        if !exit.success() {
            return Err(Error::Failed {
                runtime: self.name.into(),
                detail: exit.describe(),
            });
        }
        Ok(exit)
    }
}

/// In the child: a private mount namespace in which the cgroup v2 mount of a hybrid host is
/// gone, so the runtime sees a plain v1 host. A few µs, paid inside the timed run.
fn hide_unified_cgroup() -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: unshare/mount/umount2 take no pointers but static NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
            // Not a hybrid host: nothing to hide.
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Runs `rounds` rounds (one untimed first); rows `runtime-host` (vs crun) and
/// `runtime-host-vs-runc`.
pub fn run(sandbox: &Path, rounds: usize, bar: &ProgressBar) -> Vec<Row> {
    let bundle = Bundle::new("bench-true");
    bundle.edit(|c| c["process"]["args"] = serde_json::json!(["/bin/true"]));
    let mut runtimes = [
        Runtime::new(
            "sandbox --no-vm",
            sandbox.to_string_lossy().into_owned(),
            &["--no-vm"],
        ),
        Runtime {
            v1_only: true,
            ..Runtime::new("crun", "crun".into(), &[])
        },
        Runtime::new("runc", "runc".into(), &[]),
    ];
    let mut errors: [Option<String>; 3] = Default::default();
    for round in 0..=rounds {
        for (i, rt) in runtimes.iter_mut().enumerate() {
            if errors[i].is_some() {
                continue;
            }
            let id = format!("bench-{}-{round}-{i}", std::process::id());
            match rt.run_once(bundle.path(), &id) {
                Ok(exit) if round > 0 => rt.samples.push(exit.wall_ms()),
                Ok(_) => {}
                Err(e) => errors[i] = Some(e.to_string()),
            }
        }
        if round > 0 {
            bar.inc(1);
        }
    }
    let [ours, crun, runc] = &runtimes;
    let notes = "busybox-static bundle, process /bin/true, readonly rootfs, pid/net/ipc/uts/\
                 mount/cgroup namespaces; wall time of the whole `run` command; crun 1.8 rejects \
                 this host's hybrid cgroups, so it runs in a mount namespace without \
                 /sys/fs/cgroup/unified (plain cgroup v1, set up in the timed child)";
    let row = |name: &str, peer: &Runtime, peer_err: &Option<String>, goal: &str| {
        let error = errors[0].clone().or_else(|| peer_err.clone());
        match error {
            Some(e) => Row::failed(name, "ms", peer.name, &peer.samples, e),
            None => Row::measured(name, "ms", &ours.samples, peer.name, &peer.samples)
                .expect("rounds >= 1"),
        }
        .goal(goal)
        .notes(notes)
    };
    vec![
        row("runtime-host", crun, &errors[1], "ratio <= 1.0"),
        row("runtime-host-vs-runc", runc, &errors[2], ""),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_share_runc_command_syntax() {
        let rt = Runtime::new("sandbox --no-vm", "/t/sandbox".into(), &["--no-vm"]);
        let c = rt.command(Path::new("/b"), "id1");
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "--no-vm");
        assert_eq!(args[1], "--root");
        assert_eq!(args[3..], ["run", "-b", "/b", "id1"]);
    }

    #[test]
    fn a_v1_only_child_loses_the_unified_cgroup_mount_and_we_keep_it() {
        let had = std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "test -e /sys/fs/cgroup/unified/cgroup.controllers && echo seen || echo gone",
        ]);
        // SAFETY: as in Runtime::command.
        unsafe {
            c.pre_exec(hide_unified_cgroup);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"gone\n");
        assert_eq!(
            std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists(),
            had
        );
    }
}
