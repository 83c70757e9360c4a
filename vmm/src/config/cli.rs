//! The command-line flags of `sandbox-vmm`, taken as text: `VmConfig` parses and checks
//! them with the `--config` file's values, so every error message has the same shape.

use std::path::PathBuf;

use clap::Parser;

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
    /// A virtio-fs device sharing a host directory, which the guest mounts with
    /// `mount -t virtiofs TAG DIR`: `tag=TAG,path=DIR[,ro]` (repeatable; `ro` refuses every
    /// change with EROFS).
    #[arg(long, value_name = "tag=TAG,path=DIR[,ro]")]
    pub fs: Vec<String>,
    /// A virtio-vsock device: `CID,UDS_PATH`.
    #[arg(long, value_name = "CID,PATH")]
    pub vsock: Option<String>,
    /// A virtio-net device on a tap: `tap=NAME` (opened, or created, through /dev/net/tun) or
    /// `fd=N` (a tap the caller opened and left open), then `,mac=MAC` and `,mtu=N`
    /// (repeatable: one NIC each, eth0 first).
    #[arg(long, value_name = "tap=NAME|fd=N[,mac=MAC][,mtu=N]")]
    pub net: Vec<String>,
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
