//! The command line: every subcommand and option, with the help text
//! `ferry-collector --help` prints. Only declarations; `cli_command.rs` runs
//! them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_collector::Config;

use crate::cli_token;

mod cluster;
mod read;
mod setup;

pub(crate) use self::cluster::ClusterCommand;
pub(crate) use self::read::{
    AgentsArgs, AlertsArgs, DropsArgs, QueryArgs, SeriesArgs, SubscribersArgs,
};
pub(crate) use self::setup::{EnrollArgs, InitArgs};

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
    /// Log format on stderr. The level comes from RUST_LOG (default: info
    /// for `run`, warn for the other commands; release builds log down to
    /// `debug`, `trace` only in debug builds).
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
    Init(InitArgs),
    /// Issue a client certificate for an agent and write its bundle:
    /// agent.crt, agent.key, ca.crt and agent.toml (the [collector] table
    /// to paste into the agent's configuration).
    #[command(verbatim_doc_comment)]
    Enroll(EnrollArgs),
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
    Agents(AgentsArgs),
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
    Drops(DropsArgs),
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
    Query(QueryArgs),
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
    Alerts(AlertsArgs),
    /// Show the fan-out subscribers (processors and sinks): cursor, lag
    /// behind the head, lag budget, entries handled, skipped and
    /// dead-lettered.
    Subscribers(SubscribersArgs),
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
    Series(SeriesArgs),
}
