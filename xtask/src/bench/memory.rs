//! `memory-per-sandbox`: host memory of one idle guest, as the PSS of its VMM process (which
//! includes the guest RAM the guest touched), our VMM against QEMU microvm.

use std::thread;
use std::time::Duration;

use indicatif::ProgressBar;
use sandbox_tests::boot::BootConfig;

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
    let mem = Memory::of(vm.pid())?;
    if !vm.alive() {
        return Err(Error::Exited(label.into()));
    }
    Ok(mem)
}

/// `rounds` measurements of each.
pub fn run(guest: &Guest, rounds: usize, bar: &ProgressBar) -> Row {
    let name = "memory-per-sandbox";
    let result = (|| -> Result<Row, Error> {
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            o.push(measure_once(&guest.config_ours(), "sandbox-vmm")?);
            bar.inc(1);
            p.push(measure_once(&guest.config_peer(), PEER)?);
            bar.inc(1);
        }
        let pss = |v: &[Memory]| v.iter().map(Memory::pss_mib).collect::<Vec<_>>();
        let guest_part = |v: &[Memory]| {
            let mut g: Vec<f64> = v.iter().map(Memory::guest_mib).collect();
            g.sort_by(f64::total_cmp);
            g[g.len() / 2]
        };
        let row = Row::measured(name, "MiB", &pss(&o), PEER, &pss(&p))
            .expect("rounds >= 1")
            .notes(format!(
                "fallback while `sandbox run` has no VM path: VMM booted to agent-ready and \
                 idle {} s, no container; PSS of the VMM process (smaps_rollup), which holds the \
                 guest RAM touched: guest part (RSS of the RAM mapping) ours {:.1} MiB, peer \
                 {:.1} MiB; {} MiB guest",
                SETTLE.as_secs(),
                guest_part(&o),
                guest_part(&p),
                sandbox_tests::boot::MEMORY_MIB
            ));
        Ok(row)
    })();
    result
        .unwrap_or_else(|e| Row::failed(name, "MiB", PEER, &[], e.to_string()))
        .goal("<= 16 MiB")
}
