//! `ferry-agent`: the gateway daemon and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_agent::cli;
use ferry_agent::config::Config;

use tracing_subscriber::filter::Targets;

/// Ferry's gateway agent: reads devices and local producers, journals every
/// reading on disk before acknowledging it, pre-aggregates, and ships
/// batches to a ferry-collector over QUIC with mTLS, keeping everything
/// until the collector has acknowledged it.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter: a level, and levels per module, e.g. `info` or
    /// `warn,ferry_agent::shipper=debug` (RUST_LOG's target syntax). Release
    /// builds log down to `debug`; `trace` events exist only in debug builds.
    /// Default: `info` for `run`, `warn` for the other commands.
    #[arg(long, global = true, env = "RUST_LOG", value_parser = cli::log_filter)]
    log: Option<Targets>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until Ctrl-C or SIGTERM.
    Run {
        /// The configuration file (start from the agent.toml that
        /// `ferry-collector enroll` writes).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show connection state, journal size, oldest unacked data, throughput
    /// and drops: from the running agent's admin endpoint, or from the
    /// journal on disk when the agent is stopped.
    Status {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live summary, refreshed every second: connection, readings/s in and
    /// acknowledged, backlog, drops, and (with --collector-http) the devices
    /// and their latest values as the collector stored them. Ctrl-C quits.
    Watch {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The collector's HTTP address, e.g. 127.0.0.1:7411; its API
        /// needs a read token, taken from $FERRY_TOKEN.
        #[arg(long)]
        collector_http: Option<std::net::SocketAddr>,
    },
    /// Check a configuration file (errors name the file, line and key) and
    /// the certificates and key its [collector] table names.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Look into the journal.
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
}

#[derive(Subcommand)]
enum BufferCommand {
    /// What is waiting to be shipped, per series (readings and windows).
    Inspect {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// tokio's scheduler (its poll-time average) is the agent's only caller of
/// the C library's `pow`, and `libm.so` is loaded for it alone: about
/// 0.5 MiB of the idle agent's RSS, measured with `/proc/<pid>/smaps`. This
/// definition, musl's `pow` ported to Rust (the `libm` crate), satisfies the
/// call inside the binary, so the linker no longer records `libm.so` as
/// needed (`scripts/check-build.sh` checks the binary with `readelf -d`;
/// `tests/tests/kill9.rs` checks the running agent's
/// mappings). Results are within one ulp of glibc's.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
// SAFETY: `pow` is a pure function of two doubles with the C signature; no
// other definition exists in the binary, and no caller depends on glibc's
// rounding or `errno`.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> ExitCode {
    // Before any thread starts (the runtime's workers, the log writer).
    ferry_agent::memory::without_thread_caches();
    ferry_agent::memory::tune_malloc();
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Run { .. });
    let log = cli.log.clone();
    cli::init_logs(
        log.unwrap_or_else(|| cli::default_log_filter(daemon)),
        cli.log_json,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Journal commits run in `block_in_place`, which moves the worker to
        // a pooled thread; an idle agent lets those threads (and their
        // stacks) go after a second instead of tokio's ten.
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::CheckConfig { config } => cli::check_config(&config),
            Command::Run { config } => cli::run_until_signal(Config::load(&config)?).await,
            Command::Watch {
                config,
                collector_http,
            } => {
                let c = Config::load(&config)?;
                let clock = ferry_clock::SystemClock;
                ferry_agent::watch::run(
                    &c.collector.agent_id,
                    c.admin.listen,
                    c.admin.token.as_deref(),
                    collector_http,
                    &clock,
                )
                .await
            }
            Command::Status { config, json } => {
                let (status, live) = cli::status(&Config::load(&config)?).await?;
                if json {
                    let mut text = serde_json::to_string_pretty(&status)?;
                    text.push('\n');
                    cli::print_out(&text)?;
                } else {
                    cli::print_out(&cli::format_status(&status, live))?;
                }
                Ok(())
            }
            Command::Buffer {
                command: BufferCommand::Inspect { config },
            } => {
                let rows = cli::inspect(&Config::load(&config)?).await?;
                cli::print_out(&cli::format_inspect(&rows))?;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`ferry-agent … | head`): what it wanted was
        // printed; no error message, success.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
