//! containerd's config.toml (version 2) for a private test daemon: its own root, state and
//! socket, the CRI plugin with host networking only, and the runtimes the tests name.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One runtime (CRI handler name → shim v2 runtime type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// The CRI RuntimeClass handler, e.g. `runc`, `sandbox`.
    pub handler: String,
    /// The shim v2 runtime type, e.g. `io.containerd.runc.v2`; containerd runs the binary
    /// `containerd-shim-<name>-<version>` found on its PATH.
    pub runtime_type: String,
}

impl Runtime {
    pub fn new(handler: &str, runtime_type: &str) -> Runtime {
        Runtime {
            handler: handler.into(),
            runtime_type: runtime_type.into(),
        }
    }
}

/// Everything the generated config depends on.
#[derive(Clone, Debug)]
pub struct Config {
    /// The private directory: root, state, socket, CNI and opt dirs all live under it.
    pub dir: PathBuf,
    /// The CRI pause image (must be imported into `k8s.io` before the first pod).
    pub sandbox_image: String,
    /// `overlayfs` or `native`.
    pub snapshotter: String,
    /// The first one is the CRI default.
    pub runtimes: Vec<Runtime>,
    /// containerd's log level.
    pub log_level: String,
}

/// The runtime type of our shim (`containerd-shim-sandbox-v2`).
pub const SANDBOX_RUNTIME: &str = "io.containerd.sandbox.v2";
/// runc's shim, shipped with Debian's containerd.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// Plugins that only log noise (or probe hardware) on a test host.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

impl Config {
    /// The defaults: overlayfs, runtimes `runc` (default) and `sandbox`.
    pub fn new(dir: &Path, sandbox_image: &str) -> Config {
        Config {
            dir: dir.to_owned(),
            sandbox_image: sandbox_image.into(),
            snapshotter: "overlayfs".into(),
            runtimes: vec![
                Runtime::new("runc", RUNC_RUNTIME),
                Runtime::new("sandbox", SANDBOX_RUNTIME),
            ],
            log_level: "info".into(),
        }
    }

    /// The gRPC socket (ctr and CRI).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Empty CNI directories: pods use the host network, so no CNI plugin runs.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni").join("bin")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni").join("conf")
    }

    /// The directories containerd expects to exist.
    pub fn dirs(&self) -> Vec<PathBuf> {
        vec![
            self.root(),
            self.state(),
            self.cni_bin_dir(),
            self.cni_conf_dir(),
            self.dir.join("opt"),
        ]
    }

    /// The config.toml text.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        let _ = writeln!(s, "version = 2");
        let _ = writeln!(s, "root = {}", quote(&self.root()));
        let _ = writeln!(s, "state = {}", quote(&self.state()));
        let _ = writeln!(
            s,
            "disabled_plugins = [{}]",
            DISABLED_PLUGINS
                .iter()
                .map(|p| quote_str(p))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "\n[grpc]\n  address = {}", quote(&self.socket()));
        let _ = writeln!(
            s,
            "\n[ttrpc]\n  address = {}",
            quote(&self.dir.join("containerd.sock.ttrpc"))
        );
        let _ = writeln!(
            s,
            "\n[debug]\n  address = \"\"\n  level = {}",
            quote_str(&self.log_level)
        );
        let _ = writeln!(s, "\n[metrics]\n  address = \"\"");
        let _ = writeln!(
            s,
            "\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}",
            quote(&self.dir.join("opt"))
        );
        let _ = writeln!(s, "\n[{cri}]");
        let _ = writeln!(s, "  sandbox_image = {}", quote_str(&self.sandbox_image));
        // The kernel refuses an oom_score_adj below the shim's own on this host.
        let _ = writeln!(s, "  restrict_oom_score_adj = true");
        let _ = writeln!(s, "  stream_server_address = \"127.0.0.1\"");
        let _ = writeln!(s, "  stream_server_port = \"0\"");
        let _ = writeln!(s, "\n[{cri}.containerd]");
        let _ = writeln!(s, "  snapshotter = {}", quote_str(&self.snapshotter));
        if let Some(first) = self.runtimes.first() {
            let _ = writeln!(s, "  default_runtime_name = {}", quote_str(&first.handler));
        }
        for rt in &self.runtimes {
            let _ = writeln!(s, "\n[{cri}.containerd.runtimes.{}]", rt.handler);
            let _ = writeln!(s, "  runtime_type = {}", quote_str(&rt.runtime_type));
            // Hand every pod annotation to the shim (it finds the pod's VM by them).
            let _ = writeln!(s, "  pod_annotations = [\"*\"]");
            let _ = writeln!(s, "  container_annotations = [\"*\"]");
        }
        let _ = writeln!(s, "\n[{cri}.cni]");
        let _ = writeln!(s, "  bin_dir = {}", quote(&self.cni_bin_dir()));
        let _ = writeln!(s, "  conf_dir = {}", quote(&self.cni_conf_dir()));
        s
    }
}

/// A TOML basic string.
fn quote_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote(p: &Path) -> String {
    quote_str(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(Path::new("/run/t-1"), "localhost/x:pause")
    }

    #[test]
    fn paths_live_under_the_private_dir() {
        let c = config();
        let toml = c.to_toml();
        for line in [
            "root = \"/run/t-1/root\"",
            "state = \"/run/t-1/state\"",
            "  address = \"/run/t-1/containerd.sock\"",
            "  path = \"/run/t-1/opt\"",
            "  bin_dir = \"/run/t-1/cni/bin\"",
            "  conf_dir = \"/run/t-1/cni/conf\"",
        ] {
            assert!(toml.lines().any(|l| l == line), "{line:?} missing:\n{toml}");
        }
        assert!(c.dirs().iter().all(|d| d.starts_with("/run/t-1")));
        assert_eq!(c.socket(), Path::new("/run/t-1/containerd.sock"));
    }

    #[test]
    fn cri_settings_the_tests_need() {
        let toml = config().to_toml();
        assert!(toml.starts_with("version = 2\n"), "{toml}");
        for line in [
            "[plugins.\"io.containerd.grpc.v1.cri\"]",
            "  restrict_oom_score_adj = true",
            "  sandbox_image = \"localhost/x:pause\"",
            "  snapshotter = \"overlayfs\"",
            "  default_runtime_name = \"runc\"",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]",
            "  runtime_type = \"io.containerd.runc.v2\"",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sandbox]",
            "  runtime_type = \"io.containerd.sandbox.v2\"",
        ] {
            assert!(toml.lines().any(|l| l == line), "{line:?} missing:\n{toml}");
        }
    }

    #[test]
    fn the_snapshotter_and_runtimes_follow_the_fields() {
        let mut c = config();
        c.snapshotter = "native".into();
        c.runtimes = vec![Runtime::new("sandbox", SANDBOX_RUNTIME)];
        let toml = c.to_toml();
        assert!(toml.contains("  snapshotter = \"native\"\n"), "{toml}");
        assert!(
            toml.contains("  default_runtime_name = \"sandbox\"\n"),
            "{toml}"
        );
        assert!(!toml.contains("runtimes.runc"), "{toml}");
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(quote_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote_str("a\nb"), "\"a\\u000ab\"");
    }
}
