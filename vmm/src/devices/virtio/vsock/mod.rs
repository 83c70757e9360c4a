//! virtio-vsock (virtio 1.2, section 5.10) in userspace, with the host end on a Unix socket
//! in Firecracker's hybrid convention (`CONNECT <port>\n` → `OK <hostport>\n`).
