//! `vmm-floor` and `vmm-floor-rss`: process start → bare PVH guest (one serial byte, reset)
//! → clean exit, on this host's /dev/kvm; our VMM against QEMU microvm on the same guest.
//! The peak RSS comes from separate, untimed runs under ptrace (peak_rss.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::ProgressBar;
use sandbox_tests::bare_guest;

use super::measure::{self, Exit};
use super::peak_rss;
use super::report::Row;
use super::stats::Summary;

const PEER: &str = "qemu microvm";
/// Guest memory of both VMMs, MiB.
const MEMORY_MIB: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the bare guest to {path}: {source}")]
    Guest {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Measure(#[from] measure::Error),
    #[error(transparent)]
    PeakRss(#[from] peak_rss::Error),
    #[error("{vmm} did not boot the bare guest cleanly ({detail}); serial output {serial:?}")]
    Unclean {
        vmm: String,
        detail: String,
        serial: String,
    },
}

/// Our VMM on the bare guest.
pub fn ours_command(vmm: &Path, guest: &Path) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(guest)
        .args(["--memory", &MEMORY_MIB.to_string()])
        .args(["--vcpus", "1", "--serial", "stdout"]);
    c
}

/// QEMU microvm on the bare guest; `-no-reboot` turns the guest's reset into an exit.
/// `-arch-capabilities`: this host's paravirtual KVM refuses QEMU's write of
/// IA32_ARCH_CAPABILITIES (MSR 0x10a) and QEMU aborts; the bare guest never reads it.
pub fn peer_command(guest: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
    ])
    .args(["-m", &format!("{MEMORY_MIB}M"), "-smp", "1"])
    .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
    .args(["-serial", "stdio", "-kernel"])
    .arg(guest);
    c
}

/// One boot, checked: exit status 0 and the guest's byte on the serial console.
fn boot(mut cmd: Command, name: &str) -> Result<Exit, Error> {
    let exit = measure::run(&mut cmd)?;
    if !exit.success() || !exit.stdout.contains(&bare_guest::SERIAL_BYTE) {
        return Err(Error::Unclean {
            vmm: name.into(),
            detail: exit.describe(),
            serial: String::from_utf8_lossy(&exit.stdout).into_owned(),
        });
    }
    Ok(exit)
}

/// Runs `rounds` boots of each, alternating which goes first; returns the two rows.
pub fn run(vmm: &Path, rounds: usize, bar: &ProgressBar) -> Vec<Row> {
    match measure_both(vmm, rounds, bar) {
        Ok(rows) => rows,
        Err(e) => vec![
            Row::failed("vmm-floor", "ms", PEER, &[], e.to_string()).goal("ratio <= 0.5"),
            Row::failed("vmm-floor-rss", "MiB", PEER, &[], e.to_string()).goal("<= 3 MiB"),
        ],
    }
}

fn measure_both(vmm: &Path, rounds: usize, bar: &ProgressBar) -> Result<Vec<Row>, Error> {
    let dir = tempfile::tempdir().map_err(|source| Error::Guest {
        path: std::env::temp_dir(),
        source,
    })?;
    let guest = dir.path().join("bare-guest.elf");
    std::fs::write(&guest, bare_guest::serial_then_reset_elf()).map_err(|source| Error::Guest {
        path: guest.clone(),
        source,
    })?;
    // One untimed boot each: page cache and dynamic loader warm for both.
    boot(ours_command(vmm, &guest), "sandbox-vmm")?;
    boot(peer_command(&guest), PEER)?;

    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let (mut ours_kib, mut peer_kib) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = [true, false];
        let order = if round % 2 == 0 { order } else { [false, true] };
        for is_ours in order {
            if is_ours {
                ours.push(boot(ours_command(vmm, &guest), "sandbox-vmm")?);
            } else {
                peer.push(boot(peer_command(&guest), PEER)?);
            }
        }
        // Untimed: ptrace stops would add the tracer's scheduling to the wall time.
        ours_kib.push(peak_rss::run(&mut ours_command(vmm, &guest))?);
        peer_kib.push(peak_rss::run(&mut peer_command(&guest))?);
        bar.inc(1);
    }
    let ms = |v: &[Exit]| v.iter().map(Exit::wall_ms).collect::<Vec<_>>();
    let mib = |v: &[u64]| v.iter().map(|&k| k as f64 / 1024.0).collect::<Vec<_>>();
    let notes = format!(
        "bare PVH ELF guest writes one byte to COM1, then resets (i8042 0xFE, else triple \
         fault); {MEMORY_MIB} MiB, 1 vCPU; host /dev/kvm; wall time from spawn to wait4"
    );
    let floor = Row::measured("vmm-floor", "ms", &ms(&ours), PEER, &ms(&peer))
        .expect("rounds >= 1")
        .goal("ratio <= 0.5")
        .notes(notes);
    let maxrss = |v: &[Exit]| {
        let kib: Vec<f64> = v.iter().map(|e| e.max_rss_kib as f64 / 1024.0).collect();
        Summary::of(&kib).map_or(f64::NAN, |s| s.median)
    };
    let notes = format!(
        "peak RSS (VmHWM) of the process's own image, read at its exit under ptrace, in \
         untimed runs of the same boot. Not wait4's ru_maxrss (median {:.2} MiB ours, {:.2} \
         peer in the timed runs): it also counts the spawning xtask's pages",
        maxrss(&ours),
        maxrss(&peer)
    );
    let rss = Row::measured(
        "vmm-floor-rss",
        "MiB",
        &mib(&ours_kib),
        PEER,
        &mib(&peer_kib),
    )
    .expect("rounds >= 1")
    .goal("<= 3 MiB")
    .notes(notes);
    Ok(vec![floor, rss])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> String {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn both_vmms_get_the_same_guest_and_memory() {
        let g = Path::new("/g/bare.elf");
        assert_eq!(
            args(&ours_command(Path::new("/t/sandbox-vmm"), g)),
            "--kernel /g/bare.elf --memory 16 --vcpus 1 --serial stdout"
        );
        let peer = args(&peer_command(g));
        assert!(peer.contains("-M microvm -accel kvm"), "{peer}");
        assert!(peer.contains("-m 16M -smp 1"), "{peer}");
        assert!(peer.contains("-no-reboot"), "{peer}");
        assert!(peer.ends_with("-kernel /g/bare.elf"), "{peer}");
    }

    #[test]
    fn a_vmm_that_prints_nothing_is_unclean() {
        let err = boot(Command::new("true"), "true").unwrap_err();
        assert!(matches!(err, Error::Unclean { .. }), "{err}");
    }
}
