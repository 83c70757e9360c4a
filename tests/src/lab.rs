//! The lab host: a QEMU TCG VM with nested SVM (so a real KVM inside) that sees the host's
//! files and runs one command there; on a host with vmx/svm the command simply runs here.

mod initramfs;
mod kernel;
mod process;
mod qemu;
mod script;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use process::{Ended, Pump, Sink, Watch};

pub use initramfs::MODULES;
pub use script::PASSED_ENV;

/// Default limit for one lab run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Where the control directories go: visible inside the lab, unlike /tmp.
const CONTROL_PARENT: &str = "/var/tmp";
/// Time QEMU gets to power off by itself after the command's status arrived.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// Time the output pumps get to drain after the child is gone.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lab command is empty")]
    EmptyCommand,
    #[error("cannot determine the working directory: {0}")]
    Cwd(io::Error),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Initramfs(#[from] initramfs::Error),
    #[error(transparent)]
    Script(#[from] script::Error),
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("waiting for {program} failed: {source}")]
    Wait { program: PathBuf, source: io::Error },
    #[error("lab command timed out after {} s and was killed", .0.as_secs())]
    Timeout(Duration),
    #[error("lab run was cancelled (interrupted); the VM was killed")]
    Cancelled,
    #[error("the lab VM ended ({qemu_status}) without reporting the command's status; console:\n{console}\nqemu stderr:\n{qemu_stderr}")]
    NoStatus {
        qemu_status: String,
        console: String,
        qemu_stderr: String,
        /// What the command printed before the VM died (when captured).
        stdout: Vec<u8>,
    },
    #[error("the lab command printed nothing for {} s and was killed; console:\n{console}", .idle.as_secs())]
    Stalled {
        idle: Duration,
        console: String,
        /// What the command printed before it stalled (when captured).
        stdout: Vec<u8>,
    },
}

impl Error {
    /// For a lab VM that died or hung under the command (a crash of the emulated lab host,
    /// not the command's own failure): what the command printed until then.
    pub fn lab_died(&self) -> Option<&[u8]> {
        match self {
            Error::NoStatus { stdout, .. } | Error::Stalled { stdout, .. } => Some(stdout),
            _ => None,
        }
    }
}

/// How to run a command in the lab.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kill everything after this long.
    pub timeout: Duration,
    /// Lab VM memory.
    pub memory_mib: u32,
    /// Lab VM vCPUs.
    pub cpus: u32,
    /// QEMU `-cpu` value; must offer SVM.
    pub cpu_model: String,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Copy the command's stdout/stderr to ours while it runs.
    pub stream: bool,
    /// Keep the command's stdout/stderr in [`Output`].
    pub capture: bool,
    /// Working directory (default: ours); shared writable into the lab.
    pub cwd: Option<PathBuf>,
    /// Variables added to the passed environment (see [`PASSED_ENV`]).
    pub env: Vec<(OsString, OsString)>,
    /// Set to true (e.g. from a SIGINT handler) to stop the run and kill the VM.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Use the VM even on a host with vmx/svm.
    pub force_vm: bool,
    /// Receives the PID of the QEMU process (or of the command, natively) once started.
    pub spawned_pid: Option<Arc<AtomicU32>>,
    /// Kill the run when the command wrote nothing to stdout or stderr for this long (a hung
    /// lab host).
    pub idle_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            memory_mib: 3072,
            cpus: 2,
            cpu_model: "max,-xsave".into(),
            qemu: "qemu-system-x86_64".into(),
            stream: true,
            capture: false,
            cwd: None,
            env: Vec::new(),
            cancel: None,
            force_vm: false,
            spawned_pid: None,
            idle_timeout: None,
        }
    }
}

impl Options {
    /// Capture output instead of streaming it (what tests want).
    pub fn captured() -> Self {
        Self {
            stream: false,
            capture: true,
            ..Self::default()
        }
    }
}

/// The result of a lab run.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command's exit status (128 + N when killed by signal N).
    pub status: i32,
    /// Captured stdout (empty unless [`Options::capture`]).
    pub stdout: Vec<u8>,
    /// Captured stderr (empty unless [`Options::capture`]).
    pub stderr: Vec<u8>,
    /// The lab kernel's console (empty when the command ran natively).
    pub console: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// True on a host whose CPU offers hardware virtualisation (vmx or svm) to KVM: there the
/// lab is not needed.
pub fn native_kvm() -> bool {
    fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| cpu_has_virt(&c))
}

fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// The build cache: `$SANDBOX_CACHE`, default /var/cache/sandbox-build.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SANDBOX_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sandbox-build"))
}

/// Prepares (or finds in the cache) the lab's uncompressed kernel and initramfs.
pub fn prepare() -> Result<(PathBuf, PathBuf), Error> {
    let cache = cache_dir().join("lab");
    let kernel = kernel::HostKernel::find()?;
    let vmlinux = kernel.vmlinux(&cache)?;
    let initramfs = initramfs::build(&kernel, &cache)?;
    Ok((vmlinux, initramfs))
}

/// Runs `argv` in the lab (or directly, on a KVM host) and returns its status.
pub fn run(argv: &[OsString], opts: &Options) -> Result<Output, Error> {
    if argv.is_empty() {
        return Err(Error::EmptyCommand);
    }
    let cwd = match &opts.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().map_err(Error::Cwd)?,
    };
    if native_kvm() && !opts.force_vm {
        run_native(argv, &cwd, opts)
    } else {
        run_vm(argv, &cwd, opts)
    }
}

fn sinks(opts: &Options) -> (Sink, Sink) {
    if opts.stream {
        (Sink::Stdout, Sink::Stderr)
    } else {
        (Sink::Discard, Sink::Discard)
    }
}

fn run_vm(argv: &[OsString], cwd: &Path, opts: &Options) -> Result<Output, Error> {
    let deadline = Instant::now() + opts.timeout;
    let (vmlinux, initramfs) = prepare()?;
    let mut env = script::passed_env();
    env.extend(opts.env.iter().cloned());
    // "/" is already there (read-only); anything else is shared writable at its own path.
    let writable = cwd != Path::new("/");
    let control = script::ControlDir::create(Path::new(CONTROL_PARENT), argv, &env, cwd, writable)?;
    let config = qemu::VmConfig {
        qemu: opts.qemu.clone(),
        cpu_model: opts.cpu_model.clone(),
        cpus: opts.cpus,
        memory_mib: opts.memory_mib,
        vmlinux,
        initramfs,
        control_dir: control.path().to_owned(),
        writable_dir: writable.then(|| cwd.to_owned()),
        extra_cmdline: std::env::var("SANDBOX_LAB_CMDLINE").unwrap_or_default(),
    };
    let spawn_err = |source| Error::Spawn {
        program: opts.qemu.clone(),
        source,
    };
    let mut vm = config.spawn().map_err(spawn_err)?;
    if let Some(pid) = &opts.spawned_pid {
        pid.store(vm.child.id(), Ordering::SeqCst);
    }
    let qemu_stderr = vm
        .child
        .stderr
        .take()
        .map(|e| Pump::start(File::from(OwnedFd::from(e)), Sink::Discard, true));
    let [console, stdout, stderr, status] = vm.ports;
    // SANDBOX_LAB_CONSOLE=1 shows the lab kernel's console on stderr.
    let console_sink = if std::env::var_os("SANDBOX_LAB_CONSOLE").is_some() {
        Sink::Stderr
    } else {
        Sink::Discard
    };
    let console = Pump::start(console, console_sink, true);
    let (out_sink, err_sink) = sinks(opts);
    let stdout = Pump::start(stdout, out_sink, opts.capture);
    let stderr = Pump::start(stderr, err_sink, opts.capture);
    let status = Pump::start(status, Sink::Discard, true);

    let stalled = || {
        opts.idle_timeout.is_some_and(|limit| {
            // The command's own output only: a hung lab kernel can keep printing (lockup
            // warnings) on its console.
            [&stdout, &stderr].iter().all(|pump| pump.idle() >= limit)
        })
    };
    let watch = Watch {
        deadline,
        cancel: opts.cancel.as_deref(),
        stalled: Some(&stalled),
    };
    let ended = watch
        .wait(
            &mut vm.child,
            process::kill_child,
            || parse_status(&status.snapshot()).is_some(),
            POWEROFF_GRACE,
        )
        .map_err(|source| Error::Wait {
            program: opts.qemu.clone(),
            source,
        })?;
    let stdout = stdout.finish(DRAIN);
    let stderr = stderr.finish(DRAIN);
    let console = console.finish(DRAIN);
    let status = parse_status(&status.finish(DRAIN));
    let qemu_stderr = qemu_stderr.map(|p| p.finish(DRAIN)).unwrap_or_default();
    drop(control);

    match ended {
        Ended::TimedOut => Err(Error::Timeout(opts.timeout)),
        Ended::Cancelled => Err(Error::Cancelled),
        Ended::Stalled => Err(Error::Stalled {
            idle: opts.idle_timeout.unwrap_or_default(),
            console: tail(&console, 4000),
            stdout,
        }),
        Ended::Exited(qemu_status) => match status {
            Some(status) => Ok(Output {
                status,
                stdout,
                stderr,
                console,
            }),
            None => Err(Error::NoStatus {
                qemu_status: qemu_status.to_string(),
                console: tail(&console, 4000),
                qemu_stderr: tail(&qemu_stderr, 2000),
                stdout,
            }),
        },
    }
}

/// Finds `LAB-STATUS <n>` (a complete line) in what `/init` wrote to the status port.
fn parse_status(bytes: &[u8]) -> Option<i32> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter(|_| text.ends_with('\n'))
        .find_map(|l| l.trim().strip_prefix("LAB-STATUS ")?.trim().parse().ok())
}

fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn run_native(argv: &[OsString], cwd: &Path, opts: &Options) -> Result<Output, Error> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let program = PathBuf::from(&argv[0]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    let piped = opts.capture || !opts.stream;
    if piped {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Some(pid) = &opts.spawned_pid {
        pid.store(child.id(), Ordering::SeqCst);
    }
    let (out_sink, err_sink) = sinks(opts);
    let pumps = piped.then(|| {
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        (
            Pump::start(File::from(OwnedFd::from(out)), out_sink, opts.capture),
            Pump::start(File::from(OwnedFd::from(err)), err_sink, opts.capture),
        )
    });
    let watch = Watch {
        deadline: Instant::now() + opts.timeout,
        cancel: opts.cancel.as_deref(),
        stalled: None,
    };
    let ended = watch
        .wait(&mut child, process::kill_group, || false, Duration::ZERO)
        .map_err(|source| Error::Wait {
            program: program.clone(),
            source,
        })?;
    let (stdout, stderr) = pumps
        .map(|(o, e)| (o.finish(DRAIN), e.finish(DRAIN)))
        .unwrap_or_default();
    match ended {
        Ended::TimedOut | Ended::Stalled => Err(Error::Timeout(opts.timeout)),
        Ended::Cancelled => Err(Error::Cancelled),
        Ended::Exited(status) => Ok(Output {
            status: process::status_code(status),
            stdout,
            stderr,
            console: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_vmx_or_svm_in_flags() {
        assert!(cpu_has_virt("processor: 0\nflags\t\t: fpu vme svm lm\n"));
        assert!(cpu_has_virt("flags\t\t: fpu vmx\n"));
        assert!(!cpu_has_virt(
            "flags\t\t: fpu hypervisor lm\nvmx flags\t: x\n"
        ));
    }

    #[test]
    fn parses_a_complete_status_line() {
        assert_eq!(parse_status(b"LAB-STATUS 7\n"), Some(7));
        assert_eq!(parse_status(b"\r\nLAB-STATUS 0\r\n"), Some(0));
        assert_eq!(parse_status(b"LAB-STATUS 1"), None);
        assert_eq!(parse_status(b""), None);
    }
}
