//! Test support shared by xtask and the integration tests: the lab host and guest artifacts.
