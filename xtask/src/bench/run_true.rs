//! `run-true`: `sandbox run` of /bin/true through its microVM, whole command, in the lab;
//! the peer is runc running the same bundle in the same lab (the ratio is the VM's price).

use std::path::Path;
use std::process::Command;

use indicatif::ProgressBar;
use sandbox_tests::bundle::{Bundle, StateRoot};

use super::measure;
use super::report::Row;

const PEER: &str = "runc";

/// A run that takes longer than this is killed (by timeout(1), for both runtimes alike).
const LIMIT_S: &str = "300";

/// `timeout -s KILL 300 <program> --root R run -b BUNDLE ID`, with the microVM backend for
/// ours (no `--no-vm`).
fn command(program: &Path, root: &Path, bundle: &Path, id: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", LIMIT_S])
        .arg(program)
        .arg("--root")
        .arg(root)
        .args(["run", "-b"])
        .arg(bundle)
        .arg(id);
    c
}

/// One run; the wall time in ms, or why it failed.
fn once(program: &Path, root: &Path, bundle: &Path, id: &str) -> Result<f64, String> {
    let exit = measure::run(&mut command(program, root, bundle, id)).map_err(|e| e.to_string())?;
    if exit.success() {
        Ok(exit.wall_ms())
    } else {
        Err(format!(
            "`{} run` failed: {}",
            program.display(),
            exit.describe()
        ))
    }
}

pub fn run(sandbox: &Path, rounds: usize, bar: &ProgressBar) -> Row {
    let bundle = Bundle::new("bench-run-true");
    bundle.edit(|c| c["process"]["args"] = serde_json::json!(["/bin/true"]));
    let (ours_root, peer_root) = (StateRoot::new("bench-vm"), StateRoot::new("bench-runc"));
    let runc = Path::new(PEER);
    let pid = std::process::id();
    let mut ours_err = once(sandbox, ours_root.path(), bundle.path(), &format!("w{pid}"))
        .err()
        .map(|e| format!("first (untimed) run: {e}"));
    let _ = once(runc, peer_root.path(), bundle.path(), &format!("wr{pid}"));
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if ours_err.is_none() {
            match once(
                sandbox,
                ours_root.path(),
                bundle.path(),
                &format!("o{pid}-{round}"),
            ) {
                Ok(ms) => ours.push(ms),
                Err(e) => ours_err = Some(format!("round {round}: {e}")),
            }
        }
        if let Ok(ms) = once(
            runc,
            peer_root.path(),
            bundle.path(),
            &format!("p{pid}-{round}"),
        ) {
            peer.push(ms);
        }
        bar.inc(1);
    }
    let notes =
        "in the lab: busybox-static bundle, /bin/true; whole `run` command, VM boot included";
    match ours_err {
        Some(e) => Row::failed("run-true", "ms", PEER, &peer, e),
        None if peer.is_empty() => Row::failed(
            "run-true",
            "ms",
            PEER,
            &[],
            "runc failed every round".into(),
        ),
        None => Row::measured("run-true", "ms", &ours, PEER, &peer).expect("rounds >= 1"),
    }
    .notes(notes)
}
