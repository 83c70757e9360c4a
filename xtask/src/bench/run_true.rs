//! `run-true`: `sandbox run` of /bin/true through its microVM, whole command, in the lab;
//! the peer is runc running the same bundle in the same lab (the ratio is the VM's price).

use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::ProgressBar;
use sandbox_tests::bundle::{Bundle, StateRoot};

use super::measure;
use super::report::Row;
use super::Guest;

const PEER: &str = "runc";

/// A run that takes longer than this is killed (by timeout(1), for both runtimes alike).
const LIMIT_S: &str = "300";

/// `timeout -s KILL 300 <program> --root R run -b BUNDLE ID`, with the microVM backend for
/// ours (no `--no-vm`).
fn command(
    program: &Path,
    env: &[(&str, PathBuf)],
    root: &Path,
    bundle: &Path,
    id: &str,
) -> Command {
    let mut c = Command::new("timeout");
    c.envs(env.iter().map(|(k, v)| (k, v)));
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
fn once(
    program: &Path,
    env: &[(&str, PathBuf)],
    root: &Path,
    bundle: &Path,
    id: &str,
) -> Result<f64, String> {
    let exit =
        measure::run(&mut command(program, env, root, bundle, id)).map_err(|e| e.to_string())?;
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

/// The controller's settings (shim/src/controller/config.rs): our VMM and guest, the memory
/// of the other lab benchmarks, and an image cache of our own.
pub fn vm_env(guest: &Guest, cache: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("SANDBOX_VMM", guest.vmm.clone()),
        ("SANDBOX_KERNEL", guest.vmlinux.clone()),
        ("SANDBOX_ROOTFS", guest.rootfs.clone()),
        ("SANDBOX_IMAGE_CACHE", cache.to_path_buf()),
        (
            "SANDBOX_MEMORY_MIB",
            sandbox_tests::boot::MEMORY_MIB.to_string().into(),
        ),
    ]
}

pub fn run(sandbox: &Path, guest: &Guest, rounds: usize, bar: &ProgressBar) -> Row {
    let cache = StateRoot::new("bench-image-cache");
    let env = vm_env(guest, cache.path());
    let bundle = Bundle::new("bench-run-true");
    bundle.edit(|c| c["process"]["args"] = serde_json::json!(["/bin/true"]));
    let (ours_root, peer_root) = (StateRoot::new("bench-vm"), StateRoot::new("bench-runc"));
    let runc = Path::new(PEER);
    let pid = std::process::id();
    let mut ours_err = once(
        sandbox,
        &env,
        ours_root.path(),
        bundle.path(),
        &format!("w{pid}"),
    )
    .err()
    .map(|e| format!("first (untimed) run: {e}"));
    let _ = once(
        runc,
        &[],
        peer_root.path(),
        bundle.path(),
        &format!("wr{pid}"),
    );
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if ours_err.is_none() {
            match once(
                sandbox,
                &env,
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
            &[],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_gets_the_guest_through_the_environment_and_both_a_time_limit() {
        let guest = Guest {
            vmm: "/t/sandbox-vmm".into(),
            vmlinux: "/g/vmlinux".into(),
            rootfs: "/g/rootfs.erofs".into(),
        };
        let env = vm_env(&guest, Path::new("/c"));
        let c = command(
            Path::new("/t/sandbox"),
            &env,
            Path::new("/r"),
            Path::new("/b"),
            "i",
        );
        let envs: Vec<(String, String)> = c
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        for (k, v) in [
            ("SANDBOX_VMM", "/t/sandbox-vmm"),
            ("SANDBOX_KERNEL", "/g/vmlinux"),
            ("SANDBOX_ROOTFS", "/g/rootfs.erofs"),
            ("SANDBOX_IMAGE_CACHE", "/c"),
        ] {
            assert!(envs.contains(&(k.into(), v.into())), "{k} in {envs:?}");
        }
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(c.get_program(), "timeout");
        assert_eq!(
            args.join(" "),
            format!("-s KILL {LIMIT_S} /t/sandbox --root /r run -b /b i")
        );
    }
}
