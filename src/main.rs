//! `shardline`: the command line. It parses, wires and prints; the work is
//! done by the library crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
