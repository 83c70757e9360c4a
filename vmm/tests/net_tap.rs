//! `--net` with the real binary and real taps on this host (the bare guest does not drive the
//! NIC): a tap opened by name lives exactly as long as the VMM, even after kill -9, an
//! inherited tap descriptor is taken over, and bad taps are one error naming them.
mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tap::{inherit_fd, open_tap, TUN, VNET_TAP};
use common::GuestDir;

/// Why this host cannot make taps, if it cannot.
fn taps_unusable() -> Option<String> {
    if !Path::new(TUN).exists() {
        return Some(format!("{TUN} does not exist"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: cannot create taps".into());
    }
    None
}

/// A test-unique interface name.
fn ifname(tag: &str) -> String {
    format!("sbx{tag}{}", std::process::id() % 100_000)
}

/// The VMM on the bare guest's `scenario` with `args`, `fd` inherited under its own number.
fn vmm(g: &GuestDir, scenario: &str, args: &[&str], fd: Option<RawFd>) -> Command {
    let mut cmd = common::vmm_command(&g.kernel(), scenario, &g.path("serial.log"));
    cmd.args(args).stderr(Stdio::piped());
    if let Some(fd) = fd {
        inherit_fd(&mut cmd, fd);
    }
    cmd
}

/// Waits until `path` no longer exists; panics naming it after `timeout`.
fn wait_until_gone(path: &Path, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} still exists after {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_tap_by_name_lives_as_long_as_the_vmm_and_an_inherited_tap_is_taken_over() {
    let why = taps_unusable();
    sandbox_tests::require!(why.is_none(), "{}", why.unwrap_or_default());
    let g = GuestDir::new();
    let named = ifname("vn");
    let passed_name = ifname("vf");
    let passed = open_tap(&passed_name, VNET_TAP);
    let fd = passed.as_raw_fd();
    let mut child = vmm(
        &g,
        "wait",
        &[
            "--net",
            &format!("tap={named},mac=02:00:00:00:00:01"),
            "--net",
            &format!("fd={fd},mac=02:00:00:00:00:02,mtu=1400"),
        ],
        Some(fd),
    )
    .spawn()
    .unwrap();
    let serial = g.path("serial.log");
    common::wait_until(
        &mut child,
        &serial,
        "the guest waiting",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&serial)
                .unwrap_or_default()
                .contains("WAITING")
        },
    );
    // The VMM created the named tap with a virtio-net header, and holds the passed one.
    let sys = format!("/sys/class/net/{named}");
    let flags = std::fs::read_to_string(format!("{sys}/tun_flags")).unwrap();
    let flags = i32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & VNET_TAP, VNET_TAP, "{flags:#x}");
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", child.id())).unwrap();
    assert!(fdinfo.contains(&format!("iff:\t{passed_name}")), "{fdinfo}");

    // kill -9: the tap it created goes with it; the one we passed stays ours.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until_gone(Path::new(&sys), Duration::from_secs(10));
    assert!(Path::new(&format!("/sys/class/net/{passed_name}")).exists());
}

#[test]
fn a_busy_tap_is_one_error_naming_it() {
    let why = taps_unusable();
    sandbox_tests::require!(why.is_none(), "{}", why.unwrap_or_default());
    let g = GuestDir::new();
    let name = ifname("vb");
    let _held = open_tap(&name, VNET_TAP);
    let out = vmm(&g, "hello", &["--net", &format!("tap={name}")], None)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "sandbox-vmm: --net tap={name}: cannot attach to tap {name}: Device or resource \
             busy (os error 16)\n"
        )
    );
}

#[test]
fn a_descriptor_that_is_not_a_vnet_tap_is_refused() {
    let why = taps_unusable();
    sandbox_tests::require!(why.is_none(), "{}", why.unwrap_or_default());
    let g = GuestDir::new();
    // A regular file.
    let file = File::open(g.kernel()).unwrap();
    let fd = file.as_raw_fd();
    assert_eq!(
        refused(&g, fd),
        format!("descriptor {fd} is not a tap: Inappropriate ioctl for device (os error 25)")
    );
    // A tap without the virtio-net header.
    let name = ifname("vp");
    let plain = open_tap(&name, libc::IFF_TAP | libc::IFF_NO_PI);
    let fd = plain.as_raw_fd();
    assert_eq!(
        refused(&g, fd),
        format!(
            "descriptor {fd} is tap {name} opened without IFF_VNET_HDR; open it with \
             IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
        )
    );
}

/// Runs the VMM with `--net fd=FD`, expects the set-up failure (status 1) and returns its
/// reason, after the flag.
fn refused(g: &GuestDir, fd: RawFd) -> String {
    let out = vmm(g, "hello", &["--net", &format!("fd={fd}")], Some(fd))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("sandbox-vmm: --net fd={fd}: ");
    assert!(err.starts_with(&prefix) && err.ends_with('\n'), "{err}");
    err[prefix.len()..err.len() - 1].to_string()
}

#[test]
fn bad_net_settings_are_refused_before_anything_starts() {
    let g = GuestDir::new();
    let run = |arg: &str| {
        let out = vmm(&g, "hello", &["--net", arg], None).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run("tap=t0,mac=02:00:00:00:00:zz"),
        (
            Some(2),
            "sandbox-vmm: --net mac: \"02:00:00:00:00:zz\": not a MAC address (six hex bytes \
             such as 02:00:00:00:00:01)\n"
                .into()
        )
    );
    assert_eq!(
        run("mac=02:00:00:00:00:01"),
        (
            Some(2),
            "sandbox-vmm: --net: missing the tap; expected tap=NAME or fd=N, then optionally \
             mac=MAC and mtu=N\n"
                .into()
        )
    );
    // A descriptor number the VMM did not inherit.
    let (code, err) = run("fd=999");
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("sandbox-vmm: --net fd: 999: not an open file descriptor"),
        "{err}"
    );
}
