//! Semantic checks on a parsed spec: what serde accepts but the runtime cannot honour.
//! Runs before anything is created, so a rejected bundle leaves no trace on the host.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccompAction, Spec};

use super::SpecError;

type Result<T = ()> = std::result::Result<T, SpecError>;

fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::invalid(field, message)
}

fn absolute(field: String, path: &Path) -> Result {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(bad(
            field,
            format!(
                "must be an absolute path, got {:?}",
                path.display().to_string()
            ),
        ))
    }
}

/// Validates `spec` for the bundle at `bundle` (used to resolve `root.path`).
pub fn validate(spec: &Spec, bundle: &Path) -> Result {
    if !spec.version().starts_with("1.") {
        return Err(bad(
            "ociVersion",
            format!("unsupported version {:?} (want 1.x)", spec.version()),
        ));
    }
    validate_root(spec, bundle)?;
    validate_process(spec)?;
    validate_mounts(spec)?;
    validate_linux(spec)?;
    validate_hooks(spec)?;
    Ok(())
}

fn validate_root(spec: &Spec, bundle: &Path) -> Result {
    let root = spec.root().as_ref().ok_or_else(|| bad("root", "missing"))?;
    if root.path().as_os_str().is_empty() {
        return Err(bad("root.path", "must not be empty"));
    }
    let path = bundle.join(root.path());
    if !path.is_dir() {
        return Err(bad(
            "root.path",
            format!("{} is not a directory", path.display()),
        ));
    }
    Ok(())
}

fn validate_process(spec: &Spec) -> Result {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| bad("process", "missing"))?;
    validate_process_fields(process, "process")
}

/// Checks a process (the container's or one given to exec); `at` is its JSON path.
pub(crate) fn validate_process_fields(process: &oci_spec::runtime::Process, at: &str) -> Result {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(bad(format!("{at}.args"), "must not be empty")),
    }
    absolute(format!("{at}.cwd"), process.cwd())?;
    for (i, kv) in process.env().iter().flatten().enumerate() {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(bad(
                    format!("{at}.env[{i}]"),
                    format!("{kv:?} is not KEY=VALUE"),
                ))
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if !seen.insert(r.typ().to_string()) {
            return Err(bad(
                format!("{at}.rlimits[{i}].type"),
                format!("duplicate rlimit {}", r.typ()),
            ));
        }
        if r.soft() > r.hard() {
            return Err(bad(
                format!("{at}.rlimits[{i}].soft"),
                format!("soft limit {} exceeds hard limit {}", r.soft(), r.hard()),
            ));
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(bad(
                format!("{at}.oomScoreAdj"),
                format!("{adj} is outside -1000..=1000"),
            ));
        }
    }
    if let Some(umask) = process.user().umask() {
        if umask > 0o777 {
            return Err(bad(
                format!("{at}.user.umask"),
                format!("{umask:#o} is not a valid umask"),
            ));
        }
    }
    if process
        .apparmor_profile()
        .as_deref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(bad(
            format!("{at}.apparmorProfile"),
            "AppArmor is not supported",
        ));
    }
    if process
        .selinux_label()
        .as_deref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(bad(
            format!("{at}.selinuxLabel"),
            "SELinux is not supported",
        ));
    }
    if process.console_size().is_some() && process.terminal() != Some(true) {
        return Err(bad(
            format!("{at}.consoleSize"),
            "set but process.terminal is not true",
        ));
    }
    Ok(())
}

const PROPAGATIONS: &[&str] = &[
    "shared",
    "slave",
    "private",
    "unbindable",
    "rshared",
    "rslave",
    "rprivate",
    "runbindable",
];

fn validate_mounts(spec: &Spec) -> Result {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        absolute(format!("mounts[{i}].destination"), m.destination())?;
        if m.destination().components().any(|c| c.as_os_str() == "..") {
            return Err(bad(
                format!("mounts[{i}].destination"),
                "must not contain \"..\"",
            ));
        }
        if m.destination() == Path::new("/") {
            return Err(bad(
                format!("mounts[{i}].destination"),
                "cannot mount over the root",
            ));
        }
        let options = m.options().as_deref().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        for (j, o) in options.iter().enumerate() {
            if o.is_empty() {
                return Err(bad(format!("mounts[{i}].options[{j}]"), "empty option"));
            }
            if let Some(p) = o.strip_prefix("propagation=") {
                if !PROPAGATIONS.contains(&p) {
                    return Err(bad(
                        format!("mounts[{i}].options[{j}]"),
                        format!("unknown propagation {p:?}"),
                    ));
                }
            }
        }
        if is_bind {
            let source = m
                .source()
                .as_ref()
                .ok_or_else(|| bad(format!("mounts[{i}].source"), "a bind mount needs a source"))?;
            absolute(format!("mounts[{i}].source"), source)?;
            if !source.exists() {
                return Err(bad(
                    format!("mounts[{i}].source"),
                    format!("{} does not exist", source.display()),
                ));
            }
        } else if m.typ().as_deref().unwrap_or_default().is_empty() {
            return Err(bad(
                format!("mounts[{i}].type"),
                "missing (and not a bind mount)",
            ));
        }
    }
    Ok(())
}

fn has_new(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ && n.path().is_none()))
}

fn has(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

fn validate_linux(spec: &Spec) -> Result {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| bad("linux", "missing"))?;

    let mut seen = HashSet::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(bad(
                format!("linux.namespaces[{i}].type"),
                format!("duplicate namespace {}", ns.typ()),
            ));
        }
        if let Some(path) = ns.path() {
            absolute(format!("linux.namespaces[{i}].path"), path)?;
            if !path.exists() {
                return Err(bad(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} does not exist", path.display()),
                ));
            }
        }
    }
    if !has(spec, LinuxNamespaceType::Mount) {
        return Err(bad(
            "linux.namespaces",
            "a mount namespace is required (the rootfs is set up with pivot_root)",
        ));
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && !has(spec, LinuxNamespaceType::Uts)
    {
        return Err(bad("hostname", "setting it needs a uts namespace"));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !has(spec, LinuxNamespaceType::Uts)
    {
        return Err(bad("domainname", "setting it needs a uts namespace"));
    }

    let userns = has_new(spec, LinuxNamespaceType::User);
    for (name, maps) in [
        ("uidMappings", linux.uid_mappings()),
        ("gidMappings", linux.gid_mappings()),
    ] {
        let maps = maps.as_deref().unwrap_or_default();
        if !maps.is_empty() && !userns {
            return Err(bad(
                format!("linux.{name}"),
                "set but no new user namespace is created",
            ));
        }
        if maps.is_empty() && userns {
            return Err(bad(
                format!("linux.{name}"),
                "a new user namespace needs mappings",
            ));
        }
        if maps.len() > 340 {
            return Err(bad(format!("linux.{name}"), "more than 340 mappings"));
        }
        for (i, m) in maps.iter().enumerate() {
            if m.size() == 0 {
                return Err(bad(
                    format!("linux.{name}[{i}].size"),
                    "must be greater than 0",
                ));
            }
        }
    }

    for (key, _) in linux.sysctl().iter().flatten() {
        validate_sysctl(spec, key)?;
    }

    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let path = d.path();
        if !path.starts_with("/dev/") || path.components().any(|c| c.as_os_str() == "..") {
            return Err(bad(
                format!("linux.devices[{i}].path"),
                format!("{} is not under /dev", path.display()),
            ));
        }
        if d.file_mode().is_some_and(|m| m > 0o7777) {
            return Err(bad(
                format!("linux.devices[{i}].fileMode"),
                "has bits beyond 07777",
            ));
        }
        if d.major() < 0 || d.minor() < 0 {
            return Err(bad(
                format!("linux.devices[{i}].major"),
                "must not be negative",
            ));
        }
    }

    for (name, paths) in [
        ("maskedPaths", linux.masked_paths()),
        ("readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in paths.iter().flatten().enumerate() {
            absolute(format!("linux.{name}[{i}]"), Path::new(p))?;
        }
    }

    if let Some(p) = linux.rootfs_propagation().as_deref() {
        if !p.is_empty() && !PROPAGATIONS.contains(&p) {
            return Err(bad(
                "linux.rootfsPropagation",
                format!("unknown propagation {p:?}"),
            ));
        }
    }
    if let Some(p) = linux.cgroups_path() {
        if p.components().any(|c| c.as_os_str() == "..") {
            return Err(bad("linux.cgroupsPath", "must not contain \"..\""));
        }
    }
    if linux.intel_rdt().is_some() {
        return Err(bad("linux.intelRdt", "Intel RDT is not supported"));
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty())
        && !has_new(spec, LinuxNamespaceType::Time)
    {
        return Err(bad(
            "linux.timeOffsets",
            "set but no new time namespace is created",
        ));
    }
    if let Some(resources) = linux.resources() {
        crate::cgroups::validate_resources(resources)
            .map_err(|(field, msg)| bad(format!("linux.resources.{field}"), msg))?;
    }
    if let Some(seccomp) = linux.seccomp() {
        if seccomp.default_action() == LinuxSeccompAction::ScmpActNotify {
            return Err(bad(
                "linux.seccomp.defaultAction",
                "SCMP_ACT_NOTIFY is not supported",
            ));
        }
        for (i, s) in seccomp.syscalls().iter().flatten().enumerate() {
            if s.names().is_empty() {
                return Err(bad(
                    format!("linux.seccomp.syscalls[{i}].names"),
                    "must not be empty",
                ));
            }
            if s.action() == LinuxSeccompAction::ScmpActNotify {
                return Err(bad(
                    format!("linux.seccomp.syscalls[{i}].action"),
                    "SCMP_ACT_NOTIFY is not supported",
                ));
            }
            let args = s.args().as_deref().unwrap_or_default();
            if args.len() > 6 {
                return Err(bad(
                    format!("linux.seccomp.syscalls[{i}].args"),
                    "more than 6 argument conditions",
                ));
            }
            for (j, a) in args.iter().enumerate() {
                if a.index() > 5 {
                    return Err(bad(
                        format!("linux.seccomp.syscalls[{i}].args[{j}].index"),
                        format!("{} is out of range 0..=5", a.index()),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_sysctl(spec: &Spec, key: &str) -> Result {
    let field = format!("linux.sysctl.{key}");
    if key.is_empty()
        || key.contains("..")
        || key.starts_with('.')
        || key.starts_with('/')
        || key.chars().any(|c| c.is_whitespace())
    {
        return Err(bad(field, "not a valid sysctl name"));
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needs = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        LinuxNamespaceType::Ipc
    } else if key.starts_with("net.") {
        LinuxNamespaceType::Network
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        LinuxNamespaceType::Uts
    } else {
        return Err(bad(
            field,
            "not namespaced; refusing to set it from a container",
        ));
    };
    if !has_new(spec, needs) {
        return Err(bad(field, format!("needs a new {needs} namespace")));
    }
    Ok(())
}

fn validate_hooks(spec: &Spec) -> Result {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let kinds = [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
        ("poststart", hooks.poststart()),
        ("poststop", hooks.poststop()),
    ];
    for (kind, list) in kinds {
        for (i, h) in list.iter().flatten().enumerate() {
            absolute(format!("hooks.{kind}[{i}].path"), h.path())?;
            if h.timeout().is_some_and(|t| t <= 0) {
                return Err(bad(
                    format!("hooks.{kind}[{i}].timeout"),
                    "must be positive",
                ));
            }
        }
    }
    Ok(())
}
