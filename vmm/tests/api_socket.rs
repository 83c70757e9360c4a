//! The control API on a bare guest: state, pause/resume, trim, flush-and-exit and shutdown
//! through the real binary's Unix socket, and the socket file removed on exit.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{wait_until, GuestDir};

/// The longest a bare guest takes to do what a test waits for (it takes milliseconds).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the VMM with an API socket; waits until the socket accepts connections.
fn start(g: &GuestDir, scenario: &str, extra: &[&str]) -> (Child, UnixStream) {
    let sock = g.path("api.sock");
    let mut child = common::vmm_command(&g.kernel(), scenario, &g.path("serial.log"))
        .arg("--api-sock")
        .arg(&sock)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut api = None;
    wait_until(
        &mut child,
        &g.path("serial.log"),
        "the API socket accepting a connection",
        TIMEOUT,
        || {
            api = UnixStream::connect(&sock).ok();
            api.is_some()
        },
    );
    (child, api.expect("connected while waiting"))
}

fn call(stream: &mut UnixStream, request: &str) -> serde_json::Value {
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
}

fn serial_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn state_pause_resume_trim_and_flush_and_exit() {
    // The guest's code page is mapped from its file, as a real kernel's text is.
    let g = GuestDir::mapped();
    let disk = g.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // Two vCPUs: the second, never started by the guest, must park as well.
    let (mut child, mut api) = start(
        &g,
        "dots",
        &["--block", disk.to_str().unwrap(), "--vcpus", "2", "--debug"],
    );

    assert_eq!(
        call(&mut api, r#"{"action": "state"}"#),
        serde_json::json!({"ok": true, "state": "running"})
    );
    // The guest prints dots until paused; while paused the console does not grow.
    let serial = g.path("serial.log");
    wait_until(
        &mut child,
        &serial,
        "the guest's first dots",
        TIMEOUT,
        || serial_len(&serial) > 0,
    );
    assert_eq!(call(&mut api, "pause")["state"], "paused");
    let frozen = serial_len(&serial);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(serial_len(&serial), frozen, "a paused guest kept writing");
    assert_eq!(call(&mut api, "state")["state"], "paused");
    assert_eq!(call(&mut api, "resume")["state"], "running");
    wait_until(
        &mut child,
        &serial,
        "more dots after the resume",
        TIMEOUT,
        || serial_len(&serial) != frozen,
    );

    // trim unmaps the guest's file pages (its code, mapped from the kernel file) and the guest
    // runs on: its next fetches map them again.
    let trimmed = call(&mut api, "trim");
    assert_eq!(trimmed["ok"], true, "{trimmed}");
    assert_eq!(trimmed["state"], "running");
    assert!(trimmed["released_kib"].as_u64().unwrap() >= 4, "{trimmed}");
    let at_trim = serial_len(&serial);
    wait_until(
        &mut child,
        &serial,
        "more dots after the trim (the guest stopped running)",
        TIMEOUT,
        || serial_len(&serial) != at_trim,
    );
    // A paused VM stays paused through a trim.
    call(&mut api, "pause");
    assert_eq!(call(&mut api, "trim")["state"], "paused");
    assert_eq!(call(&mut api, "resume")["state"], "running");
    // A delayed trim answers at once and runs later (the log below has three trims).
    let later = call(&mut api, r#"{"action": "trim", "delay_ms": 50}"#);
    assert_eq!(later["trim_in_ms"], 50, "{later}");
    std::thread::sleep(Duration::from_millis(300));

    let bad = call(&mut api, "reboot");
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["error"], "unknown action \"reboot\"");

    assert_eq!(
        call(&mut api, r#"{"action": "flush-and-exit"}"#)["state"],
        "exiting"
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("api: trimmed").count(), 3, "{stderr}");
    assert!(
        !g.path("api.sock").exists(),
        "the API socket is removed on exit"
    );
}

#[test]
fn shutdown_stops_a_guest_that_ignores_ctrl_alt_del_after_the_grace_period() {
    let g = GuestDir::new();
    let (mut child, mut api) = start(&g, "wait", &[]);
    let serial = g.path("serial.log");
    wait_until(
        &mut child,
        &serial,
        "the guest's WAITING line",
        TIMEOUT,
        || std::fs::read_to_string(&serial).unwrap_or_default() == "WAITING\n",
    );
    let reply = call(&mut api, r#"{"action": "shutdown", "timeout_ms": 50}"#);
    assert_eq!(reply["state"], "shutting-down");
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(!g.path("api.sock").exists());
    assert_eq!(
        std::fs::read_to_string(g.path("serial.log")).unwrap(),
        "WAITING\n"
    );
}

#[test]
fn api_socket_path_that_exists_is_refused() {
    let g = GuestDir::new();
    let sock = g.path("taken");
    std::fs::write(&sock, b"").unwrap();
    let out = common::vmm_command(&g.kernel(), "hello", &g.path("serial.log"))
        .arg("--api-sock")
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "sandbox-vmm: --api-sock: {}: already exists\n",
            sock.display()
        )
    );
}

#[test]
fn sigterm_stops_the_vmm_and_removes_the_socket() {
    let g = GuestDir::new();
    let (child, mut api) = start(&g, "wait", &[]);
    assert_eq!(call(&mut api, "state")["state"], "running");
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "sandbox-vmm: guest stopped: stopped by signal {}\n",
            libc::SIGTERM
        )
    );
    assert!(!g.path("api.sock").exists());
}
