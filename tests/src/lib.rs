//! Test support shared by xtask and the integration tests: the lab host and guest artifacts.
//! The integration tests themselves live in `tests/`.

pub mod artifacts;
pub mod lab;
