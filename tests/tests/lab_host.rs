//! The lab host, driven from this host: each test boots one lab VM (or, on a host with
//! vmx/svm, runs the command directly). Boots are costly, so each test checks several things.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sandbox_tests::lab::{self, Options};

fn argv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

/// Lab runs in these tests need less memory than the default.
fn options() -> Options {
    Options {
        memory_mib: 1024,
        ..Options::captured()
    }
}

/// A scratch directory outside /tmp (the lab hides the host's /tmp).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lab-host-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn true_exits_zero_with_no_output() {
    let out = lab::run(&argv(&["true"]), &options()).expect("lab run");
    assert_eq!(out.status, 0, "stderr: {}", out.stderr_str());
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout_str());
    assert!(out.stderr.is_empty(), "stderr: {:?}", out.stderr_str());
}

#[test]
fn command_sees_kvm_host_files_and_writes_its_cwd() {
    let cwd = scratch("cwd");
    let elsewhere = scratch("elsewhere");
    fs::write(elsewhere.join("probe"), "from-the-host\n").unwrap();
    let hidden = tempfile::NamedTempFile::new_in("/tmp").unwrap();

    let in_vm = !lab::native_kvm();
    let script = format!(
        r#"set -u
test -c /dev/kvm || {{ echo "no /dev/kvm" >&2; exit 3; }}
grep -qw {cpu_flag} /proc/cpuinfo || {{ echo "no {cpu_flag} flag" >&2; exit 4; }}
if {in_vm}; then test ! -e {hidden} || {{ echo "host /tmp visible" >&2; exit 5; }}; fi
test "$(pwd)" = {cwd} || {{ echo "cwd is $(pwd)" >&2; exit 6; }}
cat {probe}
echo "written in the lab" > result.txt
echo "env=$SANDBOX_LAB_PROBE"
echo lab-stderr >&2
exit 7
"#,
        cpu_flag = if in_vm { "svm" } else { "-e svm -e vmx" },
        in_vm = in_vm,
        hidden = hidden.path().display(),
        cwd = cwd.display(),
        probe = elsewhere.join("probe").display(),
    );
    let opts = Options {
        cwd: Some(cwd.clone()),
        env: vec![("SANDBOX_LAB_PROBE".into(), "passed".into())],
        ..options()
    };
    let out = lab::run(&argv(&["sh", "-c", &script]), &opts).expect("lab run");

    assert_eq!(
        out.status,
        7,
        "stdout: {}\nstderr: {}\nconsole: {}",
        out.stdout_str(),
        out.stderr_str(),
        String::from_utf8_lossy(&out.console)
    );
    // Exactly the command's output: no kernel console, no \r from the serial line.
    assert_eq!(out.stdout_str(), "from-the-host\nenv=passed\n");
    assert_eq!(out.stderr_str(), "lab-stderr\n");
    assert_eq!(
        fs::read_to_string(cwd.join("result.txt")).unwrap(),
        "written in the lab\n"
    );
    fs::remove_dir_all(&cwd).unwrap();
    fs::remove_dir_all(&elsewhere).unwrap();
}

#[test]
fn hanging_command_times_out_and_leaves_no_process() {
    let pid = Arc::new(AtomicU32::new(0));
    let opts = Options {
        timeout: Duration::from_secs(15),
        spawned_pid: Some(pid.clone()),
        ..options()
    };
    let err = lab::run(&argv(&["sleep", "100000"]), &opts).unwrap_err();
    assert!(matches!(err, lab::Error::Timeout(_)), "{err}");
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0, "the lab never started its process");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} is still there after the timeout"
    );
}

#[test]
fn silent_lab_is_killed_as_stalled_with_the_output_so_far() {
    let pid = Arc::new(AtomicU32::new(0));
    let opts = Options {
        timeout: Duration::from_secs(600),
        idle_timeout: Some(Duration::from_secs(20)),
        force_vm: true,
        spawned_pid: Some(pid.clone()),
        ..options()
    };
    let started = std::time::Instant::now();
    let err = lab::run(
        &argv(&["sh", "-c", "echo before; exec sleep 100000"]),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, lab::Error::Stalled { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(300), "{err}");
    let out = String::from_utf8_lossy(err.lab_died().expect("stalled lab keeps its output"));
    assert_eq!(out.trim(), "before");
    let pid = pid.load(Ordering::SeqCst);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} is left"
    );
}

#[test]
fn crashed_lab_host_is_reported_with_the_output_so_far() {
    // What a kernel panic of the lab host looks like from outside: QEMU ends, no status.
    let opts = Options {
        force_vm: true,
        ..options()
    };
    let err = lab::run(
        &argv(&[
            "sh",
            "-c",
            "echo before; echo c > /proc/sysrq-trigger; sleep 100000",
        ]),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, lab::Error::NoStatus { .. }), "{err}");
    let out = String::from_utf8_lossy(err.lab_died().expect("crashed lab keeps its output"));
    assert_eq!(out.trim(), "before");
}

#[test]
fn empty_command_is_rejected() {
    assert!(matches!(
        lab::run(&[], &options()),
        Err(lab::Error::EmptyCommand)
    ));
}

#[test]
fn cancelled_run_kills_its_process() {
    // Raised before the start: the run is stopped as soon as the VM (or command) is up.
    let cancel = Arc::new(AtomicBool::new(true));
    let pid = Arc::new(AtomicU32::new(0));
    let opts = Options {
        cancel: Some(cancel),
        spawned_pid: Some(pid.clone()),
        ..options()
    };
    let err = lab::run(&argv(&["sleep", "100000"]), &opts).unwrap_err();
    assert!(matches!(err, lab::Error::Cancelled), "{err}");
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0, "the lab never started its process");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
