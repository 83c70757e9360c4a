//! `cargo xtask test`: setup, then `cargo test --workspace` on this host, then every test
//! that needs real KVM (`#[ignore]`d ones) in one lab VM; ends with `N passed, N failed`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use sandbox_tests::{artifacts, lab};

use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub skip_setup: bool,
    /// Do not run `cargo test --workspace` on this host.
    #[arg(long)]
    pub skip_host: bool,
    /// Do not run the ignored (real KVM) tests in the lab.
    #[arg(long)]
    pub skip_lab: bool,
    /// Test only these packages (default: the whole workspace).
    #[arg(long, short)]
    pub package: Vec<String>,
    /// Limit for the lab run, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub lab_timeout: u64,
}

/// Test counts parsed from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }

    /// Adds the counts of one `test result: ok. 3 passed; 1 failed; ...` line.
    fn add_line(&mut self, line: &str) {
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

    #[cfg(test)]
    fn add_text(&mut self, text: &str) {
        text.lines().for_each(|l| self.add_line(l));
    }
}

/// Printed by the lab script before each test binary, with its file name.
const BINARY_MARKER: &str = "==> test binary ";
/// Printed by the lab script after each test binary, with its exit status.
const EXIT_MARKER: &str = "==> exit status ";
/// Lab VMs booted at most for one run: a crash or hang of the emulated lab host (not of a
/// test) costs a fresh lab for the binaries that had not finished.
const LAB_BOOTS: usize = 3;
/// A lab where nothing at all was printed for this long is taken as hung (the slowest lab
/// test, 100 MiB through `sandbox run`, prints within a minute or two).
const LAB_IDLE_TIMEOUT: Duration = Duration::from_secs(420);
/// Limit for one test binary inside the lab (its tests have their own, shorter, watchdogs).
const BINARY_TIMEOUT_SECS: u64 = 1200;
/// Printed by the lab script for a test that failed and then passed when run again alone.
const FLAKY_MARKER: &str = "==> flaky (failed, then passed on retry): ";

/// Counts the lab script's output: the binaries' `test result:` lines, plus one failure for
/// each binary that failed without reporting a failed test (it crashed or aborted).
fn tally_lab_output(text: &str) -> Tally {
    let mut total = Tally::default();
    let mut binary = Tally::default();
    for line in text.lines() {
        if line.trim().starts_with(FLAKY_MARKER) {
            binary.failed = binary.failed.saturating_sub(1);
            binary.passed += 1;
        } else if let Some(status) = line.trim().strip_prefix(EXIT_MARKER) {
            if status.trim() != "0" && binary.failed == 0 {
                binary.failed = 1;
            }
            total.passed += binary.passed;
            total.failed += binary.failed;
            binary = Tally::default();
        } else {
            binary.add_line(line);
        }
    }
    total.passed += binary.passed;
    total.failed += binary.failed;
    total
}

/// Splits the output of a lab run that died midway: the binaries that finished (their
/// names, and the output up to and including the last one's exit line).
fn finished_binaries(text: &str) -> (Vec<String>, &str) {
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

fn binary_name(bin: &TestBinary) -> String {
    bin.path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// One phase's outcome: its tests, and whether the phase itself succeeded.
struct Phase {
    name: &'static str,
    tally: Tally,
    ok: bool,
}

pub fn run(args: Args) -> Result<()> {
    let root = artifacts::workspace_root();
    let mut phases = Vec::new();
    if !args.skip_setup {
        setup::run(setup::Args::default()).context("cargo xtask setup")?;
    }
    let selection = package_args(&args.package);
    if !args.skip_host {
        phases.push(host_tests(&root, &selection)?);
    }
    if !args.skip_lab {
        phases.push(lab_tests(&root, &selection, args.lab_timeout)?);
    }

    let mut total = Tally::default();
    let mut report = String::new();
    for p in &phases {
        total.passed += p.tally.passed;
        // A phase that failed without a failing test (a build error, a crash) counts once.
        total.failed += p.tally.failed.max(u64::from(!p.ok));
        let _ = writeln!(
            report,
            "{}: {} passed, {} failed{}",
            p.name,
            p.tally.passed,
            p.tally.failed,
            if p.ok { "" } else { " (phase failed)" }
        );
    }
    print!("{report}");
    // The summary is the last line, also on failure (CI reads it).
    println!("summary: {} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `--workspace`, or `-p NAME` for each selected package.
fn package_args(packages: &[String]) -> Vec<String> {
    if packages.is_empty() {
        return vec!["--workspace".into()];
    }
    packages
        .iter()
        .flat_map(|p| ["-p".into(), p.clone()])
        .collect()
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo test --workspace`: unit and host tests (the KVM ones are ignored there).
fn host_tests(root: &Path, selection: &[String]) -> Result<Phase> {
    println!("==> cargo test {} --no-fail-fast", selection.join(" "));
    let mut child = Command::new(cargo())
        .arg("test")
        .args(selection)
        .arg("--no-fail-fast")
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test --workspace")?;
    let mut tally = Tally::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok(Phase {
        name: "host",
        tally,
        ok: status.success(),
    })
}

/// A test executable and the package directory cargo would run it in.
#[derive(Debug, PartialEq, Eq)]
struct TestBinary {
    path: PathBuf,
    package_dir: PathBuf,
}

/// Builds the test executables and lists them from cargo's JSON messages.
fn build_test_binaries(root: &Path, selection: &[String]) -> Result<Vec<TestBinary>> {
    let out = Command::new(cargo())
        .arg("test")
        .args(selection)
        .args(["--no-run", "--message-format=json"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        anyhow::bail!("cargo test --no-run failed ({})", out.status);
    }
    Ok(parse_test_binaries(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_test_binaries(json_lines: &str) -> Vec<TestBinary> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| {
            let path = PathBuf::from(m["executable"].as_str()?);
            let manifest = Path::new(m["manifest_path"].as_str()?);
            Some(TestBinary {
                path,
                package_dir: manifest.parent()?.to_owned(),
            })
        })
        .collect()
}

/// Whether the binary has `#[ignore]`d tests (asked here, where starting it is cheap).
fn has_ignored_tests(bin: &TestBinary) -> Result<bool> {
    let out = Command::new(&bin.path)
        .args(["--list", "--ignored", "--format=terse"])
        .current_dir(&bin.package_dir)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("listing the tests of {}", bin.path.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.ends_with(": test")))
}

/// The script run in the lab: every binary with its ignored tests, one test at a time.
/// A test that fails is run once more on its own; if it passes then, the script says so with
/// `FLAKY_MARKER` (counted as passed, and listed) instead of failing the run.
fn lab_script(binaries: &[TestBinary]) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let mut s = String::from("rc=0\nlog=$(mktemp)\n");
    for b in binaries {
        let _ = writeln!(
            s,
            "echo '{BINARY_MARKER}{name}'\n\
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
             echo \"{EXIT_MARKER}$r\"; [ \"$r\" = 0 ] || rc=1",
            name = binary_name(b),
            dir = q(&b.package_dir),
            bin = q(&b.path),
        );
    }
    s.push_str("rm -f \"$log\" \"$log.rc\" \"$log.retry\"\nexit $rc\n");
    s
}

/// The `#[ignore = "needs real KVM..."]` tests, all in one lab VM (or here on a KVM host).
fn lab_tests(root: &Path, selection: &[String], timeout: u64) -> Result<Phase> {
    println!("==> building test binaries for the lab");
    let built = match build_test_binaries(root, selection) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(Phase {
                name: "lab",
                tally: Tally::default(),
                ok: false,
            });
        }
    };
    let mut binaries = Vec::new();
    for bin in built {
        if has_ignored_tests(&bin)? {
            binaries.push(bin);
        }
    }
    if binaries.is_empty() {
        println!("no ignored (lab) tests");
        return Ok(Phase {
            name: "lab",
            tally: Tally::default(),
            ok: true,
        });
    }
    let where_ = if lab::native_kvm() {
        "on this KVM host"
    } else {
        "in the lab"
    };
    println!(
        "==> {} test binaries with real-KVM tests, {where_}",
        binaries.len()
    );
    // Lab tests start our VMM, CLI and containerd shim: build them, and tell the tests where
    // they and the guest are.
    if let Err(e) = crate::boot::build_release(&[
        ("vmm", "sandbox-vmm"),
        ("shim", "sandbox"),
        ("shim", "containerd-shim-sandbox-v2"),
    ]) {
        eprintln!("{e:#}");
        return Ok(Phase {
            name: "lab",
            tally: Tally::default(),
            ok: false,
        });
    }
    let opts = crate::lab::options(timeout, 3072, false)?;
    let opts = lab::Options {
        capture: true,
        cwd: Some(root.to_owned()),
        env: test_inputs(),
        idle_timeout: Some(LAB_IDLE_TIMEOUT),
        ..opts
    };

    let mut tally = Tally::default();
    let mut remaining = binaries;
    for boot in 1..=LAB_BOOTS {
        match run_lab_script(&remaining, &opts)? {
            Ok(out) => {
                tally.add(tally_lab_output(&String::from_utf8_lossy(&out.stdout)));
                return Ok(Phase {
                    name: "lab",
                    tally,
                    ok: out.status == 0,
                });
            }
            Err(e) => {
                let Some(stdout) = e.lab_died() else {
                    eprintln!("lab run failed: {e}");
                    break;
                };
                // The emulated lab host crashed or hung: what finished counts; the rest
                // runs again in a fresh lab.
                let text = String::from_utf8_lossy(stdout);
                let (done, done_text) = finished_binaries(&text);
                tally.add(tally_lab_output(done_text));
                remaining.retain(|b| !done.contains(&binary_name(b)));
                eprintln!("==> lab run {boot} of {LAB_BOOTS} died: {e}");
                if remaining.is_empty() {
                    // Everything finished; the lab died on its way out.
                    return Ok(Phase {
                        name: "lab",
                        tally,
                        ok: tally.failed == 0,
                    });
                }
                if boot < LAB_BOOTS {
                    println!(
                        "==> the lab host died; a fresh lab runs the {} test binaries not finished",
                        remaining.len()
                    );
                }
            }
        }
    }
    Ok(Phase {
        name: "lab",
        tally,
        ok: false,
    })
}

/// Writes the lab script for `binaries` and runs it in one lab VM.
fn run_lab_script(
    binaries: &[TestBinary],
    opts: &lab::Options,
) -> Result<Result<lab::Output, lab::Error>> {
    // /var/tmp, not /tmp: the lab hides the host's /tmp.
    let dir = tempfile::Builder::new()
        .prefix("sandbox-xtask-test-")
        .tempdir_in("/var/tmp")
        .context("creating a script directory under /var/tmp")?;
    let script = dir.path().join("lab-tests.sh");
    std::fs::write(&script, lab_script(binaries))
        .with_context(|| format!("writing {}", script.display()))?;
    let argv = vec![OsString::from("sh"), script.into_os_string()];
    Ok(lab::run(&argv, opts))
}

/// `SANDBOX_VMM`, `SANDBOX_BIN`, `SANDBOX_SHIM_BIN`, `SANDBOX_VMLINUX`, `SANDBOX_INITRAMFS`
/// for the lab tests, as absolute paths, unless the caller set them.
fn test_inputs() -> Vec<(OsString, OsString)> {
    let target = artifacts::target_dir();
    let guest = artifacts::guest_dir();
    [
        ("SANDBOX_VMM", target.join("release").join("sandbox-vmm")),
        ("SANDBOX_BIN", target.join("release").join("sandbox")),
        (
            "SANDBOX_SHIM_BIN",
            target.join("release").join("containerd-shim-sandbox-v2"),
        ),
        ("SANDBOX_VMLINUX", guest.join("vmlinux")),
        ("SANDBOX_INITRAMFS", guest.join("initramfs.cpio")),
    ]
    .into_iter()
    .filter(|(name, _)| std::env::var_os(name).is_none())
    .map(|(name, path)| (name.into(), path.into_os_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_test_result_lines() {
        let mut t = Tally::default();
        t.add_text(
            "running 3 tests\n\
             test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n\
             test something ... ok\n",
        );
        assert_eq!(
            t,
            Tally {
                passed: 4,
                failed: 2
            }
        );
    }

    #[test]
    fn lab_output_counts_a_crashed_binary_as_one_failure() {
        let out = format!(
            "==> a\ntest result: ok. 2 passed; 0 failed; 0 ignored\n{EXIT_MARKER}0\n\
             ==> b\ntest result: FAILED. 1 passed; 2 failed; 0 ignored\n{EXIT_MARKER}101\n\
             ==> c\nthread panicked while processing panic. aborting.\n{EXIT_MARKER}134\n"
        );
        assert_eq!(
            tally_lab_output(&out),
            Tally {
                passed: 3,
                failed: 3
            }
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
        assert_eq!(
            tally_lab_output(done),
            Tally {
                passed: 2,
                failed: 1
            }
        );
        let (names, done) = finished_binaries("==> test binary a-1\ntest a ... ");
        assert!(names.is_empty());
        assert_eq!(done, "");
    }

    #[test]
    fn test_binaries_come_from_test_profile_artifacts() {
        let json = r#"{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","profile":{"test":true},"executable":"/w/target/debug/deps/boot-1"}
{"reason":"compiler-artifact","manifest_path":"/w/vmm/Cargo.toml","profile":{"test":false},"executable":"/w/target/debug/sandbox-vmm"}
{"reason":"compiler-artifact","manifest_path":"/w/x/Cargo.toml","profile":{"test":true},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            parse_test_binaries(json),
            vec![TestBinary {
                path: "/w/target/debug/deps/boot-1".into(),
                package_dir: "/w/tests".into(),
            }]
        );
    }

    /// Runs the generated script on a fake test binary whose test `a` fails in the full run
    /// and exits `retry_rc` when run again alone.
    fn run_lab_script(retry_rc: i32) -> (String, i32) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-test");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\ncase \"$*\" in *--exact*) exit {retry_rc};; esac\n\
                 echo 'test a ... noise from a child on stderr'; echo FAILED; echo 'test b ... ok'\n\
                 echo; echo 'failures:'; echo; echo '---- a stdout ----'; echo 'panicked'\n\
                 echo; echo 'failures:'; echo '    a'; echo\n\
                 echo 'test result: FAILED. 1 passed; 1 failed; 0 ignored'; exit 101\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = lab_script(&[TestBinary {
            path: bin,
            package_dir: dir.path().to_owned(),
        }]);
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
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
                failed: 0
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
                failed: 1
            }
        );
    }
}
