//! Tests whose prerequisite is missing (root, busybox, a usable /dev/kvm, a cgroup
//! controller): a failure under CI, and elsewhere a skip that `cargo xtask test` reports as
//! skipped with its reason, never as passed.
//!
//! libtest has no run-time skip: a skipped test returns and libtest counts it as passed. So
//! the skip is also written, one line `<test name>: <reason>`, to the file named by
//! [`SKIP_LOG_ENV`] (set by `cargo xtask test`), which moves it from "passed" to "skipped".

use std::fmt::Display;
use std::io::Write;

/// The file (appended to) where skipped tests are recorded; unset outside `cargo xtask test`.
pub const SKIP_LOG_ENV: &str = "SANDBOX_TEST_SKIP_LOG";

/// Whether this run is CI's (`CI=true`): there a missing prerequisite fails the test.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The running test's name (libtest names each test's thread after it), after its test
/// binary's: the same test name can be in several binaries.
fn test_name() -> String {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let exe = std::env::current_exe().ok();
    match exe.as_deref().and_then(|p| p.file_name()?.to_str()) {
        Some(file) => format!("{}::{test}", test_binary(file)),
        None => test,
    }
}

/// `runtime_lifecycle` of cargo's `runtime_lifecycle-<16 hex digits>`.
fn test_binary(file: &str) -> &str {
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name
        }
        _ => file,
    }
}

/// A prerequisite is missing: panics under CI; elsewhere records the skip and returns, and the
/// caller returns from the test at once. Use [`require!`](crate::require) rather than calling
/// this directly.
pub fn skip(reason: impl Display) {
    let log = std::env::var_os(SKIP_LOG_ENV).map(std::path::PathBuf::from);
    record_skip(
        &test_name(),
        &reason.to_string(),
        under_ci(),
        log.as_deref(),
    );
}

fn record_skip(name: &str, reason: &str, ci: bool, log: Option<&std::path::Path>) {
    if ci {
        panic!("{name}: prerequisite missing under CI: {reason}");
    }
    // Straight to fd 2: libtest captures only the print macros, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {reason}");
    if let Some(path) = log {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{name}: {reason}\n").as_bytes()));
        if let Err(e) = written {
            panic!("{name}: cannot record the skip in {}: {e}", path.display());
        }
    }
}

/// `require!(condition, "why, when false", args...)`: returns from the test (a recorded skip,
/// or a failure under CI) unless the condition holds.
/// `require!(let PATTERN = EXPR, "why", args...)` binds on a match in the same way.
/// `require!(RESULT)` evaluates to the `Ok` value, or skips with the error as the reason.
#[macro_export]
macro_rules! require {
    (let $pat:pat = $expr:expr, $($reason:tt)+) => {
        let $pat = $expr else {
            $crate::prereq::skip(format!($($reason)+));
            return;
        };
    };
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::prereq::skip(format!($($reason)+));
            return;
        }
    };
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(e) => {
                $crate::prereq::skip(e);
                return;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(flag: bool, reached: &mut bool) {
        require!(flag, "flag is {flag}");
        *reached = true;
    }

    fn needs_some(value: Option<u32>, reached: &mut Option<u32>) {
        require!(let Some(v) = value, "no value");
        *reached = Some(v);
    }

    fn needs_ok(value: Result<u32, String>, reached: &mut Option<u32>) {
        let v = require!(value);
        *reached = Some(v);
    }

    #[test]
    fn require_passes_through_when_met() {
        let mut reached = false;
        needs(true, &mut reached);
        assert!(reached);
        let mut got = None;
        needs_some(Some(7), &mut got);
        assert_eq!(got, Some(7));
        let mut got = None;
        needs_ok(Ok(8), &mut got);
        assert_eq!(got, Some(8));
    }

    #[test]
    fn a_skip_is_recorded_with_the_test_name_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record_skip("t1", "no busybox", false, Some(&log));
        record_skip("t2", "not root", false, Some(&log));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "t1: no busybox\nt2: not root\n"
        );
    }

    #[test]
    fn a_test_is_named_after_its_binary() {
        assert_eq!(
            test_binary("runtime_lifecycle-4da0d4a502714762"),
            "runtime_lifecycle"
        );
        assert_eq!(test_binary("e2e-cafe"), "e2e-cafe");
        assert_eq!(test_binary("plain"), "plain");
        assert!(
            test_name().starts_with("sandbox_tests::prereq::tests::a_test_is_named"),
            "{}",
            test_name()
        );
    }

    #[test]
    #[should_panic(expected = "t3: prerequisite missing under CI: no /dev/kvm")]
    fn under_ci_a_missing_prerequisite_fails() {
        record_skip("t3", "no /dev/kvm", true, None);
    }
}
