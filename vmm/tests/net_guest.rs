//! Our Linux guest on two virtio-net NICs, one on a tap opened by name, one on a tap passed as
//! a descriptor, inside a network namespace of the test's own: pings both ways on both, and
//! 10 MiB through TCP to the guest and back, compared byte for byte, with the offloads at work.
//! Needs real KVM: `cargo xtask test` runs it in the lab.
mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use common::linux::{busybox_initramfs, vmm_with_initrd, wait_for};
use common::tap::{inherit_fd, open_tap, TUN, VNET_TAP};

/// Bytes sent to the guest and back.
const TRANSFER: usize = 10 << 20;

/// Runs `cmd` (in the calling thread's network namespace); panics with its output on failure.
fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of the test's own, entered by the test's thread (its commands, sockets
/// and children live there); deleted, with the tap made in it, when dropped.
struct TestNetns {
    name: String,
    tap: String,
}

impl TestNetns {
    fn enter(name: String, tap: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name, tap };
        let file = File::open(format!("/run/netns/{}", ns.name)).unwrap();
        // SAFETY: setns on a namespace file we opened; it changes only this thread's network
        // namespace (libtest runs each test on a thread of its own).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.tap]).status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deterministic bytes that no offload or buffer bug leaves intact.
fn payload() -> Vec<u8> {
    let mut seed: u64 = 0x6e65_745f_7465_7374;
    (0..TRANSFER / 8)
        .flat_map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()
        })
        .collect()
}

/// The guest's /init: addresses on both NICs, pings to the host, then the transfer: fetch
/// from port 5001, send it back to 5002 (whose reply, after the host's own pings, ends it).
const NET_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
ip link set lo up
set -- $(grep MemFree /proc/meminfo); before=$2
ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up
ip addr add 10.0.3.2/24 dev eth1 && ip link set eth1 up
set -- $(grep MemFree /proc/meminfo); after=$2
echo "NIC guest memory at link up: $((before - after)) kB"
echo "eth0 $(cat /sys/class/net/eth0/address) mtu $(cat /sys/class/net/eth0/mtu)"
echo "eth1 $(cat /sys/class/net/eth1/address) mtu $(cat /sys/class/net/eth1/mtu)"
echo NET-UP
ping -c 3 -W 20 10.0.2.1 >/dev/null && echo "PING eth0 OK"
ping -c 3 -W 20 10.0.3.1 >/dev/null && echo "PING eth1 OK"
nc 10.0.2.1 5001 </dev/null >/tmp/blob
echo "RECEIVED $(wc -c </tmp/blob) bytes"
nc 10.0.2.1 5002 </tmp/blob
echo NET-TEST-DONE
reboot -f
"#;

/// Serves `data` to the first connection on `listener`.
fn serve(listener: TcpListener, data: Vec<u8>) -> JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept()?;
        conn.write_all(&data)
    })
}

/// Takes everything the first connection on `listener` sends, then, once `done` says so,
/// answers with a last line and closes.
fn collect(
    listener: TcpListener,
    done: mpsc::Receiver<()>,
) -> JoinHandle<std::io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let (mut conn, _): (TcpStream, _) = listener.accept()?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        let _ = done.recv();
        conn.write_all(b"HOST-PINGS-DONE\n")?;
        Ok(got)
    })
}

/// The packets and bytes tap `tap` counted, (received, sent), as the test's thread sees its
/// network namespace (/sys/class/net shows the namespace that mounted sysfs).
fn tap_counters(tap: &str) -> [(u64, u64); 2] {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{tap}:")))
        .unwrap_or_else(|| panic!("no {tap} in /proc/net/dev:\n{dev}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    // rx bytes, packets, 6 more; tx bytes, packets, ...
    [(n[1], n[0]), (n[9], n[8])]
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn frames_move_both_ways_between_the_guest_and_two_taps() {
    // The lab kernel loads no module on demand.
    let _ = Command::new("modprobe").arg("tun").status();
    sandbox_tests::require!(
        Path::new(TUN).exists(),
        "{TUN} does not exist (modprobe tun failed)"
    );
    let id = std::process::id() % 100_000;
    let (named, passed_name) = (format!("sbxn{id}"), format!("sbxp{id}"));
    let _ns = TestNetns::enter(format!("sbxnet{id}"), named.clone());

    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "dev", &named, "mode", "tap"]);
    sh(&["ip", "addr", "add", "10.0.2.1/24", "dev", &named]);
    sh(&["ip", "link", "set", &named, "up"]);
    let passed = open_tap(&passed_name, VNET_TAP);
    sh(&["ip", "addr", "add", "10.0.3.1/24", "dev", &passed_name]);
    sh(&["ip", "link", "set", &passed_name, "up"]);

    let data = payload();
    let to_guest = serve(TcpListener::bind("10.0.2.1:5001").unwrap(), data.clone());
    let (pings_done, pings_done_rx) = mpsc::channel();
    let from_guest = collect(TcpListener::bind("10.0.2.1:5002").unwrap(), pings_done_rx);

    let dir = tempfile::Builder::new()
        .prefix("vmm-net")
        .tempdir_in("/var/tmp")
        .unwrap();
    let initramfs = busybox_initramfs(
        dir.path(),
        &["sys", "proc", "tmp"],
        NET_INIT,
        &[
            "sh", "mount", "ip", "grep", "cat", "ping", "nc", "wc", "reboot",
        ],
    );
    let serial = dir.path().join("serial.log");
    let fd = passed.as_raw_fd();
    let mut vmm = vmm_with_initrd(
        &initramfs,
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet",
        256,
        &serial,
    );
    vmm.args([
        "--net",
        &format!("tap={named},mac=02:00:00:00:00:01"),
        "--net",
        &format!("fd={fd},mac=02:00:00:00:00:02,mtu=1400"),
    ])
    .stderr(Stdio::piped());
    inherit_fd(&mut vmm, fd);
    let mut child = vmm.spawn().unwrap();

    wait_for(&mut child, &serial, "NET-UP");
    for guest in ["10.0.2.2", "10.0.3.2"] {
        sh(&["busybox", "ping", "-c", "3", "-W", "20", guest]);
    }
    let _ = pings_done.send(());
    wait_for(&mut child, &serial, "NET-TEST-DONE");
    let out = child.wait_with_output().unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        out.status.success(),
        "{}\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "eth0 02:00:00:00:00:01 mtu 1500",
        "eth1 02:00:00:00:00:02 mtu 1400",
        "PING eth0 OK",
        "PING eth1 OK",
        &format!("RECEIVED {TRANSFER} bytes"),
        "HOST-PINGS-DONE",
    ] {
        assert!(
            console.contains(line),
            "no {line:?} on the console:\n{console}"
        );
    }
    to_guest.join().unwrap().unwrap();
    let back = from_guest.join().unwrap().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(
        back == data,
        "the bytes that came back differ from those sent"
    );

    // Segmentation offloads at work both ways: without them no frame on the tap exceeds the
    // MTU and its Ethernet header (1514 bytes), so neither would the average; the tap counts a
    // GSO frame once. (How large the host's GSO frames get depends on the pacing rate, low in
    // the emulated lab.)
    let [received, sent] = tap_counters(&named);
    for (dir, (packets, bytes)) in [("from the guest", received), ("to the guest", sent)] {
        eprintln!("tap {named} {dir}: {packets} packets, {bytes} bytes");
        assert!(
            bytes >= TRANSFER as u64 && bytes / packets > 1514,
            "{dir}: {packets} packets for {bytes} bytes: no segmentation offload"
        );
    }
    let nic_memory = console
        .lines()
        .find(|l| l.starts_with("NIC guest memory"))
        .unwrap_or_default();
    eprintln!("{nic_memory}");
}
