//! `ferry-agent`: the gateway daemon and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_agent::config::Config;
use ferry_agent::metrics::{AgentMetrics, Status};
use ferry_agent::run::{JOURNAL_FILE, open_journal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ferry's gateway agent: reads devices and local producers, journals every
/// reading on disk before acknowledging it, pre-aggregates, and ships
/// batches to a ferry-collector over QUIC with mTLS, keeping everything
/// until the collector has acknowledged it.
use tracing_subscriber::filter::{LevelFilter, Targets};

#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter: a level, and levels per module, e.g. `info` or
    /// `warn,ferry_agent::shipper=debug` (RUST_LOG's target syntax). Release
    /// builds log down to `debug`; `trace` events exist only in debug builds.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info", value_parser = log_filter)]
    log: Targets,
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
    /// Check a configuration file; errors name the file, line and key.
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

/// `--log`: comma-separated `level` or `module=level` directives, into
/// `tracing`'s target filter (no regex engine in the agent's binary, which
/// keeps its code, and so its RSS, small). Anything else is refused by name.
fn log_filter(s: &str) -> Result<Targets, String> {
    let level = |l: &str| -> Result<LevelFilter, String> {
        match l.to_ascii_lowercase().as_str() {
            "off" => Ok(LevelFilter::OFF),
            "error" => Ok(LevelFilter::ERROR),
            "warn" => Ok(LevelFilter::WARN),
            "info" => Ok(LevelFilter::INFO),
            "debug" => Ok(LevelFilter::DEBUG),
            "trace" => Ok(LevelFilter::TRACE),
            _ => Err(format!(
                "`{l}` is not a level (off, error, warn, info, debug, trace); expected e.g. `info` or `warn,ferry_agent::shipper=debug`"
            )),
        }
    };
    let mut targets = Targets::new();
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        targets = match directive.split_once('=') {
            Some((module, l))
                if !module.is_empty()
                    && module
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == ':') =>
            {
                targets.with_target(module, level(l)?)
            }
            Some(_) => {
                return Err(format!(
                    "`{directive}` is not `module=level`; expected e.g. `info` or `warn,ferry_agent::shipper=debug`"
                ));
            }
            None => targets.with_default(level(directive)?),
        };
    }
    Ok(targets)
}

fn init_logs(filter: Targets, json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
}

/// GET `path` from the admin endpoint (plain HTTP/1.0), with `token` as a
/// bearer token when there is one.
async fn admin_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let (head, rest) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    Ok(rest.to_string())
}

fn print_status(s: &Status, live: bool) {
    println!(
        "agent            {}",
        if live {
            "running"
        } else {
            "stopped (read from the journal)"
        }
    );
    if live {
        println!(
            "collector        {}",
            if s.connected {
                "connected"
            } else {
                "disconnected"
            }
        );
        println!("readings in      {}", s.readings_in);
        println!("readings acked   {}", s.readings_out);
    }
    println!(
        "journal          {:.1} MiB of {:.1} MiB",
        s.journal_bytes as f64 / 1048576.0,
        s.journal_budget as f64 / 1048576.0
    );
    println!(
        "waiting          {} readings in {} batches, {} not yet batched",
        s.outbox_readings, s.outbox_batches, s.pending_readings
    );
    match s.oldest_unacked_age_s {
        Some(age) => println!("oldest unacked   {age:.1} s"),
        None => println!("oldest unacked   -"),
    }
    if s.dropped.is_empty() {
        println!("dropped          none");
    } else {
        println!("dropped          origin / kind / readings");
        for (origin, kind, n) in &s.dropped {
            println!("                 {origin} / {kind} / {n}");
        }
    }
}

async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let (status, live) = match admin_get(
        config.admin.listen,
        "/status",
        config.admin.token.as_deref(),
    )
    .await
    {
        Ok(body) => (serde_json::from_str::<Status>(&body)?, true),
        Err(_) => {
            let path = config.resolve(&config.agent.data_dir).join(JOURNAL_FILE);
            if !path.exists() {
                anyhow::bail!(
                    "the agent is not running (no answer on {}) and has no journal at {}",
                    config.admin.listen,
                    path.display()
                );
            }
            let (journal, _) = open_journal(&path, config.journal_config(), 1 << 20)?;
            let stats = journal.stats()?;
            (
                AgentMetrics::default().status(&stats, ferry_agent::writer::now_ns()),
                false,
            )
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status, live);
    }
    Ok(())
}

async fn inspect(config: &Config) -> anyhow::Result<()> {
    let rows: Vec<(String, u64, u64)> = match admin_get(
        config.admin.listen,
        "/buffer",
        config.admin.token.as_deref(),
    )
    .await
    {
        Ok(body) => serde_json::from_str(&body)?,
        Err(_) => {
            let path = config.resolve(&config.agent.data_dir).join(JOURNAL_FILE);
            let (journal, _) = open_journal(&path, config.journal_config(), 1 << 20)?;
            journal.inspect()?
        }
    };
    println!("{:>10} {:>8}  series", "readings", "windows");
    for (series, readings, windows) in &rows {
        println!("{readings:>10} {windows:>8}  {series}");
    }
    if rows.is_empty() {
        println!("(nothing waiting)");
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct SeriesRow {
    series: String,
    readings: Vec<(i64, f64)>,
    windows: Vec<WindowRow>,
}

#[derive(serde::Deserialize)]
struct WindowRow {
    start_ns: i64,
    count: u64,
    last: f64,
}

async fn watch(config: &Config, collector: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let mut last: Option<(std::time::Instant, Status)> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let mut screen = String::from("\x1b[2J\x1b[H");
        use std::fmt::Write as _;
        match admin_get(
            config.admin.listen,
            "/status",
            config.admin.token.as_deref(),
        )
        .await
        .ok()
        .and_then(|b| serde_json::from_str::<Status>(&b).ok())
        {
            Some(s) => {
                let (rate_in, rate_out) = match &last {
                    Some((t, prev)) => {
                        let dt = t.elapsed().as_secs_f64().max(1e-3);
                        (
                            (s.readings_in - prev.readings_in) as f64 / dt,
                            (s.readings_out - prev.readings_out) as f64 / dt,
                        )
                    }
                    None => (0.0, 0.0),
                };
                let _ = writeln!(
                    screen,
                    "ferry-agent {}  collector {}",
                    config.collector.agent_id,
                    if s.connected {
                        "connected"
                    } else {
                        "DISCONNECTED"
                    }
                );
                let _ = writeln!(
                    screen,
                    "readings/s in {rate_in:>9.0}   acked/s {rate_out:>9.0}"
                );
                let _ = writeln!(
                    screen,
                    "backlog {} readings in {} batches (+{} not batched), oldest {}   journal {:.1} of {:.0} MiB",
                    s.outbox_readings,
                    s.outbox_batches,
                    s.pending_readings,
                    s.oldest_unacked_age_s
                        .map_or("-".to_string(), |a| format!("{a:.1} s")),
                    s.journal_bytes as f64 / 1048576.0,
                    s.journal_budget as f64 / 1048576.0
                );
                let dropped: u64 = s.dropped.iter().map(|d| d.2).sum();
                let _ = writeln!(screen, "dropped {dropped}");
                last = Some((std::time::Instant::now(), s));
            }
            None => {
                let _ = writeln!(
                    screen,
                    "agent not answering on {} (starting?)",
                    config.admin.listen
                );
            }
        }
        if let Some(addr) = collector {
            let _ = writeln!(
                screen,
                "\ncollector query API: http://{addr}/api/v1/query?match=temperature&from=-5m"
            );
            // The collector's API needs a read token: $FERRY_TOKEN.
            let token = std::env::var("FERRY_TOKEN").ok();
            match admin_get(addr, "/api/v1/query?from=-30s&kind=all", token.as_deref())
                .await
                .ok()
                .and_then(|b| serde_json::from_str::<Vec<SeriesRow>>(&b).ok())
            {
                Some(mut rows) => {
                    // Real and emulated boards first, then simulated devices.
                    rows.sort_by_key(|r| r.series.contains("device=\"sim-"));
                    let devices: std::collections::BTreeSet<&str> = rows
                        .iter()
                        .filter_map(|r| {
                            r.series
                                .split("device=\"")
                                .nth(1)
                                .and_then(|x| x.split('"').next())
                        })
                        .collect();
                    let _ = writeln!(
                        screen,
                        "{} devices, {} series with data in the last 30 s; latest values:",
                        devices.len(),
                        rows.len()
                    );
                    for r in rows.iter().take(30) {
                        let latest = r
                            .readings
                            .last()
                            .map(|&(t, v)| (t, v))
                            .into_iter()
                            .chain(r.windows.last().map(|w| (w.start_ns, w.last)))
                            .max_by_key(|x| x.0);
                        let windows = r.windows.iter().map(|w| w.count).sum::<u64>();
                        if let Some((_, v)) = latest {
                            let _ = writeln!(
                                screen,
                                "  {v:>10.2}  {}{}",
                                r.series,
                                if windows > 0 {
                                    format!("  ({} windows)", r.windows.len())
                                } else {
                                    String::new()
                                }
                            );
                        }
                    }
                }
                None => {
                    let _ = writeln!(screen, "collector not answering on {addr}");
                }
            }
        }
        let _ = writeln!(screen, "\nCtrl-C stops.");
        print!("{screen}");
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let running = ferry_agent::run::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: committing what sources handed over, finishing in-flight batches");
    running.stop().await;
    Ok(())
}

/// tokio's scheduler (its poll-time average) is the agent's only caller of
/// the C library's `pow`, and `libm.so` is loaded for it alone: about
/// 0.5 MiB of the idle agent's RSS, measured with `/proc/<pid>/smaps`. This
/// definition, musl's `pow` ported to Rust (the `libm` crate), satisfies the
/// call inside the binary, so the linker no longer records `libm.so` as
/// needed (`readelf -d`; `tests/tests/kill9.rs` checks the running agent's
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
    init_logs(cli.log.clone(), cli.log_json);
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
            Command::CheckConfig { config } => {
                Config::load(&config)?;
                println!("{}: ok", config.display());
                Ok(())
            }
            Command::Run { config } => run(Config::load(&config)?).await,
            Command::Watch {
                config,
                collector_http,
            } => watch(&Config::load(&config)?, collector_http).await,
            Command::Status { config, json } => status(&Config::load(&config)?, json).await,
            Command::Buffer {
                command: BufferCommand::Inspect { config },
            } => inspect(&Config::load(&config)?).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
