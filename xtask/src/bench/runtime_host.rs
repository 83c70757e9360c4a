//! `runtime-host`: `sandbox run --no-vm` of /bin/true on this host, whole command, against
//! crun (the main ratio) and runc running the same busybox bundle.

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
}

impl Runtime {
    fn new(name: &'static str, program: String, flags: &'static [&'static str]) -> Self {
        Runtime {
            name,
            program,
            flags,
            root: StateRoot::new(&format!("bench-{name}")),
            samples: Vec::new(),
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
        Runtime::new("crun", "crun".into(), &[]),
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
                 mount/cgroup namespaces; wall time of the whole `run` command";
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
}
