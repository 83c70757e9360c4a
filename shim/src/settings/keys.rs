//! Every key of the settings: its default, how the file and its `SANDBOX_*` variable set it,
//! and the check its values pass (docs/config.md has the same list for users).

use std::path::{Path, PathBuf};

use super::file::File;
use super::layout::{self, KERNEL_NAME, ROOT_IMAGE_NAME};
use super::{set_from_env, Error, FileLayer, Setting, Settings, Source};
use crate::controller::config as ctl;

/// Default state root of the containerd shim (one directory per containerd namespace below).
pub const DEFAULT_SHIM_ROOT: &str = "/run/containerd-shim-sandbox";
/// Default template directory (issue 21).
pub const DEFAULT_TEMPLATES_DIR: &str = "/var/lib/sandbox/templates";
/// Guest memory bounds in MiB: a floor that catches a unit slip (`memory_mib = 1` meant as
/// GiB), and the VMM's own ceiling.
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// vCPU bound of the VMM.
pub const MAX_VCPUS: u32 = 32;
/// Longest agent timeout, in seconds (a day: anything longer is a typo).
pub const MAX_AGENT_TIMEOUT_SECS: u32 = 86_400;
/// The VMM's log levels (`SANDBOX_VMM_LOG`).
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// `[vm]`.
#[derive(Debug, Clone)]
pub struct Vm {
    pub vcpus: Setting<u32>,
    pub memory_mib: Setting<u32>,
    pub kernel: Setting<PathBuf>,
    pub root_image: Setting<PathBuf>,
    /// An initramfs booted instead of the root image.
    pub initrd: Setting<Option<PathBuf>>,
    pub vmm: Setting<PathBuf>,
    /// `SANDBOX_VMM_LOG` for the VMM; unset: warnings (and boot phases with `--debug`).
    pub vmm_log_level: Setting<Option<String>>,
}

/// `[agent]`.
#[derive(Debug, Clone)]
pub struct Agent {
    pub timeout_secs: Setting<u32>,
}

/// `[image]`.
#[derive(Debug, Clone)]
pub struct Image {
    pub cache: Setting<PathBuf>,
}

/// `[state]`.
#[derive(Debug, Clone)]
pub struct State {
    /// The CLI's (`--root`).
    pub root: Setting<PathBuf>,
    /// The containerd shim's; a directory per containerd namespace below.
    pub shim_root: Setting<PathBuf>,
}

/// `[network]`: accepted for issue 17; only "none" works today.
#[derive(Debug, Clone)]
pub struct Network {
    pub model: Setting<String>,
}

/// `[shared_fs]`: accepted for issue 18; only kind "none" works today.
#[derive(Debug, Clone)]
pub struct SharedFs {
    pub kind: Setting<String>,
    pub cache: Setting<String>,
}

/// `[confinement]`: accepted for issue 20; only the unconfined values work today.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub seccomp: Setting<String>,
    pub jailer: Setting<bool>,
    pub uid_base: Setting<u32>,
    pub uid_count: Setting<u32>,
}

/// `[templates]`: accepted for issue 21; templates cannot be enabled today.
#[derive(Debug, Clone)]
pub struct Templates {
    pub enabled: Setting<bool>,
    pub dir: Setting<PathBuf>,
}

/// The built-in defaults; the guest files and the VMM are found from the executable.
pub fn defaults(config_file: Setting<PathBuf>, exe: &Path) -> Settings {
    let share = layout::share_dir(exe);
    let share_note = format!(
        "the executable's ../share/sandbox ({})",
        exe.parent().unwrap_or(Path::new("/")).display()
    );
    let (vmm, vmm_note) = layout::default_vmm(exe);
    Settings {
        config_file,
        config_found: false,
        vm: Vm {
            vcpus: Setting::default(ctl::DEFAULT_VCPUS),
            memory_mib: Setting::default(ctl::DEFAULT_MEMORY_MIB),
            kernel: Setting::derived(share.join(KERNEL_NAME), share_note.clone()),
            root_image: Setting::derived(share.join(ROOT_IMAGE_NAME), share_note),
            initrd: Setting::default(None),
            vmm: Setting::derived(vmm, vmm_note),
            vmm_log_level: Setting::default(None),
        },
        agent: Agent {
            timeout_secs: Setting::default(ctl::DEFAULT_AGENT_TIMEOUT.as_secs() as u32),
        },
        image: Image {
            cache: Setting::default(ctl::DEFAULT_IMAGE_CACHE.into()),
        },
        state: State {
            root: Setting::default(ctl::DEFAULT_ROOT.into()),
            shim_root: Setting::default(DEFAULT_SHIM_ROOT.into()),
        },
        network: Network {
            model: Setting::default("none".into()),
        },
        shared_fs: SharedFs {
            kind: Setting::default("none".into()),
            cache: Setting::default("auto".into()),
        },
        confinement: Confinement {
            seccomp: Setting::default("off".into()),
            jailer: Setting::default(false),
            uid_base: Setting::default(200_000),
            uid_count: Setting::default(65_536),
        },
        templates: Templates {
            enabled: Setting::default(false),
            dir: Setting::default(DEFAULT_TEMPLATES_DIR.into()),
        },
    }
}

/// The config file's values over the defaults.
pub fn apply_file(s: &mut Settings, f: &File, layer: &FileLayer) -> Result<(), Error> {
    layer.set(&mut s.vm.vcpus, "vm.vcpus", &f.vm.vcpus, vcpus)?;
    layer.set(
        &mut s.vm.memory_mib,
        "vm.memory_mib",
        &f.vm.memory_mib,
        memory,
    )?;
    layer.set(&mut s.vm.kernel, "vm.kernel", &f.vm.kernel, |p| path(p))?;
    layer.set(
        &mut s.vm.root_image,
        "vm.root_image",
        &f.vm.root_image,
        |p| path(p),
    )?;
    layer.set(&mut s.vm.initrd, "vm.initrd", &f.vm.initrd, |p| {
        path(p).map(Some)
    })?;
    layer.set(&mut s.vm.vmm, "vm.vmm", &f.vm.vmm, |p| {
        program(&p.to_string_lossy())
    })?;
    layer.set(
        &mut s.vm.vmm_log_level,
        "vm.vmm_log_level",
        &f.vm.vmm_log_level,
        |l| log_level(l),
    )?;
    layer.set(
        &mut s.agent.timeout_secs,
        "agent.timeout_secs",
        &f.agent.timeout_secs,
        timeout,
    )?;
    layer.set(&mut s.image.cache, "image.cache", &f.image.cache, |p| {
        path(p)
    })?;
    layer.set(&mut s.state.root, "state.root", &f.state.root, |p| path(p))?;
    layer.set(
        &mut s.state.shim_root,
        "state.shim_root",
        &f.state.shim_root,
        |p| path(p),
    )?;
    layer.set(
        &mut s.network.model,
        "network.model",
        &f.network.model,
        |v| choice(v, &["none"], &[("tc-filter", NO_NETWORK)]),
    )?;
    layer.set(
        &mut s.shared_fs.kind,
        "shared_fs.kind",
        &f.shared_fs.kind,
        |v| choice(v, &["none"], &[("virtio-fs", NO_SHARED_FS)]),
    )?;
    layer.set(
        &mut s.shared_fs.cache,
        "shared_fs.cache",
        &f.shared_fs.cache,
        |v| choice(v, &["auto", "always", "never"], &[]),
    )?;
    layer.set(
        &mut s.confinement.seccomp,
        "confinement.seccomp",
        &f.confinement.seccomp,
        |v| choice(v, &["off"], &[("on", NO_SECCOMP), ("log", NO_SECCOMP)]),
    )?;
    layer.set(
        &mut s.confinement.jailer,
        "confinement.jailer",
        &f.confinement.jailer,
        |on| not_yet(*on, NO_JAILER),
    )?;
    layer.set(
        &mut s.confinement.uid_base,
        "confinement.uid_base",
        &f.confinement.uid_base,
        |n| at_least(*n, 1),
    )?;
    let base = s.confinement.uid_base.value;
    layer.set(
        &mut s.confinement.uid_count,
        "confinement.uid_count",
        &f.confinement.uid_count,
        |n| uid_count(base, *n),
    )?;
    layer.set(
        &mut s.templates.enabled,
        "templates.enabled",
        &f.templates.enabled,
        |on| not_yet(*on, NO_TEMPLATES),
    )?;
    layer.set(
        &mut s.templates.dir,
        "templates.dir",
        &f.templates.dir,
        |p| path(p),
    )
}

/// The `SANDBOX_*` variables over the file (docs/config.md lists them).
pub fn apply_env(s: &mut Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Error> {
    let number = |v: &str| v.parse::<u32>().map_err(|e| format!("not a number: {e}"));
    set_from_env(&mut s.vm.vcpus, "SANDBOX_VCPUS", env, |v| {
        vcpus(&number(v)?)
    })?;
    set_from_env(&mut s.vm.memory_mib, "SANDBOX_MEMORY_MIB", env, |v| {
        memory(&number(v)?)
    })?;
    set_from_env(&mut s.vm.kernel, "SANDBOX_KERNEL", env, absolute)?;
    set_from_env(&mut s.vm.root_image, "SANDBOX_ROOTFS", env, absolute)?;
    set_from_env(&mut s.vm.initrd, "SANDBOX_INITRD", env, |v| {
        absolute(v).map(Some)
    })?;
    set_from_env(&mut s.vm.vmm, "SANDBOX_VMM", env, program)?;
    set_from_env(&mut s.vm.vmm_log_level, "SANDBOX_VMM_LOG", env, log_level)?;
    set_from_env(
        &mut s.agent.timeout_secs,
        "SANDBOX_AGENT_TIMEOUT",
        env,
        |v| timeout(&number(v)?),
    )?;
    set_from_env(&mut s.image.cache, "SANDBOX_IMAGE_CACHE", env, absolute)?;
    set_from_env(&mut s.state.root, "SANDBOX_ROOT", env, absolute)?;
    set_from_env(&mut s.state.shim_root, "SANDBOX_SHIM_ROOT", env, absolute)
}

/// One line of `sandbox config`.
pub struct Entry<'a> {
    pub section: &'static str,
    pub key: &'static str,
    /// None: unset.
    pub value: Option<toml::Value>,
    pub source: &'a Source,
    /// What it is, for the default file `cargo xtask install` writes.
    pub doc: &'static str,
}

/// Every setting, in the file's order.
pub fn entries(s: &Settings) -> Vec<Entry<'_>> {
    fn e<'a, T: ToToml>(
        section: &'static str,
        key: &'static str,
        v: &'a Setting<T>,
        doc: &'static str,
    ) -> Entry<'a> {
        Entry {
            section,
            key,
            value: v.value.to_toml(),
            source: &v.source,
            doc,
        }
    }
    let (vm, st, cf) = (&s.vm, &s.state, &s.confinement);
    vec![
        e("vm", "vcpus", &vm.vcpus, "vCPUs of each microVM ($SANDBOX_VCPUS)"),
        e("vm", "memory_mib", &vm.memory_mib,
            "guest RAM in MiB; the container's memory limit is added ($SANDBOX_MEMORY_MIB)"),
        e("vm", "kernel", &vm.kernel, "uncompressed guest kernel ($SANDBOX_KERNEL)"),
        e("vm", "root_image", &vm.root_image,
            "guest root image with the agent, erofs ($SANDBOX_ROOTFS)"),
        e("vm", "initrd", &vm.initrd,
            "an initramfs booted instead of the root image ($SANDBOX_INITRD)"),
        e("vm", "vmm", &vm.vmm, "sandbox-vmm: a path, or a name on $PATH ($SANDBOX_VMM)"),
        e("vm", "vmm_log_level", &vm.vmm_log_level,
            "the VMM's log level in <state>/<id>/vmm.log: error|warn|info|debug|trace ($SANDBOX_VMM_LOG)"),
        e("agent", "timeout_secs", &s.agent.timeout_secs,
            "seconds the guest may take to reach agent-ready ($SANDBOX_AGENT_TIMEOUT)"),
        e("image", "cache", &s.image.cache,
            "container images (erofs) built from rootfs directories ($SANDBOX_IMAGE_CACHE)"),
        e("state", "root", &st.root, "state of `sandbox` containers (--root, $SANDBOX_ROOT)"),
        e("state", "shim_root", &st.shim_root,
            "state of containerd tasks, per namespace ($SANDBOX_SHIM_ROOT)"),
        e("network", "model", &s.network.model, "none; tc-filter with issue 17"),
        e("shared_fs", "kind", &s.shared_fs.kind, "none; virtio-fs with issue 18"),
        e("shared_fs", "cache", &s.shared_fs.cache,
            "auto|always|never: the guest's caching of shared files (issue 18)"),
        e("confinement", "seccomp", &cf.seccomp, "off; on|log with issue 20"),
        e("confinement", "jailer", &cf.jailer, "false; true with issue 20"),
        e("confinement", "uid_base", &cf.uid_base, "first uid/gid for confined VMMs (issue 20)"),
        e("confinement", "uid_count", &cf.uid_count, "uids/gids in that range (issue 20)"),
        e("templates", "enabled", &s.templates.enabled, "false; true with issue 21"),
        e("templates", "dir", &s.templates.dir, "where templates are kept (issue 21)"),
    ]
}

/// A value as TOML shows it; None when unset.
pub trait ToToml {
    fn to_toml(&self) -> Option<toml::Value>;
}

impl ToToml for u32 {
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Integer((*self).into()))
    }
}

impl ToToml for bool {
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*self))
    }
}

impl ToToml for String {
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.clone()))
    }
}

impl ToToml for PathBuf {
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.to_string_lossy().into_owned()))
    }
}

impl<T: ToToml> ToToml for Option<T> {
    fn to_toml(&self) -> Option<toml::Value> {
        self.as_ref().and_then(ToToml::to_toml)
    }
}

const NO_NETWORK: &str = "sandboxes have no network device yet (issue 17)";
const NO_SHARED_FS: &str = "the VMM has no shared file system yet (issue 18)";
const NO_SECCOMP: &str = "the VMM has no seccomp filters yet (issue 20)";
const NO_JAILER: &str = "the VMM is not confined yet (issue 20)";
const NO_TEMPLATES: &str = "sandboxes cannot start from templates yet (issue 21)";

fn vcpus(n: &u32) -> Result<u32, String> {
    in_range(*n, 1, MAX_VCPUS)
}

fn memory(n: &u32) -> Result<u32, String> {
    in_range(*n, MIN_MEMORY_MIB, MAX_MEMORY_MIB)
}

fn timeout(n: &u32) -> Result<u32, String> {
    in_range(*n, 1, MAX_AGENT_TIMEOUT_SECS)
}

fn in_range(n: u32, min: u32, max: u32) -> Result<u32, String> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between {min} and {max}, got {n}"))
    }
}

fn at_least(n: u32, min: u32) -> Result<u32, String> {
    if n >= min {
        Ok(n)
    } else {
        Err(format!("must be at least {min}, got {n}"))
    }
}

/// At least one uid, and the range `uid_base..uid_base + uid_count` within 32 bits.
fn uid_count(base: u32, n: u32) -> Result<u32, String> {
    at_least(n, 1)?;
    if u64::from(base) + u64::from(n) > u64::from(u32::MAX) {
        return Err(format!(
            "uid_base + uid_count must not pass 2^32 - 1, got {base} + {n}"
        ));
    }
    Ok(n)
}

fn path(p: &std::path::Path) -> Result<PathBuf, String> {
    absolute(&p.to_string_lossy())
}

/// An absolute path (settings never depend on the caller's working directory).
pub fn absolute(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("must be an absolute path, got {v:?}"))
    }
}

/// A program: an absolute path, or a bare name looked up on `$PATH` when it is spawned.
fn program(v: &str) -> Result<PathBuf, String> {
    if !v.is_empty() && !v.contains('/') {
        return Ok(PathBuf::from(v));
    }
    absolute(v).map_err(|_| format!("must be an absolute path or a name on $PATH, got {v:?}"))
}

fn log_level(v: &str) -> Result<Option<String>, String> {
    choice(v, LOG_LEVELS, &[]).map(Some)
}

/// One of `accepted`; a value of `future` is refused with the reason it does not work yet.
fn choice(v: &str, accepted: &[&str], future: &[(&str, &str)]) -> Result<String, String> {
    if accepted.contains(&v) {
        return Ok(v.to_string());
    }
    if let Some((_, why)) = future.iter().find(|(f, _)| *f == v) {
        return Err(format!(
            "{v:?} is not available: {why}; {:?} is the only value today",
            accepted[0]
        ));
    }
    let all: Vec<String> = accepted
        .iter()
        .chain(future.iter().map(|(f, _)| f))
        .map(|a| format!("{a:?}"))
        .collect();
    Err(format!("expected one of {}, got {v:?}", all.join(", ")))
}

fn not_yet(on: bool, why: &str) -> Result<bool, String> {
    if on {
        Err(format!("true is not available: {why}"))
    } else {
        Ok(false)
    }
}
