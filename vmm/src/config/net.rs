//! The `--net` settings (`tap=NAME` or `fd=N`, then `mac=` and `mtu=`) and the JSON file's
//! `net` entries, parsed into `NetConfig`s; every error names the flag or the entry's field.

use std::fmt;
use std::os::fd::RawFd;

use serde::Deserialize;

use super::ConfigError;

/// Longest interface name Linux takes (IFNAMSIZ less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// The MTU range a guest NIC may be given (Linux's ETH_MIN_MTU to the largest IP packet).
pub const MIN_MTU: u64 = 68;
pub const MAX_MTU: u64 = 65535;

/// Where the frames of a virtio-net device come from and go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// A tap interface opened (or created) by name through /dev/net/tun.
    Name(String),
    /// A tap the caller opened and left open across exec, by descriptor number.
    Fd(RawFd),
}

impl fmt::Display for TapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TapSource::Name(name) => write!(f, "tap={name}"),
            TapSource::Fd(fd) => write!(f, "fd={fd}"),
        }
    }
}

/// A virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSource,
    /// The guest NIC's MAC address; without one the guest makes up a random one.
    pub mac: Option<[u8; 6]>,
    /// The MTU offered to the guest (VIRTIO_NET_F_MTU).
    pub mtu: Option<u16>,
}

/// A `net` entry of the JSON file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNet {
    pub tap: Option<String>,
    pub fd: Option<i64>,
    pub mac: Option<String>,
    pub mtu: Option<u64>,
}

const NET_SYNTAX: &str = "expected tap=NAME or fd=N, then optionally mac=MAC and mtu=N";

/// The `--net` flags if any were given, else the file's entries; no tap name or descriptor
/// may be given twice.
pub(super) fn nets(
    flags: Vec<String>,
    entries: Vec<FileNet>,
) -> Result<Vec<NetConfig>, ConfigError> {
    let nets = if flags.is_empty() {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| check_file_net(i, e))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        flags
            .iter()
            .map(|f| parse_net(f))
            .collect::<Result<Vec<_>, _>>()?
    };
    for (i, n) in nets.iter().enumerate() {
        if let Some(j) = nets[..i].iter().position(|m| m.tap == n.tap) {
            let field = if flags.is_empty() {
                format!("net[{i}] (in --config)")
            } else {
                "--net".to_string()
            };
            return Err(ConfigError::Invalid {
                field,
                reason: format!("{} is given twice (also by entry {j})", n.tap),
            });
        }
    }
    Ok(nets)
}

/// Parses `tap=NAME|fd=N[,mac=MAC][,mtu=N]`.
pub(super) fn parse_net(text: &str) -> Result<NetConfig, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        field: "--net".into(),
        reason,
    };
    let mut entry = FileNet::default();
    for part in text.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(invalid(format!("{part:?} is not KEY=VALUE; {NET_SYNTAX}")));
        };
        let slot_taken = match key {
            "tap" => entry.tap.replace(value.to_string()).is_some(),
            "fd" => {
                let fd = value
                    .parse::<i64>()
                    .map_err(|_| invalid(format!("fd={value}: not a number")))?;
                entry.fd.replace(fd).is_some()
            }
            "mac" => entry.mac.replace(value.to_string()).is_some(),
            "mtu" => {
                let mtu = value
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("mtu={value}: not a number")))?;
                entry.mtu.replace(mtu).is_some()
            }
            _ => return Err(invalid(format!("unknown key {key:?}; {NET_SYNTAX}"))),
        };
        if slot_taken {
            return Err(invalid(format!("{key}= is given twice")));
        }
    }
    check_net(entry, |key| match key {
        Some(key) => format!("--net {key}"),
        None => "--net".to_string(),
    })
}

/// Checks entry `index` of the JSON file's `net` list.
fn check_file_net(index: usize, entry: FileNet) -> Result<NetConfig, ConfigError> {
    check_net(entry, |key| match key {
        Some(key) => format!("net[{index}].{key} (in --config)"),
        None => format!("net[{index}] (in --config)"),
    })
}

/// Validates one NIC's settings; `field(Some("mac"))` names the setting at fault (`None`:
/// the entry as a whole).
fn check_net(
    entry: FileNet,
    field: impl Fn(Option<&str>) -> String,
) -> Result<NetConfig, ConfigError> {
    let invalid = |key: Option<&str>, reason: String| ConfigError::Invalid {
        field: field(key),
        reason,
    };
    let tap = match (entry.tap, entry.fd) {
        (Some(_), Some(_)) => {
            return Err(invalid(None, "give tap= or fd=, not both".into()));
        }
        (None, None) => return Err(invalid(None, format!("missing the tap; {NET_SYNTAX}"))),
        (Some(name), None) => TapSource::Name(
            check_ifname(&name).map_err(|r| invalid(Some("tap"), format!("{name:?}: {r}")))?,
        ),
        (None, Some(fd)) => TapSource::Fd(check_fd(fd).map_err(|r| invalid(Some("fd"), r))?),
    };
    let mac = match entry.mac {
        Some(text) => {
            Some(parse_mac(&text).map_err(|r| invalid(Some("mac"), format!("{text:?}: {r}")))?)
        }
        None => None,
    };
    let mtu = match entry.mtu {
        Some(mtu) if (MIN_MTU..=MAX_MTU).contains(&mtu) => Some(mtu as u16),
        Some(mtu) => {
            return Err(invalid(
                Some("mtu"),
                format!("must be between {MIN_MTU} and {MAX_MTU}, got {mtu}"),
            ))
        }
        None => None,
    };
    Ok(NetConfig { tap, mac, mtu })
}

/// An interface name Linux accepts: 1 to 15 bytes, no `/`, `:` or white space, not `.`/`..`.
fn check_ifname(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface names have at most {MAX_IFNAME_LEN} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err("not a valid interface name".into());
    }
    Ok(name.to_string())
}

/// A descriptor number that is open in this process now: what the caller passed across exec.
/// (Checked before the VMM opens anything, so the number cannot be one of its own files.)
fn check_fd(fd: i64) -> Result<RawFd, String> {
    let Ok(fd) = RawFd::try_from(fd) else {
        return Err(format!("{fd}: not a file descriptor number"));
    };
    if fd < 0 {
        return Err(format!("{fd}: not a file descriptor number"));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask about.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "{fd}: not an open file descriptor ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, case-insensitive) as a unicast, non-zero MAC address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let syntax = || "not a MAC address (six hex bytes such as 02:00:00:00:00:01)".to_string();
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(syntax)?;
        if part.len() != 2 {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast address cannot be a NIC's address".into());
    }
    if mac == [0; 6] {
        return Err("the all-zero address cannot be a NIC's address".into());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, VmConfig};
    use clap::Parser;

    fn flags(args: &[&str]) -> Result<Vec<NetConfig>, String> {
        nets(args.iter().map(|s| s.to_string()).collect(), Vec::new()).map_err(|e| e.to_string())
    }

    fn json(text: &str) -> Result<Vec<NetConfig>, String> {
        let entries: Vec<FileNet> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        nets(Vec::new(), entries).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_give_taps_by_name_or_descriptor_with_mac_and_mtu() {
        let n = flags(&["tap=tap0,mac=02:AA:bb:cc:dd:ee,mtu=1400", "fd=2"]).unwrap();
        assert_eq!(
            n,
            vec![
                NetConfig {
                    tap: TapSource::Name("tap0".into()),
                    mac: Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
                    mtu: Some(1400),
                },
                NetConfig {
                    tap: TapSource::Fd(2),
                    mac: None,
                    mtu: None,
                },
            ]
        );
        assert_eq!(n[0].tap.to_string(), "tap=tap0");
        assert_eq!(n[1].tap.to_string(), "fd=2");
    }

    #[test]
    fn bad_flags_name_the_key_at_fault() {
        let cases = [
            ("mac=02:00:00:00:00:01", "--net: missing the tap; expected tap=NAME or fd=N, then optionally mac=MAC and mtu=N"),
            ("tap=t0,fd=2", "--net: give tap= or fd=, not both"),
            ("tap=t0,speed=10", "--net: unknown key \"speed\"; expected tap=NAME or fd=N, then optionally mac=MAC and mtu=N"),
            ("tap=t0,mac", "--net: \"mac\" is not KEY=VALUE; expected tap=NAME or fd=N, then optionally mac=MAC and mtu=N"),
            ("tap=t0,mac=02:00:00:00:00", "--net mac: \"02:00:00:00:00\": not a MAC address (six hex bytes such as 02:00:00:00:00:01)"),
            ("tap=t0,mac=02:00:00:00:00:0g", "--net mac: \"02:00:00:00:00:0g\": not a MAC address (six hex bytes such as 02:00:00:00:00:01)"),
            ("tap=t0,mac=01:00:5e:00:00:01", "--net mac: \"01:00:5e:00:00:01\": a multicast address cannot be a NIC's address"),
            ("tap=t0,mac=00:00:00:00:00:00", "--net mac: \"00:00:00:00:00:00\": the all-zero address cannot be a NIC's address"),
            ("tap=t0,mtu=20", "--net mtu: must be between 68 and 65535, got 20"),
            ("tap=t0,mtu=big", "--net: mtu=big: not a number"),
            ("tap=", "--net tap: \"\": empty interface name"),
            ("tap=a-very-long-name0", "--net tap: \"a-very-long-name0\": interface names have at most 15 bytes"),
            ("tap=a/b", "--net tap: \"a/b\": not a valid interface name"),
            ("tap=t0,tap=t1", "--net: tap= is given twice"),
            ("fd=x", "--net: fd=x: not a number"),
            ("fd=-1", "--net fd: -1: not a file descriptor number"),
        ];
        for (arg, want) in cases {
            assert_eq!(flags(&[arg]).unwrap_err(), want, "for {arg}");
        }
        let e = flags(&["fd=987654"]).unwrap_err();
        assert!(
            e.starts_with("--net fd: 987654: not an open file descriptor"),
            "{e}"
        );
        assert_eq!(
            flags(&["tap=t0", "tap=t0,mac=02:00:00:00:00:01"]).unwrap_err(),
            "--net: tap=t0 is given twice (also by entry 0)"
        );
    }

    #[test]
    fn json_entries_name_the_entry_and_field() {
        let n = json(r#"[{"tap": "tap0", "mac": "02:00:00:00:00:07"}, {"fd": 1, "mtu": 9000}]"#)
            .unwrap();
        assert_eq!(n[0].mac, Some([2, 0, 0, 0, 0, 7]));
        assert_eq!((&n[1].tap, n[1].mtu), (&TapSource::Fd(1), Some(9000)));
        assert_eq!(
            json(r#"[{"tap": "t0"}, {"tap": "t1", "mac": "zz"}]"#).unwrap_err(),
            "net[1].mac (in --config): \"zz\": not a MAC address (six hex bytes such as 02:00:00:00:00:01)"
        );
        assert_eq!(
            json(r#"[{"mac": "02:00:00:00:00:01"}]"#).unwrap_err(),
            "net[0] (in --config): missing the tap; expected tap=NAME or fd=N, then optionally mac=MAC and mtu=N"
        );
        assert_eq!(
            json(r#"[{"fd": 1}, {"fd": 1}]"#).unwrap_err(),
            "net[1] (in --config): fd=1 is given twice (also by entry 0)"
        );
        let e = json(r#"[{"tap": "t0", "speed": 10}]"#).unwrap_err();
        assert!(e.starts_with("unknown field `speed`"), "{e}");
    }

    #[test]
    fn the_flags_replace_the_file_entries() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"x").unwrap();
        let config = dir.path().join("vm.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"kernel": "{}", "net": [{{"tap": "from-file"}}]}}"#,
                kernel.display()
            ),
        )
        .unwrap();
        let from = |extra: &[&str]| {
            let args = ["sandbox-vmm", "--config", config.to_str().unwrap()];
            let cli = Cli::try_parse_from(args.iter().chain(extra)).unwrap();
            VmConfig::from_cli(cli).unwrap().nets
        };
        assert_eq!(from(&[])[0].tap, TapSource::Name("from-file".into()));
        let n = from(&["--net", "tap=a", "--net", "tap=b"]);
        let taps: Vec<String> = n.iter().map(|n| n.tap.to_string()).collect();
        assert_eq!(taps, ["tap=a", "tap=b"]);
    }
}
