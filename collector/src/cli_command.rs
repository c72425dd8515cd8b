//! What each subcommand does: calls into the library and prints. `run`
//! starts the server with systemd notification, SIGHUP reload and graceful
//! shutdown on SIGINT/SIGTERM.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use ferry_collector::admin::Admin;
use ferry_collector::fanout::AlertParams;
use ferry_collector::query::QueryParams;
use ferry_collector::report::{self, Format};
use ferry_collector::{Collector, Config, EnrollOptions, InitOptions};

use crate::cli_args::{
    AgentsArgs, AlertsArgs, ClusterCommand, Command, DropsArgs, EnrollArgs, InitArgs, QueryArgs,
    SeriesArgs, SubscribersArgs,
};
use crate::cli_token;

pub(crate) async fn command(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init(InitArgs {
            data_dir,
            config,
            sans,
        }) => {
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
        Command::Enroll(EnrollArgs {
            agent_id,
            out,
            location,
            address,
            server_name,
            valid_days,
        }) => {
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
        Command::Run { config } => run(&config).await?,
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
