//! The agent through a hybrid vsock socket, as with the VMM: a fake VMM speaks the
//! `CONNECT <port>` handshake and forwards ports 1024/1025 to the agent's Unix sockets.

mod common;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::client::{AgentClient, Endpoint, ExitStatus, StreamKind};
use common::{process_json, TestAgent, ALL, CALL_TIMEOUT};

/// Serves `socket` like the VMM's hybrid vsock device: each connection names a guest port,
/// which is forwarded to the matching Unix socket of the agent.
fn fake_vmm(socket: &Path, api: PathBuf, stdio: PathBuf) {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (api, stdio) = (api.clone(), stdio.clone());
            thread::spawn(move || forward(conn, &api, &stdio));
        }
    });
}

fn forward(mut host: UnixStream, api: &Path, stdio: &Path) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while host.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let target = match line.as_slice() {
        b"CONNECT 1024" => api,
        b"CONNECT 1025" => stdio,
        // Like the VMM when nothing listens on the port: close.
        _ => return,
    };
    let Ok(guest) = UnixStream::connect(target) else {
        return;
    };
    host.write_all(b"OK 1073741824\n").unwrap();
    let (mut host_r, mut guest_w) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
    let up = thread::spawn(move || {
        let _ = io::copy(&mut host_r, &mut guest_w);
        let _ = guest_w.shutdown(Shutdown::Write);
    });
    let (mut guest_r, mut host_w) = (guest, host);
    let _ = io::copy(&mut guest_r, &mut host_w);
    let _ = host_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[test]
fn calls_and_stdio_streams_work_through_the_hybrid_socket() {
    let agent = TestAgent::start();
    let socket = agent.path("vsock.sock");
    fake_vmm(&socket, agent.path("api.sock"), agent.path("stdio.sock"));
    let endpoint = Endpoint::HybridVsock { socket };
    let client =
        AgentClient::wait_for_agent(&endpoint, Duration::from_secs(30), CALL_TIMEOUT).unwrap();
    assert_eq!(client.check().unwrap().version, env!("CARGO_PKG_VERSION"));

    client
        .exec_process("", "cat", &process_json(&["/bin/cat"]), ALL, false)
        .unwrap();
    let mut stdin = client.open_stream("", "cat", StreamKind::Stdin).unwrap();
    let mut stdout = client.open_stream("", "cat", StreamKind::Stdout).unwrap();
    let input: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(7) % 253) as u8)
        .collect();
    let expected = input.clone();
    let writer = thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        stdin.close_write().unwrap();
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert_eq!(out.len(), expected.len());
    assert!(
        out == expected,
        "bytes changed on the way through the hybrid socket"
    );
    assert_eq!(
        client.wait_process("", "cat").unwrap(),
        ExitStatus::Exited(0)
    );
}
