//! `density`: guests started one after another up to N and all held; host memory per guest and
//! start latency against N, and the largest N that fits a memory budget. Ours and the peer's.

use std::path::Path;
use std::thread;
use std::time::Duration;

use indicatif::ProgressBar;
use sandbox_tests::boot::BootConfig;

use super::detached::{pids, Detached};
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
    // Load the binary and its libraries (over the lab's 9p share) before the first timed start.
    let _ = std::process::Command::new(config.command().get_program())
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
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

/// Our climb through the full path: `sandbox run -d` of a sleeping container, N times; the
/// memory is the PSS of every host process the sandboxes left, the latency that of the command.
fn climb_sandboxes(sandbox: &Path, guest: &Guest, n: u32, bar: &ProgressBar) -> Climb {
    let mut detached = Detached::new(sandbox, guest);
    let mut series = DensitySeries {
        label: "sandbox run -d".into(),
        mib_per_sandbox: Vec::new(),
        start_ms: Vec::new(),
    };
    let mut held: Vec<u32> = Vec::new();
    let mut error = None;
    for k in 1..=n {
        let id = format!("dens{}-{k}", std::process::id());
        match detached.start(&id) {
            Ok(started) => {
                series
                    .start_ms
                    .push((k, started.wall.as_secs_f64() * 1000.0));
                held.extend(started.pids);
            }
            Err(e) => {
                error = Some(format!("start {k} failed: {e}"));
                break;
            }
        }
        thread::sleep(SETTLE);
        let live = pids();
        let kib: u64 = held
            .iter()
            .filter(|p| live.contains(p))
            .filter_map(|p| Memory::of(*p).ok())
            .map(|m| m.pss_kib)
            .sum();
        let each = kib as f64 / 1024.0 / f64::from(k);
        super::log::line(&format!(
            "density: sandbox run -d N={k}: {each:.1} MiB each"
        ));
        series.mib_per_sandbox.push((k, each));
        bar.inc(1);
    }
    let errors = detached.delete_all();
    if !errors.is_empty() {
        error.get_or_insert(format!("delete failed: {}", errors.join("; ")));
    }
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
    sandbox: &Path,
    guest: &Guest,
    n: u32,
    budget_mib: u64,
    bar: &ProgressBar,
) -> (Vec<Row>, Vec<DensitySeries>) {
    let full = climb_sandboxes(sandbox, guest, n, bar);
    let (ours, how) = match &full.error {
        None => (
            full,
            "ours: `sandbox run -d` of a sleeping busybox container, N held (memory: PSS of \
             every host process they left; latency: the whole command); peer: QEMU microvm \
             booted to agent-ready and held idle, same kernel + root image"
                .to_string(),
        ),
        Some(e) => {
            let why = format!(
                "fallback, `sandbox run -d` failed ({e}): both VMMs booted to agent-ready and \
                 held idle"
            );
            (climb(&guest.config_ours(), "sandbox-vmm", n, bar), why)
        }
    };
    let peer = climb(&guest.config_peer(), PEER, n, bar);
    let last = |c: &Climb| c.series.mib_per_sandbox.last().map(|&(_, m)| m);
    let values = |v: &[(u32, f64)]| v.iter().map(|&(_, y)| y).collect::<Vec<_>>();
    let budget_unit = format!("guests in {budget_mib} MiB");
    let mut rows = Vec::new();
    match (last(&ours), last(&peer), &ours.error, &peer.error) {
        (Some(o), Some(p), None, None) => {
            let (fo, fp) = (fits(budget_mib, o) as f64, fits(budget_mib, p) as f64);
            rows.push(
                Row::measured("density", &budget_unit, &[fo], PEER, &[fp])
                    .expect("one sample")
                    .notes(format!(
                        "{how}; N = {n} held at once, budget / host MiB per guest at N \
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
                .notes("host PSS of all held sandboxes / N, over N = 1..max"),
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
                .notes("start of the N-th while N-1 are held (lab): `sandbox run -d` for ours, spawn → agent-ready for the peer"),
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
