//! The agent's settings: where to listen and what to touch, from argv and the kernel cmdline.
//! As PID 1 the defaults serve vsock; on a host, tests pass Unix socket addresses instead.

use std::path::PathBuf;

use thiserror::Error;

use crate::listener::{Address, AddressError};

/// Errors in the agent's command line.
#[derive(Debug, Error)]
pub enum Error {
    #[error("flag {flag} needs a value")]
    MissingValue { flag: String },
    #[error("flag {flag}: {source}")]
    BadAddress {
        flag: &'static str,
        source: AddressError,
    },
    #[error("unknown argument {0:?} (flags: --listen, --stdio-listen, --resolv-conf, --run-dir, --debug)")]
    Unknown(String),
}

/// What the agent serves and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// The ttrpc API: `vsock://-1:1024` or `unix:///path`.
    pub listen: Address,
    /// The stdio streams: `vsock://-1:1025` or `unix:///path`.
    pub stdio_listen: Address,
    /// Where CreateSandbox writes DNS settings; `None` ignores them (host test runs).
    pub resolv_conf: Option<PathBuf>,
    /// Container bundles and runtime state live here (a tmpfs in the guest).
    pub run_dir: PathBuf,
    pub debug: bool,
    pub pid1: bool,
}

impl Config {
    /// Parses `args` (without argv\[0\]). As PID 1, unknown words are ignored: the kernel
    /// hands init every command-line word it does not understand.
    pub fn parse(args: &[String], pid1: bool, kernel_cmdline: &str) -> Result<Config, Error> {
        let mut config = Config {
            listen: Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: protocol::AGENT_VSOCK_PORT,
            },
            stdio_listen: Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: protocol::STDIO_VSOCK_PORT,
            },
            resolv_conf: pid1.then(|| PathBuf::from("/etc/resolv.conf")),
            run_dir: PathBuf::from("/run/sandbox"),
            debug: kernel_cmdline
                .split_whitespace()
                .any(|w| w == "sandbox.debug"),
            pid1,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| {
                it.next().cloned().ok_or_else(|| Error::MissingValue {
                    flag: flag.to_string(),
                })
            };
            match arg.as_str() {
                "--listen" => {
                    config.listen =
                        value("--listen")?
                            .parse()
                            .map_err(|source| Error::BadAddress {
                                flag: "--listen",
                                source,
                            })?
                }
                "--stdio-listen" => {
                    config.stdio_listen =
                        value("--stdio-listen")?
                            .parse()
                            .map_err(|source| Error::BadAddress {
                                flag: "--stdio-listen",
                                source,
                            })?
                }
                "--resolv-conf" => config.resolv_conf = Some(value("--resolv-conf")?.into()),
                "--run-dir" => config.run_dir = value("--run-dir")?.into(),
                "--debug" => config.debug = true,
                other if pid1 => log::debug!("ignoring argument {other:?}"),
                other => return Err(Error::Unknown(other.to_string())),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pid1_defaults_to_vsock_ports_and_ignores_kernel_words() {
        let c = Config::parse(&args(&["quiet"]), true, "console=ttyS0 sandbox.debug").unwrap();
        assert_eq!(
            c.listen,
            Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1024
            }
        );
        assert_eq!(
            c.stdio_listen,
            Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1025
            }
        );
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
        assert!(c.debug);
    }

    #[test]
    fn host_run_takes_unix_addresses_and_rejects_unknown_flags() {
        let c = Config::parse(
            &args(&[
                "--listen",
                "unix:///tmp/a.sock",
                "--stdio-listen",
                "unix:///tmp/b.sock",
                "--run-dir",
                "/tmp/run",
            ]),
            false,
            "",
        )
        .unwrap();
        assert_eq!(c.listen, Address::Unix("/tmp/a.sock".into()));
        assert_eq!(c.stdio_listen, Address::Unix("/tmp/b.sock".into()));
        assert_eq!(c.resolv_conf, None);
        assert_eq!(c.run_dir, PathBuf::from("/tmp/run"));
        assert!(matches!(
            Config::parse(&args(&["--bogus"]), false, ""),
            Err(Error::Unknown(a)) if a == "--bogus"
        ));
        assert!(matches!(
            Config::parse(&args(&["--listen"]), false, ""),
            Err(Error::MissingValue { flag }) if flag == "--listen"
        ));
        assert!(matches!(
            Config::parse(&args(&["--listen", "tcp://x"]), false, ""),
            Err(Error::BadAddress {
                flag: "--listen",
                ..
            })
        ));
    }
}
