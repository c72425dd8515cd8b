//! `ferry-collector`: the operator's CLI and the server. Only argument
//! parsing, logging setup and printing live here; everything else is in the
//! library.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_collector::admin::{Admin, AgentView};
use ferry_collector::fanout::{AlertEvent, AlertParams, SubscriberView};
use ferry_collector::query::QueryParams;
use ferry_collector::store::{SeriesInfo, SeriesResult};
use ferry_collector::{Collector, Config, EnrollOptions, InitOptions};

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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Csv,
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
        #[arg(long, short = 'd')]
        data_dir: PathBuf,
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
    /// last acknowledged sequence and the readings they reported dropped.
    Agents {
        #[command(flatten)]
        location: Location,
        /// Output format.
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

fn main() -> anyhow::Result<()> {
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
        Command::Init { data_dir, sans } => {
            let report = ferry_collector::init(&InitOptions {
                data_dir: data_dir.clone(),
                sans,
            })?;
            println!("created CA {}", report.ca_cert.display());
            println!(
                "created server certificate {}",
                report.server_cert.display()
            );
            match report.config {
                Some(c) => println!("wrote {}", c.display()),
                None => println!(
                    "kept the existing {}",
                    data_dir.join("collector.toml").display()
                ),
            }
            println!(
                "next: ferry-collector enroll AGENT_ID --data-dir {} --out DIR",
                data_dir.display()
            );
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
            println!("enrolled {}", bundle.agent_id);
            for p in [&bundle.cert, &bundle.key, &bundle.ca, &bundle.config] {
                println!("  {}", p.display());
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
                println!("revoked {} {via}", r.agent);
            } else {
                println!("{} was already revoked", r.agent);
            }
        }
        Command::Agents { location, format } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            print_agents(&admin.agents().await?, format)?;
        }
        Command::Run { config } => run(&config).await?,
        Command::Compact { location } => {
            let path = location.data_dir()?.join(ferry_collector::STORE_FILE);
            let (before, after) = ferry_collector::Store::compact_file(&path)?;
            println!("{}: {before} bytes -> {after} bytes", path.display());
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
            print_query(&admin.query(&params).await?, format)?;
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
            print_alerts(&admin.alerts(&params).await?, format)?;
        }
        Command::Subscribers { location, format } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            print_subscribers(&admin.subscribers().await?, format)?;
        }
        Command::Reload { location } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let r = admin.reload().await?;
            println!("reloaded {}", r.config);
            println!(
                "  rules: {}",
                if r.rules.is_empty() {
                    "none".into()
                } else {
                    r.rules.join(", ")
                }
            );
            println!(
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
            print_series(
                &admin.series(selector.as_deref().unwrap_or("")).await?,
                format,
            )?;
        }
    }
    Ok(())
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let collector = Collector::bind(config).await?;
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
    collector.run(shutdown_signal()).await?;
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

pub(crate) fn time_text(ns: i64) -> String {
    if ns == 0 {
        return "never".into();
    }
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_millis(st).to_string()
}

fn print_table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock<'_>, cells: Vec<&str>| -> std::io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(&mut out, header.to_vec())?;
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

fn print_csv(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let esc = |c: &str| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_owned()
        }
    };
    writeln!(out, "{}", header.join(","))?;
    for r in rows {
        writeln!(
            out,
            "{}",
            r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(",")
        )?;
    }
    Ok(())
}

pub(crate) fn print_rows(
    format: Format,
    header: &[&str],
    rows: &[Vec<String>],
    json: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match format {
        Format::Table => print_table(header, rows),
        Format::Csv => print_csv(header, rows),
        Format::Json => {
            println!("{}", json());
            Ok(())
        }
    }
}

fn print_agents(agents: &[AgentView], format: Format) -> anyhow::Result<()> {
    let header = [
        "AGENT",
        "STATE",
        "LAST SEEN",
        "REMOTE",
        "BATCHES",
        "READINGS",
        "LAST SEQ",
        "DROPPED",
    ];
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.state.clone(),
                time_text(a.last_seen_ns),
                a.remote.clone(),
                a.batches.to_string(),
                a.readings.to_string(),
                a.last_seq.map_or("-".into(), |s| s.to_string()),
                a.dropped.to_string(),
            ]
        })
        .collect();
    print_rows(format, &header, &rows, || {
        serde_json::to_string_pretty(agents).unwrap_or_default()
    })
}

fn print_series(series: &[SeriesInfo], format: Format) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = series
        .iter()
        .map(|s| vec![s.id.to_string(), s.name.clone()])
        .collect();
    print_rows(format, &["ID", "SERIES"], &rows, || {
        serde_json::to_string_pretty(series).unwrap_or_default()
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn print_query(results: &[SeriesResult], format: Format) -> anyhow::Result<()> {
    let header = [
        "SERIES", "TIME", "VALUE", "WINDOW", "COUNT", "SUM", "MIN", "MAX", "FIRST", "LAST", "P50",
        "P90", "P99",
    ];
    let mut rows = Vec::new();
    for r in results {
        for &(ts, v) in &r.readings {
            let mut row = vec![r.series.clone(), time_text(ts), v.to_string()];
            row.resize(header.len(), String::new());
            rows.push(row);
        }
        for w in &r.windows {
            rows.push(vec![
                r.series.clone(),
                time_text(w.start_ns),
                String::new(),
                humantime::format_duration(std::time::Duration::from_nanos(w.len_ns)).to_string(),
                w.count.to_string(),
                w.sum.to_string(),
                w.min.to_string(),
                w.max.to_string(),
                w.first.to_string(),
                w.last.to_string(),
                opt(w.p50),
                opt(w.p90),
                opt(w.p99),
            ]);
        }
    }
    print_rows(format, &header, &rows, || {
        serde_json::to_string_pretty(results).unwrap_or_default()
    })
}

fn print_alerts(alerts: &[AlertEvent], format: Format) -> anyhow::Result<()> {
    let header = ["ID", "TIME", "RULE", "STATE", "SUBJECT", "VALUE", "MESSAGE"];
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                time_text(a.ts_ns),
                a.rule.clone(),
                a.state.as_str().to_owned(),
                a.subject.clone(),
                a.value.to_string(),
                a.message.clone(),
            ]
        })
        .collect();
    print_rows(format, &header, &rows, || {
        serde_json::to_string_pretty(alerts).unwrap_or_default()
    })
}

fn print_subscribers(subs: &[SubscriberView], format: Format) -> anyhow::Result<()> {
    let header = [
        "SUBSCRIBER",
        "CURSOR",
        "HEAD",
        "LAG",
        "BUDGET",
        "POLICY",
        "HANDLED",
        "SKIPPED",
        "DEAD",
    ];
    let rows: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.cursor.to_string(),
                s.head.to_string(),
                s.lag.to_string(),
                s.lag_budget.to_string(),
                format!("{:?}", s.policy).to_lowercase(),
                s.handled.to_string(),
                s.skipped.to_string(),
                s.dead_letters.to_string(),
            ]
        })
        .collect();
    print_rows(format, &header, &rows, || {
        serde_json::to_string_pretty(subs).unwrap_or_default()
    })
}
