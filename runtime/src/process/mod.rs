//! The container's processes: the init (create/start) and processes exec'd into a running
//! container, sharing the last steps (user, capabilities, seccomp, exec) in `finish`.

pub mod channel;
pub mod exec;
pub mod init;

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccompFilterFlag, Process, Spec};

use crate::{capabilities, rlimits, seccomp, user};

/// What execve needs, resolved while errors can still be reported to the caller.
pub(crate) struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    seccomp: Option<(Vec<libc::sock_filter>, Vec<LinuxSeccompFilterFlag>)>,
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what}: contains a NUL byte"))
}

/// Resolves the program on the process's PATH and builds argv/envp (HOME added like runc).
pub(crate) fn prepare(process: &Process, spec: &Spec) -> Result<Prepared, String> {
    let args = process.args().as_deref().unwrap_or_default();
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user::home_of(process.user().uid())));
    }
    let program = &args[0];
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let cwd = process.cwd();
        search
            .split(':')
            .map(|dir| {
                let d = Path::new(if dir.is_empty() { "." } else { dir });
                if d.is_absolute() {
                    d.join(program)
                } else {
                    cwd.join(d).join(program)
                }
            })
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                format!("process.args[0]: {program:?}: executable file not found in $PATH")
            })?
    };
    if !path.exists() {
        return Err(format!(
            "process.args[0]: {}: no such file or directory",
            path.display()
        ));
    }
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some((
            seccomp::compile(s).map_err(|e| e.to_string())?,
            s.flags().clone().unwrap_or_default(),
        )),
        None => None,
    };
    Ok(Prepared {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "process.args[0]: contains a NUL byte")?,
        argv: args
            .iter()
            .map(|a| cstring(a, "process.args"))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|e| cstring(e, "process.env"))
            .collect::<Result<_, _>>()?,
        seccomp,
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Sets rlimits and oom_score_adj (while still privileged).
pub(crate) fn limits(process: &Process) -> Result<(), String> {
    rlimits::apply(process.rlimits().as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("process.oomScoreAdj: {e}"))?;
    }
    Ok(())
}

/// The last steps, in runc's order: no_new_privs, seccomp (early if it needs privileges),
/// bounding set, uid/gid, capabilities, cwd, umask, `before_exec`, seccomp (late), execve.
pub(crate) fn finish(
    process: &Process,
    prepared: Prepared,
    before_exec: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Infallible, String> {
    let nnp = process.no_new_privileges() == Some(true);
    if nnp {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) only sets a flag on the calling thread.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "process.noNewPrivileges: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let (false, Some((prog, flags))) = (nnp, &prepared.seccomp) {
        seccomp::install(prog, flags).map_err(|e| e.to_string())?;
    }
    let caps = process.capabilities().as_ref();
    capabilities::drop_bounding(caps).map_err(|e| e.to_string())?;
    user::switch(process.user()).map_err(|e| e.to_string())?;
    capabilities::apply(caps).map_err(|e| e.to_string())?;
    nix::unistd::chdir(process.cwd())
        .map_err(|e| format!("process.cwd: {}: {e}", process.cwd().display()))?;
    user::set_umask(process.user());
    before_exec()?;
    if let (true, Some((prog, flags))) = (nnp, &prepared.seccomp) {
        seccomp::install(prog, flags).map_err(|e| e.to_string())?;
    }
    reset_signals();
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks descriptors; none are freed.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let err = nix::unistd::execve(&prepared.path, &prepared.argv, &prepared.envp).unwrap_err();
    Err(format!("process.args[0]: exec {:?}: {err}", prepared.path))
}

/// Gives the user process default signal dispositions and an empty mask: ignored signals
/// survive execve, and the caller (a Rust program ignores SIGPIPE) may have ignored or blocked some.
fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting SIG_DFL installs no handler; signals the C library reserves fail
        // with EINVAL and are left alone.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// Makes `fds` the calling process's stdin, stdout and stderr.
pub(crate) fn set_stdio(fds: [std::os::fd::RawFd; 3]) -> Result<(), String> {
    for (target, fd) in fds.into_iter().enumerate() {
        if fd != target as i32 {
            nix::unistd::dup2(fd, target as i32)
                .map_err(|e| format!("stdio: dup2 {fd} onto {target}: {e}"))?;
        }
    }
    Ok(())
}

/// Ends a forked child without running Rust destructors or atexit handlers of the parent.
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit terminates the calling (forked) process immediately.
    unsafe { libc::_exit(code) }
}

/// Forks like fork(2) but makes the child a sibling (child of our parent), so the runtime's
/// caller can wait for the container process directly. Returns 0 in the child.
pub(crate) fn clone_sibling() -> Result<i32, nix::Error> {
    // SAFETY: raw clone without CLONE_VM and with a NULL stack behaves like fork; the calling
    // process is a single-threaded intermediate child, so no locks are held by other threads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if rc < 0 {
        Err(nix::Error::last())
    } else {
        Ok(rc as i32)
    }
}
