//! `cluster` and its subcommands.

use std::path::PathBuf;

use clap::Subcommand;
use ferry_collector::report::Format;

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
