//! Counting test results: libtest's `test result:` lines, the skips the tests record
//! (`sandbox_tests::prereq`), and the lab script's markers around each test binary.

use super::lab_script::{BINARY_MARKER, EXIT_MARKER, FLAKY_MARKER, SKIP_MARKER};

/// Test counts of a run. libtest counts a skipped test (one that returned early through
/// `require!`) as passed: [`Tally::with_skips`] moves it to `skipped`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    /// `<test name>: <reason>` of each skipped test.
    pub skipped: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped.extend(other.skipped);
    }

    /// Adds the counts of one `test result: ok. 3 passed; 1 failed; ...` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }

    /// The same counts with the recorded skips (lines of the skip log) taken out of `passed`.
    pub fn with_skips(mut self, skips: impl IntoIterator<Item = String>) -> Tally {
        for skip in skips {
            self.passed = self.passed.saturating_sub(1);
            self.skipped.push(skip);
        }
        self
    }

    #[cfg(test)]
    fn add_text(&mut self, text: &str) {
        text.lines().for_each(|l| self.add_line(l));
    }
}

/// The entries of a skip log (`SANDBOX_TEST_SKIP_LOG`): one `<test name>: <reason>` a line.
pub fn skip_log_entries(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Counts the lab script's output: the binaries' `test result:` lines and recorded skips,
/// plus one failure for each binary that failed without reporting a failed test (it crashed
/// or aborted).
pub fn tally_lab_output(text: &str) -> Tally {
    let mut total = Tally::default();
    let mut binary = Tally::default();
    let mut skips = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with(FLAKY_MARKER) {
            binary.failed = binary.failed.saturating_sub(1);
            binary.passed += 1;
        } else if let Some(skip) = line.strip_prefix(SKIP_MARKER) {
            skips.push(skip.to_owned());
        } else if let Some(status) = line.strip_prefix(EXIT_MARKER) {
            if status.trim() != "0" && binary.failed == 0 {
                binary.failed = 1;
            }
            total.add(std::mem::take(&mut binary).with_skips(std::mem::take(&mut skips)));
        } else {
            binary.add_line(line);
        }
    }
    total.add(binary.with_skips(skips));
    total
}

/// Splits the output of a lab run that died midway: the binaries that finished (their
/// names, and the output up to and including the last one's exit line).
pub fn finished_binaries(text: &str) -> (Vec<String>, &str) {
    let mut names = Vec::new();
    let mut current = None;
    let mut end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        offset += line.len();
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix(BINARY_MARKER) {
            current = Some(name.to_owned());
        } else if trimmed.starts_with(EXIT_MARKER) && line.ends_with('\n') {
            names.extend(current.take());
            end = offset;
        }
    }
    (names, &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(passed: u64, failed: u64, skipped: &[&str]) -> Tally {
        Tally {
            passed,
            failed,
            skipped: skipped.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tally_adds_test_result_lines() {
        let mut t = Tally::default();
        t.add_text(
            "running 3 tests\n\
             test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n\
             test something ... ok\n",
        );
        assert_eq!(t, tally(4, 2, &[]));
    }

    #[test]
    fn skips_leave_passed_for_skipped() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 5 passed; 1 failed; 0 ignored");
        let log = "a::b: no busybox\n\nc: not root\n";
        assert_eq!(
            t.with_skips(skip_log_entries(log)),
            tally(3, 1, &["a::b: no busybox", "c: not root"])
        );
    }

    #[test]
    fn lab_output_counts_a_crashed_binary_as_one_failure() {
        let out = format!(
            "==> a\ntest result: ok. 2 passed; 0 failed; 0 ignored\n{EXIT_MARKER}0\n\
             ==> b\ntest result: FAILED. 1 passed; 2 failed; 0 ignored\n{EXIT_MARKER}101\n\
             ==> c\nthread panicked while processing panic. aborting.\n{EXIT_MARKER}134\n"
        );
        assert_eq!(tally_lab_output(&out), tally(3, 3, &[]));
    }

    #[test]
    fn lab_output_moves_each_binarys_skips_out_of_passed() {
        let out = format!(
            "{BINARY_MARKER}a-1\ntest result: ok. 3 passed; 0 failed; 0 ignored\n\
             {SKIP_MARKER}boots: no /dev/kvm\n{SKIP_MARKER}runs: no /dev/kvm\n{EXIT_MARKER}0\n\
             {BINARY_MARKER}b-2\ntest result: ok. 1 passed; 0 failed; 0 ignored\n{EXIT_MARKER}0\n\
             {BINARY_MARKER}c-3\ntest result: ok. 1 passed; 0 failed; 0 ignored\n\
             {SKIP_MARKER}ctr: shim not built\n"
        );
        assert_eq!(
            tally_lab_output(&out),
            tally(
                2,
                0,
                &[
                    "boots: no /dev/kvm",
                    "runs: no /dev/kvm",
                    "ctr: shim not built"
                ]
            )
        );
    }

    #[test]
    fn a_lab_that_died_keeps_the_binaries_that_finished() {
        let out = format!(
            "{BINARY_MARKER}a-1\ntest result: ok. 2 passed; 0 failed; 0 ignored\n{EXIT_MARKER}0\n\
             {BINARY_MARKER}b-2\ntest result: FAILED. 0 passed; 1 failed; 0 ignored\n{EXIT_MARKER}101\n\
             {BINARY_MARKER}c-3\ntest x ... ok\ntest result: ok. 5 passed; 0 failed; 0 ignored\n{EXIT_MARKER}"
        );
        let (names, done) = finished_binaries(&out);
        assert_eq!(names, ["a-1", "b-2"]);
        assert_eq!(tally_lab_output(done), tally(2, 1, &[]));
        let (names, done) = finished_binaries("==> test binary a-1\ntest a ... ");
        assert!(names.is_empty());
        assert_eq!(done, "");
    }
}
