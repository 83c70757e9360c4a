//! `cargo xtask install` as a user runs it, into a temporary prefix and config path (never
//! the machine's /usr/local or /etc), then the installed binaries with no `SANDBOX_*`
//! variable: `sandbox run` of a bundle; a private containerd whose config the install edited,
//! running a CRI pod through the `sandbox` handler and one through a second handler whose
//! `ConfigPath` names a file with a bigger VM; then `cargo xtask uninstall`, refused while
//! the pods run and leaving nothing of the install afterwards. Needs real KVM: run by
//! `cargo xtask test` in the lab (which names its own xtask in `$SANDBOX_XTASK`).

// The client's whole API is compiled here, not only what these tests call.
#[allow(dead_code, unused_imports)]
#[path = "../src/cri.rs"]
mod cri;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use sandbox_tests::binaries;
use sandbox_tests::bundle::{unique, Bundle};
use sandbox_tests::containerd::{self, command, procs, Containerd, CRI_NAMESPACE};
use sandbox_tests::{artifacts, image, require};

/// How long one install, uninstall or `sandbox` command may take (the lab's CPU is emulated).
const COMMAND_LIMIT: Duration = Duration::from_secs(300);
/// How long a container may take to run, and a VM to go after its pod.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// The second runtime handler and its VM size (the pod VM gets 128 MiB more).
const BIG_HANDLER: &str = "sandbox-big";
const BIG_MEMORY_MIB: u32 = 384;

/// `program ARGS` without any of our `SANDBOX_*` variables, to completion; its output.
fn run_clean(program: &Path, args: &[&str]) -> command::Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SANDBOX_") {
            cmd.env_remove(key);
        }
    }
    command::run(&mut cmd, COMMAND_LIMIT).expect("command finished")
}

fn ok(out: command::Output) -> String {
    match out.success() {
        Ok(out) => out.stdout,
        Err(e) => panic!("{e}"),
    }
}

/// The test's directories: the install's prefix and config under `work`, the private state
/// roots and image cache under `run` (short: socket paths must fit in sun_path).
struct Dirs {
    work: tempfile::TempDir,
    run: PathBuf,
    /// The private containerd's directory, with its config file.
    daemon: PathBuf,
}

impl Dirs {
    fn prefix(&self) -> PathBuf {
        self.work.path().join("prefix")
    }
    fn config(&self) -> PathBuf {
        self.work.path().join("etc/sandbox/config.toml")
    }
    fn bin(&self, name: &str) -> PathBuf {
        self.prefix().join("bin").join(name)
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for dir in [&self.run, &self.daemon] {
            procs::unmount_under(dir);
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// containerd's config as a user might have it before the install: runc, and a second
/// handler of ours naming its own config file (a bigger VM).
fn containerd_config(daemon_dir: &Path, dirs: &Dirs, big: &Path) -> String {
    let mut config = containerd::Config::new(daemon_dir, image::PAUSE);
    config.runtimes = vec![containerd::Runtime::new(
        "runc",
        containerd::config::RUNC_RUNTIME,
    )];
    let cri = r#"plugins."io.containerd.grpc.v1.cri".containerd.runtimes"#;
    format!(
        "{}\n# a bigger VM for heavy pods\n[{cri}.{BIG_HANDLER}]\n  runtime_type = \
         \"io.containerd.sandbox.v2\"\n  runtime_path = \"{}\"\n  [{cri}.{BIG_HANDLER}.options]\n    \
         ConfigPath = \"{}\"\n",
        config.to_toml(),
        dirs.bin("containerd-shim-sandbox-v2").display(),
        big.display()
    )
}

/// The `--memory` of the running VMM whose command line names `dir`.
fn vmm_memory_under(dir: &Path) -> Option<u32> {
    let dir = dir.to_string_lossy();
    procs::named("sandbox-vmm").into_iter().find_map(|pid| {
        let argv = procs::argv(pid);
        if !argv.iter().any(|a| a.contains(&*dir)) {
            return None;
        }
        let at = argv.iter().position(|a| a == "--memory")?;
        argv.get(at + 1)?.parse().ok()
    })
}

/// MemTotal of `/proc/meminfo` inside container `id`, in MiB.
fn guest_mem_total_mib(client: &cri::Client, id: &str) -> u64 {
    let r = client
        .exec_sync(id, &["head", "-n", "1", "/proc/meminfo"], 60)
        .expect("ExecSync");
    let line = String::from_utf8_lossy(&r.stdout).into_owned();
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {line:?}"));
    kib / 1024
}

/// A pod on `handler` with a sleeping busybox container; (pod id, container id).
fn pod_with_sleeper(client: &cri::Client, logs: &Path, handler: &str) -> (String, String) {
    let config = cri::pod_config(&unique(handler), &unique("uid"), logs);
    let pod = client
        .run_pod_sandbox(&config, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox with {handler}: {e}"));
    let name = format!("sleeper-{handler}");
    let container = cri::container_config(
        &name,
        image::BUSYBOX,
        &["sleep", "100000"],
        &format!("{name}.log"),
    );
    let id = client
        .create_container(&pod, &container, &config)
        .expect("CreateContainer");
    client.start_container(&id).expect("StartContainer");
    let begin = Instant::now();
    while client.container_status(&id).expect("ContainerStatus").state
        != cri::ContainerState::ContainerRunning as i32
    {
        assert!(
            begin.elapsed() < WAIT_LIMIT,
            "container {id} on {handler} never ran"
        );
        thread::sleep(Duration::from_millis(200));
    }
    (pod, id)
}

/// containerd with `config_file`, none of our variables, and the prefix's `bin` on its
/// `$PATH` (as `/usr/local/bin` is on a system containerd's): containerd 1.6.20 finds a CRI
/// handler's shim there, whatever `runtime_path` says.
fn start_containerd(dir: &Path, config_file: &Path, bin: &Path) -> Containerd {
    let daemon = containerd::Builder::new(containerd::Config::new(dir, image::PAUSE))
        .config_file(config_file)
        .path_first(bin)
        .without_sandbox_vars()
        .start()
        .expect("start containerd");
    image::import(&daemon.ctr(CRI_NAMESPACE)).expect("import the test images");
    daemon
}

/// Every file and directory under `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(tree(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn install_run_containerd_handlers_and_uninstall() {
    let xtask = require!(binaries::XTASK.path());
    require!(artifacts::vmlinux());
    require!(binaries::paths(&[
        binaries::SANDBOX,
        binaries::VMM,
        binaries::SHIM
    ]));
    let dirs = Dirs {
        work: tempfile::Builder::new()
            .prefix("sandbox-install-")
            .tempdir_in("/var/tmp")
            .unwrap(),
        run: Path::new("/run").join(unique("inst")),
        daemon: containerd::private_dir("inst"),
    };
    let daemon_dir = dirs.daemon.clone();
    fs::create_dir_all(&daemon_dir).unwrap();
    let ctrd_config = daemon_dir.join("config.toml");
    let big = dirs.work.path().join("big.toml");
    fs::write(
        &big,
        format!(
            "[vm]\nmemory_mib = {BIG_MEMORY_MIB}\n[image]\ncache = \"{run}/images\"\n\
             [state]\nroot = \"{run}/cli-big\"\nshim_root = \"{run}/shim-big\"\n",
            run = dirs.run.display()
        ),
    )
    .unwrap();
    let user_ctrd = containerd_config(&daemon_dir, &dirs, &big);
    fs::write(&ctrd_config, &user_ctrd).unwrap();

    // Install, as a user would, but into the test's prefix and config path.
    let (prefix, config) = (dirs.prefix(), dirs.config());
    let install_args = [
        "install",
        "--no-build",
        "--prefix",
        prefix.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--containerd",
        "--containerd-config",
        ctrd_config.to_str().unwrap(),
    ];
    let said = ok(run_clean(&xtask, &install_args));
    assert!(said.contains("restart containerd"), "{said}");
    for name in ["sandbox", "sandbox-vmm", "containerd-shim-sandbox-v2"] {
        assert!(dirs.bin(name).is_file(), "{name} not installed: {said}");
    }
    let share = prefix.join("share/sandbox");
    assert!(share.join("vmlinux").is_file() && share.join("rootfs.erofs").is_file());
    let sandbox = dirs.bin("sandbox");
    let installed_config = fs::read_to_string(&config).expect("the default config file");
    assert_eq!(
        installed_config,
        ok(run_clean(&sandbox, &["config", "--default"]))
    );
    // containerd's config keeps every line of the user's and gains the handler; a backup.
    let edited = fs::read_to_string(&ctrd_config).unwrap();
    for line in user_ctrd.lines() {
        assert!(
            edited.lines().any(|l| l == line),
            "{line:?} lost:\n{edited}"
        );
    }
    assert!(edited.contains("runtimes.sandbox]"), "{edited}");
    let backup = daemon_dir.join("config.toml.sandbox-backup");
    assert_eq!(fs::read_to_string(&backup).unwrap(), user_ctrd);

    // A second install changes no config and makes no second backup.
    let said = ok(run_clean(&xtask, &install_args));
    assert!(said.contains("already"), "{said}");
    assert_eq!(fs::read_to_string(&ctrd_config).unwrap(), edited);
    assert_eq!(fs::read_to_string(&config).unwrap(), installed_config);
    assert!(!daemon_dir.join("config.toml.sandbox-backup.1").exists());

    // The guest files default to the prefix's share directory, found from the binary.
    let cfg = config.to_str().unwrap();
    let shown = ok(run_clean(&sandbox, &["--config", cfg, "config"]));
    let kernel = format!("kernel = \"{}\"", share.join("vmlinux").display());
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with(&kernel) && l.contains("# default: ")),
        "{shown}"
    );

    // Private state and images for this test: the install's file with three lines set.
    let private = installed_config
        .replace(
            "# root = \"/run/sandbox\"",
            &format!("root = \"{}/cli\"", dirs.run.display()),
        )
        .replace(
            "# shim_root = \"/run/containerd-shim-sandbox\"",
            &format!("shim_root = \"{}/shim\"", dirs.run.display()),
        )
        .replace(
            "# cache = \"/var/lib/sandbox/images\"",
            &format!("cache = \"{}/images\"", dirs.run.display()),
        );
    assert_ne!(private, installed_config);
    fs::write(&config, &private).unwrap();

    // A bundle runs with no SANDBOX_* variable.
    let bundle = Bundle::new("installed");
    bundle.edit(|spec| {
        spec["process"]["args"] =
            serde_json::json!(["sh", "-c", "echo from-the-installed-runtime; exit 3"]);
    });
    let out = run_clean(
        &sandbox,
        &["--config", cfg, "run", bundle.path().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, "from-the-installed-runtime\n", "{out:?}");

    // containerd with the edited config: each handler's pod gets its own VM size.
    let daemon = start_containerd(&daemon_dir, &ctrd_config, &prefix.join("bin"));
    let client = cri::Client::connect(&daemon.socket()).expect("connect to CRI");
    let logs = daemon_dir.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let (small_pod, small) = pod_with_sleeper(&client, &logs, "sandbox");
    let (big_pod, big_id) = pod_with_sleeper(&client, &logs, BIG_HANDLER);
    let pod_extra = 128;
    assert_eq!(
        vmm_memory_under(&dirs.run.join("shim")),
        Some(128 + pod_extra),
        "the sandbox handler's VM"
    );
    assert_eq!(
        vmm_memory_under(&dirs.run.join("shim-big")),
        Some(BIG_MEMORY_MIB + pod_extra),
        "the {BIG_HANDLER} handler's VM"
    );
    let (small_mib, big_mib) = (
        guest_mem_total_mib(&client, &small),
        guest_mem_total_mib(&client, &big_id),
    );
    let more = big_mib.saturating_sub(small_mib);
    assert!(
        (u64::from(BIG_MEMORY_MIB) - 128 - 16..=u64::from(BIG_MEMORY_MIB) - 128).contains(&more),
        "MemTotal {small_mib} MiB and {big_mib} MiB in the guests"
    );

    // Uninstall refuses while the pods run, and names them.
    let refused = run_clean(&xtask, &["uninstall", "--prefix", prefix.to_str().unwrap()]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("still running")
            && refused
                .stderr
                .contains(&format!("{}/shim/k8s.io", dirs.run.display()))
            && refused
                .stderr
                .contains(&format!("{}/shim-big/k8s.io", dirs.run.display())),
        "{refused:?}"
    );
    assert!(
        dirs.bin("sandbox").is_file(),
        "nothing removed when refused"
    );

    for pod in [&small_pod, &big_pod] {
        client.stop_pod_sandbox(pod).expect("StopPodSandbox");
        client.remove_pod_sandbox(pod).expect("RemovePodSandbox");
    }
    let begin = Instant::now();
    while vmm_memory_under(&dirs.run).is_some() {
        assert!(begin.elapsed() < WAIT_LIMIT, "a pod's VMM outlived its pod");
        thread::sleep(Duration::from_millis(200));
    }

    // Uninstall: the file the install wrote is as it was, so it goes too.
    fs::write(&config, &installed_config).unwrap();
    let said = ok(run_clean(
        &xtask,
        &["uninstall", "--prefix", prefix.to_str().unwrap()],
    ));
    assert_eq!(
        fs::read_to_string(&ctrd_config).unwrap(),
        user_ctrd,
        "{said}"
    );
    assert!(!backup.exists(), "{said}");
    assert_eq!(tree(dirs.work.path()), [big], "left of the install: {said}");
    drop(daemon);
}
