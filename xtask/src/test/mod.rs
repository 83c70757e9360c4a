//! `cargo xtask test`: setup, then `cargo test --workspace` on this host, then every test
//! that needs real KVM (`#[ignore]`d ones) in one lab VM; ends with
//! `summary: N passed, N skipped, N failed`.
//!
//! The binaries the tests run are built here first and named in `SANDBOX_*` variables (tests
//! do not build them); tests record skips in `SANDBOX_TEST_SKIP_LOG`, a file per phase.

mod lab_script;
mod report;
mod tally;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use sandbox_tests::binaries::{self, Binary};
use sandbox_tests::prereq::SKIP_LOG_ENV;
use sandbox_tests::{artifacts, lab};

use crate::setup;
use lab_script::lab_script;
use report::{report, Phase};
use tally::{finished_binaries, skip_log_entries, tally_lab_output, Tally};

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

/// Lab VMs booted at most for one run: a crash or hang of the emulated lab host (not of a
/// test) costs a fresh lab for the binaries that had not finished.
const LAB_BOOTS: usize = 3;
/// A lab where nothing at all was printed for this long is taken as hung (the slowest lab
/// test, 100 MiB through `sandbox run`, prints within a minute or two).
const LAB_IDLE_TIMEOUT: Duration = Duration::from_secs(420);
/// The package of the integration tests, which run the binaries below.
const TESTS_PACKAGE: &str = "sandbox-tests";
/// What the host tests run (the `sandbox` CLI with `--no-vm`): a debug build, as `cargo test`
/// builds everything else.
const HOST_BINARIES: &[Binary] = &[binaries::SANDBOX];
/// What the lab tests run: release builds, as users run them.
const LAB_BINARIES: &[Binary] = &[binaries::VMM, binaries::SANDBOX, binaries::SHIM];

fn binary_name(bin: &TestBinary) -> String {
    bin.path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

pub fn run(args: Args) -> Result<()> {
    let root = artifacts::workspace_root();
    let mut phases = Vec::new();
    if !args.skip_setup {
        setup::run(setup::Args::default()).context("cargo xtask setup")?;
    }
    let selection = package_args(&args.package);
    if !args.skip_host {
        phases.push(host_tests(&root, &selection, &args.package)?);
    }
    if !args.skip_lab {
        phases.push(lab_tests(&root, &selection, args.lab_timeout)?);
    }

    let (text, failed) = report(&phases);
    // The summary is the last line, also on failure (CI reads it).
    print!("{text}");
    if failed > 0 {
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

/// `cargo test --workspace`: unit and host tests (the KVM ones are ignored there), with the
/// binaries they run built first and a fresh skip log.
fn host_tests(root: &Path, selection: &[String], packages: &[String]) -> Result<Phase> {
    let inputs = match host_inputs(packages) {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(Phase::failed("host"));
        }
    };
    let skip_log = tempfile::NamedTempFile::new().context("creating the skip log")?;
    println!("==> cargo test {} --no-fail-fast", selection.join(" "));
    let mut child = Command::new(cargo())
        .arg("test")
        .args(selection)
        .arg("--no-fail-fast")
        .envs(inputs)
        .env(SKIP_LOG_ENV, skip_log.path())
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
    let skips = std::fs::read_to_string(skip_log.path())
        .with_context(|| format!("reading the skip log {}", skip_log.path().display()))?;
    Ok(Phase {
        name: "host",
        tally: tally.with_skips(skip_log_entries(&skips)),
        ok: status.success(),
    })
}

/// Builds what the host tests of `packages` run (`HOST_BINARIES`, when the integration tests
/// are selected); returns the variables naming them, unless the caller set them.
fn host_inputs(packages: &[String]) -> Result<Vec<(OsString, OsString)>> {
    if !packages.is_empty() && !packages.iter().any(|p| p == TESTS_PACKAGE) {
        return Ok(Vec::new());
    }
    let mut args = vec!["build"];
    for b in HOST_BINARIES {
        args.extend(["-p", b.package, "--bin", b.name]);
    }
    println!("==> cargo {}", args.join(" "));
    crate::boot::run_cargo(&args)?;
    Ok(inputs(HOST_BINARIES, "debug"))
}

/// `VAR=<target>/<profile>/NAME` for each of `bins`, unless the caller set VAR.
fn inputs(bins: &[Binary], profile: &str) -> Vec<(OsString, OsString)> {
    let dir = artifacts::target_dir().join(profile);
    bins.iter()
        .filter(|b| std::env::var_os(b.var).is_none())
        .map(|b| (b.var.into(), dir.join(b.name).into_os_string()))
        .collect()
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

/// The `#[ignore = "needs real KVM..."]` tests, all in one lab VM (or here on a KVM host).
fn lab_tests(root: &Path, selection: &[String], timeout: u64) -> Result<Phase> {
    println!("==> building test binaries for the lab");
    let built = match build_test_binaries(root, selection) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(Phase::failed("lab"));
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
    let release: Vec<_> = LAB_BINARIES.iter().map(|b| (b.package, b.name)).collect();
    if let Err(e) = crate::boot::build_release(&release) {
        eprintln!("{e:#}");
        return Ok(Phase::failed("lab"));
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
                    let ok = tally.failed == 0;
                    return Ok(Phase {
                        name: "lab",
                        tally,
                        ok,
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

/// The lab tests' `SANDBOX_VMM`, `SANDBOX_BIN`, `SANDBOX_SHIM_BIN` (release builds),
/// `SANDBOX_VMLINUX` and `SANDBOX_INITRAMFS`, as absolute paths, unless the caller set them.
fn test_inputs() -> Vec<(OsString, OsString)> {
    let guest = artifacts::guest_dir();
    let mut vars = inputs(LAB_BINARIES, "release");
    vars.extend(
        [
            ("SANDBOX_VMLINUX", guest.join("vmlinux")),
            ("SANDBOX_INITRAMFS", guest.join("initramfs.cpio")),
        ]
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .map(|(name, path)| (name.into(), path.into_os_string())),
    );
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn inputs_name_each_binary_in_its_profile_directory() {
        let bin = Binary {
            name: "some-binary",
            var: "SANDBOX_XTASK_TEST_UNSET",
            package: "shim",
        };
        let path = artifacts::target_dir().join("release").join("some-binary");
        assert_eq!(
            inputs(&[bin], "release"),
            vec![(
                OsString::from("SANDBOX_XTASK_TEST_UNSET"),
                path.into_os_string()
            )]
        );
    }
}
