//! What the tests that boot our Linux guest share: the guest artifacts, the VMM command line
//! for them, busybox initramfs images made by the test, and waiting for console markers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The longest a guest may take to reach a console marker: Linux boots in seconds, but the
/// lab emulates the CPU that runs it.
pub const MARKER_TIMEOUT: Duration = Duration::from_secs(300);

/// A guest artifact `cargo xtask setup` built (target/guest).
pub fn guest_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest")
        .join(name)
}

/// The VMM booting our kernel with `initrd` and `memory_mib` MiB, its console in `serial`.
pub fn vmm_with_initrd(initrd: &Path, cmdline: &str, memory_mib: u32, serial: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"));
    c.arg("--kernel")
        .arg(guest_file("vmlinux"))
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", cmdline, "--memory", &memory_mib.to_string()])
        .arg("--serial")
        .arg(serial);
    c
}

/// One entry of a test initramfs.
pub enum Node<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
    CharDev(u32, u32),
}

/// Writes a newc initramfs of `entries` to `path`.
pub fn write_initramfs(path: &Path, entries: &[(String, Node<'_>)]) {
    let mut out = std::fs::File::create(path).unwrap();
    for (i, (name, node)) in entries.iter().enumerate() {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
            Node::Dir => (0o040755, &[], (0, 0)),
            Node::File(data) => (0o100755, data, (0, 0)),
            Node::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
            Node::CharDev(major, minor) => (0o020600, &[], (*major, *minor)),
        };
        let mut w = cpio::newc::Builder::new(name)
            .ino(i as u32 + 1)
            .mode(mode)
            .nlink(1)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(out, data.len() as u32);
        w.write_all(data).unwrap();
        out = w.finish().unwrap();
    }
    cpio::newc::trailer(out).unwrap();
}

/// Writes `dir`/initramfs.cpio for a busybox-only guest: /bin, /dev and the `dirs`,
/// /dev/console, /bin/busybox (the host's static one) linked as each of `applets`, and `init`
/// as /init. Returns its path.
pub fn busybox_initramfs(dir: &Path, dirs: &[&str], init: &str, applets: &[&str]) -> PathBuf {
    busybox_initramfs_with(dir, dirs, init, applets, &[])
}

/// `busybox_initramfs` with `files` (path, content) added.
pub fn busybox_initramfs_with(
    dir: &Path,
    dirs: &[&str],
    init: &str,
    applets: &[&str],
    files: &[(&str, &[u8])],
) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static at /bin/busybox");
    let mut entries: Vec<(String, Node<'_>)> = ["bin", "dev"]
        .iter()
        .chain(dirs)
        .map(|d| (d.to_string(), Node::Dir))
        .collect();
    // The kernel opens it for /init's stdio before anything is mounted.
    entries.push(("dev/console".into(), Node::CharDev(5, 1)));
    entries.push(("bin/busybox".into(), Node::File(&busybox)));
    entries.push(("init".into(), Node::File(init.as_bytes())));
    for applet in applets {
        entries.push((format!("bin/{applet}"), Node::Symlink("busybox")));
    }
    for (name, content) in files {
        entries.push((name.to_string(), Node::File(content)));
    }
    let path = dir.join("initramfs.cpio");
    write_initramfs(&path, &entries);
    path
}

/// Waits for `marker` on the console; panics with the console if the VMM exits first or
/// the marker is not there within `MARKER_TIMEOUT`.
pub fn wait_for(child: &mut Child, serial: &Path, marker: &str) {
    super::wait_until(
        child,
        serial,
        &format!("{marker} on the console"),
        MARKER_TIMEOUT,
        || {
            std::fs::read_to_string(serial)
                .unwrap_or_default()
                .contains(marker)
        },
    );
}
