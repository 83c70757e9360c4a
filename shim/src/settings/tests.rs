//! Settings: defaults, the precedence of the layers, and the exact error of each bad input.

use std::path::{Path, PathBuf};

use super::*;

const EXE: &str = "/opt/sb/bin/sandbox";

/// A config file with `text` in a temporary directory.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    ConfigFile { _dir: dir, path }
}

/// Loads with `--config` naming `file` (or /dev/null: no file), the variables `vars` and
/// `--root`.
fn load_from(
    file: Option<&Path>,
    vars: &[(&str, &str)],
    root: Option<&str>,
) -> Result<Settings, Error> {
    let req = Request {
        config: Some((
            file.unwrap_or(Path::new("/dev/null")).to_path_buf(),
            Source::Flag("--config"),
        )),
        root: root.map(PathBuf::from),
    };
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    load_with(&req, &env, Path::new(EXE))
}

/// The error of a file holding `text`, with its path written as `F`.
fn file_error(text: &str) -> String {
    let f = config_file(text);
    let err = load_from(Some(&f.path), &[], None).unwrap_err().to_string();
    err.replace(&f.path.display().to_string(), "F")
}

#[test]
fn defaults_come_from_the_executables_location() {
    let s = load_from(None, &[], None).unwrap();
    assert_eq!(s.vm.vcpus, Setting::default(1));
    assert_eq!(s.vm.memory_mib.value, 128);
    assert_eq!(
        s.vm.kernel.value,
        Path::new("/opt/sb/share/sandbox/vmlinux")
    );
    assert_eq!(
        s.vm.root_image.value,
        Path::new("/opt/sb/share/sandbox/rootfs.erofs")
    );
    assert_eq!(
        s.vm.kernel.source.to_string(),
        "default: the executable's ../share/sandbox (/opt/sb/bin)"
    );
    assert_eq!(s.agent.timeout_secs.value, 120);
    assert_eq!(s.state.root.value, Path::new("/run/sandbox"));
    assert_eq!(
        s.state.shim_root.value,
        Path::new("/run/containerd-shim-sandbox")
    );
    assert_eq!(s.image.cache.value, Path::new("/var/lib/sandbox/images"));
    let cfg = s.cli_config(false);
    assert_eq!(
        cfg.guest_root,
        GuestRoot::Image("/opt/sb/share/sandbox/rootfs.erofs".into())
    );
    assert_eq!(cfg.vmm_log_level, None);
}

#[test]
fn default_file_may_be_absent_but_a_named_one_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone.toml");
    let err = load_from(Some(&gone), &[], None).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "config file {} (named by flag --config): No such file or directory (os error 2)",
            gone.display()
        )
    );
    let by_env = [(CONFIG_ENV, gone.to_str().unwrap())];
    let req = Request::default();
    let env = |n: &str| {
        by_env
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.to_string())
    };
    let err = load_with(&req, &env, Path::new(EXE))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(named by environment $SANDBOX_CONFIG)"),
        "{err}"
    );
}

#[test]
fn layers_apply_in_order_default_file_environment_flag() {
    let f = config_file(
        "# sizes\n[vm]\nvcpus = 2\nmemory_mib = 512\n\n[state]\nroot = \"/run/from-file\"\n\
         [image]\ncache = \"/var/cache/from-file\"\n",
    );
    let s = load_from(
        Some(&f.path),
        &[("SANDBOX_VCPUS", "4"), ("SANDBOX_ROOT", "/run/from-env")],
        Some("/run/from-flag"),
    )
    .unwrap();
    // The file over the default.
    assert_eq!(s.vm.memory_mib.value, 512);
    assert_eq!(
        s.vm.memory_mib.source,
        Source::File {
            path: f.path.clone(),
            line: 4
        }
    );
    assert_eq!(s.image.cache.value, Path::new("/var/cache/from-file"));
    // The environment over the file.
    assert_eq!(s.vm.vcpus.value, 4);
    assert_eq!(s.vm.vcpus.source, Source::Env("SANDBOX_VCPUS"));
    // The flag over the environment.
    assert_eq!(s.state.root.value, Path::new("/run/from-flag"));
    assert_eq!(s.state.root.source, Source::Flag("--root"));
    // Untouched keys keep their defaults.
    assert_eq!(s.agent.timeout_secs.source, Source::Default(None));
    assert!(s.config_found);
}

#[test]
fn an_initrd_replaces_the_root_image() {
    let s = load_from(None, &[("SANDBOX_INITRD", "/g/initramfs.cpio")], None).unwrap();
    assert_eq!(
        s.cli_config(false).guest_root,
        GuestRoot::Initrd("/g/initramfs.cpio".into())
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    assert_eq!(
        file_error("[vm]\nvcpus = 1\nmemroy_mib = 256\n"),
        "F:3:1: vm.memroy_mib: unknown field `memroy_mib`, expected one of `vcpus`, \
         `memory_mib`, `kernel`, `root_image`, `initrd`, `vmm`, `vmm_log_level`"
    );
    assert_eq!(
        file_error("[vmm]\npath = \"/x\"\n"),
        "F:1:2: vmm: unknown field `vmm`, expected one of `vm`, `agent`, `image`, `state`, \
         `network`, `shared_fs`, `confinement`, `templates`"
    );
}

#[test]
fn a_wrong_type_is_named_with_its_line() {
    assert_eq!(
        file_error("[vm]\nmemory_mib = \"512\"\n"),
        "F:2:14: vm.memory_mib: invalid type: string \"512\", expected u32"
    );
    assert_eq!(
        file_error("[templates]\nenabled = \"no\"\n"),
        "F:2:11: templates.enabled: invalid type: string \"no\", expected a boolean"
    );
}

#[test]
fn negative_memory_is_refused() {
    assert_eq!(
        file_error("[vm]\nmemory_mib = -128\n"),
        "F:2:14: vm.memory_mib: invalid value: integer `-128`, expected u32"
    );
}

#[test]
fn out_of_range_values_are_refused() {
    assert_eq!(
        file_error("[vm]\nmemory_mib = 16\n"),
        "F:2:14: vm.memory_mib: must be between 64 and 262144, got 16"
    );
    assert_eq!(
        file_error("[vm]\nvcpus = 0\n"),
        "F:2:9: vm.vcpus: must be between 1 and 32, got 0"
    );
    assert_eq!(
        file_error("[agent]\ntimeout_secs = 0\n"),
        "F:2:16: agent.timeout_secs: must be between 1 and 86400, got 0"
    );
    assert_eq!(
        file_error("[confinement]\nuid_base = 4294967000\nuid_count = 65536\n"),
        "F:3:13: confinement.uid_count: uid_base + uid_count must not pass 2^32 - 1, \
         got 4294967000 + 65536"
    );
}

#[test]
fn a_bad_path_is_refused() {
    assert_eq!(
        file_error("[vm]\nkernel = \"vmlinux\"\n"),
        "F:2:10: vm.kernel: must be an absolute path, got \"vmlinux\""
    );
    assert_eq!(
        file_error("[state]\nroot = \"\"\n"),
        "F:2:8: state.root: must be an absolute path, got \"\""
    );
}

#[test]
fn malformed_toml_names_the_line() {
    assert_eq!(
        file_error("[vm]\nvcpus = 1\nmemory_mib = \n"),
        "F:3:14: string values must be quoted, expected literal string"
    );
    assert_eq!(
        file_error("[vm\nvcpus = 1\n"),
        "F:1:4: unclosed table, expected `]`"
    );
}

#[test]
fn features_not_built_yet_are_refused_by_name() {
    assert_eq!(
        file_error("[confinement]\nseccomp = \"on\"\n"),
        "F:2:11: confinement.seccomp: \"on\" is not available: the VMM has no seccomp \
         filters yet (issue 20); \"off\" is the only value today"
    );
    assert_eq!(
        file_error("[templates]\nenabled = true\n"),
        "F:2:11: templates.enabled: true is not available: sandboxes cannot start from \
         templates yet (issue 21)"
    );
    assert_eq!(
        file_error("[network]\nmodel = \"bridge\"\n"),
        "F:2:9: network.model: expected one of \"none\", \"tc-filter\", got \"bridge\""
    );
    // Today's values are accepted.
    let f = config_file(
        "[network]\nmodel = \"none\"\n[shared_fs]\nkind = \"none\"\ncache = \"never\"\n\
         [confinement]\nseccomp = \"off\"\njailer = false\n[templates]\nenabled = false\n",
    );
    load_from(Some(&f.path), &[], None).unwrap();
}

#[test]
fn bad_variables_and_flags_are_named() {
    let err = |vars: &[(&str, &str)], root: Option<&str>| {
        load_from(None, vars, root).unwrap_err().to_string()
    };
    assert_eq!(
        err(&[("SANDBOX_MEMORY_MIB", "lots")], None),
        "$SANDBOX_MEMORY_MIB=\"lots\": not a number: invalid digit found in string"
    );
    assert_eq!(
        err(&[("SANDBOX_VCPUS", "99")], None),
        "$SANDBOX_VCPUS=\"99\": must be between 1 and 32, got 99"
    );
    assert_eq!(
        err(&[("SANDBOX_KERNEL", "target/guest/vmlinux")], None),
        "$SANDBOX_KERNEL=\"target/guest/vmlinux\": must be an absolute path, got \
         \"target/guest/vmlinux\""
    );
    assert_eq!(
        err(&[("SANDBOX_VMM_LOG", "loud")], None),
        "$SANDBOX_VMM_LOG=\"loud\": expected one of \"error\", \"warn\", \"info\", \"debug\", \
         \"trace\", got \"loud\""
    );
    assert_eq!(
        err(&[], Some("state")),
        "--root \"state\": must be an absolute path, got \"state\""
    );
}

#[test]
fn a_bad_file_fails_even_under_a_variable_that_overrides_it() {
    let f = config_file("[vm]\nvcpus = 0\n");
    let err = load_from(Some(&f.path), &[("SANDBOX_VCPUS", "2")], None).unwrap_err();
    assert!(
        err.to_string().contains("vm.vcpus: must be between"),
        "{err}"
    );
}

#[test]
fn sandbox_config_shows_each_value_and_its_source() {
    let f = config_file("[vm]\nmemory_mib = 256\n");
    let s = load_from(Some(&f.path), &[("SANDBOX_VCPUS", "2")], Some("/run/r")).unwrap();
    let text = show::render(&s);
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("vcpus ="), "vcpus = 2 # environment $SANDBOX_VCPUS");
    assert_eq!(
        line("memory_mib ="),
        format!("memory_mib = 256 # file {}:2", f.path.display())
    );
    assert_eq!(line("root ="), "root = \"/run/r\" # flag --root");
    assert_eq!(line("timeout_secs ="), "timeout_secs = 120 # default");
    assert_eq!(line("# initrd"), "# initrd unset # default");
    assert!(text.contains(&format!(
        "# config file: {} (flag --config)",
        f.path.display()
    )));
    // The output is itself a valid config file with the same values.
    let back = config_file(&text);
    let again = load_from(Some(&back.path), &[], None).unwrap();
    assert_eq!(again.vm.vcpus.value, 2);
    assert_eq!(again.vm.memory_mib.value, 256);
    assert_eq!(again.state.root.value, Path::new("/run/r"));
}

#[test]
fn the_default_file_documents_every_key_with_its_default() {
    let defaults = load_from(None, &[], None).unwrap();
    let text = show::render_default(&defaults);
    assert!(text.contains("\n[vm]\n# vCPUs of each microVM ($SANDBOX_VCPUS)\n# vcpus = 1\n"));
    assert!(
        text.contains("# kernel = \"/opt/sb/share/sandbox/vmlinux\"\n"),
        "{text}"
    );
    // As written it sets nothing; uncommented, it sets every key to its default.
    let as_is = config_file(&text);
    let s = load_from(Some(&as_is.path), &[], None).unwrap();
    assert_eq!(s.vm.memory_mib.source, Source::Default(None));
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv) if kv.contains(" = ") => format!("{kv}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let f = config_file(&uncommented);
    let s = load_from(Some(&f.path), &[], None).unwrap();
    for (got, want) in keys::entries(&s)
        .iter()
        .zip(keys::entries(&defaults).iter())
    {
        assert_eq!(got.value, want.value, "{}.{}", got.section, got.key);
        if want.value.is_some() {
            assert!(matches!(got.source, Source::File { .. }), "{}", got.key);
        }
    }
}
