//! The agent API (ttrpc over vsock) between the host controller and the agent.
