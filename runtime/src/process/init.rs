//! The container's init, in two forked processes: the intermediate joins/creates namespaces
//! and forks the init (PID 1 of a new PID namespace), which builds the rootfs and waits to start.

use std::os::fd::RawFd;
use std::path::PathBuf;

use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::channel::{Channel, Msg};
use super::{clone_sibling, exit_child, finish, limits, prepare};
use crate::hooks::{self, HookKind};
use crate::{namespaces, rootfs};

/// What the forked side needs; everything is set up by the parent before fork.
pub(crate) struct InitArgs<'a> {
    pub spec: &'a Spec,
    pub rootfs: PathBuf,
    pub chan: Channel,
    pub fifo: RawFd,
    pub console: Option<RawFd>,
    pub stdio: Option<[RawFd; 3]>,
}

/// Runs in the first forked child. Never returns.
pub(crate) fn intermediate(args: InitArgs) -> ! {
    let chan = &args.chan;
    let result = (|| -> Result<(), String> {
        if let Some(fds) = args.stdio {
            super::set_stdio(fds)?;
        }
        chan.expect_go()?;
        let list = args
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let mut join = namespaces::ToJoin::open(&list).map_err(|e| e.to_string())?;
        join.join_user().map_err(|e| e.to_string())?;
        if namespaces::wants_new_user(&list) {
            namespaces::create(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| e.to_string())?;
            chan.send(&Msg::NeedIdMaps).map_err(|e| e.to_string())?;
            chan.expect_go()?;
            // Like runc, only the uid is switched here; the gid follows with process.user.
            setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .map_err(|e| format!("linux.uidMappings: container uid 0 is not usable: {e}"))?;
        }
        join.join_rest().map_err(|e| e.to_string())?;
        namespaces::create(namespaces::new_flags(&list)).map_err(|e| e.to_string())?;
        if let Some(offsets) = args
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.time_offsets().as_ref())
        {
            let text: String = offsets
                .iter()
                .map(|(clock, o)| {
                    format!(
                        "{clock} {} {}\n",
                        o.secs().unwrap_or(0),
                        o.nanosecs().unwrap_or(0)
                    )
                })
                .collect();
            std::fs::write("/proc/self/timens_offsets", text)
                .map_err(|e| format!("linux.timeOffsets: {e}"))?;
        }
        let pid = clone_sibling().map_err(|e| format!("fork the container init: {e}"))?;
        if pid == 0 {
            let code = match init(&args, &list) {
                Ok(never) => match never {},
                Err(e) => {
                    // The creator reports the error, as one line. A failed send means the
                    // creator is gone or already saw the error: printing here too would give
                    // the user a second, racing line.
                    let _ = args.chan.send(&Msg::Error(e));
                    1
                }
            };
            exit_child(code);
        }
        chan.send(&Msg::Pid(pid)).map_err(|e| e.to_string())?;
        Ok(())
    })();
    match result {
        Ok(()) => exit_child(0),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e));
            exit_child(1)
        }
    }
}

fn state_with_status(template: &str, status: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(template) {
        Ok(mut v) => {
            v["status"] = serde_json::Value::String(status.into());
            v.to_string()
        }
        Err(_) => template.to_string(),
    }
}

/// The container's init (PID 1 when a PID namespace is created).
fn init(
    args: &InitArgs,
    list: &[oci_spec::runtime::LinuxNamespace],
) -> Result<std::convert::Infallible, String> {
    let spec = args.spec;
    let chan = &args.chan;
    let process = spec.process().as_ref().ok_or("process: missing")?;
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    let in_userns = list.iter().any(|n| n.typ() == LinuxNamespaceType::User);
    if crate::namespaces::wants_new_user(list) {
        // The gid becomes 0 only now, after the other namespaces were created (as runc does).
        let root = Gid::from_raw(0);
        setresgid(root, root, root)
            .map_err(|e| format!("linux.gidMappings: container gid 0 is not mapped: {e}"))?;
        if std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() != "deny") {
            nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        }
    }
    let mut state_json = String::new();
    let hooks = spec.hooks().as_ref();
    let mut before_pivot = || -> Result<(), String> {
        chan.send(&Msg::RunHooks).map_err(|e| e.to_string())?;
        match chan.recv() {
            Ok(Some(Msg::State(s))) => state_json = s,
            Ok(Some(Msg::Error(e))) => return Err(e),
            other => return Err(format!("sync channel: expected state, got {other:?}")),
        }
        hooks::run(HookKind::CreateContainer, hooks, &state_json).map_err(|e| e.to_string())
    };
    rootfs::prepare(spec, &args.rootfs, in_userns, &mut before_pivot)
        .map_err(|e| e.to_string())??;
    if let Some(fd) = args.console {
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        crate::tty::setup(fd, size, true).map_err(|e| e.to_string())?;
        let _ = nix::unistd::close(fd);
    }
    rootfs::finalize_root(spec).map_err(|e| e.to_string())?;
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| format!("hostname: {e}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: the pointer and length describe `d`, which outlives the call.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(format!("domainname: {}", std::io::Error::last_os_error()));
        }
    }
    for (key, value) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("linux.sysctl.{key}: {e}"))?;
    }
    rootfs::finalize_paths(spec).map_err(|e| e.to_string())?;
    limits(process)?;
    let prepared = prepare(process, spec)?;
    chan.send(&Msg::Ready).map_err(|e| e.to_string())?;

    let fifo = args.fifo;
    let mut before_exec = || -> Result<(), String> {
        let path = format!("/proc/self/fd/{fifo}");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| format!("exec fifo: open {path} (is /proc mounted?): {e}"))?;
        std::io::Write::write_all(&mut &f, b"0").map_err(|e| format!("exec fifo: {e}"))?;
        drop(f);
        let _ = nix::unistd::close(fifo);
        hooks::run(
            HookKind::StartContainer,
            hooks,
            &state_with_status(&state_json, "created"),
        )
        .map_err(|e| e.to_string())
    };
    finish(process, prepared, &mut before_exec)
}
