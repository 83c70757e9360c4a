//! Turns an OCI bundle into a running container.
//! Shared by the in-guest agent and the host's `sandbox --no-vm`.
