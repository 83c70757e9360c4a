//! The microVM configuration: command-line flags and the `--config` JSON file, merged and
//! validated into a `VmConfig`; every error names the flag or JSON field at fault.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

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

/// Command-line flags of `sandbox-vmm`. Values are taken as text and validated by
/// `VmConfig`, so that every error message has the same shape.
#[derive(Debug, Default, Parser)]
#[command(name = "sandbox-vmm", version, about = "A microVM monitor on KVM")]
pub struct Cli {
    /// JSON file with the same settings (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux with a PVH entry note.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio) given to the kernel as the first PVH module.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio entries are appended).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long)]
    pub vcpus: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<String>,
    /// Serial console output: a file path, `stdout` or `none`.
    #[arg(long)]
    pub serial: Option<String>,
    /// A virtio-blk device backed by a file: `PATH[,ro]` (repeatable).
    #[arg(long, value_name = "PATH[,ro]")]
    pub block: Vec<String>,
    /// A virtio-pmem device backed by a file, mapped into guest memory: `PATH[,ro]`
    /// (repeatable; the guest sees /dev/pmem0, ... and can mount it with DAX).
    #[arg(long, value_name = "PATH[,ro]")]
    pub pmem: Vec<String>,
    /// A virtio-vsock device: `CID,UDS_PATH`.
    #[arg(long, value_name = "CID,PATH")]
    pub vsock: Option<String>,
    /// Unix socket of the control API (docs/vmm-api.md).
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// A virtio-balloon device: the guest reports its free pages and the VMM releases them.
    #[arg(long)]
    pub balloon: bool,
    /// Log the time of each boot phase to stderr.
    #[arg(long)]
    pub debug: bool,
}

/// The `--config` JSON file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub serial: Option<String>,
    #[serde(default)]
    pub block: Vec<FileBlock>,
    #[serde(default)]
    pub pmem: Vec<FileBlock>,
    pub vsock: Option<FileVsock>,
    pub api_sock: Option<PathBuf>,
    #[serde(default)]
    pub balloon: bool,
    #[serde(default)]
    pub debug: bool,
}

/// A `block` or `pmem` entry of the JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBlock {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The `vsock` entry of the JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVsock {
    pub cid: u64,
    pub uds_path: PathBuf,
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
    pub vsock: Option<VsockConfig>,
    pub api_sock: Option<PathBuf>,
    /// A virtio-balloon device with free page reporting.
    pub balloon: bool,
    pub debug: bool,
}

/// The name of a setting as the user wrote it: a flag or a JSON field.
#[derive(Clone, Copy)]
enum Origin {
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

fn invalid(origin: Origin, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: origin.to_string(),
        reason: reason.into(),
    }
}

/// Picks the flag value if set, else the file value, remembering which one it was.
fn pick<T>(
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

fn check_file(path: &Path, origin: Origin) -> Result<(), ConfigError> {
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

fn parse_u64(text: &str, origin: Origin) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| invalid(origin, format!("not a number: {text:?}")))
}

fn check_vcpus(n: u64, origin: Origin) -> Result<u8, ConfigError> {
    if !(1..=u64::from(MAX_VCPUS)).contains(&n) {
        return Err(invalid(
            origin,
            format!("must be between 1 and {MAX_VCPUS}, got {n}"),
        ));
    }
    Ok(n as u8)
}

fn check_memory(n: u64, origin: Origin) -> Result<u64, ConfigError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&n) {
        return Err(invalid(
            origin,
            format!("must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {n}"),
        ));
    }
    Ok(n)
}

fn parse_serial(text: &str, origin: Origin) -> Result<SerialOutput, ConfigError> {
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
fn parse_block(text: &str, origin: Origin) -> Result<BlockConfig, ConfigError> {
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

fn check_block(block: &BlockConfig, origin: Origin) -> Result<(), ConfigError> {
    if block.path.as_os_str().is_empty() {
        return Err(invalid(origin, "empty path; expected PATH[,ro]"));
    }
    check_file(&block.path, origin)
}

/// The `--block` or `--pmem` flags if any were given, else the file's entries.
fn disks(
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
fn parse_vsock(text: &str, origin: Origin) -> Result<VsockConfig, ConfigError> {
    let (cid, path) = text
        .split_once(',')
        .ok_or_else(|| invalid(origin, format!("expected CID,PATH, got {text:?}")))?;
    let cid = parse_u64(cid, origin)?;
    check_vsock(cid, PathBuf::from(path), origin)
}

fn check_vsock(cid: u64, uds_path: PathBuf, origin: Origin) -> Result<VsockConfig, ConfigError> {
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

impl FileConfig {
    /// Reads and parses a `--config` file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "No such file".into()
            } else {
                e.to_string()
            },
        })?;
        serde_json::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
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

        let vsock = match (cli.vsock, file.vsock) {
            (Some(text), _) => Some(parse_vsock(&text, Origin::Flag("vsock"))?),
            (None, Some(v)) => Some(check_vsock(v.cid, v.uds_path, Origin::Field("vsock"))?),
            (None, None) => None,
        };

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
            vsock,
            api_sock,
            balloon: cli.balloon || file.balloon,
            debug: cli.debug || file.debug,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sandbox-vmm").chain(args.iter().copied())).unwrap()
    }

    fn err(args: &[&str]) -> String {
        VmConfig::from_cli(cli(args)).unwrap_err().to_string()
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("vmlinux"), b"x").unwrap();
            std::fs::write(dir.path().join("disk"), b"x").unwrap();
            Self { dir }
        }
        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }
    }

    #[test]
    fn defaults_apply_with_only_a_kernel() {
        let f = Files::new();
        let c = VmConfig::from_cli(cli(&["--kernel", &f.path("vmlinux")])).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!(c.serial, SerialOutput::Stdout);
        assert!(c.blocks.is_empty() && c.vsock.is_none() && c.api_sock.is_none());
        assert!(!c.balloon);
    }

    #[test]
    fn all_flags_parse() {
        let f = Files::new();
        let sock = f.path("v.sock");
        let c = VmConfig::from_cli(cli(&[
            "--kernel",
            &f.path("vmlinux"),
            "--initrd",
            &f.path("disk"),
            "--cmdline",
            "console=ttyS0",
            "--vcpus",
            "4",
            "--memory",
            "128",
            "--serial",
            &f.path("serial.log"),
            "--block",
            &f.path("disk"),
            "--block",
            &format!("{},ro", f.path("disk")),
            "--pmem",
            &format!("{},ro", f.path("disk")),
            "--vsock",
            &format!("3,{sock}"),
            "--api-sock",
            &f.path("api.sock"),
            "--balloon",
            "--debug",
        ]))
        .unwrap();
        assert_eq!(c.vcpus, 4);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.serial, SerialOutput::File(f.path("serial.log").into()));
        assert_eq!(c.blocks.len(), 2);
        assert!(!c.blocks[0].read_only && c.blocks[1].read_only);
        assert_eq!(c.pmems.len(), 1);
        assert!(c.pmems[0].read_only);
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                cid: 3,
                uds_path: sock.into()
            })
        );
        assert!(c.balloon);
        assert!(c.debug);
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_reason() {
        let f = Files::new();
        let k = f.path("vmlinux");
        assert_eq!(err(&[]), "--kernel: required");
        assert_eq!(err(&["--kernel", "/x"]), "--kernel: /x: No such file");
        assert_eq!(
            err(&["--kernel", &k, "--vcpus", "0"]),
            "--vcpus: must be between 1 and 32, got 0"
        );
        assert_eq!(
            err(&["--kernel", &k, "--vcpus", "33"]),
            "--vcpus: must be between 1 and 32, got 33"
        );
        assert_eq!(
            err(&["--kernel", &k, "--vcpus", "two"]),
            "--vcpus: not a number: \"two\""
        );
        assert_eq!(
            err(&["--kernel", &k, "--memory", "1"]),
            "--memory: must be between 2 and 262144 MiB, got 1"
        );
        assert_eq!(
            err(&["--kernel", &k, "--initrd", "/nope"]),
            "--initrd: /nope: No such file"
        );
        assert_eq!(
            err(&["--kernel", &k, "--block", "/nope,ro"]),
            "--block: /nope: No such file"
        );
        assert_eq!(
            err(&["--kernel", &k, "--block", &format!("{},rx", f.path("disk"))]),
            "--block: unknown option \"rx\"; expected PATH[,ro]"
        );
        assert_eq!(
            err(&["--kernel", &k, "--pmem", "/nope.img,ro"]),
            "--pmem: /nope.img: No such file"
        );
        assert_eq!(
            err(&["--kernel", &k, "--pmem", &format!("{},dax", f.path("disk"))]),
            "--pmem: unknown option \"dax\"; expected PATH[,ro]"
        );
        assert_eq!(
            err(&["--kernel", &k, "--vsock", "3"]),
            "--vsock: expected CID,PATH, got \"3\""
        );
        assert_eq!(
            err(&["--kernel", &k, "--vsock", "2,/tmp/v.sock"]),
            "--vsock: guest CID must be between 3 and 4294967294, got 2"
        );
        assert_eq!(
            err(&["--kernel", &k, "--serial", "/no/such/dir/log"]),
            "--serial: /no/such/dir: directory does not exist"
        );
        assert_eq!(
            err(&["--kernel", &k, "--api-sock", &k]),
            format!("--api-sock: {k}: already exists")
        );
        assert_eq!(
            err(&["--kernel", &k, "--cmdline", "a\nb"]),
            "--cmdline: must be printable ASCII"
        );
    }

    #[test]
    fn json_file_is_read_and_flags_override_it() {
        let f = Files::new();
        let json = f.path("vm.json");
        std::fs::write(
            &json,
            format!(
                r#"{{"kernel": "{}", "vcpus": 2, "memory_mib": 64, "serial": "none",
                    "block": [{{"path": "{}", "read_only": true}}],
                    "pmem": [{{"path": "{}"}}],
                    "vsock": {{"cid": 7, "uds_path": "{}"}}, "balloon": true}}"#,
                f.path("vmlinux"),
                f.path("disk"),
                f.path("disk"),
                f.path("v.sock")
            ),
        )
        .unwrap();
        let c = VmConfig::from_cli(cli(&["--config", &json, "--memory", "32"])).unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 32);
        assert_eq!(c.serial, SerialOutput::None);
        assert!(c.blocks[0].read_only);
        assert!(!c.pmems[0].read_only);
        assert_eq!(c.vsock.unwrap().cid, 7);
        assert!(c.balloon);
    }

    #[test]
    fn bad_json_names_the_field() {
        let f = Files::new();
        let json = f.path("vm.json");
        std::fs::write(
            &json,
            format!(r#"{{"kernel": "{}", "vcpus": 0}}"#, f.path("vmlinux")),
        )
        .unwrap();
        assert_eq!(
            err(&["--config", &json]),
            "vcpus (in --config): must be between 1 and 32, got 0"
        );
        std::fs::write(&json, r#"{"kernel": "/k", "cpus": 1}"#).unwrap();
        let e = err(&["--config", &json]);
        assert!(
            e.starts_with(&format!("--config {json}: unknown field `cpus`")),
            "{e}"
        );
        std::fs::write(&json, r#"{"kernel": "/nope"}"#).unwrap();
        assert_eq!(
            err(&["--config", &json]),
            "kernel (in --config): /nope: No such file"
        );
        assert_eq!(
            err(&["--config", "/nope.json"]),
            "--config /nope.json: No such file"
        );
    }
}
