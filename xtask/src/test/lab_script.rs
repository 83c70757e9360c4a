//! The shell script that runs the test binaries' real-KVM (`#[ignore]`d) tests in the lab,
//! and the markers it prints around each binary for [`super::tally`] to read.

use std::fmt::Write as _;
use std::path::Path;

use sandbox_tests::prereq::SKIP_LOG_ENV;

use super::{binary_name, TestBinary};

/// Printed by the lab script before each test binary, with its file name.
pub const BINARY_MARKER: &str = "==> test binary ";
/// Printed by the lab script after each test binary, with its exit status.
pub const EXIT_MARKER: &str = "==> exit status ";
/// Printed by the lab script for a test that failed and then passed when run again alone.
pub const FLAKY_MARKER: &str = "==> flaky (failed, then passed on retry): ";
/// Printed by the lab script before its exit marker for each test of the binary that was
/// skipped, with the `<test name>: <reason>` it recorded: the skip log is a file in the lab,
/// which the host cannot read.
pub const SKIP_MARKER: &str = "==> skipped: ";
/// Limit for one test binary inside the lab (its tests have their own, shorter, watchdogs).
const BINARY_TIMEOUT_SECS: u64 = 1200;

/// The script run in the lab: every binary with its ignored tests, one test at a time.
/// A test that fails is run once more on its own; if it passes then, the script says so with
/// `FLAKY_MARKER` (counted as passed, and listed) instead of failing the run. Each binary
/// gets an empty skip log (`SANDBOX_TEST_SKIP_LOG`), whose lines follow it as `SKIP_MARKER`s.
pub fn lab_script(binaries: &[TestBinary]) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let mut s = format!("rc=0\nlog=$(mktemp)\nexport {SKIP_LOG_ENV}=\"$log.skips\"\n");
    for b in binaries {
        let _ = writeln!(
            s,
            "echo '{BINARY_MARKER}{name}'\n\
             : > \"$log.skips\"\n\
             {{ cd {dir} && timeout -k 10 {BINARY_TIMEOUT_SECS} {bin} --ignored --test-threads=1 --color=never; echo $? > \"$log.rc\"; }} 2>&1 | tee \"$log\"\n\
             r=$(cat \"$log.rc\")\n\
             if [ \"$r\" != 0 ]; then\n\
             \x20 failed=$(awk '/^failures:$/ {{n = \"\"}} /^    [^ ]+$/ {{n = n \" \" $1}} /^test result:/ {{print n}}' \"$log\" | tail -n 1)\n\
             \x20 again=0\n\
             \x20 for t in $failed; do\n\
             \x20   if (cd {dir} && {bin} --ignored --exact \"$t\" --test-threads=1 --color=never > \"$log.retry\" 2>&1); then\n\
             \x20     echo \"{FLAKY_MARKER}$t\"\n\
             \x20   else\n\
             \x20     grep -v '^test result:' \"$log.retry\"; echo \"==> failed again: $t\"; again=1\n\
             \x20   fi\n\
             \x20 done\n\
             \x20 [ -n \"$failed\" ] && [ $again = 0 ] && r=0\n\
             fi\n\
             while IFS= read -r skip; do echo \"{SKIP_MARKER}$skip\"; done < \"$log.skips\"\n\
             echo \"{EXIT_MARKER}$r\"; [ \"$r\" = 0 ] || rc=1",
            name = binary_name(b),
            dir = q(&b.package_dir),
            bin = q(&b.path),
        );
    }
    s.push_str("rm -f \"$log\" \"$log.rc\" \"$log.retry\" \"$log.skips\"\nexit $rc\n");
    s
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::tally::{tally_lab_output, Tally};
    use super::*;

    /// Runs the generated script on a fake test binary whose test `a` fails in the full run
    /// and exits `retry_rc` when run again alone; its test `s` records a skip.
    fn run_lab_script(retry_rc: i32) -> (String, i32) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-test");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\ncase \"$*\" in *--exact*) exit {retry_rc};; esac\n\
                 echo 's: no /dev/kvm' >> \"${SKIP_LOG_ENV}\"\n\
                 echo 'test a ... noise from a child on stderr'; echo FAILED; echo 'test b ... ok'\n\
                 echo 'test s ... ok'\n\
                 echo; echo 'failures:'; echo; echo '---- a stdout ----'; echo 'panicked'\n\
                 echo; echo 'failures:'; echo '    a'; echo\n\
                 echo 'test result: FAILED. 2 passed; 1 failed; 0 ignored'; exit 101\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = lab_script(&[TestBinary {
            path: bin,
            package_dir: dir.path().to_owned(),
        }]);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env_remove(SKIP_LOG_ENV)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap(),
        )
    }

    #[test]
    fn lab_script_retries_a_failed_test_once_and_reports_it_as_flaky() {
        let (out, rc) = run_lab_script(0);
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains(&format!("{FLAKY_MARKER}a")), "{out}");
        assert_eq!(
            tally_lab_output(&out),
            Tally {
                passed: 2,
                failed: 0,
                skipped: vec!["s: no /dev/kvm".into()],
            }
        );
    }

    #[test]
    fn lab_script_fails_a_test_that_fails_again() {
        let (out, rc) = run_lab_script(1);
        assert_eq!(rc, 1, "{out}");
        assert!(out.contains("==> failed again: a"), "{out}");
        assert_eq!(
            tally_lab_output(&out),
            Tally {
                passed: 1,
                failed: 1,
                skipped: vec!["s: no /dev/kvm".into()],
            }
        );
    }

    #[test]
    fn lab_script_reports_skips_before_the_binarys_exit_line() {
        let (out, _) = run_lab_script(0);
        let skip = out
            .find(&format!("{SKIP_MARKER}s: no /dev/kvm\n"))
            .expect(&out);
        let exit = out.find(EXIT_MARKER).expect(&out);
        assert!(skip < exit, "{out}");
    }
}
