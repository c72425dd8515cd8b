//! `ferry-collector token …`: operators' tokens for the HTTP API. Part of
//! the binary (declared by `main.rs`), not of the library.

use std::io::Write as _;

use clap::{Subcommand, ValueEnum};
use ferry_collector::admin::Admin;
use ferry_collector::auth::Role;

use ferry_collector::report::{self, Format};

use crate::cli_args::Location;

/// A token's role, as the command line names it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    /// Queries, dashboards, the fleet page, /metrics, the Prometheus API.
    Read,
    /// Everything, including revoke, reload and tokens.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Read => Role::Read,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it on stdout. It is shown this once: the
    /// collector keeps only its SHA-256.
    ///
    /// Examples:
    ///   ferry-collector token create --role read --name grafana
    ///   TOKEN=$(ferry-collector token create --role admin --name ops)
    #[command(verbatim_doc_comment)]
    Create {
        /// What it may do: read (queries, dashboards, /metrics) or admin
        /// (also revoke, reload and tokens).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Its name, to list and revoke it by: letters, digits, '.', '_'
        /// and '-', up to 64 bytes.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        location: Location,
    },
    /// List the tokens: name, role, when created (never the tokens).
    List {
        #[command(flatten)]
        location: Location,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a token: refused from now on.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        location: Location,
    },
}

/// Runs a `token` subcommand: through the running collector (with the
/// local admin credential), or on the data directory when none runs.
pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            role,
            name,
            location,
        } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let created = admin.create_token(&name, role.into()).await?;
            eprintln!(
                "created token {:?} (role {}); it is shown this once, keep it now:",
                created.name, created.role
            );
            writeln!(std::io::stdout(), "{}", created.token)?;
        }
        TokenCommand::List { location, format } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::tokens(&admin.tokens().await?, format))?;
        }
        TokenCommand::Revoke { name, location } => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            let gone = admin.revoke_token(&name).await?;
            writeln!(
                std::io::stdout(),
                "revoked token {:?} (role {})",
                gone.name,
                gone.role
            )?;
        }
    }
    Ok(())
}
