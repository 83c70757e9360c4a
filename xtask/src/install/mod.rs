//! `cargo xtask install`: release builds of the binaries into `PREFIX/bin`, the guest kernel
//! and root image into `PREFIX/share/sandbox`, a default config file if there is none, and on
//! request our runtime in containerd's and Docker's configs; all of it in a manifest that
//! `cargo xtask uninstall` (uninstall.rs) works from. docs/config.md describes the layout.

mod config_edit;
mod containerd_config;
mod docker_config;
mod files;
mod manifest;
mod running;
mod uninstall;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sandbox_tests::artifacts;
use sandbox_tests::binaries::{self, Binary};

use manifest::Manifest;
pub use uninstall::{run as uninstall, UninstallArgs};

/// What goes into `PREFIX/bin`: the one list of installed binaries (a helper daemon a later
/// feature adds goes here too).
pub const BINARIES: &[Binary] = &[binaries::SANDBOX, binaries::VMM, binaries::SHIM];
/// Where `cargo xtask setup` put a guest file.
type GuestFile = fn() -> Result<PathBuf, artifacts::Error>;
/// What goes into `PREFIX/share/sandbox`: the guest files `cargo xtask setup` built.
const GUEST_FILES: &[(&str, GuestFile)] = &[
    ("vmlinux", artifacts::vmlinux),
    ("rootfs.erofs", artifacts::rootfs),
];

pub const DEFAULT_PREFIX: &str = "/usr/local";
/// The binaries' default config file (shim::settings::DEFAULT_CONFIG_FILE).
pub const DEFAULT_CONFIG: &str = "/etc/sandbox/config.toml";
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_DOCKER_CONFIG: &str = "/etc/docker/daemon.json";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Install under DIR: DIR/bin and DIR/share/sandbox.
    #[arg(long, default_value = DEFAULT_PREFIX, value_name = "DIR")]
    pub prefix: PathBuf,
    /// The config file: written with every key's default if it does not exist (never
    /// overwritten), and named in containerd's and Docker's entries.
    #[arg(long, default_value = DEFAULT_CONFIG, value_name = "FILE")]
    pub config: PathBuf,
    /// Add the runtime handler `sandbox` to containerd's config (a backup is kept).
    #[arg(long)]
    pub containerd: bool,
    /// containerd's config file.
    #[arg(long, default_value = DEFAULT_CONTAINERD_CONFIG, value_name = "FILE")]
    pub containerd_config: PathBuf,
    /// Register the runtime `sandbox` in Docker's daemon.json (a backup is kept).
    #[arg(long)]
    pub docker: bool,
    /// Docker's daemon config file.
    #[arg(long, default_value = DEFAULT_DOCKER_CONFIG, value_name = "FILE")]
    pub docker_config: PathBuf,
    /// Install the release binaries already in the target directory instead of building them.
    #[arg(long)]
    pub no_build: bool,
}

/// Where things go under a prefix.
pub struct Layout {
    pub prefix: PathBuf,
}

impl Layout {
    pub fn bin(&self) -> PathBuf {
        self.prefix.join("bin")
    }

    pub fn share(&self) -> PathBuf {
        self.prefix.join("share").join("sandbox")
    }

    /// An installed binary.
    pub fn binary(&self, b: &Binary) -> PathBuf {
        self.bin().join(b.name)
    }
}

pub fn run(args: Args) -> Result<()> {
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| p.display().to_string());
    let layout = Layout {
        prefix: absolute(&args.prefix)?,
    };
    let config = absolute(&args.config)?;
    if !args.no_build {
        let bins: Vec<(&str, &str)> = BINARIES.iter().map(|b| (b.package, b.name)).collect();
        crate::boot::build_release(&bins)?;
    }
    let sources = sources()?;
    let mut m = manifest::load(&layout.prefix)?.unwrap_or_else(|| Manifest {
        prefix: layout.prefix.clone(),
        ..Default::default()
    });
    m.config_path = config.clone();
    let mut report = Vec::new();
    install_files(&layout, &sources, &mut m)?;
    m.save()?;
    report.push(format!(
        "installed under {}: {}; share/sandbox/{}",
        layout.prefix.display(),
        BINARIES
            .iter()
            .map(|b| format!("bin/{}", b.name))
            .collect::<Vec<_>>()
            .join(", "),
        GUEST_FILES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", share/sandbox/")
    ));
    report.push(write_default_config(&layout, &config, &mut m)?);
    m.save()?;
    if args.containerd {
        report.push(add_to_containerd(
            &layout,
            &absolute(&args.containerd_config)?,
            &config,
            &mut m,
        )?);
        m.save()?;
    }
    if args.docker {
        report.push(add_to_docker(
            &layout,
            &absolute(&args.docker_config)?,
            &config,
            &mut m,
        )?);
        m.save()?;
    }
    report.push(format!(
        "manifest: {} (cargo xtask uninstall --prefix {} removes all of it)",
        manifest::path(&layout.prefix).display(),
        layout.prefix.display()
    ));
    for line in report {
        println!("{line}");
    }
    Ok(())
}

/// The files to install: (source, destination name, mode, whether in bin or share).
struct Sources {
    binaries: Vec<(PathBuf, &'static str)>,
    guest: Vec<(PathBuf, &'static str)>,
}

/// The release binaries in the target directory and the guest files of `cargo xtask setup`.
fn sources() -> Result<Sources> {
    let release = artifacts::target_dir().join("release");
    let mut binaries = Vec::new();
    for b in BINARIES {
        let path = release.join(b.name);
        if !path.is_file() {
            bail!(
                "{} is missing: run cargo xtask install without --no-build, which builds it",
                path.display()
            );
        }
        binaries.push((path, b.name));
    }
    let mut guest = Vec::new();
    for (name, find) in GUEST_FILES {
        guest.push((find()?, *name));
    }
    Ok(Sources { binaries, guest })
}

/// Binaries into `bin`, guest files into `share/sandbox`, each replaced by rename (a running
/// VM keeps the kernel and root image it maps).
fn install_files(layout: &Layout, sources: &Sources, m: &mut Manifest) -> Result<()> {
    for (dir, files, mode) in [
        (layout.bin(), &sources.binaries, 0o755),
        (layout.share(), &sources.guest, 0o644),
    ] {
        m.add_dirs(files::create_dirs(&dir)?);
        for (src, name) in files {
            let dest = dir.join(name);
            files::install_file(src, &dest, mode)?;
            m.add_file(&dest);
        }
    }
    Ok(())
}

/// The installed `sandbox` with none of the caller's `SANDBOX_*` variables.
fn installed_sandbox(layout: &Layout) -> Command {
    let mut cmd = Command::new(layout.binary(&binaries::SANDBOX));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SANDBOX_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Writes the default config file (`sandbox config --default` of the installed binary)
/// unless one exists.
fn write_default_config(layout: &Layout, config: &Path, m: &mut Manifest) -> Result<String> {
    if config.exists() {
        return Ok(format!(
            "config: {} exists, kept as it is",
            config.display()
        ));
    }
    let out = installed_sandbox(layout)
        .args(["config", "--default"])
        .output()
        .context("running the installed sandbox config --default")?;
    if !out.status.success() {
        bail!(
            "sandbox config --default failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    m.add_dirs(files::create_dirs(
        config.parent().unwrap_or(Path::new("/")),
    )?);
    files::write_atomic(config, &out.stdout, 0o644)?;
    m.config_created = Some(manifest::CreatedFile {
        path: config.to_path_buf(),
        sha256: manifest::digest(&out.stdout),
    });
    Ok(format!(
        "config: {} written (every key commented out with its default; docs/config.md)",
        config.display()
    ))
}

fn add_to_containerd(
    layout: &Layout,
    path: &Path,
    config: &Path,
    m: &mut Manifest,
) -> Result<String> {
    let rt = containerd_config::Runtime {
        shim: layout.binary(&binaries::SHIM),
        config: config.to_path_buf(),
    };
    let edit = config_edit::apply(path, containerd_config::NEW_FILE, |text| {
        let mut doc = containerd_config::parse(path, text)?;
        Ok(match containerd_config::add(&mut doc, &rt)? {
            containerd_config::Added::Created(created) => Some((doc.to_string(), created)),
            containerd_config::Added::Present => None,
        })
    })?;
    let Some((edit, dirs)) = edit else {
        return Ok(format!(
            "containerd: {} has a runtime handler \"{}\" already: left as it is",
            path.display(),
            containerd_config::HANDLER
        ));
    };
    let backup = describe_backup(&edit);
    m.add_dirs(dirs);
    m.containerd = Some(edit);
    Ok(format!(
        "containerd: runtime handler \"{}\" ({}) added to {} ({backup}); restart containerd \
         to use it (systemctl restart containerd)",
        containerd_config::HANDLER,
        containerd_config::RUNTIME_TYPE,
        path.display()
    ))
}

fn add_to_docker(layout: &Layout, path: &Path, config: &Path, m: &mut Manifest) -> Result<String> {
    let shim = layout.binary(&binaries::SANDBOX);
    let named_config = (config != Path::new(DEFAULT_CONFIG)).then_some(config);
    let edit = config_edit::apply(path, "{}\n", |text| {
        let mut v = docker_config::parse(path, text)?;
        Ok(match docker_config::add(&mut v, &shim, named_config)? {
            docker_config::Added::Created(created) => Some((docker_config::render(&v), created)),
            docker_config::Added::Present => None,
        })
    })?;
    let Some((edit, dirs)) = edit else {
        return Ok(format!(
            "docker: {} has a runtime \"{}\" already: left as it is",
            path.display(),
            docker_config::NAME
        ));
    };
    let backup = describe_backup(&edit);
    m.add_dirs(dirs);
    m.docker = Some(edit);
    Ok(format!(
        "docker: runtime \"{}\" registered in {} ({backup}); restart dockerd to use it",
        docker_config::NAME,
        path.display()
    ))
}

fn describe_backup(edit: &manifest::ConfigEdit) -> String {
    match &edit.backup {
        Some(b) => format!("backup: {}", b.display()),
        None => "a new file".to_string(),
    }
}
