//! Test support shared by xtask and the integration tests: the lab host, guest artifacts and
//! the timed guest boot. The integration tests themselves live in `tests/`.

pub mod artifacts;
pub mod bare_guest;
pub mod binaries;
pub mod boot;
pub mod bundle;
pub mod containerd;
pub mod image;
pub mod lab;
pub mod prereq;
