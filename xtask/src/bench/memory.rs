//! `memory-per-sandbox`: host memory of one idle sandbox (`sandbox run -d` of a sleeping busybox),
//! as the PSS of the processes it leaves (guest RAM touched included), against QEMU microvm.

use std::path::Path;
use std::thread;
use std::time::Duration;

use indicatif::ProgressBar;
use sandbox_tests::boot::BootConfig;

use super::breakdown;
use super::detached::{pids, Detached};
use super::idle::{self, IdleVm};
use super::measure::{self, Memory};
use super::report::Row;
use super::Guest;

const PEER: &str = "qemu microvm";
/// Time an idle guest gets after agent-ready before it is measured.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Limit for one boot to agent-ready in the lab.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Boot(#[from] idle::Error),
    #[error(transparent)]
    Measure(#[from] measure::Error),
    #[error("{0} exited while it should idle")]
    Exited(String),
}

/// Boots, lets the guest settle, measures, stops.
pub fn measure_once(config: &BootConfig, label: &str) -> Result<Memory, Error> {
    let mut vm = IdleVm::start(config, READY_TIMEOUT)?;
    thread::sleep(SETTLE);
    let mem = Memory::of_vm(vm.pid(), &[&config.vmlinux, &config.rootfs])?;
    if !vm.alive() {
        return Err(Error::Exited(label.into()));
    }
    Ok(mem)
}

/// What the full path left on the host: every new process's PSS, and the guest RAM part.
#[derive(Debug, Clone, Copy)]
struct SandboxMemory {
    pss_kib: u64,
    /// The part of `pss_kib` in file pages.
    pss_file_kib: u64,
    guest_kib: u64,
    processes: usize,
}

/// `sandbox run -d` of a sleeping busybox container; measures every host process that appeared
/// (the VMM and any helper), then `sandbox delete -f`.
fn sandbox_once(sandbox: &Path, guest: &Guest, round: usize) -> Result<SandboxMemory, String> {
    let mut detached = Detached::new(sandbox, guest);
    let id = format!("mem{}-{round}", std::process::id());
    let started = detached.start(&id)?;
    thread::sleep(SETTLE);
    let mut total = SandboxMemory {
        pss_kib: 0,
        pss_file_kib: 0,
        guest_kib: 0,
        processes: 0,
    };
    for pid in pids().intersection(&started.pids.iter().copied().collect()) {
        if let Ok(m) = Memory::of_vm(*pid, &[&guest.vmlinux, &guest.rootfs]) {
            total.pss_kib += m.pss_kib;
            total.pss_file_kib += m.pss_file_kib;
            total.guest_kib = total.guest_kib.max(m.guest_rss_kib);
            total.processes += 1;
            if let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
                let groups = breakdown::describe_groups(&breakdown::vmm_groups(&smaps));
                super::log::line(&format!("memory: sandbox {id}: pid {pid}: {groups}"));
            }
        }
    }
    // In one exec: the guest's meminfo, then its thread count (loadavg's fourth field counts
    // all of them) and the boot-time hash tables the kernel sized from the guest's RAM.
    let script = "cat /proc/meminfo; echo ---; cat /proc/loadavg; \
                  dmesg | grep -e 'hash table entries' -e 'Memory:'";
    match detached.exec_output(&id, &["sh", "-c", script]) {
        Ok(text) => {
            let (meminfo, rest) = text.split_once("---\n").unwrap_or((&text, ""));
            super::log::line(&format!(
                "memory: sandbox {id}: guest MiB: {}",
                breakdown::describe_meminfo(meminfo)
            ));
            for l in rest.lines() {
                super::log::line(&format!("memory: sandbox {id}: guest: {l}"));
            }
        }
        Err(e) => super::log::line(&format!("memory: sandbox {id}: {e}")),
    }
    let errors = detached.delete_all();
    super::log::line(&format!(
        "memory: sandbox {id}: {total:?}; delete errors: {errors:?}"
    ));
    if total.processes == 0 {
        return Err("`sandbox run -d` left no process running".into());
    }
    Ok(total)
}

/// `rounds` measurements of each: ours through `sandbox run -d` (else, if that fails, our
/// VMM booted to agent-ready), the peer QEMU booted to agent-ready with the same guest.
pub fn run(sandbox: &Path, guest: &Guest, rounds: usize, bar: &ProgressBar) -> Row {
    let name = "memory-per-sandbox";
    let result = (|| -> Result<Row, Error> {
        let (mut full, mut o, mut p) = (Vec::new(), Vec::new(), Vec::new());
        let mut full_err = None;
        for round in 0..rounds {
            if full_err.is_none() {
                match sandbox_once(sandbox, guest, round) {
                    Ok(m) => full.push(m),
                    Err(e) => full_err = Some(e),
                }
            }
            if full_err.is_some() {
                o.push(measure_once(&guest.config_ours(), "sandbox-vmm")?);
            }
            bar.inc(1);
            p.push(measure_once(&guest.config_peer(), PEER)?);
            bar.inc(1);
        }
        let pss = |v: &[Memory]| v.iter().map(Memory::pss_mib).collect::<Vec<_>>();
        let median = |mut g: Vec<f64>| {
            g.sort_by(f64::total_cmp);
            g[g.len() / 2]
        };
        let peer_guest = median(p.iter().map(Memory::guest_mib).collect());
        let row = match full_err {
            None => {
                let mib: Vec<f64> = full.iter().map(|m| m.pss_kib as f64 / 1024.0).collect();
                let ours_guest = median(full.iter().map(|m| m.guest_kib as f64 / 1024.0).collect());
                let ours_file = median(
                    full.iter()
                        .map(|m| m.pss_file_kib as f64 / 1024.0)
                        .collect(),
                );
                Row::measured(name, "MiB", &mib, PEER, &pss(&p))
                    .expect("rounds >= 1")
                    .notes(format!(
                        "ours: `sandbox run -d` of busybox `sleep 3600`, idle {} s, PSS \
                         (smaps_rollup) of every host process it left running ({} of them), \
                         guest RAM touched {ours_guest:.1} MiB of it, file pages (kernel, images, \
                         binary) {ours_file:.1} MiB of it; peer: QEMU microvm with \
                         the same kernel + root image booted to agent-ready and idle (no \
                         container), guest RAM {peer_guest:.1} MiB; {} MiB guests",
                        SETTLE.as_secs(),
                        full[0].processes,
                        sandbox_tests::boot::MEMORY_MIB
                    ))
            }
            Some(e) => {
                let ours_guest = median(o.iter().map(Memory::guest_mib).collect());
                Row::measured(name, "MiB", &pss(&o), PEER, &pss(&p))
                    .expect("rounds >= 1")
                    .notes(format!(
                        "fallback, `sandbox run -d` failed ({e}): both VMMs booted to \
                         agent-ready and idle {} s, no container; PSS of the VMM process, guest \
                         RAM part ours {ours_guest:.1} MiB, peer {peer_guest:.1} MiB; {} MiB guest",
                        SETTLE.as_secs(),
                        sandbox_tests::boot::MEMORY_MIB
                    ))
            }
        };
        Ok(row)
    })();
    result
        .unwrap_or_else(|e| Row::failed(name, "MiB", PEER, &[], e.to_string()))
        .goal("<= 16 MiB")
}
