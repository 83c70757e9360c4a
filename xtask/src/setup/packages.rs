//! The Debian packages the project needs, installed idempotently with apt.
//! Asks dpkg first; runs `apt-get update` and `apt-get install` only when something is missing.

use std::collections::HashSet;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every Debian package any part of the project uses. Add yours here.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // Guest kernel build.
    "linux-source-6.1",
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "xz-utils",
    "kmod",
    // The lab host and the reference boot.
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    // Images and container runtimes to compare with.
    "erofs-utils",
    "e2fsprogs",
    "runc",
    "crun",
    "containerd",
    "umoci",
    // protoc, for the CRI client's generated code (k8s-cri) in the containerd tests.
    "protobuf-compiler",
    // virtiofsd (cargo install, setup/virtiofsd.rs) links them: QEMU's virtio-fs backend.
    "libseccomp-dev",
    "libcap-ng-dev",
    "pkg-config",
];

/// Returns the packages of `wanted` that dpkg does not list as installed.
pub fn missing(wanted: &[&str]) -> Result<Vec<String>> {
    // Unknown names make dpkg-query exit 1 with a message on stderr; the
    // installed ones are still printed, so only stdout matters.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${db:Status-Abbrev}\n")
        .args(wanted)
        .output()
        .context("cannot run dpkg-query (is this a Debian system?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed = installed_from_dpkg_query(&stdout);
    Ok(wanted
        .iter()
        .filter(|p| !installed.contains(p.split(':').next().unwrap_or(p)))
        .map(|p| p.to_string())
        .collect())
}

/// Parses `Package<TAB>Status-Abbrev` lines; the second status letter `i` means installed.
fn installed_from_dpkg_query(stdout: &str) -> HashSet<&str> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.as_bytes().get(1) == Some(&b'i'))
        .map(|(name, _)| name)
        .collect()
}

/// Installs whatever of `wanted` is missing; a no-op (one dpkg-query) when all are there.
pub fn ensure_installed(wanted: &[&str], allow_install: bool) -> Result<()> {
    let missing = missing(wanted)?;
    if missing.is_empty() {
        return Ok(());
    }
    if !allow_install {
        bail!(
            "missing Debian packages: {} (run `apt-get install {}` or drop --no-install)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt_get(&install)?;
    let still = self::missing(wanted)?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg("apt-get");
        c
    };
    let status = cmd
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("cannot run apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!("apt-get {} failed: {status}", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_status_counts() {
        let out = "bc\tii \nflex\trc \ncpio\thi \nkmod\tun \n";
        let got = installed_from_dpkg_query(out);
        assert!(got.contains("bc"));
        assert!(got.contains("cpio"));
        assert!(!got.contains("flex"));
        assert!(!got.contains("kmod"));
    }

    #[test]
    fn list_has_no_duplicates() {
        let set: HashSet<_> = DEBIAN_PACKAGES.iter().collect();
        assert_eq!(set.len(), DEBIAN_PACKAGES.len());
    }

    #[test]
    fn nonexistent_package_is_reported_missing() {
        let got = missing(&["bash", "sandbox-no-such-package"]).unwrap();
        assert_eq!(got, vec!["sandbox-no-such-package".to_string()]);
    }
}
