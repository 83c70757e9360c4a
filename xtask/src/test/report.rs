//! The lines `cargo xtask test` ends with: one per phase with its skipped tests and their
//! reasons, then `summary: N passed, N skipped, N failed` (CI reads that last line).

use std::fmt::Write as _;

use super::tally::Tally;

/// One phase's outcome: its tests, and whether the phase itself succeeded.
pub struct Phase {
    pub name: &'static str,
    pub tally: Tally,
    pub ok: bool,
}

impl Phase {
    /// A phase that failed before any test ran (a build error).
    pub fn failed(name: &'static str) -> Phase {
        Phase {
            name,
            tally: Tally::default(),
            ok: false,
        }
    }
}

/// The report of `phases`, its last line the summary; and the total of the failures.
pub fn report(phases: &[Phase]) -> (String, u64) {
    let mut text = String::new();
    let (mut passed, mut skipped, mut failed) = (0, 0, 0);
    for p in phases {
        passed += p.tally.passed;
        skipped += p.tally.skipped.len();
        // A phase that failed without a failing test (a build error, a crash) counts once.
        failed += p.tally.failed.max(u64::from(!p.ok));
        let _ = writeln!(
            text,
            "{}: {}{}",
            p.name,
            counts(p.tally.passed, p.tally.skipped.len(), p.tally.failed),
            if p.ok { "" } else { " (phase failed)" }
        );
        for skip in &p.tally.skipped {
            let _ = writeln!(text, "  skipped {skip}");
        }
    }
    let _ = writeln!(text, "summary: {}", counts(passed, skipped, failed));
    (text, failed)
}

fn counts(passed: u64, skipped: usize, failed: u64) -> String {
    format!("{passed} passed, {skipped} skipped, {failed} failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_list_their_skips_and_the_summary_comes_last() {
        let host = Phase {
            name: "host",
            tally: Tally {
                passed: 10,
                failed: 0,
                skipped: vec!["runs: `sandbox` is not built".into()],
            },
            ok: true,
        };
        let lab = Phase {
            name: "lab",
            tally: Tally {
                passed: 4,
                failed: 1,
                skipped: vec!["boots: no /dev/kvm".into(), "ctr: no shim".into()],
            },
            ok: false,
        };
        let (text, failed) = report(&[host, lab, Phase::failed("other")]);
        assert_eq!(
            text,
            "host: 10 passed, 1 skipped, 0 failed\n\
             \x20 skipped runs: `sandbox` is not built\n\
             lab: 4 passed, 2 skipped, 1 failed (phase failed)\n\
             \x20 skipped boots: no /dev/kvm\n\
             \x20 skipped ctr: no shim\n\
             other: 0 passed, 0 skipped, 0 failed (phase failed)\n\
             summary: 14 passed, 3 skipped, 2 failed\n"
        );
        assert_eq!(failed, 2);
    }
}
