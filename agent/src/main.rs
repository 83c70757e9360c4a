//! sandbox-agent: PID 1 of the guest.
mod init;

fn main() -> anyhow::Result<()> {
    init::setup()?;
    init::report_ready()?;
    // PID 1 must never exit: the kernel would panic.
    loop {
        std::thread::park();
    }
}
