//! What each subcommand does: calls into the library and prints. `run` is
//! in `cli_run.rs`, `init` and `enroll` in `cli_setup.rs`.

use anyhow::Context as _;
use ferry_collector::Config;
use ferry_collector::admin::Admin;
use ferry_collector::fanout::AlertParams;
use ferry_collector::query::QueryParams;
use ferry_collector::report::{self, Format};
use std::io::Write as _;

use crate::cli_args::{
    AgentsArgs, AlertsArgs, ClusterCommand, Command, DropsArgs, QueryArgs, SeriesArgs,
    SubscribersArgs,
};
use crate::{cli_run, cli_setup, cli_token};

pub(crate) async fn command(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init(args) => cli_setup::init(args)?,
        Command::Enroll(args) => cli_setup::enroll(args)?,
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
        Command::Agents(AgentsArgs { location, format }) => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::agents(&admin.agents().await?, format))?;
        }
        Command::Drops(DropsArgs {
            location,
            ledger,
            format,
        }) => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::drops(&admin.drops().await?, ledger, format))?;
        }
        Command::Run { config } => cli_run::run(&config).await?,
        Command::Cluster {
            command:
                ClusterCommand::Status {
                    config: path,
                    format,
                },
        } => {
            let config = Config::load(&path)?;
            let cluster = config
                .cluster
                .as_ref()
                .with_context(|| format!("{} has no [cluster] section", path.display()))?;
            let s = ferry_collector::cluster::status::read(cluster).await?;
            match format {
                Format::Json => out!("{}", ferry_collector::cluster::status::json(&s)),
                _ => write!(
                    std::io::stdout(),
                    "{}",
                    ferry_collector::cluster::status::table(&s)
                )?,
            }
        }
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
        Command::Query(QueryArgs {
            selector,
            from,
            to,
            step,
            kind,
            location,
            format,
        }) => {
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
        Command::Alerts(AlertsArgs {
            selector,
            state,
            rule,
            from,
            to,
            limit,
            location,
            format,
        }) => {
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
        Command::Subscribers(SubscribersArgs { location, format }) => {
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
        Command::Series(SeriesArgs {
            selector,
            location,
            format,
        }) => {
            let admin = Admin::connect(&location.data_dir()?).await?;
            report::print(report::series(
                &admin.series(selector.as_deref().unwrap_or("")).await?,
                format,
            ))?;
        }
    }
    Ok(())
}
