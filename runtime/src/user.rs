//! process.user: supplementary groups, gid and uid (keeping capabilities across the switch so
//! they can be set exactly afterwards), umask, and HOME from the container's /etc/passwd.

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::User;

/// The id switch failed.
#[derive(Debug, thiserror::Error)]
#[error("process.user.{field}: {source}")]
pub struct UserError {
    field: &'static str,
    source: nix::Error,
}

fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true)
}

/// Switches to the spec's gid, additional gids and uid with PR_SET_KEEPCAPS set.
pub fn switch(user: &User) -> Result<(), UserError> {
    if setgroups_allowed() {
        let groups: Vec<Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| Gid::from_raw(*g))
            .collect();
        setgroups(&groups).map_err(|source| UserError {
            field: "additionalGids",
            source,
        })?;
    }
    // SAFETY: prctl with PR_SET_KEEPCAPS only changes a flag of the calling thread.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(|source| UserError {
        field: "gid",
        source,
    })?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(|source| UserError {
        field: "uid",
        source,
    })?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

/// Sets the umask: the spec's, or 0022 like runc.
pub fn set_umask(user: &User) {
    let mask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        mask as libc::mode_t,
    ));
}

/// The home directory of `uid` in the (already pivoted) root's /etc/passwd, or "/".
pub fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}
