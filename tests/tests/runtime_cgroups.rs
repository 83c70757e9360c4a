//! cgroup v2 on a hierarchy the test mounts itself (cgroup2 over /sys/fs/cgroup in a private
//! mount namespace): placement, freeze/thaw, ps, stats, kill --all, removal, and the clear
//! error a hybrid v1/v2 host gives for limits whose controllers belong to v1.

use std::process::Command;

use sandbox_tests::binaries;
use sandbox_tests::bundle::{leftovers, sandbox_bin, unique, Bundle, StateRoot};
use sandbox_tests::require;
use serde_json::json;

/// Runs `script` with `sh` in a new private mount namespace where cgroup2 is mounted on
/// /sys/fs/cgroup. `$S` is `sandbox --no-vm --root <root>`, `$B` the bundle, `$ID` the id.
fn in_private_cgroup2(
    b: &Bundle,
    root: &StateRoot,
    id: &str,
    script: &str,
) -> (bool, String, String) {
    let prelude =
        "set -u\nmount --make-rprivate / && mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 99\n";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("{prelude}{script}"),
        ])
        .env(
            "S",
            format!(
                "{} --no-vm --root {}",
                sandbox_bin().display(),
                root.path().display()
            ),
        )
        .env("B", b.path())
        .env("ID", id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run unshare");
    assert_ne!(
        out.status.code(),
        Some(99),
        "could not mount cgroup2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in output:\n{out}"))
        .trim()
}

#[test]
fn placement_freeze_ps_stats_kill_and_removal() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("cg");
    let id = unique("cg");
    let cg = format!("/{id}");
    b.edit(|c| {
        c["process"]["args"] = json!(["sleep", "1000"]);
        c["linux"]["cgroupsPath"] = json!(cg);
    });
    let root = StateRoot::new("cg");
    let script = format!(
        r#"
$S run -d -b $B $ID >/dev/null 2>&1 </dev/null || {{ echo run-failed; exit 1; }}
PID=$($S state $ID | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
echo "host-view: $(grep '^0::' /proc/$PID/cgroup)"
echo "procs: $(cat /sys/fs/cgroup{cg}/cgroup.procs)"
echo "init: $PID"
$S exec -d $ID sleep 999 </dev/null >/dev/null 2>&1
echo "ps: $($S ps --format json $ID)"
$S pause $ID && echo "paused: $($S state $ID | grep -o '"status": "[a-z]*"') freeze=$(cat /sys/fs/cgroup{cg}/cgroup.freeze)"
$S resume $ID && echo "resumed: $($S state $ID | grep -o '"status": "[a-z]*"') freeze=$(cat /sys/fs/cgroup{cg}/cgroup.freeze)"
echo "stats: $($S events --stats $ID)"
$S kill --all $ID KILL
n=0; while [ -n "$(cat /sys/fs/cgroup{cg}/cgroup.procs)" ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done
left=$(cat /sys/fs/cgroup{cg}/cgroup.procs | tr '\n' ' ')
echo "procs-after-kill: ${{left:-empty}}"
n=0; while ! $S state $ID | grep -q stopped && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done
echo "after-kill: $($S state $ID | grep -o '"status": "[a-z]*"')"
$S delete $ID && echo "deleted: $(test -d /sys/fs/cgroup{cg} && echo cgroup-left || echo cgroup-removed)"
true
"#
    );
    let (ok, out, err) = in_private_cgroup2(&b, &root, &id, &script);
    assert!(ok, "script failed:\n{out}\n{err}");
    assert_eq!(line(&out, "host-view:"), format!("0::{cg}"));
    let init = line(&out, "init:");
    assert_eq!(line(&out, "procs:"), init, "only the init is in the cgroup");
    let ps: Vec<i64> = serde_json::from_str(line(&out, "ps:")).unwrap();
    assert_eq!(ps.len(), 2, "init and the exec'd sleep: {ps:?}");
    assert!(ps.contains(&init.parse().unwrap()));
    assert_eq!(line(&out, "paused:"), "\"status\": \"paused\" freeze=1");
    assert_eq!(line(&out, "resumed:"), "\"status\": \"running\" freeze=0");
    let stats: serde_json::Value = serde_json::from_str(line(&out, "stats:")).unwrap();
    assert_eq!(stats["data"]["pids"]["current"], 2, "{stats}");
    assert_eq!(stats["events"]["populated"], 1, "{stats}");
    assert_eq!(line(&out, "procs-after-kill:"), "empty");
    assert_eq!(line(&out, "after-kill:"), "\"status\": \"stopped\"");
    assert_eq!(line(&out, "deleted:"), "cgroup-removed");
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

/// Limits need controllers. On this host (hybrid v1/v2) the v2 hierarchy has none, so the
/// runtime must refuse with an error naming the field and the reason, and leave nothing;
/// on a host where the controller is available the limit must land in the cgroup.
#[test]
fn limits_need_their_controller() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("cglimit");
    let id = unique("cglimit");
    let cg = format!("/{id}");
    b.edit(|c| {
        c["process"]["args"] = json!(["sleep", "1000"]);
        c["linux"]["cgroupsPath"] = json!(cg);
        c["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 32}});
    });
    let root = StateRoot::new("cglimit");
    let script = format!(
        r#"
echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
if $S run -d -b $B $ID >/dev/null 2>$B/err </dev/null; then
  echo "memory.max: $(cat /sys/fs/cgroup{cg}/memory.max)"
  echo "pids.max: $(cat /sys/fs/cgroup{cg}/pids.max)"
  $S delete --force $ID
else
  echo "error: $(cat $B/err)"
  echo "state: $(ls $($S list -q; echo))"
  echo "cgroup: $(test -d /sys/fs/cgroup{cg} && echo left || echo none)"
fi
true
"#
    );
    let (ok, out, err) = in_private_cgroup2(&b, &root, &id, &script);
    assert!(ok, "script failed:\n{out}\n{err}");
    let controllers = line(&out, "controllers:");
    if controllers.split_whitespace().any(|c| c == "memory")
        && controllers.split_whitespace().any(|c| c == "pids")
    {
        assert_eq!(line(&out, "memory.max:"), "67108864");
        assert_eq!(line(&out, "pids.max:"), "32");
    } else {
        let error = line(&out, "error:");
        assert!(error.starts_with("sandbox: linux.resources."), "{error}");
        assert!(
            error.contains(
                "controller is not available in the cgroup v2 hierarchy at /sys/fs/cgroup"
            ),
            "{error}"
        );
        assert!(error.contains("hybrid cgroup v1/v2 host"), "{error}");
        assert_eq!(line(&out, "cgroup:"), "none");
        assert!(!root.path().join(&id).exists());
    }
    assert_eq!(leftovers(&b.rootfs()), Vec::<String>::new());
}

/// hugetlb is the one controller this hybrid host leaves to cgroup v2: a limit for it must
/// land in the container's cgroup (and on a host without it, be refused naming the field).
#[test]
fn hugetlb_limit_lands_in_the_cgroup() {
    require!(binaries::SANDBOX.path());
    let b = Bundle::new("cghuge");
    let id = unique("cghuge");
    let cg = format!("/{id}");
    b.edit(|c| {
        c["process"]["args"] = json!(["sleep", "1000"]);
        c["linux"]["cgroupsPath"] = json!(cg);
        c["linux"]["resources"] =
            json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]});
    });
    let root = StateRoot::new("cghuge");
    let script = format!(
        r#"
echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
if $S run -d -b $B $ID >/dev/null 2>$B/err </dev/null; then
  echo "hugetlb.2MB.max: $(cat /sys/fs/cgroup{cg}/hugetlb.2MB.max)"
  $S delete --force $ID
else
  echo "error: $(cat $B/err)"
fi
echo "cgroup: $(test -d /sys/fs/cgroup{cg} && echo left || echo none)"
"#
    );
    let (ok, out, err) = in_private_cgroup2(&b, &root, &id, &script);
    assert!(ok, "script failed:\n{out}\n{err}");
    if line(&out, "controllers:")
        .split_whitespace()
        .any(|c| c == "hugetlb")
    {
        assert_eq!(line(&out, "hugetlb.2MB.max:"), "4194304");
    } else {
        assert!(
            line(&out, "error:").contains("linux.resources.hugepageLimits: the hugetlb controller")
        );
    }
    assert_eq!(line(&out, "cgroup:"), "none");
    assert!(!root.path().join(&id).exists());
}
