//! `ferry-collector`: the operator's CLI and the server. Only argument
//! parsing, logging setup and printing live here; everything else is in the
//! library.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_collector::admin::Admin;
use ferry_collector::fanout::AlertParams;
use ferry_collector::query::QueryParams;
use ferry_collector::report::{self, Format};
use ferry_collector::{Collector, Config, EnrollOptions, InitOptions};

/// `println!` that returns the write error instead of panicking, so that a
/// closed pipe (`ferry-collector … | head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

mod cli_token;

/// Ferry's central collector.
///
/// Agents connect over QUIC (UDP 7410 by default) with client certificates
/// issued by this collector's own CA, ship batches of readings and get an
/// ack once each batch is durably stored. The HTTP API (TCP 7411, loopback
/// by default) serves queries, the agents table, alerts and Prometheus
/// metrics to holders of a token. Alert rules and sinks live in
/// collector.toml (docs/alerts.md).
///
/// First steps:
///   ferry-collector init --data-dir /var/lib/ferry
///   ferry-collector enroll gw-01 --data-dir /var/lib/ferry --out ./gw-01
///   ferry-collector run --config /var/lib/ferry/collector.toml
///   ferry-collector token create --role read --name grafana --data-dir /var/lib/ferry
#[derive(Parser, Debug)]
#[command(name = "ferry-collector", version, verbatim_doc_comment)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info;
    /// release builds log down to `debug`, `trace` only in debug builds).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where to find the collector's data directory.
#[derive(Args, Debug)]
pub(crate) struct Location {
    /// The collector's configuration file; its data_dir is used.
    #[arg(long, short = 'c', conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The collector's data directory (as given to `init`).
    #[arg(long, short = 'd', default_value = ".")]
    data_dir: PathBuf,
}

impl Location {
    pub(crate) fn data_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.config {
            Some(path) => Ok(Config::load(path)?.data_dir),
            None => Ok(self.data_dir.clone()),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a data directory: a certificate authority, a server
    /// certificate and a commented collector.toml.
    ///
    /// Refuses to touch a directory that already has a CA. The server
    /// certificate names the collector as agents will address it: add a
    /// --san for every DNS name or IP address they use.
    #[command(verbatim_doc_comment)]
    Init {
        /// Directory to create (or fill, if empty).
        #[arg(long, short = 'd', required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// Initialise the data_dir this configuration file names, and
        /// write no collector.toml (the Debian package's way:
        /// --config /etc/ferry-collector/collector.toml).
        #[arg(long, short = 'c', conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// Subject alternative name of the server certificate (repeatable).
        #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        sans: Vec<String>,
    },
    /// Issue a client certificate for an agent and write its bundle:
    /// agent.crt, agent.key, ca.crt and agent.toml (the [collector] table
    /// to paste into the agent's configuration).
    #[command(verbatim_doc_comment)]
    Enroll {
        /// The agent's id: letters, digits, '.', '_' and '-', up to 64 bytes.
        /// The agent is known by this id (its certificate's Common Name).
        agent_id: String,
        /// Directory to write the bundle to.
        #[arg(long, short = 'o')]
        out: PathBuf,
        #[command(flatten)]
        location: Location,
        /// The collector's QUIC address, as the agent should dial it.
        #[arg(long, default_value = "127.0.0.1:7410")]
        address: String,
        /// Name to check the collector's certificate against (one of the
        /// --san given to init).
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 1825)]
        valid_days: i64,
    },
    /// Refuse an agent from now on and close its open connection.
    ///
    /// Talks to the running collector (found through the data directory),
    /// or records the revocation in the store when no collector runs.
    /// Revocation is by agent id and cannot be undone: enroll a new id.
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The agent id.
        agent_id: String,
        #[command(flatten)]
        location: Location,
    },
    /// List agents: state, last seen, remote address, batches, readings,
    /// last acknowledged sequence, the readings they reported dropped and
    /// the collector refused, their journal epoch and journal resets.
    ///
    /// An agent is `connected` while its QUIC connection lives: one that
    /// dies or loses its link leaves that state after quic.idle_timeout.
    /// A journal reset (the agent came back with a new journal: quarantined,
    /// wiped, re-imaged) is counted in RESETS and logged; its data is kept.
    /// BACKLOG: readings waiting in the agent's journal, from its newest
    /// status report (every 10 s while connected; "-": none since the
    /// collector started).
    #[command(verbatim_doc_comment)]
    Agents {
        #[command(flatten)]
        location: Location,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show every reading lost, per agent, device and reason, and who
    /// counted it: the agent (dropped at the edge: journal full, too late
    /// for its window, a device's ring overflow, a full source queue, its
    /// memory budget, a batch the collector rejected) or the collector (refused one by one:
    /// bad timestamps, series past the store's limit).
    ///
    /// With --ledger, one line per agent instead: readings received by its
    /// sources = stored + dropped + refused + in transit.
    ///
    /// Examples:
    ///   ferry-collector drops
    ///   ferry-collector drops --ledger
    ///   ferry-collector drops -f json
    #[command(verbatim_doc_comment)]
    Drops {
        #[command(flatten)]
        location: Location,
        /// Print the per-agent ledger instead of the drops.
        #[arg(long)]
        ledger: bool,
        /// Output format (json prints both the drops and the ledgers).
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run the collector until SIGINT or SIGTERM. SIGHUP re-reads the
    /// configuration file and applies its [processor] and [sink] tables.
    Run {
        /// Configuration file (written by `init`).
        #[arg(long, short = 'c', default_value = "collector.toml")]
        config: PathBuf,
    },
    /// Print readings and window aggregates of the series matching a
    /// selector over a time range.
    ///
    /// Examples:
    ///   ferry-collector query 'temperature{device="a1"}' --from -1h
    ///   ferry-collector query temperature --from -1d --step 15m -f csv
    #[command(verbatim_doc_comment)]
    Query {
        /// Series selector: metric{key="value",...}; every series if absent.
        selector: Option<String>,
        /// Start: now, -15m, -2h, ns since the epoch or RFC 3339. Default -1h.
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// End (exclusive), same forms. Default: now.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// Re-bucket into windows of this length (10s, 5m, 1h), merging
        /// aggregates and their quantile sketches.
        #[arg(long)]
        step: Option<String>,
        /// Which data: raw readings, stored aggregates, or all.
        #[arg(long, value_parser = ["raw", "aggregates", "all"])]
        kind: Option<String>,
        #[command(flatten)]
        location: Location,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Shrink the store file: move data down and give free space back to
    /// the file system. Only while the collector is stopped.
    Compact {
        #[command(flatten)]
        location: Location,
    },
    /// List alert events: what processor rules emitted (firing, resolved,
    /// anomaly, offline, online), oldest first.
    ///
    /// Examples:
    ///   ferry-collector alerts --state firing
    ///   ferry-collector alerts 'heart_rate_bpm{patient="p-17"}' --from -1d
    ///   ferry-collector alerts --rule storm -f json
    #[command(verbatim_doc_comment)]
    Alerts {
        /// Only alerts about series matching this selector.
        selector: Option<String>,
        /// Only this state: firing, resolved, anomaly, offline, online,
        /// skipped.
        #[arg(long)]
        state: Option<String>,
        /// Only this rule (its name, or kind/name).
        #[arg(long)]
        rule: Option<String>,
        /// Event time from: now, -15m, ns since the epoch or RFC 3339.
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// Event time to (exclusive), same forms.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// Most events shown (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        location: Location,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the fan-out subscribers (processors and sinks): cursor, lag
    /// behind the head, lag budget, entries handled, skipped and
    /// dead-lettered.
    Subscribers {
        #[command(flatten)]
        location: Location,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Make the running collector re-read its configuration file and apply
    /// its [processor] and [sink] tables (as SIGHUP does). A bad file is
    /// refused with the error, and the running configuration stays.
    Reload {
        #[command(flatten)]
        location: Location,
    },
    /// Check a configuration file (errors name the file, line and key) and
    /// the data directory it names: the CA and server certificate and key
    /// that `init` wrote. The Debian unit runs it before every start.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short = 'c', default_value = "collector.toml")]
        config: PathBuf,
    },
    /// Operators' tokens for the HTTP API: create (shown once), list,
    /// revoke. Roles: read (queries, dashboards, /metrics) and admin (also
    /// revoke, reload, tokens).
    Token {
        #[command(subcommand)]
        command: cli_token::TokenCommand,
    },
    /// List the known series (optionally those matching a selector).
    Series {
        /// Series selector: metric{key="value",...}; every series if absent.
        selector: Option<String>,
        #[command(flatten)]
        location: Location,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(command(cli.command))
}

async fn command(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init {
            data_dir,
            config,
            sans,
        } => {
            let data_dir = match (&config, data_dir) {
                (Some(path), _) => Config::load(path)?.data_dir,
                (None, Some(dir)) => dir,
                (None, None) => anyhow::bail!("give --data-dir or --config"),
            };
            let report = ferry_collector::init(&InitOptions {
                data_dir: data_dir.clone(),
                sans,
                write_config: config.is_none(),
            })?;
            out!("created CA {}", report.ca_cert.display());
            out!(
                "created server certificate {}",
                report.server_cert.display()
            );
            let location = match (&config, report.config) {
                (Some(path), _) => format!("--config {}", path.display()),
                (None, written) => {
                    match written {
                        Some(c) => out!("wrote {}", c.display()),
                        None => out!(
                            "kept the existing {}",
                            data_dir.join("collector.toml").display()
                        ),
                    }
                    format!("--data-dir {}", data_dir.display())
                }
            };
            out!("next: ferry-collector enroll AGENT_ID {location} --out DIR");
        }
        Command::Enroll {
            agent_id,
            out,
            location,
            address,
            server_name,
            valid_days,
        } => {
            let bundle = ferry_collector::enroll_with(&EnrollOptions {
                data_dir: location.data_dir()?,
                agent_id,
                out_dir: out,
                address,
                server_name,
                valid_days,
            })?;
            out!("enrolled {}", bundle.agent_id);
            for p in [&bundle.cert, &bundle.key, &bundle.ca, &bundle.config] {
                out!("  {}", p.display());
            }
        }
        Command::Revoke { agent_id, location } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let r = admin.revoke(&agent_id).await?;
            let via = match admin {
                Admin::Remote(addr) => format!(
                    "through the running collector at {addr}; {} connection(s) closed",
                    r.closed
                ),
                Admin::Local { .. } => "in the store (no collector running)".into(),
            };
            if r.changed {
                out!("revoked {} {via}", r.agent);
            } else {
                out!("{} was already revoked", r.agent);
            }
        }
        Command::Agents { location, format } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::agents(&admin.agents().await?, format))?;
        }
        Command::Drops {
            location,
            ledger,
            format,
        } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::drops(&admin.drops().await?, ledger, format))?;
        }
        Command::Run { config } => run(&config).await?,
        Command::CheckConfig { config: path } => {
            let config = Config::load(&path)?;
            let revoked = std::sync::Arc::new(ferry_collector::pki::RevocationList::new([]));
            ferry_collector::pki::server_tls(&config.data_dir, revoked)
                .with_context(|| format!("{}: data_dir", path.display()))?;
            out!("{}: ok", path.display());
        }
        Command::Compact { location } => {
            let path = location.data_dir()?.join(ferry_collector::STORE_FILE);
            let (before, after) = ferry_collector::Store::compact_file(&path)?;
            out!("{}: {before} bytes -> {after} bytes", path.display());
        }
        Command::Query {
            selector,
            from,
            to,
            step,
            kind,
            location,
            format,
        } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let params = QueryParams {
                selector,
                from,
                to,
                step,
                kind,
            };
            report::print(report::query(&admin.query(&params).await?, format))?;
        }
        Command::Alerts {
            selector,
            state,
            rule,
            from,
            to,
            limit,
            location,
            format,
        } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let params = AlertParams {
                state,
                selector,
                rule,
                from,
                to,
                limit: Some(limit),
            };
            report::print(report::alerts(&admin.alerts(&params).await?, format))?;
        }
        Command::Subscribers { location, format } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::subscribers(&admin.subscribers().await?, format))?;
        }
        Command::Reload { location } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let r = admin.reload().await?;
            out!("reloaded {}", r.config);
            out!(
                "  rules: {}",
                if r.rules.is_empty() {
                    "none".into()
                } else {
                    r.rules.join(", ")
                }
            );
            out!(
                "  sinks: {}",
                if r.sinks.is_empty() {
                    "none".into()
                } else {
                    r.sinks.join(", ")
                }
            );
        }
        Command::Token { command } => cli_token::run(command).await?,
        Command::Series {
            selector,
            location,
            format,
        } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::series(
                &admin.series(selector.as_deref().unwrap_or("")).await?,
                format,
            ))?;
        }
    }
    Ok(())
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let collector = Collector::bind(config).await?;
    let (quic, http) = (collector.quic_addr(), collector.http_addr());
    // The watchdog starts after READY=1.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = collector.handle();
    let watchdog = tokio::spawn(async move {
        if ready_rx.await.is_ok() {
            ferry_collector::systemd::watchdog(handle).await;
        }
    });
    #[cfg(unix)]
    {
        let handle = collector.handle();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the configuration");
                        // Errors are logged by reload itself.
                        let _ = handle.reload().await;
                    }
                });
            }
            Err(e) => tracing::warn!("cannot watch SIGHUP ({e}); use `ferry-collector reload`"),
        }
    }
    let shutdown = async move {
        shutdown_signal().await;
        ferry_collector::systemd::stopping();
        watchdog.abort();
    };
    collector
        .run_with_ready(shutdown, move || {
            ferry_collector::systemd::ready(quic, http);
            let _ = ready_tx.send(());
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
