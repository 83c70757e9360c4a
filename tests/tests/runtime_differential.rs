//! The same bundle under `runc run` and `sandbox run --no-vm`: a probe inside prints what the
//! container sees (ids, maps, caps, seccomp, mounts, limits, env...) and the outputs must match.

use sandbox_tests::binaries;
use sandbox_tests::bundle::{leftovers, runc, sandbox, unique, Bundle, StateRoot, PROBE_END};
use sandbox_tests::require;
use serde_json::{json, Value};

/// Runs `b` under both runtimes and asserts that the probe ran to its end in each, with
/// identical output and exit status. It is the test's last call: a `sandbox` CLI that is
/// not built ends the test here (a skip, or a failure under CI).
fn compare(b: &Bundle) {
    compare_ending_with(b, PROBE_END);
}

/// [`compare`] for a process that is not the probe: `last_line` is the last line it prints.
fn compare_ending_with(b: &Bundle, last_line: &str) {
    require!(binaries::SANDBOX.path());
    let has_cgroupns = b.config()["linux"]["namespaces"]
        .as_array()
        .is_some_and(|a| {
            a.iter()
                .any(|n| n["type"] == "cgroup" && n.get("path").is_none())
        });
    if has_cgroupns {
        b.edit(|c| {
            c["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("PROBE_CGROUP=1"))
        });
    }
    let bundle = b.path().to_str().unwrap();
    let runc_root = StateRoot::new("runc");
    let sb_root = StateRoot::new("sb");
    let id = unique("diff");
    let r = runc(runc_root.path(), &["run", "-b", bundle, &id]);
    let s = sandbox(sb_root.path(), &["run", "-b", bundle, &id]);
    let rout = String::from_utf8_lossy(&r.stdout);
    let sout = String::from_utf8_lossy(&s.stdout);
    let rerr = String::from_utf8_lossy(&r.stderr);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!rerr.contains("level=error"), "runc failed: {rerr}");
    // Two runtimes that fail the same way would print the same truncated output.
    for (runtime, out, err) in [("runc", &rout, &rerr), ("sandbox", &sout, &serr)] {
        assert_eq!(
            out.lines().last(),
            Some(last_line),
            "the probe did not run to its end under {runtime}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        );
    }
    if rout != sout {
        let mut report = String::new();
        for (i, (a, b)) in rout.lines().zip(sout.lines()).enumerate() {
            if a != b {
                report.push_str(&format!("line {i}:\n  runc:    {a}\n  sandbox: {b}\n"));
            }
        }
        panic!(
            "probe output differs\n{report}\nrunc lines {}, sandbox lines {}\nsandbox stderr: {}\n--- runc ---\n{rout}\n--- sandbox ---\n{sout}",
            rout.lines().count(),
            sout.lines().count(),
            serr
        );
    }
    assert_eq!(r.status.code(), s.status.code(), "exit status differs");
    assert_eq!(
        std::fs::read_dir(sb_root.path()).unwrap().count(),
        0,
        "state left behind"
    );
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

fn variant(name: &str, edit: impl FnOnce(&mut Value), extra: Option<&str>) {
    let b = Bundle::new(name);
    b.edit(edit);
    if let Some(script) = extra {
        b.write("/probe-extra.sh", script);
    }
    compare(&b);
}

fn namespaces_without(c: &mut Value, typ: &str) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != typ);
}

fn all_caps() -> Value {
    json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP"
    ])
}

#[test]
fn default_spec() {
    variant("default", |_| {}, None);
}

#[test]
fn hostname() {
    variant("hostname", |c| c["hostname"] = json!("probe-host"), None);
}

#[test]
fn user_home_from_passwd() {
    variant(
        "home",
        |c| {
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["process"]["cwd"] = json!("/home/user");
        },
        None,
    );
}

#[test]
fn no_uts_namespace() {
    variant(
        "no-uts",
        |c| {
            namespaces_without(c, "uts");
            c.as_object_mut().unwrap().remove("hostname");
        },
        None,
    );
}

#[test]
fn user_1000() {
    variant(
        "user1000",
        |c| c["process"]["user"] = json!({"uid": 1000, "gid": 1000}),
        None,
    );
}

#[test]
fn additional_gids() {
    variant(
        "gids",
        |c| c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 10, 20]}),
        None,
    );
}

#[test]
fn umask() {
    variant(
        "umask",
        |c| c["process"]["user"]["umask"] = json!(0o077),
        None,
    );
}

#[test]
fn cwd() {
    variant("cwd", |c| c["process"]["cwd"] = json!("/tmp"), None);
}

#[test]
fn env() {
    variant(
        "env",
        |c| {
            let env = c["process"]["env"].as_array_mut().unwrap();
            env.push(json!("FOO=bar"));
            env.push(json!("EMPTY="));
            env.push(json!("WITH_EQ=a=b"));
        },
        None,
    );
}

#[test]
fn env_home_and_path() {
    variant(
        "env-home",
        |c| c["process"]["env"] = json!(["HOME=/tmp", "PATH=/bin"]),
        None,
    );
}

#[test]
fn all_capabilities() {
    variant(
        "allcaps",
        |c| {
            let all = all_caps();
            c["process"]["capabilities"] = json!({
                "bounding": all, "effective": all, "permitted": all, "inheritable": all, "ambient": all
            });
        },
        None,
    );
}

#[test]
fn no_capabilities() {
    variant("nocaps", |c| c["process"]["capabilities"] = json!({}), None);
}

#[test]
fn ambient_capabilities_for_a_user() {
    variant(
        "ambient",
        |c| {
            let set = json!(["CAP_NET_RAW", "CAP_CHOWN", "CAP_KILL"]);
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["process"]["capabilities"] = json!({
                "bounding": set, "effective": set, "permitted": set, "inheritable": set, "ambient": set
            });
        },
        None,
    );
}

#[test]
fn capabilities_partial_sets() {
    variant(
        "partialcaps",
        |c| {
            c["process"]["capabilities"] = json!({
                "bounding": ["CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN"],
                "effective": ["CAP_CHOWN"],
                "permitted": ["CAP_CHOWN", "CAP_SETUID"],
                "inheritable": ["CAP_SETGID"]
            });
        },
        None,
    );
}

#[test]
fn new_privileges_allowed() {
    variant(
        "nnp-false",
        |c| c["process"]["noNewPrivileges"] = json!(false),
        None,
    );
}

#[test]
fn rlimits() {
    variant(
        "rlimits",
        |c| {
            c["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 512},
                {"type": "RLIMIT_NPROC", "hard": 300, "soft": 200},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                {"type": "RLIMIT_STACK", "hard": 16777216, "soft": 8388608},
                {"type": "RLIMIT_MEMLOCK", "hard": 65536, "soft": 65536}
            ]);
        },
        None,
    );
}

#[test]
fn writable_root() {
    variant("rw-root", |c| c["root"]["readonly"] = json!(false), None);
}

#[test]
fn masked_paths_custom() {
    variant(
        "masked",
        |c| {
            c["linux"]["maskedPaths"] = json!([
                "/proc/cpuinfo",
                "/proc/version",
                "/sys/firmware",
                "/does/not/exist"
            ])
        },
        None,
    );
}

#[test]
fn no_masked_or_readonly_paths() {
    variant(
        "nomask",
        |c| {
            c["linux"]["maskedPaths"] = json!([]);
            c["linux"]["readonlyPaths"] = json!([]);
        },
        None,
    );
}

#[test]
fn readonly_paths_custom() {
    variant(
        "ropaths",
        |c| c["linux"]["readonlyPaths"] = json!(["/proc/sys", "/tmp", "/nonexistent"]),
        Some("touch /tmp/x && echo tmp-writable || echo tmp-readonly\n"),
    );
}

#[test]
fn tmpfs_mount_with_options() {
    variant(
        "tmpfs",
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=1m"]
            }));
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/run/deep/dir", "type": "tmpfs", "source": "scratch",
                "options": ["ro", "size=64k", "mode=700"]
            }));
        },
        Some("stat -c '%a' /tmp /run/deep/dir\n"),
    );
}

#[test]
fn bind_mounts() {
    let host = Bundle::new("bind-src");
    host.write("/data/file.txt", "hello from the host\n");
    let src = host.rootfs().join("data");
    variant(
        "bind",
        |c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/mnt/ro", "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev"]}));
            m.push(json!({"destination": "/mnt/rw", "source": src, "options": ["bind", "rw"]}));
            m.push(json!({"destination": "/mnt/file", "type": "bind", "source": src.join("file.txt"), "options": ["bind", "ro"]}));
        },
        Some("cat /mnt/ro/file.txt /mnt/file; touch /mnt/ro/x 2>/dev/null || echo ro-ok\n"),
    );
}

#[test]
fn mount_propagation_options() {
    let host = Bundle::new("prop-src");
    let src = host.rootfs().join("etc");
    variant(
        "prop",
        |c| {
            c["mounts"].as_array_mut().unwrap().push(
                json!({"destination": "/mnt", "type": "bind", "source": src, "options": ["rbind", "rprivate", "noexec"]}),
            );
            c["linux"]["rootfsPropagation"] = json!("rslave");
        },
        Some("grep -c ' /mnt ' /proc/self/mountinfo\n"),
    );
}

#[test]
fn host_network() {
    variant("hostnet", |c| namespaces_without(c, "network"), None);
}

#[test]
fn no_ipc_namespace() {
    variant(
        "noipc",
        |c| {
            namespaces_without(c, "ipc");
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["type"] != "mqueue");
        },
        None,
    );
}

#[test]
fn no_pid_namespace() {
    variant(
        "nopid",
        |c| {
            namespaces_without(c, "pid");
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["type"] != "proc");
            c["linux"]["maskedPaths"] = json!([]);
            c["linux"]["readonlyPaths"] = json!([]);
            c["mounts"].as_array_mut().unwrap().push(
                json!({"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind"]}),
            );
        },
        None,
    );
}

#[test]
fn no_cgroup_namespace() {
    variant("nocgroupns", |c| namespaces_without(c, "cgroup"), None);
}

#[test]
fn user_namespace() {
    variant(
        "userns",
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            c["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            c["root"]["readonly"] = json!(false);
        },
        None,
    );
}

#[test]
fn user_namespace_as_user() {
    variant(
        "userns-user",
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 2000}]);
            c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 2000}]);
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
        },
        None,
    );
}

#[test]
fn seccomp_errno_rule() {
    variant(
        "seccomp-errno",
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
            });
        },
        Some("mkdir /tmp/x\n"),
    );
}

#[test]
fn seccomp_errno_ret() {
    variant(
        "seccomp-errnoret",
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
            });
        },
        Some("mkdir /tmp/x\n"),
    );
}

#[test]
fn seccomp_argument_condition() {
    variant(
        "seccomp-args",
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]
            });
        },
        Some("kill -0 $$ && echo kill0-allowed\nkill -CONT $$ && echo cont-allowed\n"),
    );
}

#[test]
fn seccomp_default_errno_allowlist() {
    variant(
        "seccomp-allowlist",
        |c| {
            let names: Vec<&str> = runtime::seccomp::known_syscalls()
                .filter(|n| !matches!(*n, "mkdir" | "mkdirat" | "rmdir"))
                .collect();
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]
            });
        },
        Some("mkdir /tmp/y\nrmdir /tmp\n"),
    );
}

#[test]
fn seccomp_without_no_new_privs() {
    variant(
        "seccomp-nonnp",
        |c| {
            c["process"]["noNewPrivileges"] = json!(false);
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
            });
        },
        Some("mkdir /tmp/z\n"),
    );
}

#[test]
fn devices() {
    variant(
        "devices",
        |c| {
            c["linux"]["devices"] = json!([
                {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600, "uid": 1000, "gid": 5},
                {"path": "/dev/sub/zero", "type": "c", "major": 1, "minor": 5},
                {"path": "/dev/fifo0", "type": "p", "major": 0, "minor": 0, "fileMode": 0o640}
            ]);
        },
        Some("stat -c '%F %a %u %g %t:%T' /dev/sub/zero\necho x > /dev/mynull && echo null-ok\n"),
    );
}

#[test]
fn sysctl() {
    variant(
        "sysctl",
        |c| {
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1000"});
        },
        Some("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni\n"),
    );
}

#[test]
fn oom_score_adj() {
    variant("oom", |c| c["process"]["oomScoreAdj"] = json!(123), None);
}

#[test]
fn args_with_path_lookup_and_exit_code() {
    let b = Bundle::new("exitcode");
    b.edit(|c| c["process"]["args"] = json!(["sh", "-c", "echo out; exit 42"]));
    compare_ending_with(&b, "out");
}

#[test]
fn annotations_and_no_sysfs() {
    variant(
        "nosys",
        |c| {
            c["annotations"] = json!({"org.example/key": "value"});
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["type"] != "sysfs");
        },
        None,
    );
}

#[test]
fn seccomp_range_and_masked_conditions() {
    variant(
        "seccomp-range",
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                     "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_GE"}, {"index": 0, "value": 1000000, "op": "SCMP_CMP_LT"}]},
                    {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                     "args": [{"index": 0, "value": 7, "valueTwo": 7, "op": "SCMP_CMP_MASKED_EQ"}]}
                ]
            });
        },
        Some("kill -0 $$ && echo sig0-allowed\nkill -CONT $$ && echo cont-allowed\n"),
    );
}

#[test]
fn seccomp_kill_process() {
    variant(
        "seccomp-kill",
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]
            });
        },
        Some("echo before\nmkdir /tmp/k\necho not-reached\n"),
    );
}

#[test]
fn state_json_has_runc_shape() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("state");
    b.edit(|c| {
        c["process"]["args"] = json!(["sleep", "1000"]);
        c["annotations"] = json!({"org.example": "1"});
    });
    let bundle = b.path().to_str().unwrap();
    let (rr, sr) = (StateRoot::new("runc-state"), StateRoot::new("sb-state"));
    let id = unique("state");
    let created = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // runc create keeps its stdio; give it files.
    let log = b.path().join("runc.log");
    let status = std::process::Command::new("runc")
        .args([
            "--root",
            rr.path().to_str().unwrap(),
            "create",
            "-b",
            bundle,
            &id,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    created(sandbox(sr.path(), &["create", "-b", bundle, &id]));
    let r: Value = serde_json::from_slice(&runc(rr.path(), &["state", &id]).stdout).unwrap();
    let s: Value = serde_json::from_slice(&sandbox(sr.path(), &["state", &id]).stdout).unwrap();
    runc(rr.path(), &["delete", "--force", &id]);
    sandbox(sr.path(), &["delete", "--force", &id]);
    let mut rkeys: Vec<&String> = r.as_object().unwrap().keys().collect();
    let mut skeys: Vec<&String> = s.as_object().unwrap().keys().collect();
    rkeys.sort();
    skeys.sort();
    assert_eq!(rkeys, skeys, "runc {r}\nsandbox {s}");
    for k in [
        "ociVersion",
        "id",
        "status",
        "bundle",
        "rootfs",
        "owner",
        "annotations",
    ] {
        assert_eq!(r[k], s[k], "{k}");
    }
    assert_eq!(s["status"], "created");
}

#[test]
fn device_cgroup_rules() {
    variant(
        "devcgroup",
        |c| {
            c["linux"]["resources"] = json!({"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}
            ]});
            c["linux"]["devices"] = json!([{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666}]);
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg", "options": ["bind"]}));
            m.push(json!({"destination": "/dev/fuse", "type": "bind", "source": "/dev/fuse", "options": ["bind"]}));
        },
        // A failed redirection of `exec` (a special built-in) ends the shell: open in a
        // subshell, so that the probe goes on to its end.
        Some(concat!(
            "head -c 1 /dev/zero | wc -c\n",
            "echo x > /dev/null && echo null-ok\n",
            "echo x > /dev/mynull && echo mynull-ok\n",
            "(exec 3</dev/kmsg) && echo kmsg-read-ok || echo kmsg-read-denied\n",
            "echo x > /dev/kmsg || echo kmsg-write-denied\n",
            "(exec 4</dev/fuse) && echo fuse-open-ok || echo fuse-denied\n",
        )),
    );
}
