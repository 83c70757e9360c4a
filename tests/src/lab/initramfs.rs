//! The lab's initramfs: busybox-static, the kernel modules the lab needs and `/init`.
//! Built once per kernel version and recipe into the build cache.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::kernel::{write_atomic, HostKernel};

/// The lab's `/init` (a busybox shell script).
const INIT_SCRIPT: &str = include_str!("init.sh");

/// The modules loaded at boot, with their dependencies resolved from `modules.dep`:
/// nested SVM KVM, virtio-pci and 9p for the host's root, overlayfs on top of it, and
/// virtio-console for the command's output.
/// Anything else can be `modprobe`d by the command: the host's /lib/modules is visible.
pub const MODULES: &[&str] = &[
    "kvm_amd",
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "virtio_console",
];

/// busybox applets `/init` uses; each becomes a symlink in /bin.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "mkdir", "cat", "chroot", "echo", "sync", "sleep", "poweroff",
];

const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("module {name} is not in {modules_dep}")]
    UnknownModule { name: String, modules_dep: PathBuf },
    #[error("{BUSYBOX} is missing (install busybox-static): {source}")]
    NoBusybox { source: io::Error },
    #[error("cannot write the cached initramfs {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Returns the lab initramfs for `kernel`, building it into `cache_dir` on first use.
pub fn build(kernel: &HostKernel, cache_dir: &Path) -> Result<PathBuf, Error> {
    let busybox = fs::read(BUSYBOX).map_err(|source| Error::NoBusybox { source })?;
    let modules = resolve_modules(&kernel.modules_dir, MODULES)?;

    let mut recipe = Sha256::new();
    recipe.update(kernel.version.as_bytes());
    recipe.update(INIT_SCRIPT.as_bytes());
    recipe.update(&busybox);
    for m in &modules {
        recipe.update(m.to_string_lossy().as_bytes());
    }
    let hash = hex::encode(&recipe.finalize()[..8]);
    let out = cache_dir
        .join(format!("initramfs-{}-{hash}", kernel.version))
        .join("initramfs.cpio");
    if out.exists() {
        return Ok(out);
    }

    let mut archive = Archive::default();
    for dir in ["bin", "dev", "proc", "sys", "modules"] {
        archive.dir(dir);
    }
    archive.file("bin/busybox", 0o755, &busybox);
    for applet in APPLETS {
        archive.symlink(&format!("bin/{applet}"), "busybox");
    }
    archive.file("init", 0o755, INIT_SCRIPT.as_bytes());
    for (i, rel) in modules.iter().enumerate() {
        let path = kernel.modules_dir.join(rel);
        let data = read_module(&path)?;
        let name = module_name(rel);
        archive.file(&format!("modules/{i:02}-{name}.ko"), 0o644, &data);
    }
    let bytes = archive.finish();
    write_atomic(&out, &bytes).map_err(|source| Error::Write {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// Orders `wanted` and their dependencies so that each module comes after what it needs.
/// Returns paths relative to `modules_dir`.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, Error> {
    let dep_path = modules_dir.join("modules.dep");
    let text = fs::read_to_string(&dep_path).map_err(|source| Error::Read {
        path: dep_path.clone(),
        source,
    })?;
    let deps = parse_modules_dep(&text);
    let by_name: HashMap<String, &str> = deps
        .keys()
        .map(|path| (module_name(Path::new(path)), path.as_str()))
        .collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        let path = by_name
            .get(&name.replace('-', "_"))
            .ok_or_else(|| Error::UnknownModule {
                name: name.to_string(),
                modules_dep: dep_path.clone(),
            })?;
        visit(path, &deps, &mut seen, &mut order);
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

fn visit<'a>(
    path: &'a str,
    deps: &'a HashMap<String, Vec<String>>,
    seen: &mut HashSet<&'a str>,
    order: &mut Vec<&'a str>,
) {
    if !seen.insert(path) {
        return;
    }
    for dep in deps.get(path).into_iter().flatten() {
        visit(dep, deps, seen, order);
    }
    order.push(path);
}

/// Parses `modules.dep`: `path: dep dep ...` per line.
fn parse_modules_dep(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| {
            (
                module.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// `kernel/arch/x86/kvm/kvm-amd.ko.xz` → `kvm_amd`.
fn module_name(path: &Path) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let stem = file.split(".ko").next().unwrap_or(&file);
    stem.replace('-', "_")
}

/// Reads a module, decompressing `.ko.xz` (busybox insmod wants plain ELF).
fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    let data = fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::new();
        xz2::read::XzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
        return Ok(out);
    }
    Ok(data)
}

/// An in-memory newc archive.
#[derive(Default)]
struct Archive {
    out: Vec<u8>,
    ino: u32,
}

impl Archive {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let mut w = cpio::NewcBuilder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(if mode & 0o040000 != 0 { 2 } else { 1 })
            .write(&mut self.out, data.len() as u32);
        // Writing into a Vec cannot fail.
        w.write_all(data).expect("write to memory");
        w.finish().expect("write to memory");
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        cpio::newc::trailer(&mut self.out).expect("write to memory");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_after_their_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/a/kvm-amd.ko.xz: kernel/c/ccp.ko kernel/k/kvm.ko\n\
             kernel/k/kvm.ko: kernel/i/irqbypass.ko\n\
             kernel/i/irqbypass.ko:\n\
             kernel/c/ccp.ko:\n",
        )
        .unwrap();
        let order = resolve_modules(dir.path(), &["kvm_amd", "kvm"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["ccp", "irqbypass", "kvm", "kvm_amd"]);
    }

    #[test]
    fn unknown_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("modules.dep"), "kernel/k/kvm.ko:\n").unwrap();
        let err = resolve_modules(dir.path(), &["nope"]).unwrap_err();
        assert!(err.to_string().contains("module nope"), "{err}");
    }

    #[test]
    fn archive_is_newc_with_trailer() {
        let mut a = Archive::default();
        a.dir("bin");
        a.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = a.finish();
        assert!(bytes.starts_with(b"070701"));
        let reader = cpio::NewcReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.entry().name(), "bin");
        let reader = cpio::NewcReader::new(reader.finish().unwrap()).unwrap();
        assert_eq!(reader.entry().name(), "init");
        assert_eq!(reader.entry().file_size(), 10);
    }
}
