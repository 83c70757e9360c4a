//! `density`: guests started one after another up to N and all held; host memory per guest and
//! start latency against N, and the largest N that fits a memory budget. Ours and the peer's.

use std::thread;
use std::time::Duration;

use indicatif::ProgressBar;
use sandbox_tests::boot::BootConfig;

use super::idle::IdleVm;
use super::measure::Memory;
use super::memory::READY_TIMEOUT;
use super::report::{DensitySeries, Row};
use super::Guest;

const PEER: &str = "qemu microvm";
/// Time the newest guest gets after agent-ready before all are measured.
const SETTLE: Duration = Duration::from_secs(1);

/// One VMM's climb to N.
struct Climb {
    series: DensitySeries,
    /// Set if a start failed before N.
    error: Option<String>,
}

fn climb(config: &BootConfig, label: &str, n: u32, bar: &ProgressBar) -> Climb {
    let mut vms: Vec<IdleVm> = Vec::new();
    let mut series = DensitySeries {
        label: label.into(),
        mib_per_sandbox: Vec::new(),
        start_ms: Vec::new(),
    };
    let mut error = None;
    for k in 1..=n {
        match IdleVm::start(config, READY_TIMEOUT) {
            Ok(vm) => {
                series.start_ms.push((k, vm.ready_ms()));
                vms.push(vm);
            }
            Err(e) => {
                error = Some(format!("start {k} failed: {e}"));
                break;
            }
        }
        thread::sleep(SETTLE);
        let total: Result<u64, _> = vms
            .iter()
            .map(|vm| Memory::of(vm.pid()).map(|m| m.pss_kib))
            .sum();
        match total {
            Ok(kib) => {
                let each = kib as f64 / 1024.0 / f64::from(k);
                super::log::line(&format!("density: {label} N={k}: {each:.1} MiB each"));
                series.mib_per_sandbox.push((k, each));
            }
            Err(e) => {
                error = Some(format!("measuring at N={k}: {e}"));
                break;
            }
        }
        bar.inc(1);
    }
    if let Some(gone) = vms.iter_mut().position(|vm| !vm.alive()) {
        error.get_or_insert(format!("guest {} exited while held", gone + 1));
    }
    drop(vms);
    Climb { series, error }
}

/// How many guests of `mib_each` fit in `budget_mib`.
pub fn fits(budget_mib: u64, mib_each: f64) -> u64 {
    if mib_each <= 0.0 {
        return 0;
    }
    (budget_mib as f64 / mib_each).floor() as u64
}

/// The rows (`density`, `density-mib-per-sandbox`, `density-start-ms`) and both series.
pub fn run(
    guest: &Guest,
    n: u32,
    budget_mib: u64,
    bar: &ProgressBar,
) -> (Vec<Row>, Vec<DensitySeries>) {
    let ours = climb(&guest.config_ours(), "sandbox-vmm", n, bar);
    let peer = climb(&guest.config_peer(), PEER, n, bar);
    let last = |c: &Climb| c.series.mib_per_sandbox.last().map(|&(_, m)| m);
    let values = |v: &[(u32, f64)]| v.iter().map(|&(_, y)| y).collect::<Vec<_>>();
    let fallback = "fallback while `sandbox run` has no VM path: VMMs booted to agent-ready \
                    and held idle";
    let budget_unit = format!("guests in {budget_mib} MiB");
    let mut rows = Vec::new();
    match (last(&ours), last(&peer), &ours.error, &peer.error) {
        (Some(o), Some(p), None, None) => {
            let (fo, fp) = (fits(budget_mib, o) as f64, fits(budget_mib, p) as f64);
            rows.push(
                Row::measured("density", &budget_unit, &[fo], PEER, &[fp])
                    .expect("one sample")
                    .notes(format!(
                        "{fallback}; N = {n} held at once, budget / host MiB per guest at N \
                         (ratio > 1 is better here)"
                    )),
            );
            let per = |c: &Climb| values(&c.series.mib_per_sandbox);
            rows.push(
                Row::measured(
                    "density-mib-per-sandbox",
                    "MiB",
                    &per(&ours),
                    PEER,
                    &per(&peer),
                )
                .expect("n >= 1")
                .notes("total PSS of all held VMMs / N, over N = 1..max"),
            );
            let starts = |c: &Climb| values(&c.series.start_ms);
            rows.push(
                Row::measured(
                    "density-start-ms",
                    "ms",
                    &starts(&ours),
                    PEER,
                    &starts(&peer),
                )
                .expect("n >= 1")
                .notes("spawn → agent-ready of the N-th guest while N-1 are held (lab)"),
            );
        }
        _ => {
            let err = [("ours", &ours.error), ("peer", &peer.error)]
                .iter()
                .filter_map(|(who, e)| e.as_ref().map(|e| format!("{who}: {e}")))
                .collect::<Vec<_>>()
                .join("; ");
            let peer_fit: Vec<f64> = last(&peer)
                .filter(|_| peer.error.is_none())
                .map(|p| fits(budget_mib, p) as f64)
                .into_iter()
                .collect();
            rows.push(Row::failed("density", &budget_unit, PEER, &peer_fit, err));
        }
    }
    (rows, vec![ours.series, peer.series])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_rounds_down() {
        assert_eq!(fits(1024, 16.0), 64);
        assert_eq!(fits(1024, 100.0), 10);
        assert_eq!(fits(1024, 0.0), 0);
    }
}
