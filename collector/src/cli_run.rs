//! `run`: the server with systemd notification, SIGHUP reload and graceful
//! shutdown on SIGINT/SIGTERM.

use std::path::Path;

use ferry_collector::{Collector, Config};

pub(crate) async fn run(path: &Path) -> anyhow::Result<()> {
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
