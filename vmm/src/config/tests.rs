//! Tests of the configuration: flags, the JSON file, their merge, and error messages.

use super::*;
use clap::Parser;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("sandbox-vmm").chain(args.iter().copied())).unwrap()
}

fn err(args: &[&str]) -> String {
    VmConfig::from_cli(cli(args)).unwrap_err().to_string()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"x").unwrap();
        std::fs::write(dir.path().join("disk"), b"x").unwrap();
        Self { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
fn defaults_apply_with_only_a_kernel() {
    let f = Files::new();
    let c = VmConfig::from_cli(cli(&["--kernel", &f.path("vmlinux")])).unwrap();
    assert_eq!(c.vcpus, 1);
    assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
    assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    assert_eq!(c.serial, SerialOutput::Stdout);
    assert!(c.blocks.is_empty() && c.vsock.is_none() && c.api_sock.is_none());
    assert!(!c.balloon);
}

#[test]
fn all_flags_parse() {
    let f = Files::new();
    let sock = f.path("v.sock");
    let c = VmConfig::from_cli(cli(&[
        "--kernel",
        &f.path("vmlinux"),
        "--initrd",
        &f.path("disk"),
        "--cmdline",
        "console=ttyS0",
        "--vcpus",
        "4",
        "--memory",
        "128",
        "--serial",
        &f.path("serial.log"),
        "--block",
        &f.path("disk"),
        "--block",
        &format!("{},ro", f.path("disk")),
        "--pmem",
        &format!("{},ro", f.path("disk")),
        "--vsock",
        &format!("3,{sock}"),
        "--api-sock",
        &f.path("api.sock"),
        "--balloon",
        "--debug",
    ]))
    .unwrap();
    assert_eq!(c.vcpus, 4);
    assert_eq!(c.memory_mib, 128);
    assert_eq!(c.cmdline, "console=ttyS0");
    assert_eq!(c.serial, SerialOutput::File(f.path("serial.log").into()));
    assert_eq!(c.blocks.len(), 2);
    assert!(!c.blocks[0].read_only && c.blocks[1].read_only);
    assert_eq!(c.pmems.len(), 1);
    assert!(c.pmems[0].read_only);
    assert_eq!(
        c.vsock,
        Some(VsockConfig {
            cid: 3,
            uds_path: sock.into()
        })
    );
    assert!(c.balloon);
    assert!(c.debug);
}

#[test]
fn bad_flags_name_the_flag_and_the_reason() {
    let f = Files::new();
    let k = f.path("vmlinux");
    assert_eq!(err(&[]), "--kernel: required");
    assert_eq!(err(&["--kernel", "/x"]), "--kernel: /x: No such file");
    assert_eq!(
        err(&["--kernel", &k, "--vcpus", "0"]),
        "--vcpus: must be between 1 and 32, got 0"
    );
    assert_eq!(
        err(&["--kernel", &k, "--vcpus", "33"]),
        "--vcpus: must be between 1 and 32, got 33"
    );
    assert_eq!(
        err(&["--kernel", &k, "--vcpus", "two"]),
        "--vcpus: not a number: \"two\""
    );
    assert_eq!(
        err(&["--kernel", &k, "--memory", "1"]),
        "--memory: must be between 2 and 262144 MiB, got 1"
    );
    assert_eq!(
        err(&["--kernel", &k, "--initrd", "/nope"]),
        "--initrd: /nope: No such file"
    );
    assert_eq!(
        err(&["--kernel", &k, "--block", "/nope,ro"]),
        "--block: /nope: No such file"
    );
    assert_eq!(
        err(&["--kernel", &k, "--block", &format!("{},rx", f.path("disk"))]),
        "--block: unknown option \"rx\"; expected PATH[,ro]"
    );
    assert_eq!(
        err(&["--kernel", &k, "--pmem", "/nope.img,ro"]),
        "--pmem: /nope.img: No such file"
    );
    assert_eq!(
        err(&["--kernel", &k, "--pmem", &format!("{},dax", f.path("disk"))]),
        "--pmem: unknown option \"dax\"; expected PATH[,ro]"
    );
    assert_eq!(
        err(&["--kernel", &k, "--vsock", "3"]),
        "--vsock: expected CID,PATH, got \"3\""
    );
    assert_eq!(
        err(&["--kernel", &k, "--vsock", "2,/tmp/v.sock"]),
        "--vsock: guest CID must be between 3 and 4294967294, got 2"
    );
    assert_eq!(
        err(&["--kernel", &k, "--serial", "/no/such/dir/log"]),
        "--serial: /no/such/dir: directory does not exist"
    );
    assert_eq!(
        err(&["--kernel", &k, "--api-sock", &k]),
        format!("--api-sock: {k}: already exists")
    );
    assert_eq!(
        err(&["--kernel", &k, "--cmdline", "a\nb"]),
        "--cmdline: must be printable ASCII"
    );
}

#[test]
fn json_file_is_read_and_flags_override_it() {
    let f = Files::new();
    let json = f.path("vm.json");
    std::fs::write(
        &json,
        format!(
            r#"{{"kernel": "{}", "vcpus": 2, "memory_mib": 64, "serial": "none",
                "block": [{{"path": "{}", "read_only": true}}],
                "pmem": [{{"path": "{}"}}],
                "vsock": {{"cid": 7, "uds_path": "{}"}}, "balloon": true}}"#,
            f.path("vmlinux"),
            f.path("disk"),
            f.path("disk"),
            f.path("v.sock")
        ),
    )
    .unwrap();
    let c = VmConfig::from_cli(cli(&["--config", &json, "--memory", "32"])).unwrap();
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.memory_mib, 32);
    assert_eq!(c.serial, SerialOutput::None);
    assert!(c.blocks[0].read_only);
    assert!(!c.pmems[0].read_only);
    assert_eq!(c.vsock.unwrap().cid, 7);
    assert!(c.balloon);
}

#[test]
fn bad_json_names_the_field() {
    let f = Files::new();
    let json = f.path("vm.json");
    std::fs::write(
        &json,
        format!(r#"{{"kernel": "{}", "vcpus": 0}}"#, f.path("vmlinux")),
    )
    .unwrap();
    assert_eq!(
        err(&["--config", &json]),
        "vcpus (in --config): must be between 1 and 32, got 0"
    );
    std::fs::write(&json, r#"{"kernel": "/k", "cpus": 1}"#).unwrap();
    let e = err(&["--config", &json]);
    assert!(
        e.starts_with(&format!("--config {json}: unknown field `cpus`")),
        "{e}"
    );
    std::fs::write(&json, r#"{"kernel": "/nope"}"#).unwrap();
    assert_eq!(
        err(&["--config", &json]),
        "kernel (in --config): /nope: No such file"
    );
    assert_eq!(
        err(&["--config", "/nope.json"]),
        "--config /nope.json: No such file"
    );
}
