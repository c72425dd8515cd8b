//! What the `ferry-agent` binary's commands do besides parsing arguments:
//! the `--log` filter, logging set-up, `check-config`, `run` until a
//! signal, the admin endpoint's HTTP client, and the `status` and
//! `buffer inspect` reports.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::filter::{LevelFilter, Targets};

use crate::config::Config;
use crate::metrics::{AgentMetrics, Status};
use crate::run::{JOURNAL_FILE, OpenError, inspect_in, stats_in};

/// How long a command waits for the agent's (or the collector's) answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `--log` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    /// Not one of the levels.
    #[error(
        "`{0}` is not a level (off, error, warn, info, debug, trace); expected e.g. `info` or `warn,ferry_agent::shipper=debug`"
    )]
    Level(String),
    /// A `=` directive whose left side is not a module path.
    #[error(
        "`{0}` is not `module=level`; expected e.g. `info` or `warn,ferry_agent::shipper=debug`"
    )]
    Directive(String),
}

/// `--log`: comma-separated `level` or `module=level` directives, into
/// `tracing`'s target filter (no regex engine in the agent's binary, which
/// keeps its code, and so its RSS, small). Anything else is refused by name.
pub fn log_filter(s: &str) -> Result<Targets, LogFilterError> {
    let level = |l: &str| -> Result<LevelFilter, LogFilterError> {
        match l.to_ascii_lowercase().as_str() {
            "off" => Ok(LevelFilter::OFF),
            "error" => Ok(LevelFilter::ERROR),
            "warn" => Ok(LevelFilter::WARN),
            "info" => Ok(LevelFilter::INFO),
            "debug" => Ok(LevelFilter::DEBUG),
            "trace" => Ok(LevelFilter::TRACE),
            _ => Err(LogFilterError::Level(l.to_owned())),
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
            Some(_) => return Err(LogFilterError::Directive(directive.to_owned())),
            None => targets.with_default(level(directive)?),
        };
    }
    Ok(targets)
}

/// Logs to stderr, as text or JSON lines.
pub fn init_logs(filter: Targets, json: bool) {
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

/// `--log` when neither it nor `RUST_LOG` is given: `info` for the daemon
/// (`run`), `warn` for a one-shot command, whose answer goes to stdout.
pub fn default_log_filter(daemon: bool) -> Targets {
    let level = if daemon {
        LevelFilter::INFO
    } else {
        LevelFilter::WARN
    };
    Targets::new().with_default(level)
}

/// `check-config`: the file, and the bundle's certificates and key as
/// `run` loads them.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let c = &config.collector;
    crate::shipper::client_tls(
        &config.resolve(&c.ca),
        &config.resolve(&c.cert),
        &config.resolve(&c.key),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{}: [collector] ca, cert, key: {e} (copy in the bundle `ferry-collector enroll` wrote)",
            path.display()
        )
    })?;
    print_out(&format!("{}: ok\n", path.display()))?;
    Ok(())
}

/// `run`: the agent until Ctrl-C or SIGTERM, with systemd's readiness and
/// watchdog; then it commits what sources handed over and finishes
/// in-flight batches.
pub async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    let running = crate::run::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    crate::systemd::ready(&running);
    let watchdog = tokio::spawn(crate::systemd::watchdog(running.writer_handle.clone()));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    crate::systemd::stopping();
    watchdog.abort();
    tracing::info!("stopping: committing what sources handed over, finishing in-flight batches");
    running.stop().await;
    Ok(())
}

/// Writes `text` to stdout and flushes it. Unlike `print!`, which panics
/// when the reader has gone, a closed pipe comes back as an
/// [`std::io::ErrorKind::BrokenPipe`] error ([`is_broken_pipe`]).
pub fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// True when `e` (or what caused it) is a closed pipe: the reader of the
/// command's output went away (`ferry-agent status | head -1`), which is no
/// failure of the command.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Why an HTTP GET got no body.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Connecting, writing or reading failed.
    #[error("{addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// No whole answer within [`HTTP_TIMEOUT`].
    #[error("{addr}: no answer within {HTTP_TIMEOUT:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
    },
    /// An answer that is not HTTP.
    #[error("{addr}: malformed HTTP response")]
    Malformed {
        /// Where.
        addr: SocketAddr,
    },
    /// An answer other than 200.
    #[error("{addr}: {status_line}")]
    Status {
        /// Where.
        addr: SocketAddr,
        /// The status line.
        status_line: String,
    },
}

/// GET `path` (plain HTTP/1.0) and the body of a 200 answer, within
/// [`HTTP_TIMEOUT`]; with `token` as a bearer token when there is one.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<String, GetError> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| GetError::Timeout { addr })?
        .map_err(|source| GetError::Io { addr, source })?;
    let (head, rest) = answer
        .split_once("\r\n\r\n")
        .ok_or(GetError::Malformed { addr })?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(GetError::Status {
            addr,
            status_line: head.lines().next().unwrap_or("").to_owned(),
        });
    }
    Ok(rest.to_owned())
}

/// `ferry-agent status` as a table; `live` when read from the running agent.
pub fn format_status(s: &Status, live: bool) -> String {
    let mut out = String::new();
    let state = if live {
        "running"
    } else {
        "stopped (read from the journal)"
    };
    let _ = writeln!(out, "agent            {state}");
    if live {
        let link = if s.connected {
            "connected"
        } else {
            "disconnected"
        };
        let _ = writeln!(out, "collector        {link}");
        let _ = writeln!(out, "readings in      {}", s.readings_in);
        let _ = writeln!(out, "readings acked   {}", s.readings_out);
    }
    let _ = writeln!(
        out,
        "journal          {:.1} MiB of {:.1} MiB",
        s.journal_bytes as f64 / 1048576.0,
        s.journal_budget as f64 / 1048576.0
    );
    let _ = writeln!(
        out,
        "waiting          {} readings in {} batches, {} not yet batched",
        s.outbox_readings, s.outbox_batches, s.pending_readings
    );
    match s.oldest_unacked_age_s {
        Some(age) => _ = writeln!(out, "oldest unacked   {age:.1} s"),
        None => _ = writeln!(out, "oldest unacked   -"),
    }
    if s.disk_full {
        let _ = writeln!(
            out,
            "disk             FULL: sources paused until space returns"
        );
    }
    if s.dropped.is_empty() {
        let _ = writeln!(out, "dropped          none");
    } else {
        let _ = writeln!(out, "dropped          origin / kind / readings");
        for (origin, kind, n) in &s.dropped {
            let _ = writeln!(out, "                 {origin} / {kind} / {n}");
        }
    }
    out
}

/// The agent's status: from its admin endpoint (`live`), or, when it does
/// not answer within [`HTTP_TIMEOUT`], from the journal on disk opened
/// read-only: nothing in the data directory is written or moved.
pub async fn status(config: &Config) -> anyhow::Result<(Status, bool)> {
    match http_get(
        config.admin.listen,
        "/status",
        config.admin.token.as_deref(),
    )
    .await
    {
        Ok(body) => Ok((serde_json::from_str::<Status>(&body)?, true)),
        Err(admin) => {
            let path = journal_path(config, &admin)?;
            let stats =
                stats_in(&path, &config.journal_config()).map_err(|e| offline_error(e, &admin))?;
            let status = AgentMetrics::default().status(&stats, ferry_clock::now_ns());
            Ok((status, false))
        }
    }
}

/// What waits, per series `(series, readings, windows)`: from the running
/// agent, or from the journal on disk opened read-only.
pub async fn inspect(config: &Config) -> anyhow::Result<Vec<(String, u64, u64)>> {
    match http_get(
        config.admin.listen,
        "/buffer",
        config.admin.token.as_deref(),
    )
    .await
    {
        Ok(body) => Ok(serde_json::from_str(&body)?),
        Err(admin) => {
            let path = journal_path(config, &admin)?;
            inspect_in(&path).map_err(|e| offline_error(e, &admin))
        }
    }
}

/// The journal's path, when there is a journal to read.
fn journal_path(config: &Config, admin: &GetError) -> anyhow::Result<std::path::PathBuf> {
    let path = config.resolve(&config.agent.data_dir).join(JOURNAL_FILE);
    if !path.exists() {
        anyhow::bail!(
            "the agent is not running (admin endpoint: {admin}) and has no journal at {}",
            path.display()
        );
    }
    Ok(path)
}

/// A read-only open that failed, with what the admin endpoint said.
fn offline_error(e: OpenError, admin: &GetError) -> anyhow::Error {
    match e {
        OpenError::Locked { .. } => anyhow::anyhow!(
            "{e}; its admin endpoint did not answer ({admin}): is [admin] listen in this configuration the running agent's?"
        ),
        e => anyhow::anyhow!("the agent is not running (admin endpoint: {admin}); {e}"),
    }
}

/// `ferry-agent buffer inspect` as a table.
pub fn format_inspect(rows: &[(String, u64, u64)]) -> String {
    let mut out = format!("{:>10} {:>8}  series\n", "readings", "windows");
    for (series, readings, windows) in rows {
        let _ = writeln!(out, "{readings:>10} {windows:>8}  {series}");
    }
    if rows.is_empty() {
        out.push_str("(nothing waiting)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_take_levels_and_module_levels_and_name_what_is_wrong() {
        assert!(log_filter("info").is_ok());
        assert!(log_filter("warn,ferry_agent::shipper=debug").is_ok());
        assert_eq!(
            log_filter("loud").unwrap_err(),
            LogFilterError::Level("loud".into())
        );
        assert_eq!(
            log_filter("a.b=info").unwrap_err(),
            LogFilterError::Directive("a.b=info".into())
        );
    }

    #[test]
    fn status_tables_say_where_they_come_from() {
        let s = Status {
            connected: false,
            journal_bytes: 1 << 20,
            journal_budget: 8 << 20,
            oldest_unacked_age_s: None,
            outbox_batches: 2,
            outbox_readings: 30,
            pending_readings: 4,
            readings_in: 34,
            readings_out: 0,
            dropped: vec![("a1".into(), 3, 5)],
            disk_full: false,
        };
        let live = format_status(&s, true);
        assert!(live.contains("collector        disconnected\n"), "{live}");
        assert!(live.contains("journal          1.0 MiB of 8.0 MiB\n"));
        assert!(live.contains("                 a1 / 3 / 5\n"));
        let stopped = format_status(&s, false);
        assert!(stopped.starts_with("agent            stopped (read from the journal)\n"));
        assert!(!stopped.contains("collector"));
        assert_eq!(
            format_inspect(&[]),
            "  readings  windows  series\n(nothing waiting)\n"
        );
    }
}
