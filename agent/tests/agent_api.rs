//! The agent binary served on Unix sockets (as on a host run) and driven by the tests' client:
//! the API calls, process lifecycle and the stdio streams, without a VM.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::client::{ExitStatus, StdioSet, StreamKind};
use common::{process_json, TestAgent, ALL, OUT};

#[test]
fn check_reports_version_and_stats_report_memory() {
    let agent = TestAgent::start();
    let check = agent.client.check().unwrap();
    assert_eq!(check.version, env!("CARGO_PKG_VERSION"));
    assert!(check.uptime_ms > 0);
    let stats = agent.client.stats().unwrap();
    assert!(stats.mem_total_bytes > 0);
    assert!(stats.mem_available_bytes <= stats.mem_total_bytes);
    assert!(stats.process_count > 0);
}

#[test]
fn echo_output_arrives_on_its_stdout_stream_and_exit_code_comes_back() {
    let agent = TestAgent::start();
    agent.exec("echo", &["/bin/echo", "hello"], OUT, false);
    assert_eq!(agent.read_stream("echo", StreamKind::Stdout), b"hello\n");
    assert_eq!(
        agent.client.wait_process("", "echo").unwrap(),
        ExitStatus::Exited(0)
    );

    agent.exec(
        "fail",
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        ALL,
        false,
    );
    let stdin = agent
        .client
        .open_stream("", "fail", StreamKind::Stdin)
        .unwrap();
    stdin.close_write().unwrap();
    assert_eq!(agent.read_stream("fail", StreamKind::Stderr), b"err\n");
    assert_eq!(agent.read_stream("fail", StreamKind::Stdout), b"out\n");
    let status = agent.client.wait_process("", "fail").unwrap();
    assert_eq!(status, ExitStatus::Exited(3));
    assert_eq!(status.code(), 3);
}

#[test]
fn output_written_before_the_stream_attaches_is_kept() {
    let agent = TestAgent::start();
    agent.exec("early", &["/usr/bin/seq", "1", "5000"], OUT, false);
    // The process has ended and its output sits in the pipe before anyone reads it.
    assert_eq!(
        agent.client.wait_process("", "early").unwrap(),
        ExitStatus::Exited(0)
    );
    let expected: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    assert_eq!(
        String::from_utf8(agent.read_stream("early", StreamKind::Stdout)).unwrap(),
        expected
    );
}

#[test]
fn twenty_megabytes_of_output_arrive_intact_and_in_order() {
    let agent = TestAgent::start();
    let last = 2_700_000;
    agent.exec("big", &["/usr/bin/seq", "1", &last.to_string()], OUT, false);
    let out = agent.read_stream("big", StreamKind::Stdout);
    assert!(out.len() > 20_000_000, "only {} bytes arrived", out.len());
    let mut expected = Vec::with_capacity(out.len());
    for n in 1..=last {
        writeln!(expected, "{n}").unwrap();
    }
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "output differs from seq 1 {last}");
    assert_eq!(
        agent.client.wait_process("", "big").unwrap(),
        ExitStatus::Exited(0)
    );
}

#[test]
fn stdin_is_forwarded_and_its_end_reaches_the_process() {
    let agent = TestAgent::start();
    agent.exec("cat", &["/bin/cat"], ALL, false);
    let mut stdin = agent
        .client
        .open_stream("", "cat", StreamKind::Stdin)
        .unwrap();
    let stdout = agent
        .client
        .open_stream("", "cat", StreamKind::Stdout)
        .unwrap();
    let reader = thread::spawn(move || {
        let mut stdout = stdout;
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    let input: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    stdin.write_all(&input).unwrap();
    stdin.close_write().unwrap();
    assert!(
        reader.join().unwrap() == input,
        "cat echoed different bytes"
    );
    assert_eq!(
        agent.client.wait_process("", "cat").unwrap(),
        ExitStatus::Exited(0)
    );

    // CloseStdin without a stream attached: the process sees EOF and ends.
    agent.exec("cat2", &["/bin/cat"], ALL, false);
    agent.client.close_stdin("", "cat2").unwrap();
    assert_eq!(agent.read_stream("cat2", StreamKind::Stdout), b"");
    assert_eq!(
        agent.client.wait_process("", "cat2").unwrap(),
        ExitStatus::Exited(0)
    );
}

#[test]
fn killed_process_reports_its_signal_and_an_exit_event() {
    let agent = TestAgent::start();
    let pid = agent.exec("sleep", &["/bin/sleep", "1000"], StdioSet::default(), false);
    let listed = agent.client.list_processes("").unwrap();
    let entry = listed
        .iter()
        .find(|p| p.pid == pid)
        .expect("sleep is listed");
    assert_eq!(entry.exec_id, "sleep");
    assert!(entry.cmdline.contains("sleep 1000"), "{}", entry.cmdline);

    agent
        .client
        .signal_process("", "sleep", libc::SIGKILL, false)
        .unwrap();
    let status = agent.client.wait_process("", "sleep").unwrap();
    assert_eq!(
        status,
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    assert_eq!(status.code(), 137);

    let event = agent
        .client
        .get_event(Some(Duration::from_secs(30)))
        .unwrap()
        .expect("an exit event");
    assert_eq!(event.exec_id, "sleep");
    assert_eq!(event.pid, pid);
    assert_eq!(event.status.signal, 9);

    let err = agent
        .client
        .signal_process("", "sleep", libc::SIGTERM, false)
        .unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{err}");
}

#[test]
fn wrong_ids_get_clear_status_codes() {
    let agent = TestAgent::start();
    let err = agent.client.wait_process("", "nope").unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::NOT_FOUND), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");

    agent.exec("dup", &["/bin/true"], StdioSet::default(), false);
    let err = agent
        .client
        .exec_process("", "dup", &process_json(&["/bin/true"]), OUT, false)
        .unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::ALREADY_EXISTS), "{err}");

    let err = agent
        .client
        .exec_process(
            "",
            "missing",
            &process_json(&["/no/such/binary"]),
            OUT,
            false,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{err}");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");

    // A stream for a stream that was not announced is refused with the reason.
    agent.exec("quiet", &["/bin/true"], StdioSet::default(), false);
    let err = agent
        .client
        .open_stream("", "quiet", StreamKind::Stdout)
        .unwrap_err();
    assert!(err.to_string().contains("not requested"), "{err}");
}

#[test]
fn create_sandbox_sets_a_private_hostname_and_dns() {
    let agent = TestAgent::start();
    let host_before = nix::unistd::gethostname().unwrap();
    agent
        .client
        .create_sandbox(
            "sb1",
            "sbx-test-host",
            &["10.0.0.53".to_string()],
            &["example.test".to_string()],
        )
        .unwrap();
    agent.exec("hostname", &["/bin/hostname"], OUT, false);
    assert_eq!(
        agent.read_stream("hostname", StreamKind::Stdout),
        b"sbx-test-host\n"
    );
    assert_eq!(nix::unistd::gethostname().unwrap(), host_before);
    assert_eq!(
        std::fs::read_to_string(agent.path("resolv.conf")).unwrap(),
        "search example.test\nnameserver 10.0.0.53\n"
    );
}

#[test]
fn terminal_process_sees_its_window_size_and_input() {
    let agent = TestAgent::start();
    agent.exec(
        "tty",
        &["/bin/sh", "-c", "read line; stty size; echo got:$line"],
        OUT,
        true,
    );
    agent.client.resize_tty("", "tty", 40, 100).unwrap();
    let mut tty = agent
        .client
        .open_stream("", "tty", StreamKind::Tty)
        .unwrap();
    tty.write_all(b"ping\n").unwrap();
    let mut out = Vec::new();
    tty.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("got:ping"), "{out:?}");
    assert_eq!(
        agent.client.wait_process("", "tty").unwrap(),
        ExitStatus::Exited(0)
    );
}

#[test]
fn orphans_are_reaped() {
    let agent = TestAgent::start();
    // The shell exits at once, leaving its background child to the agent.
    agent.exec(
        "orphan",
        &["/bin/sh", "-c", "sleep 0.2 & echo $!"],
        OUT,
        false,
    );
    let out = agent.read_stream("orphan", StreamKind::Stdout);
    let orphan: u32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert_eq!(
        agent.client.wait_process("", "orphan").unwrap(),
        ExitStatus::Exited(0)
    );
    // A zombie keeps its /proc entry until reaped; the agent must make it disappear.
    let deadline = Instant::now() + Duration::from_secs(30);
    let proc = PathBuf::from(format!("/proc/{orphan}"));
    while proc.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    assert!(!proc.exists(), "orphan {orphan} not reaped: {stat}");
}

#[test]
fn shutdown_ends_the_agent_and_removes_its_sockets() {
    let mut agent = TestAgent::start();
    agent.exec("sleep", &["/bin/sleep", "1000"], StdioSet::default(), false);
    agent.client.shutdown().unwrap();
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!agent.path("api.sock").exists());
    assert!(!agent.path("stdio.sock").exists());
}
