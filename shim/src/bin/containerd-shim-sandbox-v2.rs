//! containerd-shim-sandbox-v2: containerd's runtime `io.containerd.sandbox.v2`. With no
//! action it serves the Task API (`shimv2::serve`); `start` and `delete` are one-shot.

use shim::shimv2::{self, config, serve, start};

fn main() {
    // Before any thread exists: the file's settings become environment defaults.
    if let Err(e) = config::apply_file_defaults() {
        eprintln!("containerd-shim-sandbox-v2: {e}");
        std::process::exit(1);
    }
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-sandbox-v2: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("containerd-shim-sandbox-v2: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        if flags.action.is_empty() && !flags.info && !flags.version {
            if let Err(e) = serve::serve(shimv2::RUNTIME_ID, flags).await {
                log::error!("{e}");
                eprintln!("containerd-shim-sandbox-v2: {e}");
                std::process::exit(1);
            }
        } else if flags.action == "start" {
            // containerd 1.x reads a bare address; the crate answers in 2.x's JSON.
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            }
            match start::start_server(start::legacy_start_opts(&flags)).await {
                Ok(address) => print!("{address}"),
                Err(e) => {
                    eprintln!("containerd-shim-sandbox-v2: start: {e}");
                    std::process::exit(1);
                }
            }
        } else {
            containerd_shim::asynchronous::run::<shimv2::ShimV2>(
                shimv2::RUNTIME_ID,
                Some(start::crate_config()),
            )
            .await;
        }
    });
}
