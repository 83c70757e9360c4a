//! The runtime crate's API as the guest agent uses it, in-process: create with the process's
//! stdio on pipes, start, exec, wait for exit codes, state, delete.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use runtime::{Container, CreateOptions, ExecOptions, Status};
use sandbox_tests::bundle::{leftovers, unique, Bundle, StateRoot};
use serde_json::json;

fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (std::fs::File::from(r), w)
}

#[test]
fn create_start_exec_wait_delete_with_pipes() {
    let b = Bundle::new("api");
    b.edit(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "echo from-init; read line; echo got-$line; exit 5"
        ])
    });
    let root = StateRoot::new("api");
    let id = unique("api");

    let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
    let (mut out_r, out_w) = pipe();
    let (_err_r, err_w) = pipe();
    let opts = CreateOptions {
        stdio: Some([stdin_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]),
        ..Default::default()
    };
    let mut c = Container::create(&id, b.path(), root.path(), &opts).expect("create");
    drop((stdin_r, out_w, err_w));
    assert_eq!(c.state().status, Status::Created);
    assert!(c.pid() > 0);
    c.start().expect("start");
    assert_eq!(c.state().status, Status::Running);

    // exec into it while the init waits on its stdin.
    let (mut exec_out, exec_w) = pipe();
    let mut p = c.spec().process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo from-exec; exit 9".into(),
    ]));
    let exec_opts = ExecOptions {
        stdio: Some([exec_w.as_raw_fd(), exec_w.as_raw_fd(), exec_w.as_raw_fd()]),
        ..Default::default()
    };
    let pid = c.exec(&p, &exec_opts).expect("exec");
    drop(exec_w);
    let mut text = String::new();
    exec_out.read_to_string(&mut text).unwrap();
    assert_eq!(text, "from-exec\n");
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 9)
    );

    nix::unistd::write(&stdin_w, b"ping\n").unwrap();
    drop(stdin_w);
    assert_eq!(c.wait().expect("wait"), Some(5));
    let mut text = String::new();
    out_r.read_to_string(&mut text).unwrap();
    assert_eq!(text, "from-init\ngot-ping\n");
    assert_eq!(c.state().status, Status::Stopped);

    let again = Container::load(&id, root.path()).expect("load");
    again.delete(false).expect("delete");
    assert!(Container::list(root.path()).unwrap().is_empty());
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

#[test]
fn errors_name_the_field_through_the_api() {
    let b = Bundle::new("api-bad");
    b.edit(|c| c["process"]["rlimits"][0]["type"] = json!("RLIMIT_BOGUS"));
    let root = StateRoot::new("api-bad");
    let err = Container::create(
        &unique("api-bad"),
        b.path(),
        root.path(),
        &CreateOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "process.rlimits[0].type: unknown rlimit RLIMIT_BOGUS"
    );
    assert!(Container::list(root.path()).unwrap().is_empty());
}
