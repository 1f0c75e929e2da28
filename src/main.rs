//! `shardline`: the command line. It parses, wires and prints; the work is
//! done by the library crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args.global);
    // The router may ask for its own thread count (`--threads`); one
    // thread is tokio's current-thread scheduler, which spares the
    // cross-thread wake-ups a relay of small messages pays for.
    let threads = match &args.command {
        cli::Command::Router(r) => r.threads,
        _ => None,
    };
    let built = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    let format = args.global.format;
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            cli::report_error(&error, format);
            ExitCode::from(cli::exit::code_of(&error))
        }
    }
}
