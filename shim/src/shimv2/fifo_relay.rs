//! Stdio of a task's process: containerd's FIFOs relayed to and from the agent's stdio
//! streams, one thread per direction; the output threads are joined before the exit is
//! published so the last byte always precedes TaskExit.

use std::fs::{File, OpenOptions};
use std::io;
use std::thread::JoinHandle;

use crate::agent_client::{
    self, pump, AgentClient, OutputPumps, StdioSet, StdioStream, StreamKind,
};

use super::process::StdioPaths;

/// The streams to announce to the agent for these paths (a terminal's single tty stream
/// needs none announced: the agent creates it with the pty).
pub fn announced(stdio: &StdioPaths) -> StdioSet {
    if stdio.terminal {
        return StdioSet::default();
    }
    StdioSet {
        stdin: !stdio.stdin.is_empty(),
        stdout: !stdio.stdout.is_empty(),
        stderr: !stdio.stderr.is_empty(),
    }
}

/// Attaches the announced streams of (container, exec) and starts relaying them.
pub fn attach(
    client: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stdio: &StdioPaths,
) -> Result<OutputPumps, agent_client::Error> {
    let open = |kind| client.open_stream(container_id, exec_id, kind);
    let mut relays = OutputPumps::default();
    if stdio.terminal {
        let tty = open(StreamKind::Tty)?;
        if !stdio.stdin.is_empty() {
            match tty.try_clone() {
                Ok(input) => spawn_input(stdio.stdin.clone(), input),
                Err(e) => log::warn!("cloning the tty stream of {container_id}: {e}"),
            }
        }
        relays.push(spawn_output(stdio.stdout.clone(), tty));
        return Ok(relays);
    }
    let set = announced(stdio);
    if set.stdin {
        spawn_input(stdio.stdin.clone(), open(StreamKind::Stdin)?);
    }
    if set.stdout {
        let s = open(StreamKind::Stdout)?;
        relays.push(spawn_output(stdio.stdout.clone(), s));
    }
    if set.stderr {
        let s = open(StreamKind::Stderr)?;
        relays.push(spawn_output(stdio.stderr.clone(), s));
    }
    Ok(relays)
}

/// containerd's stdin FIFO into the stream until EOF, then a half-close (EOF for the
/// process). Opening blocks until containerd opens the writing end; the thread is detached.
fn spawn_input(fifo: String, mut to: StdioStream) {
    std::thread::spawn(move || {
        match File::open(&fifo) {
            Ok(mut from) => {
                if pump(&mut from, &mut to).is_err() {
                    return;
                }
            }
            Err(e) => log::warn!("stdin FIFO {fifo}: {e}"),
        }
        let _ = to.close_write();
    });
}

/// The stream's output into a FIFO until EOF. If the FIFO cannot be opened or its reader
/// went away, the rest is read and dropped so the process never blocks on a full pipe.
fn spawn_output(fifo: String, mut from: StdioStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if !fifo.is_empty() {
            match OpenOptions::new().write(true).open(&fifo) {
                Ok(mut to) => match pump(&mut from, &mut to) {
                    Ok(_) => return,
                    Err(e) => log::warn!("output FIFO {fifo}: {e}"),
                },
                Err(e) => log::warn!("output FIFO {fifo}: {e}"),
            }
        }
        let _ = io::copy(&mut from, &mut io::sink());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fifos_containerd_passed_are_announced() {
        let paths = StdioPaths {
            stdin: String::new(),
            stdout: "/f/out".into(),
            stderr: "/f/err".into(),
            terminal: false,
        };
        assert_eq!(
            announced(&paths),
            StdioSet {
                stdin: false,
                stdout: true,
                stderr: true
            }
        );
        let tty = StdioPaths {
            terminal: true,
            ..paths
        };
        assert_eq!(announced(&tty), StdioSet::default());
    }

    #[test]
    fn copy_moves_everything_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        assert_eq!(pump(&mut &data[..], &mut out).unwrap(), data.len() as u64);
        assert_eq!(out, data);
    }
}
