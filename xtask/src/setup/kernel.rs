//! The guest kernel: Debian's linux-source-6.1 + guest-kernel/guest.config → stripped PVH vmlinux.
//! allnoconfig + fragment (KCONFIG_ALLCONFIG), olddefconfig, verify, `make vmlinux`, strip.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::cache::{self, Cache};
use super::{elf, kconfig};

/// Bump when the steps below change in a way that changes the output.
const RECIPE_VERSION: &str = "kernel-recipe-1";
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Compiled objects (CC/AS lines) of a full build, until a build has measured it.
const DEFAULT_OBJECT_ESTIMATE: u64 = 960;
/// Where a full build records its object count, inside the build directory.
const OBJECT_COUNT_FILE: &str = ".sandbox-object-count";
/// Kernels kept in the cache (the current one included).
const KEEP_KERNELS: usize = 3;
/// Lines of the build log shown when the build fails.
const LOG_TAIL_LINES: usize = 40;

/// A kernel in the cache.
pub struct Kernel {
    pub vmlinux: PathBuf,
    /// How long this run took to build it; `None` on a cache hit.
    pub build_time: Option<Duration>,
}

/// The installed version of the source package; part of the cache key.
fn source_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .context("cannot run dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() {
        bail!("{SOURCE_PACKAGE} is not installed (cargo xtask setup installs it)");
    }
    Ok(version)
}

/// Returns the cached vmlinux for this fragment, building it first if needed.
pub fn ensure(cache: &Cache, fragment_path: &Path, jobs: usize) -> Result<Kernel> {
    let fragment_text = fs::read_to_string(fragment_path)
        .with_context(|| format!("cannot read {}", fragment_path.display()))?;
    let fragment = kconfig::Fragment::parse(&fragment_path.display().to_string(), &fragment_text)?;
    let version = source_version()?;
    let key = cache::key(&[
        RECIPE_VERSION.as_bytes(),
        version.as_bytes(),
        fragment_text.as_bytes(),
    ]);
    let kdir = cache.kind_dir("kernel")?;
    let out_dir = kdir.join(&key);
    let cached = Kernel {
        vmlinux: out_dir.join("vmlinux"),
        build_time: None,
    };
    if cached.vmlinux.is_file() {
        cache::touch(&out_dir);
        return Ok(cached);
    }
    let _lock = cache.lock("kernel")?;
    if cached.vmlinux.is_file() {
        // Another setup built it while we waited.
        return Ok(cached);
    }

    let started = Instant::now();
    let src = extract_source(&kdir, &version)?;
    // One build tree per source version, reused across fragments: make
    // rebuilds only what a changed option touches.
    let build = kdir.join(format!("build-{version}"));
    fs::create_dir_all(&build).with_context(|| format!("cannot create {}", build.display()))?;
    let log_path = kdir.join(format!("{key}.log"));
    let mut log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    eprintln!(
        "guest kernel: configuring {SOURCE_PACKAGE} {version} with {}",
        fragment_path.display()
    );
    let dot_config = configure(&src, &build, fragment_path, &fragment, &mut log, &log_path)?;
    eprintln!(
        "guest kernel: building vmlinux with {jobs} jobs (log: {})",
        log_path.display()
    );
    let from_scratch = !build.join("vmlinux").exists();
    let objects = make_vmlinux(&src, &build, jobs, &mut log, &log_path)?;
    if from_scratch {
        // Only a full build tells how many objects the next full build has.
        fs::write(build.join(OBJECT_COUNT_FILE), objects.to_string()).ok();
    }
    drop(log);
    install(&build, &dot_config, &log_path, &out_dir)?;
    fs::remove_file(&log_path).ok();
    cache::prune(&kdir, KEEP_KERNELS, &out_dir)?;
    Ok(Kernel {
        build_time: Some(started.elapsed()),
        ..cached
    })
}

/// allnoconfig with the fragment, olddefconfig, then checks every fragment option; returns .config.
fn configure(
    src: &Path,
    build: &Path,
    fragment_path: &Path,
    fragment: &kconfig::Fragment,
    log: &mut File,
    log_path: &Path,
) -> Result<String> {
    let mut allconfig = OsArg::from("KCONFIG_ALLCONFIG=");
    allconfig.push(fs::canonicalize(fragment_path)?);
    run_logged(
        make(src, build).arg("allnoconfig").arg(allconfig),
        log,
        log_path,
    )?;
    run_logged(make(src, build).arg("olddefconfig"), log, log_path)?;
    let dot_config = fs::read_to_string(build.join(".config"))
        .with_context(|| format!("cannot read {}/.config", build.display()))?;
    fragment.verify(&dot_config).with_context(|| {
        format!(
            "kernel config check failed (fragment {})",
            fragment_path.display()
        )
    })?;
    Ok(dot_config)
}

/// Strips vmlinux, checks its PVH note, and publishes it with its .config and build log.
fn install(build: &Path, dot_config: &str, log_path: &Path, out_dir: &Path) -> Result<()> {
    let tmp = cache::fresh_tmp_dir(out_dir)?;
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(tmp.join("vmlinux"))
        .arg(build.join("vmlinux"))
        .status()
        .context("cannot run strip")?;
    if !status.success() {
        bail!("strip {}/vmlinux failed: {status}", build.display());
    }
    let bytes = fs::read(tmp.join("vmlinux"))?;
    elf::pvh_entry("the stripped vmlinux", &bytes)?;
    fs::write(tmp.join("config"), dot_config)?;
    fs::copy(log_path, tmp.join("build.log"))?;
    cache::publish_dir(&tmp, out_dir)
}

type OsArg = std::ffi::OsString;

fn make(src: &Path, build: &Path) -> Command {
    let mut o = OsArg::from("O=");
    o.push(build);
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .arg(o)
        .env("KBUILD_BUILD_USER", "sandbox")
        .env("KBUILD_BUILD_HOST", "sandbox")
        .env_remove("MAKEFLAGS")
        .env_remove("ARCH")
        .env_remove("CROSS_COMPILE");
    cmd
}

/// Unpacks the source tarball once per package version into `kernel/linux-source-<version>`.
fn extract_source(kdir: &Path, version: &str) -> Result<PathBuf> {
    let src = kdir.join(format!("linux-source-{version}"));
    if src.join("Makefile").is_file() {
        return Ok(src);
    }
    eprintln!("guest kernel: extracting {SOURCE_TARBALL}");
    let tmp = cache::fresh_tmp_dir(&src)?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(SOURCE_TARBALL)
        .arg("-C")
        .arg(&tmp)
        .status()
        .context("cannot run tar")?;
    if !status.success() {
        bail!("extracting {SOURCE_TARBALL} failed: {status}");
    }
    // The tarball holds a single top-level directory, linux-source-6.1/.
    let top = tmp.join(SOURCE_PACKAGE);
    if !top.join("Makefile").is_file() {
        bail!("{SOURCE_TARBALL} has no {SOURCE_PACKAGE}/Makefile");
    }
    fs::rename(&top, &src)
        .with_context(|| format!("cannot move the source to {}", src.display()))?;
    fs::remove_dir_all(&tmp).ok();
    Ok(src)
}

/// Runs a short command with its output appended to the log; on failure shows the log's tail.
fn run_logged(cmd: &mut Command, log: &mut File, log_path: &Path) -> Result<()> {
    writeln!(log, "$ {cmd:?}")?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        fail_with_log_tail(&format!("{cmd:?} failed: {status}"), log_path)?;
    }
    Ok(())
}

fn fail_with_log_tail(what: &str, log_path: &Path) -> Result<()> {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log_path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok();
        f.read_to_string(&mut text).ok();
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    eprintln!(
        "---- last lines of {} ----\n{tail}\n----",
        log_path.display()
    );
    bail!("{what} (full log: {})", log_path.display())
}

/// The file a kbuild progress line is about, if it compiles an object (`  CC      kernel/fork.o`).
fn compiled_object(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("CC" | "AS"), Some(file)) if file.ends_with(".o") => Some(file),
        _ => None,
    }
}

/// `make vmlinux` with a progress bar counting compiled objects; returns their number.
fn make_vmlinux(
    src: &Path,
    build: &Path,
    jobs: usize,
    log: &mut File,
    log_path: &Path,
) -> Result<u64> {
    let estimate = fs::read_to_string(build.join(OBJECT_COUNT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_OBJECT_ESTIMATE);
    let mut cmd = make(src, build);
    cmd.arg(format!("-j{jobs}")).arg("vmlinux");
    writeln!(log, "$ {cmd:?}")?;
    let (reader, writer) = std::io::pipe()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    // Drop our copies of the pipe's write end (moved into cmd) so EOF arrives.
    drop(cmd);

    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::new(estimate);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} kernel [{elapsed_precise}] {bar:30} {pos}/~{len} objects {wide_msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut objects = 0u64;
    for line in BufReader::new(reader).lines() {
        let line = line?;
        writeln!(log, "{line}")?;
        if let Some(file) = compiled_object(&line) {
            objects += 1;
            if objects > bar.length().unwrap_or(0) {
                bar.set_length(objects + objects / 10);
            }
            bar.set_position(objects);
            bar.set_message(file.to_string());
            if !tty && objects.is_multiple_of(200) {
                eprintln!("guest kernel: {objects}/~{estimate} objects compiled");
            }
        }
    }
    let status = child.wait()?;
    bar.finish_and_clear();
    if !status.success() {
        fail_with_log_tail(&format!("make vmlinux failed: {status}"), log_path)?;
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_recognised() {
        assert_eq!(
            compiled_object("  CC      kernel/fork.o"),
            Some("kernel/fork.o")
        );
        assert_eq!(
            compiled_object("  AS      arch/x86/entry/entry_64.o"),
            Some("arch/x86/entry/entry_64.o")
        );
        assert_eq!(compiled_object("  LD      vmlinux.o"), None);
        assert_eq!(compiled_object("  CC      scripts/mod/empty.s"), None);
        assert_eq!(compiled_object("make[1]: Entering directory"), None);
    }
}
