//! sandbox-agent: PID 1 of the guest. Mounts the basics, reaps orphans, serves the agent API
//! (ttrpc) and the stdio streams on vsock; on a host it can serve Unix sockets for tests.

// Non-test code reports failures instead of panicking on them.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod cad;
mod config;
mod console;
mod containers;
mod events;
mod guest_processes;
mod init;
mod kernel_params;
mod listener;
mod logger;
mod oom;
mod process_table;
mod reaper;
mod runtime_helper;
mod sandbox;
mod service;
mod spawn;
mod stats;
mod stdio_server;
mod switch_root;

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::config::Config;
use crate::containers::Containers;
use crate::events::EventQueue;
use crate::listener::{Address, Listener};
use crate::process_table::ProcessTable;
use crate::reaper::Reaper;
use crate::service::AgentService;

fn main() {
    // One malloc arena: glibc otherwise gives each of the agent's threads an arena of its own,
    // each keeping freed memory, which in the guest is RAM the host has to back.
    // SAFETY: mallopt only sets an allocator parameter; no allocation is in flight yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(runtime_helper::FLAG) {
        std::process::exit(runtime_helper::main(&args[1..]));
    }
    if init::is_pid1() && switch_root::needed() {
        if let Err(e) = switch_root::switch() {
            // Containers then cannot pivot_root.
            eprintln!("sandbox-agent: {e}; staying on the initramfs");
        }
    }
    if let Err(e) = run(&args) {
        log::error!("{e:#}");
        eprintln!("sandbox-agent: {e:#}");
        if init::is_pid1() {
            // PID 1 must not exit (the kernel would panic); stop the VM instead.
            power_off();
        }
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    init::setup().context("early init")?;
    let pid1 = init::is_pid1();
    let cmdline = if pid1 {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let config = Config::parse(args, pid1, &cmdline)?;
    logger::init(config.debug);
    if pid1 {
        match kernel_params::apply(&cmdline) {
            Ok(Some(order)) => log::debug!("free page reporting from order {order}"),
            Ok(None) => {}
            Err(e) => log::warn!("{e}"),
        }
    }

    // Before any thread exists, so every thread inherits the blocked SIGCHLD.
    let reaper = Arc::new(Reaper::new()?);
    if pid1 {
        // Also before any thread: Ctrl-Alt-Del (the VMM's graceful shutdown) as SIGINT.
        cad::route_to_sigint()?;
    }
    let own_uts = pid1 || private_namespaces();
    if !pid1 {
        reaper.become_subreaper()?;
    }

    let processes = Arc::new(ProcessTable::default());
    let events = Arc::new(EventQueue::default());
    start_reaper(reaper.clone(), processes.clone(), events.clone())?;

    let stdio_listener = Listener::bind(&config.stdio_listen)
        .with_context(|| format!("listening for stdio streams on {}", config.stdio_listen))?;
    {
        let processes = processes.clone();
        thread::Builder::new()
            .name("stdio-accept".into())
            .spawn(move || stdio_server::serve(stdio_listener, processes))
            .context("starting the stdio thread")?;
    }

    let (shutdown_tx, shutdown_rx) = mpsc::channel();
    if pid1 {
        let tx = shutdown_tx.clone();
        cad::watch(processes.clone(), move || {
            let _ = tx.send(());
        })?;
    }
    let oom = Arc::new(oom::OomWatch::new()?);
    let service = AgentService {
        containers: Containers::new(
            config.run_dir.clone(),
            processes.clone(),
            reaper.clone(),
            oom.clone(),
        ),
        config: config.clone(),
        reaper,
        processes: processes.clone(),
        events,
        own_uts,
        shutdown: shutdown_tx,
    };
    let service = Arc::new(service);
    let mut server = ttrpc::Server::new()
        .bind(&config.listen.to_string())
        .with_context(|| format!("listening for the agent API on {}", config.listen))?
        .register_service(protocol::agent_ttrpc::create_agent(service.clone()));
    server
        .start()
        .with_context(|| format!("starting the agent API on {}", config.listen))?;
    log::info!(
        "serving the agent API on {} and stdio on {}",
        config.listen,
        config.stdio_listen
    );
    {
        let service = service.clone();
        thread::Builder::new()
            .name("oom-watch".into())
            .spawn(move || {
                oom.run(
                    || service.containers.oom_watch_list(),
                    |id, kills| {
                        log::warn!("container {id}: OOM kill (count {kills})");
                        service.events.push(crate::events::oom_event(id));
                    },
                )
            })
            .context("starting the OOM watch thread")?;
    }
    init::report_ready().context("reporting readiness")?;

    // Shutdown: the only way out.
    let _ = shutdown_rx.recv();
    // Let the Shutdown reply leave before connections drop; the host accepts either.
    thread::sleep(Duration::from_millis(20));
    service.containers.teardown();
    finish(&config, &processes);
    Ok(())
}

/// On a host run, unshares the UTS and mount namespaces so CreateSandbox's hostname and the
/// containers' rootfs mounts stay private to this agent and vanish with it. Returns whether
/// the hostname is private.
fn private_namespaces() -> bool {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let uts = match unshare(CloneFlags::CLONE_NEWUTS) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("no private UTS namespace ({e}); CreateSandbox will refuse hostnames");
            false
        }
    };
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    let mounts = unshare(CloneFlags::CLONE_NEWNS)
        .and_then(|()| mount(None::<&str>, "/", None::<&str>, private, None::<&str>));
    if let Err(e) = mounts {
        log::warn!("no private mount namespace ({e}); container mounts are visible on the host");
    }
    uts
}

fn start_reaper(
    reaper: Arc<Reaper>,
    processes: Arc<ProcessTable>,
    events: Arc<EventQueue>,
) -> Result<()> {
    thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            reaper.run(|pid, status| match processes.record_exit(pid, status) {
                Some(p) => {
                    log::info!(
                        "process {:?}/{:?} pid {pid} ended: {status:?}",
                        p.container_id,
                        p.exec_id
                    );
                    events.push(crate::events::exit_event(&p, pid, status));
                }
                None => log::debug!("reaped orphan pid {pid}: {status:?}"),
            })
        })
        .context("starting the reaper thread")?;
    Ok(())
}

/// Ends the sandbox: as PID 1 kill everything and power off; on a host kill our processes,
/// remove our sockets and exit.
fn finish(config: &Config, processes: &ProcessTable) {
    for p in processes.all() {
        let _ = p.signal(Signal::SIGKILL);
    }
    if config.pid1 {
        // SIGKILL to -1 reaches every process but init.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGKILL);
        power_off();
    }
    for address in [&config.listen, &config.stdio_listen] {
        if let Address::Unix(path) = address {
            let _ = std::fs::remove_file(path);
        }
    }
    log::info!("shut down");
    std::process::exit(0);
}

fn power_off() -> ! {
    nix::unistd::sync();
    // With reboot=k the VMM sees the reset and ends the VM.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        thread::park();
    }
}
