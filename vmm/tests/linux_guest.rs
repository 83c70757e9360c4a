//! Boots our guest kernel and initramfs (target/guest, from `cargo xtask setup`) with the
//! real binary: agent readiness, several vCPUs, virtio devices, vsock to the agent, the API.
//! These need real KVM: `cargo xtask test` runs them in the lab.
mod common;

use common::linux::{
    busybox_initramfs, busybox_initramfs_with, guest_file, vmm_with_initrd, wait_for,
};

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const READY: &str = "SANDBOX-AGENT-READY";
/// The VMM booting our kernel and initramfs with 256 MiB, its console in `serial`.
fn vmm(cmdline: &str, serial: &Path) -> Command {
    vmm_with_initrd(&guest_file("initramfs.cpio"), cmdline, 256, serial)
}

/// Waits until the console shows the agent's readiness line.
fn wait_ready(child: &mut Child, serial: &Path) {
    wait_for(child, serial, READY);
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn guest_reaches_agent_ready_and_its_reboot_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let out = vmm(
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd sandbox.exit_after_ready",
        &serial,
    )
    .output()
    .unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        out.status.success(),
        "{}\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(console.contains(READY), "{console}");
    assert!(console.contains("reboot: Restarting system"), "{console}");
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn two_vcpus_and_virtio_devices_are_seen_by_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let vsock = dir.path().join("v.sock");
    let out = vmm(
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd sandbox.exit_after_ready",
        &serial,
    )
    .args(["--vcpus", "2", "--block"])
    .arg(&disk)
    .arg("--vsock")
    .arg(format!("3,{}", vsock.display()))
    .output()
    .unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(out.status.success(), "{console}");
    assert!(
        console.contains("smp: Brought up 1 node, 2 CPUs"),
        "{console}"
    );
    assert!(
        console.contains("virtio-mmio.0 at 0xd0000000-0xd0000fff, IRQ 5"),
        "{console}"
    );
    assert!(
        console.contains("[vda] 16384 512-byte logical blocks"),
        "{console}"
    );
    assert!(console.contains(READY), "{console}");
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn host_reaches_the_agent_over_vsock_and_api_flush_and_exit_stops_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let vsock = dir.path().join("v.sock");
    let api = dir.path().join("api.sock");
    let mut child = vmm(
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet",
        &serial,
    )
    .arg("--vsock")
    .arg(format!("3,{}", vsock.display()))
    .arg("--api-sock")
    .arg(&api)
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_ready(&mut child, &serial);

    // Firecracker's hybrid vsock: CONNECT to the agent's API port (1024).
    let mut s = UnixStream::connect(&vsock).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    drop(s);

    let mut a = UnixStream::connect(&api).unwrap();
    a.write_all(b"state\nflush-and-exit\n").unwrap();
    let mut replies = String::new();
    a.read_to_string(&mut replies).unwrap();
    assert_eq!(
        replies,
        "{\"ok\":true,\"state\":\"running\"}\n{\"ok\":true,\"state\":\"exiting\"}\n"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!api.exists());
}

/// Boots a busybox guest (128 MiB) with the device flags `devices` until it reboots, checks
/// the clean exit and that the console shows `done`; returns the console.
fn run_device_guest(
    dir: &Path,
    initramfs: &Path,
    devices: &[&std::ffi::OsStr],
    done: &str,
) -> String {
    let serial = dir.join("serial.log");
    let out = vmm_with_initrd(
        initramfs,
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet",
        128,
        &serial,
    )
    .args(devices)
    .output()
    .unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        out.status.success(),
        "{}\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(console.contains(done), "{console}");
    console
}

/// The guest's /init for the block test: shows what it reads at the start of each disk,
/// writes a marker at 4 KiB into each and reports dd's status, then reboots.
const BLOCK_INIT: &str = r#"#!/bin/sh
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for d in vda vdb; do
  echo "disk $d ro=$(cat /sys/block/$d/ro) head=$(head -c 12 /dev/$d)"
  printf 'written-by-guest' | dd of=/dev/$d bs=4096 seek=1 conv=fsync 2>/dev/null
  echo "disk $d write-status=$?"
done
echo BLOCK-TEST-DONE
reboot -f
"#;

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn guest_writes_reach_the_disk_file_and_a_read_only_disk_refuses_them() {
    // Outside /tmp, so the files are the same whether or not the test runs in the lab.
    let dir = tempfile::Builder::new()
        .prefix("vmm-blk")
        .tempdir_in("/var/tmp")
        .unwrap();
    let initramfs = busybox_initramfs(
        dir.path(),
        &["sys"],
        BLOCK_INIT,
        &["sh", "mount", "cat", "head", "printf", "dd", "reboot"],
    );

    // Two 1 MiB disks, each with its own label at offset 0: vda writable, vdb read-only.
    let disk = |name: &str, label: &[u8]| {
        let path = dir.path().join(name);
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..label.len()].copy_from_slice(label);
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    };
    let (rw, rw_before) = disk("rw.img", b"HOST-RW-DISK");
    let (ro, ro_before) = disk("ro.img", b"HOST-RO-DISK");

    let ro_arg = format!("{},ro", ro.display());
    let console = run_device_guest(
        dir.path(),
        &initramfs,
        &[
            "--block".as_ref(),
            rw.as_ref(),
            "--block".as_ref(),
            ro_arg.as_ref(),
        ],
        "BLOCK-TEST-DONE",
    );

    // The guest reads what the host put there and sees which disk is read-only.
    assert!(
        console.contains("disk vda ro=0 head=HOST-RW-DISK"),
        "{console}"
    );
    assert!(
        console.contains("disk vdb ro=1 head=HOST-RO-DISK"),
        "{console}"
    );
    // The write to vda lands at 4 KiB in the file, and nothing else changes.
    assert!(console.contains("disk vda write-status=0"), "{console}");
    let mut rw_expected = rw_before;
    rw_expected[4096..4096 + 16].copy_from_slice(b"written-by-guest");
    let rw_after = std::fs::read(&rw).unwrap();
    assert_eq!(rw_after.len(), rw_expected.len());
    assert!(
        rw_after == rw_expected,
        "rw.img differs: bytes at 4 KiB are {:?}",
        String::from_utf8_lossy(&rw_after[4096..4096 + 32])
    );
    // The write to the read-only vdb fails and its file is untouched.
    assert!(!console.contains("disk vdb write-status=0"), "{console}");
    assert!(console.contains("disk vdb write-status="), "{console}");
    assert!(std::fs::read(&ro).unwrap() == ro_before, "ro.img changed");
}

/// The guest's /init for the pmem test: mounts the root image from pmem0 with DAX and shows
/// that DAX is on, then writes a marker into the writable pmem1 and flushes it.
const PMEM_INIT: &str = r#"#!/bin/sh
mount -t sysfs sys /sys
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mkdir -p /mnt
mount -t erofs -o ro,dax=always /dev/pmem0 /mnt && echo "pmem0 mounted"
grep pmem0 /proc/mounts
echo "pmem0 dax=$(cat /sys/block/pmem0/queue/dax) init=$(head -c 4 /mnt/init | tail -c 3)"
set -- $(grep '^Cached:' /proc/meminfo); before=$2
cat /mnt/init > /dev/null
set -- $(grep '^Cached:' /proc/meminfo); after=$2
echo "init read: page cache +$((after - before)) kB"
echo "pmem1 head=$(head -c 12 /dev/pmem1)"
printf 'written-by-guest' | dd of=/dev/pmem1 bs=4096 seek=1 conv=fsync 2>/dev/null
echo "pmem1 write-status=$?"
echo PMEM-TEST-DONE
reboot -f
"#;

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn pmem_root_image_mounts_with_dax_and_a_writable_region_reaches_its_file() {
    let dir = tempfile::Builder::new()
        .prefix("vmm-pmem")
        .tempdir_in("/var/tmp")
        .unwrap();
    let initramfs = busybox_initramfs(
        dir.path(),
        &["sys", "proc"],
        PMEM_INIT,
        &[
            "sh", "mount", "mkdir", "cat", "grep", "head", "tail", "printf", "dd", "reboot",
        ],
    );
    let rw = dir.path().join("rw.img");
    let mut before = vec![0u8; 3 << 20];
    before[..12].copy_from_slice(b"HOST-RW-PMEM");
    std::fs::write(&rw, &before).unwrap();

    let root_arg = format!("{},ro", guest_file("rootfs.erofs").display());
    let console = run_device_guest(
        dir.path(),
        &initramfs,
        &[
            "--pmem".as_ref(),
            root_arg.as_ref(),
            "--pmem".as_ref(),
            rw.as_ref(),
        ],
        "PMEM-TEST-DONE",
    );
    // The root image is erofs on pmem0, mapped with DAX (no guest page cache), and holds the
    // agent's ELF binary as /init.
    assert!(console.contains("pmem0 mounted"), "{console}");
    assert!(console.contains("dax=always"), "{console}");
    assert!(console.contains("pmem0 dax=1 init=ELF"), "{console}");
    // Reading the agent does not fill the guest's page cache: the file itself is mapped with
    // DAX (erofs does so only for the plain layout, so the image must not inline file tails).
    let grew: i64 = console
        .split("init read: page cache +")
        .nth(1)
        .and_then(|rest| rest.split(" kB").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no page cache figure: {console}"));
    assert!(
        grew < 512,
        "reading /init added {grew} kB to the page cache: {console}"
    );
    // The writable region shows the file's bytes and the guest's write reaches the file.
    assert!(console.contains("pmem1 head=HOST-RW-PMEM"), "{console}");
    assert!(console.contains("pmem1 write-status=0"), "{console}");
    let after = std::fs::read(&rw).unwrap();
    let mut expected = before;
    expected[4096..4096 + 16].copy_from_slice(b"written-by-guest");
    assert!(
        after == expected,
        "rw.img differs at 4 KiB: {:?}",
        String::from_utf8_lossy(&after[4096..4096 + 32])
    );
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn api_shutdown_is_ctrl_alt_del_and_the_agent_stops_the_guest_itself() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let api = dir.path().join("api.sock");
    let mut child = vmm(
        "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd",
        &serial,
    )
    .arg("--api-sock")
    .arg(&api)
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_ready(&mut child, &serial);

    // A long grace: the guest must stop by itself, not by the VMM's timeout.
    let mut a = UnixStream::connect(&api).unwrap();
    a.write_all(b"{\"action\":\"shutdown\",\"timeout_ms\":120000}\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(a.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert_eq!(reply, "{\"ok\":true,\"state\":\"shutting-down\"}\n");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(100);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the guest did not stop after Ctrl-Alt-Del:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(status.success(), "{status}: {stderr}\n{console}");
    assert!(
        console.contains("Ctrl-Alt-Del: stopping the workload"),
        "the agent never saw Ctrl-Alt-Del:\n{console}"
    );
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert!(!api.exists());
}

/// The guest's /init for the balloon test: fills 64 MiB of tmpfs (guest RAM the host backs),
/// deletes it, then idles so free page reporting can hand those pages back.
const BALLOON_INIT: &str = r#"#!/bin/sh
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=100m tmpfs /mnt
dd if=/dev/zero of=/mnt/fill bs=1048576 count=64 2>/dev/null
echo "BALLOON-FILLED $(ls -s /mnt/fill)"
rm /mnt/fill
echo BALLOON-FREED
sleep 3600
"#;

/// Resident guest RAM of a VMM: the Rss of its private writable mappings that are anonymous
/// and at least 2 MiB (guest RAM, split into pieces by the files mapped into it) or map one of
/// `files` (the kernel and initrd the VMM maps into guest RAM).
fn guest_rss_kib(pid: u32, files: &[&Path]) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let files: Vec<PathBuf> = files.iter().map(|f| f.canonicalize().unwrap()).collect();
    let (mut counted, mut anon, mut total) = (false, false, 0u64);
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |i: usize| {
            words
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match words.first() {
            Some(&"Size:") => counted &= !anon || value(1) >= 2048,
            Some(&"Rss:") if counted => total += value(1),
            Some(range) if range.contains('-') && words.len() >= 5 => {
                anon = words.len() == 5;
                counted =
                    words[1] == "rw-p" && (anon || files.iter().any(|f| Path::new(words[5]) == f));
            }
            _ => {}
        }
    }
    total
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn pages_the_guest_frees_are_released_on_the_host_through_free_page_reporting() {
    let dir = tempfile::Builder::new()
        .prefix("vmm-balloon")
        .tempdir_in("/var/tmp")
        .unwrap();
    let initramfs = busybox_initramfs(
        dir.path(),
        &["mnt"],
        BALLOON_INIT,
        &["sh", "mount", "dd", "ls", "rm", "sleep"],
    );

    let serial = dir.path().join("serial.log");
    let mut child = vmm_with_initrd(
        &initramfs,
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet",
        256,
        &serial,
    )
    .arg("--balloon")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(&mut child, &serial, "BALLOON-FILLED");
    let kernel = guest_file("vmlinux");
    let guest_files = [kernel.as_path(), initramfs.as_path()];
    let filled = guest_rss_kib(child.id(), &guest_files);
    wait_for(&mut child, &serial, "BALLOON-FREED");

    // Linux reports free blocks 2 s after they were freed, in batches; give it time, then
    // require most of the 64 MiB back. Without the balloon the RSS would stay where it was.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut now = guest_rss_kib(child.id(), &guest_files);
    while now + 48 * 1024 > filled && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        now = guest_rss_kib(child.id(), &guest_files);
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        filled >= 64 * 1024,
        "guest RAM resident after filling 64 MiB: {filled} KiB"
    );
    assert!(
        now + 48 * 1024 <= filled,
        "guest RAM resident: {filled} KiB with the 64 MiB file, still {now} KiB after it was \
         deleted\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
}

/// The guest's /init for the virtio-fs test: mounts a read-write and a read-only share, reads
/// and writes through them, follows symlinks that point out of the share, then reboots.
const FS_INIT: &str = r#"#!/bin/sh
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs rwshare /mnt/rw && echo "rw mounted"
mount -t virtiofs roshare /mnt/ro && echo "ro mounted"
echo "rw read: $(cat /mnt/rw/from-host)"
echo "from the guest" > /mnt/rw/from-guest
echo "rw write-status=$?"
mkdir /mnt/rw/dir && echo nested > /mnt/rw/dir/f
echo "rw mkdir-status=$?"
umask 0002
touch /mnt/rw/mode664
cp /mnt/rw/big /mnt/rw/big.copy
echo "rw copy-status=$?"
echo "ro read: $(cat /mnt/ro/from-host)"
echo x 2>/tmp/err > /mnt/ro/new
echo "ro create-status=$? $(cat /tmp/err)"
echo x 2>/tmp/err >> /mnt/ro/from-host
echo "ro append-status=$? $(cat /tmp/err)"
mkdir /mnt/ro/dir 2>/tmp/err
echo "ro mkdir-status=$? $(cat /tmp/err)"
rm /mnt/ro/from-host 2>/tmp/err
echo "ro rm-status=$? $(cat /tmp/err)"
echo "escape abs: $(cat /mnt/rw/abs 2>&1)"
echo "escape up: $(cat /mnt/rw/up 2>&1)"
echo "guest-only file: $(cat /etc/outside)"
umount /mnt/rw /mnt/ro && echo "unmounted"
echo FS-TEST-DONE
reboot -f
"#;

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn guest_mounts_host_directories_with_virtio_fs_and_a_read_only_share_refuses_writes() {
    let dir = tempfile::Builder::new()
        .prefix("vmm-fs")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (rw, ro) = (dir.path().join("rw"), dir.path().join("ro"));
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(rw.join("from-host"), "rw host file").unwrap();
    std::fs::write(ro.join("from-host"), "ro host file").unwrap();
    // 3 MiB and a bit: requests of the largest size (1 MiB) and a partial one.
    let big: Vec<u8> = (0..(3 << 20) + 4321u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(rw.join("big"), &big).unwrap();
    // A host file outside the shares, and symlinks to it from inside one: the guest resolves
    // them in its own namespace, where /etc/outside is the guest's file.
    std::fs::write(dir.path().join("outside"), "HOST SECRET").unwrap();
    std::os::unix::fs::symlink("../outside", rw.join("up")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), rw.join("abs")).unwrap();

    let initramfs = busybox_initramfs_with(
        dir.path(),
        &["mnt", "tmp", "etc"],
        FS_INIT,
        &[
            "sh", "mount", "umount", "mkdir", "cat", "cp", "touch", "rm", "reboot",
        ],
        &[("etc/outside", b"guest file")],
    );
    let rw_arg = format!("tag=rwshare,path={}", rw.display());
    let ro_arg = format!("tag=roshare,path={},ro", ro.display());
    let console = run_device_guest(
        dir.path(),
        &initramfs,
        &[
            "--fs".as_ref(),
            rw_arg.as_ref(),
            "--fs".as_ref(),
            ro_arg.as_ref(),
        ],
        "FS-TEST-DONE",
    );

    assert!(console.contains("rw mounted"), "{console}");
    assert!(console.contains("ro mounted"), "{console}");
    // The guest reads the host's files and its writes reach the host.
    assert!(console.contains("rw read: rw host file"), "{console}");
    assert!(console.contains("rw write-status=0"), "{console}");
    assert!(console.contains("rw mkdir-status=0"), "{console}");
    assert!(console.contains("rw copy-status=0"), "{console}");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("dir/f")).unwrap(),
        "nested\n"
    );
    assert!(
        std::fs::read(rw.join("big.copy")).unwrap() == big,
        "the copy of big differs"
    );
    // The mode the guest asked for (0666 less its umask 0002), not the VMM's umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rw.join("mode664"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o664, "{mode:o}");

    // The read-only share reads, and refuses every change with EROFS.
    assert!(console.contains("ro read: ro host file"), "{console}");
    for op in ["create", "append", "mkdir", "rm"] {
        let line = console
            .lines()
            .find(|l| l.starts_with(&format!("ro {op}-status=")))
            .unwrap_or_else(|| panic!("no ro {op} line: {console}"));
        assert!(!line.contains("status=0"), "{line}");
        assert!(line.contains("Read-only file system"), "{line}");
    }
    assert!(!ro.join("new").exists() && !ro.join("dir").exists());
    assert_eq!(
        std::fs::read_to_string(ro.join("from-host")).unwrap(),
        "ro host file"
    );

    // Symlinks out of the share never reach the host's file.
    assert!(!console.contains("HOST SECRET"), "{console}");
    assert!(console.contains("escape abs: cat: can't open"), "{console}");
    assert!(console.contains("escape up: cat: can't open"), "{console}");
    assert!(console.contains("guest-only file: guest file"), "{console}");
    assert!(console.contains("unmounted"), "{console}");
}
