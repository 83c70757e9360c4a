//! Parsing and checking of single settings, each error naming the flag or JSON field the
//! value came from.

use std::fmt;
use std::path::{Path, PathBuf};

use super::file::FileBlock;
use super::{
    BlockConfig, ConfigError, SerialOutput, VsockConfig, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB,
};

/// The name of a setting as the user wrote it: a flag or a JSON field.
#[derive(Clone, Copy)]
pub(super) enum Origin {
    Flag(&'static str),
    Field(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(n) => write!(f, "--{n}"),
            Origin::Field(n) => write!(f, "{n} (in --config)"),
        }
    }
}

pub(super) fn invalid(origin: Origin, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: origin.to_string(),
        reason: reason.into(),
    }
}

/// Picks the flag value if set, else the file value, remembering which one it was.
pub(super) fn pick<T>(
    flag: Option<T>,
    field: Option<T>,
    names: (&'static str, &'static str),
) -> Option<(T, Origin)> {
    match (flag, field) {
        (Some(v), _) => Some((v, Origin::Flag(names.0))),
        (None, Some(v)) => Some((v, Origin::Field(names.1))),
        (None, None) => None,
    }
}

pub(super) fn check_file(path: &Path, origin: Origin) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            origin,
            format!("{}: not a regular file", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(invalid(origin, format!("{}: No such file", path.display())))
        }
        Err(e) => Err(invalid(origin, format!("{}: {e}", path.display()))),
    }
}

pub(super) fn parse_u64(text: &str, origin: Origin) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| invalid(origin, format!("not a number: {text:?}")))
}

pub(super) fn check_vcpus(n: u64, origin: Origin) -> Result<u8, ConfigError> {
    if !(1..=u64::from(MAX_VCPUS)).contains(&n) {
        return Err(invalid(
            origin,
            format!("must be between 1 and {MAX_VCPUS}, got {n}"),
        ));
    }
    Ok(n as u8)
}

pub(super) fn check_memory(n: u64, origin: Origin) -> Result<u64, ConfigError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&n) {
        return Err(invalid(
            origin,
            format!("must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {n}"),
        ));
    }
    Ok(n)
}

pub(super) fn parse_serial(text: &str, origin: Origin) -> Result<SerialOutput, ConfigError> {
    match text {
        "" => Err(invalid(
            origin,
            "empty; use a file path, `stdout` or `none`",
        )),
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        path => {
            let path = PathBuf::from(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(invalid(
                        origin,
                        format!("{}: directory does not exist", dir.display()),
                    ));
                }
            }
            Ok(SerialOutput::File(path))
        }
    }
}

/// Parses `PATH[,ro]`.
pub(super) fn parse_block(text: &str, origin: Origin) -> Result<BlockConfig, ConfigError> {
    let (path, read_only) = match text.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => {
            return Err(invalid(
                origin,
                format!("unknown option {opt:?}; expected PATH[,ro]"),
            ))
        }
        None => (text, false),
    };
    let block = BlockConfig {
        path: PathBuf::from(path),
        read_only,
    };
    check_block(&block, origin)?;
    Ok(block)
}

pub(super) fn check_block(block: &BlockConfig, origin: Origin) -> Result<(), ConfigError> {
    if block.path.as_os_str().is_empty() {
        return Err(invalid(origin, "empty path; expected PATH[,ro]"));
    }
    check_file(&block.path, origin)
}

/// The `--block` or `--pmem` flags if any were given, else the file's entries.
pub(super) fn disks(
    flags: Vec<String>,
    entries: Vec<FileBlock>,
    names: (&'static str, &'static str),
) -> Result<Vec<BlockConfig>, ConfigError> {
    if flags.is_empty() {
        let origin = Origin::Field(names.1);
        entries
            .into_iter()
            .map(|b| {
                let block = BlockConfig {
                    path: b.path,
                    read_only: b.read_only,
                };
                check_block(&block, origin).map(|_| block)
            })
            .collect()
    } else {
        let origin = Origin::Flag(names.0);
        flags.iter().map(|b| parse_block(b, origin)).collect()
    }
}

/// Parses `CID,PATH`.
pub(super) fn parse_vsock(text: &str, origin: Origin) -> Result<VsockConfig, ConfigError> {
    let (cid, path) = text
        .split_once(',')
        .ok_or_else(|| invalid(origin, format!("expected CID,PATH, got {text:?}")))?;
    let cid = parse_u64(cid, origin)?;
    check_vsock(cid, PathBuf::from(path), origin)
}

pub(super) fn check_vsock(
    cid: u64,
    uds_path: PathBuf,
    origin: Origin,
) -> Result<VsockConfig, ConfigError> {
    // CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
    if !(3..u64::from(u32::MAX)).contains(&cid) {
        return Err(invalid(
            origin,
            format!(
                "guest CID must be between 3 and {}, got {cid}",
                u32::MAX - 1
            ),
        ));
    }
    if uds_path.as_os_str().is_empty() {
        return Err(invalid(origin, "empty socket path; expected CID,PATH"));
    }
    if let Some(dir) = uds_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(invalid(
                origin,
                format!("{}: directory does not exist", dir.display()),
            ));
        }
    }
    Ok(VsockConfig {
        cid: cid as u32,
        uds_path,
    })
}
