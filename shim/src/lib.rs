//! Host controller shared by the `sandbox` CLI and the containerd shim.
