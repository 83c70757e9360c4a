//! `cargo xtask setup`: Debian packages, then the guest kernel, static agent, initramfs and
//! root image, each cached under $SANDBOX_CACHE by a hash of its inputs and linked into
//! target/guest/.

mod agent;
mod cache;
mod elf;
mod initramfs;
mod kconfig;
mod kernel;
mod packages;
mod rootfs;
mod virtiofsd;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

pub use packages::DEBIAN_PACKAGES;

/// The Kconfig fragment of the guest kernel, relative to the workspace.
const KERNEL_FRAGMENT: &str = "guest-kernel/guest.config";
/// The initramfs content list, relative to the workspace.
const INITRAMFS_LIST: &str = "rootfs-image/initramfs.list";
/// Where the current artifacts are linked, relative to the workspace.
const GUEST_DIR: &str = "target/guest";
/// Where host tools built by setup are linked (virtiofsd, for the QEMU peer), relative to the
/// workspace.
pub const TOOLS_DIR: &str = "target/tools";

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Args {
    /// Fail instead of installing missing Debian packages.
    #[arg(long)]
    pub no_install: bool,
    /// Parallel jobs of the kernel build (default: the number of CPUs).
    #[arg(long, short)]
    pub jobs: Option<usize>,
}

/// The current guest artifacts, as linked into target/guest/.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The erofs root image of the same tree (booted from virtio-pmem).
    pub rootfs: PathBuf,
    pub agent: PathBuf,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo xtask setup`.
pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let a = ensure_guest(&args)?;
    for (what, path) in [
        ("vmlinux", &a.vmlinux),
        ("initramfs", &a.initramfs),
        ("rootfs", &a.rootfs),
        ("agent", &a.agent),
    ] {
        let size = std::fs::metadata(path)?.len();
        println!(
            "{what:<10} {:>8.1} MiB  {}",
            size as f64 / (1024.0 * 1024.0),
            path.display()
        );
    }
    println!("setup done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Installs packages and brings the guest artifacts up to date; what `cargo xtask test`,
/// `boot` and `demo` call first. Cheap when nothing changed.
pub fn ensure_guest(args: &Args) -> Result<GuestArtifacts> {
    let root = workspace_root();
    packages::ensure_installed(DEBIAN_PACKAGES, !args.no_install)?;
    let cache = cache::Cache::from_env();
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });

    let kernel = kernel::ensure(&cache, &root.join(KERNEL_FRAGMENT), jobs)?;
    match kernel.build_time {
        Some(t) => println!("guest kernel built in {:.0} s", t.as_secs_f64()),
        None => println!("guest kernel: cached"),
    }
    let agent = agent::build(&root)?;
    let initramfs = initramfs::ensure(&cache, &root.join(INITRAMFS_LIST), &agent)?;
    println!(
        "initramfs: {}",
        if initramfs.built { "written" } else { "cached" }
    );

    let guest = root.join(GUEST_DIR);
    let a = GuestArtifacts {
        vmlinux: guest.join("vmlinux"),
        initramfs: guest.join("initramfs.cpio"),
        rootfs: guest.join("rootfs.erofs"),
        agent: guest.join("sandbox-agent"),
    };
    cache::link(&kernel.vmlinux, &a.vmlinux)?;
    cache::link(&initramfs.cpio, &a.initramfs)?;
    cache::link(&initramfs.rootfs, &a.rootfs)?;
    cache::link(&initramfs.agent, &a.agent)?;

    let virtiofsd = virtiofsd::ensure(&cache)?;
    println!(
        "virtiofsd {}: {}",
        virtiofsd::VERSION,
        if virtiofsd.built {
            "installed"
        } else {
            "cached"
        }
    );
    cache::link(&virtiofsd.binary, &root.join(TOOLS_DIR).join("virtiofsd"))?;
    Ok(a)
}
