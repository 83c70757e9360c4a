//! sandbox-agent: PID 1 of the guest.
mod init;

fn main() {
    init::setup();
}
