//! `boot-to-agent`: VMM start → `SANDBOX-AGENT-READY` on the console, our VMM against QEMU
//! microvm with the same kernel and root image (the timed boot of `sandbox_tests::boot`).

use indicatif::ProgressBar;
use sandbox_tests::boot::{BootConfig, BootReport};

use super::report::Row;
use super::Guest;

const PEER: &str = "qemu microvm";

/// `rounds` boots of each (one untimed first), alternating which goes first.
pub fn run(guest: &Guest, rounds: usize, bar: &ProgressBar) -> Row {
    let ours = guest.config_ours();
    let peer = guest.config_peer();
    match measure(&ours, &peer, rounds, bar) {
        Ok(row) => row,
        Err(e) => Row::failed("boot-to-agent", "ms", PEER, &[], e.to_string()),
    }
    .goal("ratio <= 0.5")
}

fn measure(
    ours: &BootConfig,
    peer: &BootConfig,
    rounds: usize,
    bar: &ProgressBar,
) -> Result<Row, sandbox_tests::boot::Error> {
    ours.run()?;
    peer.run()?;
    let (mut o, mut p): (Vec<BootReport>, Vec<BootReport>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            o.push(ours.run()?);
            p.push(peer.run()?);
        } else {
            p.push(peer.run()?);
            o.push(ours.run()?);
        }
        bar.inc(1);
    }
    let ms = |v: &[BootReport]| {
        v.iter()
            .map(|r| r.wall.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>()
    };
    let guest_ms = |v: &[BootReport]| {
        let mut g: Vec<u64> = v.iter().map(|r| r.guest_ms).collect();
        g.sort_unstable();
        g[g.len() / 2]
    };
    let row = Row::measured("boot-to-agent", "ms", &ms(&o), PEER, &ms(&p))
        .expect("rounds >= 1")
        .notes(format!(
            "in the lab (nested KVM under TCG: compare ratios, not absolute times); same \
             vmlinux + root image (virtio-pmem, DAX), {} MiB, 1 vCPU; guest clock at ready, median: ours {} ms, \
             peer {} ms",
            sandbox_tests::boot::MEMORY_MIB,
            guest_ms(&o),
            guest_ms(&p)
        ));
    Ok(row)
}
