//! Arguments of the setup subcommands: `init` and `enroll`.

use std::path::PathBuf;

use clap::Args;

use super::Location;

// The arguments of `init` (its help text is on `Command::Init`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// Directory to create (or fill, if empty).
    #[arg(long, short = 'd', required_unless_present = "config")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Initialise the data_dir this configuration file names, and
    /// write no collector.toml (the Debian package's way:
    /// --config /etc/ferry-collector/collector.toml).
    #[arg(long, short = 'c', conflicts_with = "data_dir")]
    pub(crate) config: Option<PathBuf>,
    /// Subject alternative name of the server certificate (repeatable).
    #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub(crate) sans: Vec<String>,
}

// The arguments of `enroll` (its help text is on `Command::Enroll`: a doc comment
// here would replace it).
#[derive(Args, Debug)]
pub(crate) struct EnrollArgs {
    /// The agent's id: letters, digits, '.', '_' and '-', up to 64 bytes.
    /// The agent is known by this id (its certificate's Common Name).
    pub(crate) agent_id: String,
    /// Directory to write the bundle to.
    #[arg(long, short = 'o')]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) location: Location,
    /// The collector's QUIC address, as the agent should dial it.
    #[arg(long, default_value = "127.0.0.1:7410")]
    pub(crate) address: String,
    /// Name to check the collector's certificate against (one of the
    /// --san given to init).
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 1825)]
    pub(crate) valid_days: i64,
}
