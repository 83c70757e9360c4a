//! Shared harness of the agent's host tests: one agent process on private Unix sockets,
//! driven by the tests' own client (client.rs), shut down and reaped on drop.
#![allow(dead_code)]

pub mod client;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use client::{AgentClient, Endpoint, StdioSet, StreamKind};

pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One agent process with private sockets; shut down and reaped on drop.
pub struct TestAgent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub client: AgentClient,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let api = dir.path().join("api.sock");
        let stdio = dir.path().join("stdio.sock");
        // SANDBOX_AGENT_BIN runs the tests against another build, e.g. the static release one.
        let bin = std::env::var_os("SANDBOX_AGENT_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_sandbox-agent").into());
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix://{}", api.display()))
            .arg("--stdio-listen")
            .arg(format!("unix://{}", stdio.display()))
            .arg("--resolv-conf")
            .arg(dir.path().join("resolv.conf"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = Endpoint::Unix { api, stdio };
        let client = AgentClient::wait_for_agent(&endpoint, Duration::from_secs(30), CALL_TIMEOUT)
            .expect("agent answers Check");
        TestAgent { child, dir, client }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs argv in the guest (here: the agent's host) with the given streams.
    pub fn exec(&self, exec_id: &str, args: &[&str], stdio: StdioSet, terminal: bool) -> u32 {
        self.client
            .exec_process("", exec_id, &process_json(args), stdio, terminal)
            .unwrap_or_else(|e| panic!("ExecProcess {exec_id} {args:?}: {e}"))
    }

    pub fn read_stream(&self, exec_id: &str, kind: StreamKind) -> Vec<u8> {
        let mut stream = self.client.open_stream("", exec_id, kind).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        out
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.client.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn process_json(args: &[&str]) -> String {
    serde_json::json!({
        "args": args,
        "env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG=C"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
    })
    .to_string()
}

pub const OUT: StdioSet = StdioSet {
    stdin: false,
    stdout: true,
    stderr: false,
};
pub const ALL: StdioSet = StdioSet {
    stdin: true,
    stdout: true,
    stderr: true,
};
