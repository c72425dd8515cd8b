//! The command line: every subcommand and option, with the help text
//! `ferry-collector --help` prints. Only declarations; `cli_command.rs` runs
//! them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_collector::Config;
use ferry_collector::report::Format;

use crate::cli_token;

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
pub(crate) struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info;
    /// release builds log down to `debug`, `trace` only in debug builds).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
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
pub(crate) enum Command {
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
    /// Cluster mode (docs/cluster.md): the log's state, from the NATS
    /// servers in the configuration's [cluster] section.
    ///
    /// Example:
    ///   ferry-collector cluster status --config collector.toml
    #[command(verbatim_doc_comment)]
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
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

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// The stream (records, bytes, replicas and their servers) and every
    /// durable consumer: records pending (not yet delivered), delivered
    /// but not acked, redelivered, and its ack floor.
    Status {
        /// Configuration file with a [cluster] section.
        #[arg(long, short = 'c', default_value = "collector.toml")]
        config: PathBuf,
        /// Output format (table or json).
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}
