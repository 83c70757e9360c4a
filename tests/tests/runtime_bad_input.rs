//! Malformed bundles given to `sandbox create --no-vm`: each must fail with one line naming the
//! failing field, and leave nothing behind (no state entry, cgroup, mount or process).

use std::path::Path;

use sandbox_tests::binaries;
use sandbox_tests::bundle::{leftovers, sandbox, unique, Bundle, StateRoot};
use sandbox_tests::require;
use serde_json::{json, Value};

/// Creates a container from a bundle edited by `edit` and checks the error and cleanup.
fn rejects(name: &str, edit: impl FnOnce(&mut Value), expected: &str) {
    let b = Bundle::new(name);
    b.edit(edit);
    rejects_bundle(&b, expected);
}

/// The test's last call: a `sandbox` CLI that is not built ends the test here (a skip, or a
/// failure under CI).
fn rejects_bundle(b: &Bundle, expected: &str) {
    require!(binaries::SANDBOX.path());
    let root = StateRoot::new("bad");
    let id = unique("bad");
    let out = sandbox(
        root.path(),
        &["create", "-b", b.path().to_str().unwrap(), &id],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create succeeded; stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "error does not name {expected:?}:\n{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("sandbox: "), "{stderr}");
    assert!(!root.path().join(&id).exists(), "state entry left behind");
    for cg in ["/sys/fs/cgroup/unified/sandbox", "/sys/fs/cgroup/sandbox"] {
        assert!(
            !Path::new(cg).join(&id).exists(),
            "cgroup left behind in {cg}"
        );
    }
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

fn ns_push(c: &mut Value, v: Value) {
    c["linux"]["namespaces"].as_array_mut().unwrap().push(v);
}

#[test]
fn oci_version() {
    rejects(
        "ver",
        |c| c["ociVersion"] = json!("2.0.0"),
        "ociVersion: unsupported version",
    );
}

#[test]
fn not_json() {
    let b = Bundle::new("notjson");
    std::fs::write(b.path().join("config.json"), "{ this is not json").unwrap();
    rejects_bundle(&b, "config.json: ");
}

#[test]
fn root_missing() {
    rejects(
        "noroot",
        |c| drop(c.as_object_mut().unwrap().remove("root")),
        "root: missing",
    );
}

#[test]
fn root_path_missing() {
    rejects(
        "rootpath",
        |c| c["root"]["path"] = json!("nonexistent"),
        "root.path: ",
    );
}

#[test]
fn process_missing() {
    rejects(
        "noproc",
        |c| drop(c.as_object_mut().unwrap().remove("process")),
        "process: missing",
    );
}

#[test]
fn args_empty() {
    rejects(
        "args",
        |c| c["process"]["args"] = json!([]),
        "process.args: must not be empty",
    );
}

#[test]
fn cwd_relative() {
    rejects(
        "cwd",
        |c| c["process"]["cwd"] = json!("tmp"),
        "process.cwd: must be an absolute path",
    );
}

#[test]
fn env_not_key_value() {
    rejects(
        "env",
        |c| {
            c["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("NOEQUALS"))
        },
        "process.env[2]: \"NOEQUALS\" is not KEY=VALUE",
    );
}

#[test]
fn rlimit_unknown_type() {
    rejects(
        "rlimit",
        |c| c["process"]["rlimits"][0]["type"] = json!("RLIMIT_BOGUS"),
        "process.rlimits[0].type: unknown rlimit RLIMIT_BOGUS",
    );
}

#[test]
fn rlimit_soft_above_hard() {
    rejects(
        "rlimit-soft",
        |c| c["process"]["rlimits"][0] = json!({"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}),
        "process.rlimits[0].soft: soft limit 10 exceeds hard limit 5",
    );
}

#[test]
fn rlimit_duplicate() {
    rejects(
        "rlimit-dup",
        |c| {
            c["process"]["rlimits"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}))
        },
        "process.rlimits[1].type: duplicate rlimit",
    );
}

#[test]
fn capability_unknown() {
    rejects(
        "cap",
        |c| c["process"]["capabilities"]["bounding"] = json!(["CAP_KILL", "CAP_BOGUS"]),
        "process.capabilities.bounding[1]",
    );
}

#[test]
fn uid_not_a_number() {
    rejects(
        "uid",
        |c| c["process"]["user"]["uid"] = json!("root"),
        "process.user.uid: ",
    );
}

#[test]
fn oom_score_adj_out_of_range() {
    rejects(
        "oom",
        |c| c["process"]["oomScoreAdj"] = json!(5000),
        "process.oomScoreAdj: 5000 is outside",
    );
}

#[test]
fn umask_too_large() {
    rejects(
        "umask",
        |c| c["process"]["user"]["umask"] = json!(0o1777),
        "process.user.umask: ",
    );
}

#[test]
fn console_size_without_terminal() {
    rejects(
        "consolesize",
        |c| c["process"]["consoleSize"] = json!({"height": 10, "width": 10}),
        "process.consoleSize: set but process.terminal is not true",
    );
}

#[test]
fn terminal_without_console_socket() {
    rejects(
        "tty",
        |c| c["process"]["terminal"] = json!(true),
        "process.terminal: true, but no console socket",
    );
}

#[test]
fn apparmor_profile() {
    rejects(
        "apparmor",
        |c| c["process"]["apparmorProfile"] = json!("docker-default"),
        "process.apparmorProfile: ",
    );
}

#[test]
fn mount_destination_relative() {
    rejects(
        "mnt-dest",
        |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "tmp", "type": "tmpfs", "source": "tmpfs"}))
        },
        "mounts[6].destination: must be an absolute path",
    );
}

#[test]
fn mount_bind_source_missing() {
    rejects(
        "mnt-src",
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/mnt", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]}))
        },
        "mounts[6].source: /nonexistent/src does not exist",
    );
}

#[test]
fn mount_without_type() {
    rejects(
        "mnt-type",
        |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/mnt", "source": "x"}))
        },
        "mounts[6].type: missing",
    );
}

#[test]
fn mount_bad_propagation() {
    rejects(
        "mnt-prop",
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/mnt", "type": "tmpfs", "source": "t", "options": ["propagation=sideways"]}))
        },
        "mounts[6].options[0]: unknown propagation",
    );
}

#[test]
fn mount_unknown_filesystem_fails_in_init() {
    rejects(
        "mnt-fs",
        |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/mnt", "type": "nosuchfs", "source": "none"}))
        },
        "mounts[6]: /mnt: mount nosuchfs: ENODEV",
    );
}

#[test]
fn namespace_unknown_type() {
    rejects(
        "ns-type",
        |c| ns_push(c, json!({"type": "bogus"})),
        "linux.namespaces[6].type: unknown namespace type bogus",
    );
}

#[test]
fn namespace_duplicate() {
    rejects(
        "ns-dup",
        |c| ns_push(c, json!({"type": "pid"})),
        "linux.namespaces[6].type: duplicate namespace pid",
    );
}

#[test]
fn namespace_path_missing() {
    rejects(
        "ns-path",
        |c| {
            c["linux"]["namespaces"][1] =
                json!({"type": "network", "path": "/proc/999999999/ns/net"});
        },
        "linux.namespaces[1].path: /proc/999999999/ns/net does not exist",
    );
}

#[test]
fn no_mount_namespace() {
    rejects(
        "ns-mnt",
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "mount")
        },
        "linux.namespaces: a mount namespace is required",
    );
}

#[test]
fn hostname_without_uts() {
    rejects(
        "uts",
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "uts")
        },
        "hostname: setting it needs a uts namespace",
    );
}

#[test]
fn uid_mappings_without_user_namespace() {
    rejects(
        "maps",
        |c| {
            c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        },
        "linux.uidMappings: set but no new user namespace is created",
    );
}

#[test]
fn user_namespace_without_mappings() {
    rejects(
        "userns",
        |c| ns_push(c, json!({"type": "user"})),
        "linux.uidMappings: a new user namespace needs mappings",
    );
}

#[test]
fn mapping_of_size_zero() {
    rejects(
        "map-size",
        |c| {
            ns_push(c, json!({"type": "user"}));
            c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 0}]);
            c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        },
        "linux.uidMappings[0].size: must be greater than 0",
    );
}

#[test]
fn sysctl_not_namespaced() {
    rejects(
        "sysctl",
        |c| c["linux"]["sysctl"] = json!({"vm.swappiness": "10"}),
        "linux.sysctl.vm.swappiness: not namespaced",
    );
}

#[test]
fn sysctl_net_without_network_namespace() {
    rejects(
        "sysctl-net",
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "network");
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        },
        "linux.sysctl.net.ipv4.ip_forward: needs a new net namespace",
    );
}

#[test]
fn device_outside_dev() {
    rejects(
        "dev-path",
        |c| {
            c["linux"]["devices"] =
                json!([{"path": "/etc/null", "type": "c", "major": 1, "minor": 3}])
        },
        "linux.devices[0].path: /etc/null is not under /dev",
    );
}

#[test]
fn device_unknown_type() {
    rejects(
        "dev-type",
        |c| {
            c["linux"]["devices"] = json!([{"path": "/dev/x", "type": "x", "major": 1, "minor": 3}])
        },
        "linux.devices[0].type: unknown device type x",
    );
}

#[test]
fn masked_path_relative() {
    rejects(
        "masked",
        |c| c["linux"]["maskedPaths"] = json!(["proc/kcore"]),
        "linux.maskedPaths[0]: must be an absolute path",
    );
}

#[test]
fn rootfs_propagation_unknown() {
    rejects(
        "rprop",
        |c| c["linux"]["rootfsPropagation"] = json!("sideways"),
        "linux.rootfsPropagation: unknown propagation",
    );
}

#[test]
fn cgroups_path_escapes() {
    rejects(
        "cgpath",
        |c| c["linux"]["cgroupsPath"] = json!("/a/../../b"),
        "linux.cgroupsPath: must not contain",
    );
}

#[test]
fn cpu_shares_out_of_range() {
    rejects(
        "shares",
        |c| c["linux"]["resources"] = json!({"cpu": {"shares": 1}}),
        "linux.resources.cpu.shares: must be in 2..=262144",
    );
}

#[test]
fn memory_swap_below_limit() {
    rejects(
        "swap",
        |c| c["linux"]["resources"] = json!({"memory": {"limit": 1048576, "swap": 1024}}),
        "linux.resources.memory.swap: ",
    );
}

#[test]
fn cpuset_list_invalid() {
    rejects(
        "cpus",
        |c| c["linux"]["resources"] = json!({"cpu": {"cpus": "0-a"}}),
        "linux.resources.cpu.cpus: invalid list",
    );
}

#[test]
fn seccomp_unknown_default_action() {
    rejects(
        "sc-default",
        |c| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_MAYBE"}),
        "linux.seccomp.defaultAction: unknown seccomp action SCMP_ACT_MAYBE",
    );
}

#[test]
fn seccomp_notify_unsupported() {
    rejects(
        "sc-notify",
        |c| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
        "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported",
    );
}

#[test]
fn seccomp_arg_index_out_of_range() {
    rejects(
        "sc-index",
        |c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]})
        },
        "linux.seccomp.syscalls[0].args[0].index: 6 is out of range",
    );
}

#[test]
fn seccomp_unknown_operator() {
    rejects(
        "sc-op",
        |c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_ALMOST"}]}]})
        },
        "linux.seccomp.syscalls[0].args[0].op: unknown seccomp operator SCMP_CMP_ALMOST",
    );
}

#[test]
fn seccomp_rule_without_names() {
    rejects(
        "sc-names",
        |c| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}),
        "linux.seccomp.syscalls[0].names: must not be empty",
    );
}

#[test]
fn hook_path_relative() {
    rejects(
        "hook-path",
        |c| c["hooks"] = json!({"prestart": [{"path": "bin/true"}]}),
        "hooks.prestart[0].path: must be an absolute path",
    );
}

#[test]
fn hook_timeout_zero() {
    rejects(
        "hook-timeout",
        |c| c["hooks"] = json!({"poststop": [{"path": "/bin/true", "timeout": 0}]}),
        "hooks.poststop[0].timeout: must be positive",
    );
}

#[test]
fn failing_create_runtime_hook() {
    rejects(
        "hook-fail",
        |c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]}]}),
        "hooks.createRuntime[0]: /bin/sh failed: exit status: 3: hook-said-no",
    );
}

#[test]
fn hook_timeout_kills_the_hook() {
    rejects(
        "hook-slow",
        |c| c["hooks"] = json!({"createContainer": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}),
        "hooks.createContainer[0]: /bin/sleep timed out after 1s",
    );
}

#[test]
fn executable_not_found() {
    rejects(
        "noexe",
        |c| c["process"]["args"] = json!(["no-such-program"]),
        "process.args[0]: \"no-such-program\": executable file not found in $PATH",
    );
}

#[test]
fn time_offsets_without_time_namespace() {
    rejects(
        "timens",
        |c| c["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 10}}),
        "linux.timeOffsets: set but no new time namespace",
    );
}

#[test]
fn invalid_container_id() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("badid");
    let root = StateRoot::new("badid");
    let out = sandbox(
        root.path(),
        &["create", "-b", b.path().to_str().unwrap(), "../escape"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid container id \"../escape\""));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}
