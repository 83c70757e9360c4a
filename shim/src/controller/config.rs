//! Where the controller finds its pieces: the state root, `sandbox-vmm`, the guest kernel and
//! root image (or initramfs), the image cache; each from an environment variable or a fixed
//! default. Also the guest kernel command line that goes with them.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default state root (runc uses /run/runc).
pub const DEFAULT_ROOT: &str = "/run/sandbox";
/// Default cache of rootfs images, shared by all state roots.
pub const DEFAULT_IMAGE_CACHE: &str = "/var/lib/sandbox/images";
/// Default guest kernel and root image.
pub const DEFAULT_KERNEL: &str = "/usr/share/sandbox/vmlinux";
pub const DEFAULT_ROOTFS: &str = "/usr/share/sandbox/rootfs.erofs";
/// The guest kernel command line (docs/CONVENTIONS.md); the VMM appends its device entries.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd percpu_alloc=page noreplace-smp page_reporting.page_reporting_order=0 slub_max_order=0";
/// What the command line gets for a root image: the first virtio-pmem device, erofs, with DAX.
pub const IMAGE_ROOT_CMDLINE: &str =
    "root=/dev/pmem0 rootfstype=erofs rootflags=dax=always ro rootwait init=/init";
/// Default guest size: the base memory of every sandbox VM (kernel, agent and a small
/// container fit in 128 MiB, as in Firecracker's default); [`guest_memory_mib`] adds what the
/// container asks for.
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// What a pod VM gets beyond the base, for the app containers that join it later (their
/// limits are not known when the pod VM boots, and guest memory cannot grow yet).
pub const POD_EXTRA_MEMORY_MIB: u32 = 128;
/// How long the guest may take to reach agent-ready (an emulated lab CPU is slow).
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Guest RAM of a sandbox VM, in MiB: `base` plus the container's memory limit
/// (`linux.resources.memory.limit` of its config.json, rounded up to MiB), the way Kata sizes
/// a sandbox statically, so the container can use its whole limit beside the guest kernel and
/// agent; plus [`POD_EXTRA_MEMORY_MIB`] for a pod VM. Capped at the host's RAM.
pub fn guest_memory_mib(base: u32, spec: &serde_json::Value, pod: bool) -> u32 {
    let limit_mib = spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .and_then(|l| u64::try_from(l).ok())
        .map_or(0, |bytes| bytes.div_ceil(1 << 20));
    let pod_mib = if pod { POD_EXTRA_MEMORY_MIB } else { 0 };
    let host_mib = nix::sys::sysinfo::sysinfo()
        .map(|i| i.ram_total() >> 20)
        .unwrap_or(u64::MAX);
    let want = u64::from(base) + u64::from(pod_mib) + limit_mib;
    want.min(host_mib.max(u64::from(base)))
        .try_into()
        .unwrap_or(u32::MAX)
}

/// Errors finding the pieces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest {what} {path} is missing: set ${var} (e.g. target/guest/{file} after cargo xtask setup)")]
    NoGuestFile {
        what: &'static str,
        path: PathBuf,
        var: &'static str,
        file: &'static str,
    },
    #[error("${var}={value:?}: {reason}")]
    BadVar {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// State root: one directory per container.
    pub root: PathBuf,
    /// `sandbox-vmm`.
    pub vmm: PathBuf,
    /// Uncompressed vmlinux with a PVH note.
    pub kernel: PathBuf,
    /// Where the guest's root (the agent as /init) comes from.
    pub guest_root: GuestRoot,
    /// Where rootfs images are cached.
    pub image_cache: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Limit for the guest to reach agent-ready.
    pub agent_timeout: Duration,
    /// Print the time of each start phase to stderr.
    pub debug: bool,
}

/// The guest's root file system, which holds the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestRoot {
    /// An erofs image (rootfs-image/) mapped into the guest with virtio-pmem and mounted with
    /// DAX: the default.
    Image(PathBuf),
    /// An initramfs (cpio) the kernel unpacks into guest RAM, as Kata's `initrd` option.
    Initrd(PathBuf),
}

impl GuestRoot {
    /// `sandbox-vmm` flags that give the guest this root.
    pub fn vmm_args(&self) -> Vec<std::ffi::OsString> {
        let (flag, file, root) = match self {
            GuestRoot::Image(path) => {
                let mut pmem = path.clone().into_os_string();
                pmem.push(",ro");
                ("--pmem", pmem, Some(IMAGE_ROOT_CMDLINE))
            }
            GuestRoot::Initrd(path) => ("--initrd", path.clone().into_os_string(), None),
        };
        let cmdline = match root {
            Some(root) => format!("{KERNEL_CMDLINE} {root}"),
            None => KERNEL_CMDLINE.to_string(),
        };
        vec![flag.into(), file, "--cmdline".into(), cmdline.into()]
    }

    fn path(&self) -> &Path {
        match self {
            GuestRoot::Image(p) | GuestRoot::Initrd(p) => p,
        }
    }

    /// The guest device of the container's image, the virtio-pmem device after this root's
    /// (`Vmm::spawn`): pmem1 behind a root image, pmem0 with an initramfs.
    pub fn container_image_device(&self) -> &'static str {
        match self {
            GuestRoot::Image(_) => "pmem1",
            GuestRoot::Initrd(_) => "pmem0",
        }
    }
}

impl Config {
    /// Settings from the environment: `$SANDBOX_VMM` (else `sandbox-vmm` next to this
    /// executable, else on $PATH), `$SANDBOX_KERNEL`, `$SANDBOX_ROOTFS` (or `$SANDBOX_INITRD`
    /// to boot from an initramfs instead), `$SANDBOX_IMAGE_CACHE`, `$SANDBOX_VCPUS`,
    /// `$SANDBOX_MEMORY_MIB`, `$SANDBOX_AGENT_TIMEOUT` (seconds).
    pub fn from_env(root: Option<PathBuf>, debug: bool) -> Result<Config, Error> {
        Ok(Config {
            root: root.unwrap_or_else(|| DEFAULT_ROOT.into()),
            vmm: find_vmm(),
            kernel: env_path("SANDBOX_KERNEL", DEFAULT_KERNEL),
            guest_root: match std::env::var_os("SANDBOX_INITRD").filter(|v| !v.is_empty()) {
                Some(initrd) => GuestRoot::Initrd(initrd.into()),
                None => GuestRoot::Image(env_path("SANDBOX_ROOTFS", DEFAULT_ROOTFS)),
            },
            image_cache: env_path("SANDBOX_IMAGE_CACHE", DEFAULT_IMAGE_CACHE),
            vcpus: env_number("SANDBOX_VCPUS", DEFAULT_VCPUS)?,
            memory_mib: env_number("SANDBOX_MEMORY_MIB", DEFAULT_MEMORY_MIB)?,
            agent_timeout: Duration::from_secs(
                env_number(
                    "SANDBOX_AGENT_TIMEOUT",
                    DEFAULT_AGENT_TIMEOUT.as_secs() as u32,
                )?
                .into(),
            ),
            debug,
        })
    }

    /// Checks that the guest files exist (only needed when a VM is started).
    pub fn check_guest(&self) -> Result<(), Error> {
        let root = match &self.guest_root {
            GuestRoot::Image(_) => ("root image", "SANDBOX_ROOTFS", "rootfs.erofs"),
            GuestRoot::Initrd(_) => ("initramfs", "SANDBOX_INITRD", "initramfs.cpio"),
        };
        for (what, path, var, file) in [
            ("kernel", &self.kernel, "SANDBOX_KERNEL", "vmlinux"),
            (
                root.0,
                &self.guest_root.path().to_path_buf(),
                root.1,
                root.2,
            ),
        ] {
            if !path.is_file() {
                return Err(Error::NoGuestFile {
                    what,
                    path: path.clone(),
                    var,
                    file,
                });
            }
        }
        Ok(())
    }
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn env_number(var: &'static str, default: u32) -> Result<u32, Error> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|e: std::num::ParseIntError| Error::BadVar {
                var,
                value: v.clone(),
                reason: e.to_string(),
            }),
        _ => Ok(default),
    }
}

/// `$SANDBOX_VMM`, else `sandbox-vmm` beside this executable, else `sandbox-vmm` on $PATH.
fn find_vmm() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_VMM").filter(|v| !v.is_empty()) {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let beside = exe.parent().unwrap_or(Path::new("/")).join("sandbox-vmm");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("sandbox-vmm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_guest_files_name_the_variable() {
        let cfg = Config {
            root: "/nonexistent".into(),
            vmm: "/bin/true".into(),
            kernel: "/nonexistent/vmlinux".into(),
            guest_root: GuestRoot::Image("/nonexistent/rootfs.erofs".into()),
            image_cache: "/nonexistent".into(),
            vcpus: 1,
            memory_mib: 256,
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            debug: false,
        };
        let msg = cfg.check_guest().unwrap_err().to_string();
        assert!(
            msg.contains("SANDBOX_KERNEL") && msg.contains("/nonexistent/vmlinux"),
            "{msg}"
        );
    }

    #[test]
    fn the_root_image_boots_from_pmem_and_an_initrd_as_one() {
        let args = |r: GuestRoot| -> Vec<String> {
            r.vmm_args()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            args(GuestRoot::Image("/g/rootfs.erofs".into())),
            [
                "--pmem",
                "/g/rootfs.erofs,ro",
                "--cmdline",
                &format!("{KERNEL_CMDLINE} root=/dev/pmem0 rootfstype=erofs rootflags=dax=always ro rootwait init=/init"),
            ]
        );
        assert_eq!(
            args(GuestRoot::Initrd("/g/initramfs.cpio".into())),
            ["--initrd", "/g/initramfs.cpio", "--cmdline", KERNEL_CMDLINE]
        );
        // The container image is the next virtio-pmem device.
        assert_eq!(
            GuestRoot::Image("/g/rootfs.erofs".into()).container_image_device(),
            "pmem1"
        );
        assert_eq!(
            GuestRoot::Initrd("/g/initramfs.cpio".into()).container_image_device(),
            "pmem0"
        );
    }

    #[test]
    fn guest_memory_is_the_base_plus_the_container_limit() {
        let spec = |limit: serde_json::Value| serde_json::json!({"linux": {"resources": {"memory": {"limit": limit}}}});
        assert_eq!(guest_memory_mib(128, &serde_json::json!({}), false), 128);
        assert_eq!(guest_memory_mib(128, &spec((64 << 20).into()), false), 192);
        assert_eq!(guest_memory_mib(128, &spec((24 << 20).into()), true), 280);
        assert_eq!(
            guest_memory_mib(128, &spec(((1 << 20) + 1).into()), false),
            130
        );
        assert_eq!(
            guest_memory_mib(128, &spec((-1).into()), false),
            128,
            "unlimited"
        );
        let host_mib = nix::sys::sysinfo::sysinfo().unwrap().ram_total() >> 20;
        let huge = guest_memory_mib(128, &spec(i64::MAX.into()), false);
        assert_eq!(u64::from(huge), host_mib, "capped at the host's RAM");
    }
}
