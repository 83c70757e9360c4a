//! `cargo xtask demo`: sets everything up, then shows the guest booting to agent-ready
//! under the reference VMM in the lab (later issues turn it into a container demo).

use anyhow::Result;

use crate::{boot, setup};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    setup::run(setup::Args::default())?;
    boot::run(boot::Args {
        vmm: boot::VmmKind::Qemu,
        rounds: 1,
        timeout: 900,
        inside: false,
    })
}
