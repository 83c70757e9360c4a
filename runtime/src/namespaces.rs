//! linux.namespaces: which namespaces to create (unshare) or join (setns by path), in an order
//! that keeps the needed privileges, plus linux.uidMappings/gidMappings for a new user namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespace, LinuxNamespaceType};

/// Namespace setup failures; each names the namespace involved.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// Opening a namespace file failed.
    #[error("linux.namespaces: open {path}: {source}")]
    Open {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// setns(2) failed.
    #[error("linux.namespaces: join {typ} namespace {path}: {source}")]
    Join {
        /// Namespace type.
        typ: String,
        /// Path joined.
        path: PathBuf,
        /// errno.
        source: nix::Error,
    },
    /// unshare(2) failed.
    #[error("linux.namespaces: create {what}: {source}")]
    Create {
        /// Namespace types.
        what: String,
        /// errno.
        source: nix::Error,
    },
    /// Writing the uid/gid map failed.
    #[error("linux.{field}: write {path}: {source}")]
    IdMap {
        /// uidMappings or gidMappings.
        field: &'static str,
        /// The /proc file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The clone flag for a namespace type.
pub fn flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The file name under /proc/PID/ns for a namespace type.
pub fn proc_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// The order namespaces are joined in: user first (it grants the rights for the rest), mount
/// last among the path-based ones (after it, host paths may no longer resolve).
pub const JOIN_ORDER: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

/// Namespaces to join, opened up front (before any setns changes what paths mean).
pub struct ToJoin(Vec<(LinuxNamespaceType, PathBuf, File)>);

impl ToJoin {
    /// Opens every namespace in `list` that has a path.
    pub fn open(list: &[LinuxNamespace]) -> Result<Self, NamespaceError> {
        let mut out = Vec::new();
        for typ in JOIN_ORDER {
            for ns in list.iter().filter(|n| n.typ() == typ) {
                if let Some(path) = ns.path() {
                    let f = File::open(path).map_err(|source| NamespaceError::Open {
                        path: path.clone(),
                        source,
                    })?;
                    out.push((typ, path.clone(), f));
                }
            }
        }
        Ok(ToJoin(out))
    }

    /// Opens the namespaces of a running process (for exec), skipping those we already share.
    pub fn of_process(pid: i32) -> Result<Self, NamespaceError> {
        let mut out = Vec::new();
        for typ in JOIN_ORDER {
            let name = proc_name(typ);
            let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            let mine = PathBuf::from(format!("/proc/self/ns/{name}"));
            let (Ok(theirs), Ok(ours)) = (std::fs::read_link(&path), std::fs::read_link(&mine))
            else {
                continue;
            };
            if theirs == ours {
                continue;
            }
            let f = File::open(&path).map_err(|source| NamespaceError::Open {
                path: path.clone(),
                source,
            })?;
            out.push((typ, path, f));
        }
        Ok(ToJoin(out))
    }

    /// Joins the user namespace, if any (must come first).
    pub fn join_user(&mut self) -> Result<(), NamespaceError> {
        self.join_where(|t| t == LinuxNamespaceType::User)
    }

    /// Joins every remaining namespace.
    pub fn join_rest(&mut self) -> Result<(), NamespaceError> {
        self.join_where(|t| t != LinuxNamespaceType::User)
    }

    fn join_where(
        &mut self,
        pick: impl Fn(LinuxNamespaceType) -> bool,
    ) -> Result<(), NamespaceError> {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(t, _, _)| pick(*t));
        self.0 = later;
        for (typ, path, f) in now {
            setns(f.as_fd(), flag(typ)).map_err(|source| NamespaceError::Join {
                typ: typ.to_string(),
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// True if a user namespace is being joined.
    pub fn has_user(&self) -> bool {
        self.0
            .iter()
            .any(|(t, _, _)| *t == LinuxNamespaceType::User)
    }
}

/// Flags of the namespaces to create (those without a path), user excluded.
pub fn new_flags(list: &[LinuxNamespace]) -> CloneFlags {
    list.iter()
        .filter(|n| n.path().is_none() && n.typ() != LinuxNamespaceType::User)
        .fold(CloneFlags::empty(), |acc, n| acc | flag(n.typ()))
}

/// True if a new user namespace is requested.
pub fn wants_new_user(list: &[LinuxNamespace]) -> bool {
    list.iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
}

/// unshare(2) the given namespaces.
pub fn create(flags: CloneFlags) -> Result<(), NamespaceError> {
    if flags.is_empty() {
        return Ok(());
    }
    unshare(flags).map_err(|source| NamespaceError::Create {
        what: format!("{flags:?}"),
        source,
    })
}

/// Writes `/proc/<pid>/uid_map` and `gid_map` for a process that just created a user namespace.
pub fn write_id_maps(
    pid: i32,
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> Result<(), NamespaceError> {
    for (field, file, maps) in [
        ("uidMappings", "uid_map", uid),
        ("gidMappings", "gid_map", gid),
    ] {
        let text: String = maps
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        let path = Path::new("/proc").join(pid.to_string()).join(file);
        std::fs::write(&path, text).map_err(|source| NamespaceError::IdMap {
            field,
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}
