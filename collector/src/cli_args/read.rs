//! Arguments of the subcommands that read the store: `agents`, `drops`,
//! `query`, `alerts`, `subscribers` and `series`.

use clap::Args;
use ferry_collector::report::Format;

use super::Location;

// The arguments of `drops` (its help text is on `Command::Drops`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct DropsArgs {
    #[command(flatten)]
    pub(crate) location: Location,
    /// Print the per-agent ledger instead of the drops.
    #[arg(long)]
    pub(crate) ledger: bool,
    /// Output format (json prints both the drops and the ledgers).
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

// The arguments of `query` (its help text is on `Command::Query`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct QueryArgs {
    /// Series selector: metric{key="value",...}; every series if absent.
    pub(crate) selector: Option<String>,
    /// Start: now, -15m, -2h, ns since the epoch or RFC 3339. Default -1h.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) from: Option<String>,
    /// End (exclusive), same forms. Default: now.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) to: Option<String>,
    /// Re-bucket into windows of this length (10s, 5m, 1h), merging
    /// aggregates and their quantile sketches.
    #[arg(long)]
    pub(crate) step: Option<String>,
    /// Which data: raw readings, stored aggregates, or all.
    #[arg(long, value_parser = ["raw", "aggregates", "all"])]
    pub(crate) kind: Option<String>,
    #[command(flatten)]
    pub(crate) location: Location,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

// The arguments of `alerts` (its help text is on `Command::Alerts`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct AlertsArgs {
    /// Only alerts about series matching this selector.
    pub(crate) selector: Option<String>,
    /// Only this state: firing, resolved, anomaly, offline, online,
    /// skipped.
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// Only this rule (its name, or kind/name).
    #[arg(long)]
    pub(crate) rule: Option<String>,
    /// Event time from: now, -15m, ns since the epoch or RFC 3339.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) from: Option<String>,
    /// Event time to (exclusive), same forms.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) to: Option<String>,
    /// Most events shown (the newest).
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) location: Location,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

// The arguments of `agents` (its help text is on `Command::Agents`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct AgentsArgs {
    #[command(flatten)]
    pub(crate) location: Location,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

// The arguments of `subscribers` (its help text is on `Command::Subscribers`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct SubscribersArgs {
    #[command(flatten)]
    pub(crate) location: Location,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

// The arguments of `series` (its help text is on `Command::Series`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct SeriesArgs {
    /// Series selector: metric{key="value",...}; every series if absent.
    pub(crate) selector: Option<String>,
    #[command(flatten)]
    pub(crate) location: Location,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}
