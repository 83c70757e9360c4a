//! The microVM configuration: command-line flags and the `--config` JSON file, merged and
//! validated into a `VmConfig`; every error names the flag or JSON field at fault.

mod cli;
mod file;
mod fs;
mod net;
mod parse;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use cli::Cli;
pub use file::{FileBlock, FileConfig, FileVsock};
pub use fs::FileFs;
pub use net::{parse_mac, FileNet, NetConfig, TapSource};
use parse::{
    check_file, check_memory, check_vcpus, check_vsock, disks, invalid, parse_serial, parse_u64,
    parse_vsock, pick, Origin,
};

/// Most vCPUs a microVM may have.
pub const MAX_VCPUS: u32 = 32;
/// Smallest guest memory in MiB (the boot structures need the first MiB).
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest guest memory in MiB.
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
/// Kernel command line used when none is given (docs/CONVENTIONS.md).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd percpu_alloc=page noreplace-smp page_reporting.page_reporting_order=0 slub_max_order=0";
/// Guest memory when none is given, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// Errors of configuration; each names the flag (`--vcpus`) or JSON field (`vcpus`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A value is out of range or malformed.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A required value is missing.
    #[error("{0}: required")]
    Missing(String),
    /// The JSON file cannot be read or parsed.
    #[error("--config {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// Created (truncated) at start.
    File(PathBuf),
    Stdout,
    None,
}

/// A file-backed virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A file-backed virtio-pmem device (same shape as a disk: a file, maybe read-only).
pub type PmemConfig = BlockConfig;

/// A virtio-fs share: a host directory the guest mounts by its tag (docs/virtio-fs.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// The virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u32,
    pub uds_path: PathBuf,
}

/// A validated microVM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub serial: SerialOutput,
    pub blocks: Vec<BlockConfig>,
    pub pmems: Vec<PmemConfig>,
    pub fs: Vec<FsConfig>,
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices, in order (eth0, eth1, ... in the guest).
    pub nets: Vec<NetConfig>,
    pub api_sock: Option<PathBuf>,
    /// A virtio-balloon device with free page reporting.
    pub balloon: bool,
    pub debug: bool,
}

impl VmConfig {
    /// Builds the configuration from flags, reading `--config` first when given.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Merges flags over the file's values and validates the result.
    pub fn merge(cli: Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let (kernel, origin) = pick(cli.kernel, file.kernel, ("kernel", "kernel"))
            .ok_or_else(|| ConfigError::Missing("--kernel".into()))?;
        check_file(&kernel, origin)?;

        let initrd = match pick(cli.initrd, file.initrd, ("initrd", "initrd")) {
            Some((path, origin)) => {
                check_file(&path, origin)?;
                Some(path)
            }
            None => None,
        };

        let cmdline = match pick(cli.cmdline, file.cmdline, ("cmdline", "cmdline")) {
            Some((c, origin)) => {
                if c.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
                    return Err(invalid(origin, "must be printable ASCII"));
                }
                c
            }
            None => DEFAULT_CMDLINE.to_string(),
        };

        let vcpus = match (cli.vcpus, file.vcpus) {
            (Some(text), _) => {
                let o = Origin::Flag("vcpus");
                check_vcpus(parse_u64(&text, o)?, o)?
            }
            (None, Some(n)) => check_vcpus(n, Origin::Field("vcpus"))?,
            (None, None) => 1,
        };

        let memory_mib = match (cli.memory, file.memory_mib) {
            (Some(text), _) => {
                let o = Origin::Flag("memory");
                check_memory(parse_u64(&text, o)?, o)?
            }
            (None, Some(n)) => check_memory(n, Origin::Field("memory_mib"))?,
            (None, None) => DEFAULT_MEMORY_MIB,
        };

        let serial = match pick(cli.serial, file.serial, ("serial", "serial")) {
            Some((text, origin)) => parse_serial(&text, origin)?,
            None => SerialOutput::Stdout,
        };

        let blocks = disks(cli.block, file.block, ("block", "block"))?;
        let pmems = disks(cli.pmem, file.pmem, ("pmem", "pmem"))?;
        let fs = fs::shares(cli.fs, file.fs)?;

        let vsock = match (cli.vsock, file.vsock) {
            (Some(text), _) => Some(parse_vsock(&text, Origin::Flag("vsock"))?),
            (None, Some(v)) => Some(check_vsock(v.cid, v.uds_path, Origin::Field("vsock"))?),
            (None, None) => None,
        };

        let nets = net::nets(cli.net, file.net)?;

        let api_sock = match pick(cli.api_sock, file.api_sock, ("api-sock", "api_sock")) {
            Some((path, origin)) => {
                if path.as_os_str().is_empty() {
                    return Err(invalid(origin, "empty path"));
                }
                if path.exists() {
                    return Err(invalid(
                        origin,
                        format!("{}: already exists", path.display()),
                    ));
                }
                Some(path)
            }
            None => None,
        };

        Ok(VmConfig {
            kernel,
            initrd,
            cmdline,
            vcpus,
            memory_mib,
            serial,
            blocks,
            pmems,
            fs,
            vsock,
            nets,
            api_sock,
            balloon: cli.balloon || file.balloon,
            debug: cli.debug || file.debug,
        })
    }
}
