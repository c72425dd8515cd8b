//! `ferry-collector`: the operator's CLI and the server. Only argument
//! parsing (`cli_args.rs`), logging setup and printing (`cli_command.rs`,
//! `cli_setup.rs`, `cli_token.rs`) and the serve loop's signals
//! (`cli_run.rs`) live in the binary; everything else is in the library.

use anyhow::Context as _;
use clap::Parser as _;

/// `println!` that returns the write error instead of panicking, so that a
/// closed pipe (`ferry-collector … | head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

mod cli_args;
mod cli_command;
mod cli_run;
mod cli_setup;
mod cli_token;

use cli_args::{Cli, LogFormat};

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted was printed.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The server logs what it does; a one-shot command prints its answer
    // on stdout and only warnings and errors on stderr (no library's
    // connection chatter), unless RUST_LOG asks for more.
    let default = match cli.command {
        cli_args::Command::Run { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(cli_command::command(cli.command))
}
