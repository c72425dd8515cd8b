//! Wiring: the journal, its writer, the sources, the shipper and the admin
//! endpoint, started from a [`Config`] and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{CompressionName, Config, Order};
use crate::intake::Intake;
use crate::journal::Journal;
use crate::limits::MemoryBudget;
use crate::metrics::{AgentMetrics, Counter};
use crate::shipper::{self, ShipperConfig};
use crate::sources::device::{self, DeviceRegistry, DeviceSource};
use crate::sources::influx::{self, SourceStats};
use crate::writer::Writer;

mod open;

pub use open::{
    OpenError, inspect_in, open_journal, open_journal_read_only, open_or_quarantine, stats_in,
};

/// Name of the journal file in the data directory.
pub const JOURNAL_FILE: &str = "journal.redb";

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The journal could not be opened, and it is not corrupt (locked by
    /// another agent, refused by the OS): nothing was moved.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A fresh journal could not be created either.
    #[error("journal {path}: {message}")]
    Journal {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// TLS material from the bundle is unusable.
    #[error(transparent)]
    Tls(#[from] shipper::TlsError),
    /// The collector address does not resolve.
    #[error("collector address {0:?} does not resolve to a socket address")]
    Address(String),
    /// A listener could not bind.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running agent.
pub struct Running {
    /// The admin endpoint's address.
    pub admin_addr: SocketAddr,
    /// Counters.
    pub metrics: Arc<AgentMetrics>,
    /// Where a corrupt journal was moved, if one was.
    pub journal_moved_aside: Option<PathBuf>,
    /// Hands work to the journal (tests, embedded sources).
    pub intake: Intake,
    /// Bound addresses of `[[influx_tcp]]` sources, in file order.
    pub influx_tcp_addrs: Vec<SocketAddr>,
    /// Bound addresses of `[[influx_udp]]` sources, in file order.
    pub influx_udp_addrs: Vec<SocketAddr>,
    /// Bound addresses of `[[influx_http]]` sources, in file order.
    pub influx_http_addrs: Vec<SocketAddr>,
    /// Bound addresses of `[[device_tcp_listen]]` sources, in file order.
    pub device_addrs: Vec<SocketAddr>,
    /// The journal's identity.
    pub epoch: u64,
    /// The collector's terms from its latest Welcome (its accepted time
    /// window and limits), for sources that check readings before
    /// journaling them; `None` until the first Welcome.
    pub collector_terms: watch::Receiver<Option<shipper::CollectorTerms>>,
    /// The journal writer's control handle (the systemd watchdog probes it).
    pub writer_handle: crate::writer::WriterHandle,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    writer: tokio::task::JoinHandle<Journal>,
}

impl Running {
    /// Stops sources, commits what they handed over, lets in-flight batches
    /// finish, and closes the journal.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Ok(journal) = self.writer.await {
            drop(journal.into_database());
        }
    }
}

/// Starts everything in `config`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let data_dir = config.resolve(&config.agent.data_dir);
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let journal_path = data_dir.join(JOURNAL_FILE);
    let (journal, moved) = open_or_quarantine(
        &journal_path,
        config.journal_config(),
        config.journal.cache as usize,
    )?;
    let registry =
        DeviceRegistry::from_journal(journal.devices().map_err(|e| StartError::Journal {
            path: journal_path.clone(),
            message: e.to_string(),
        })?);
    let registry =
        registry.with_offsets(journal.device_offsets().map_err(|e| StartError::Journal {
            path: journal_path.clone(),
            message: e.to_string(),
        })?);
    let epoch = journal.epoch();
    // Each MQTT source's redelivery marks, read before the writer owns the
    // journal.
    let mut mqtt_marks = Vec::new();
    for m in &config.mqtt {
        let prefix = crate::sources::mqtt::dedupe::Dedupe::prefix(&m.name);
        mqtt_marks.push(
            journal
                .source_marks(&prefix)
                .map_err(|e| StartError::Journal {
                    path: journal_path.clone(),
                    message: e.to_string(),
                })?,
        );
    }
    let metrics = Arc::new(AgentMetrics::default());
    let budget = MemoryBudget::new(config.agent.memory_budget(config.journal.cache));
    let _ = metrics.memory.set(budget.clone());
    let (intake, intake_rx) = Intake::channel(1024);
    let intake = intake.with_budget(budget.clone());
    let (writer, handle) = Writer::new(journal, intake_rx, metrics.clone(), config.agent.tick);
    let (terms, collector_terms) = watch::channel(None);
    let writer = writer
        .with_health_interval(config.agent.health_interval)
        .with_memory_budget(budget)
        .with_time_window(if config.agent.check_timestamps {
            crate::writer::TimeWindow {
                terms: Some(collector_terms.clone()),
                default: Some((config.agent.max_past, config.agent.max_future)),
            }
        } else {
            crate::writer::TimeWindow::default()
        })
        .with_ledger(crate::salvage::ledger_path(&journal_path))
        .with_disk_guard(data_dir.clone(), crate::disk::RESERVE, {
            let (path, journal_config) = (journal_path.clone(), config.journal_config());
            let cache = config.journal.cache as usize;
            Box::new(move || open_journal(&path, journal_config.clone(), cache))
        });
    let (stop, stopped) = watch::channel(false);
    let writer_task = tokio::spawn(writer.run(stopped.clone()));
    let mut tasks = JoinSet::new();

    // Shipper.
    let c = &config.collector;
    let tls = shipper::client_tls(
        &config.resolve(&c.ca),
        &config.resolve(&c.cert),
        &config.resolve(&c.key),
    )?;
    let address = tokio::net::lookup_host(&c.address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| StartError::Address(c.address.clone()))?;
    let mut fallbacks = Vec::with_capacity(c.fallback.len());
    for a in &c.fallback {
        fallbacks.push(
            tokio::net::lookup_host(a)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| StartError::Address(a.clone()))?,
        );
    }
    let ship = ShipperConfig {
        address,
        fallbacks,
        fail_back_after: config.shipping.fail_back_after,
        server_name: c.server_name.clone(),
        tls: Arc::new(tls),
        max_in_flight_bytes: config.shipping.max_in_flight,
        newest_first: config.shipping.order == Order::NewestFirst,
        zstd: config.shipping.compression == CompressionName::Zstd,
        compact: config.shipping.compact,
        backoff_min: config.shipping.backoff_min,
        backoff_max: config.shipping.backoff_max,
        idle_timeout: config.shipping.idle_timeout,
        keep_alive: config.shipping.keep_alive,
        epoch,
        terms: terms.clone(),
        devices: registry.clone(),
    };
    tasks.spawn(shipper::run(
        ship,
        handle.clone(),
        metrics.clone(),
        stopped.clone(),
    ));

    // Free heap back to the OS once a burst is over.
    tasks.spawn(crate::memory::trim_when_idle(
        metrics.clone(),
        stopped.clone(),
    ));

    // Admin endpoint.
    let listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "admin endpoint",
            addr: config.admin.listen,
            source,
        })?;
    let admin_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "admin endpoint",
        addr: config.admin.listen,
        source,
    })?;
    // Bound now so a taken port fails the start early; served only once
    // every source below is bound, so an answering admin endpoint means
    // the whole agent is up (tests and scripts wait on it).
    let app = crate::admin::router(metrics.clone(), handle.clone(), config.admin.token.clone());

    // Sources.
    for sim in &config.simulator {
        tasks.spawn(crate::sources::sim::run(
            sim.clone(),
            intake.clone(),
            Arc::new(Counter::default()),
            stopped.clone(),
        ));
    }
    let stop_on = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
    let mut influx_tcp_addrs = Vec::new();
    for src in &config.influx_tcp {
        let l = tokio::net::TcpListener::bind(src.listen)
            .await
            .map_err(bind_err("influx_tcp", src.listen))?;
        influx_tcp_addrs.push(l.local_addr().map_err(bind_err("influx_tcp", src.listen))?);
        let stats = Arc::new(SourceStats::default());
        metrics.guard.add_influx(&src.source.name, stats.clone());
        tasks.spawn(influx::run_tcp(
            l,
            src.source.clone(),
            intake.clone(),
            stats,
            stop_on(stopped.clone()),
        ));
    }
    let mut influx_udp_addrs = Vec::new();
    for src in &config.influx_udp {
        let s = tokio::net::UdpSocket::bind(src.listen)
            .await
            .map_err(bind_err("influx_udp", src.listen))?;
        influx_udp_addrs.push(s.local_addr().map_err(bind_err("influx_udp", src.listen))?);
        let stats = Arc::new(SourceStats::default());
        metrics.guard.add_influx(&src.source.name, stats.clone());
        match crate::udp_drops::socket_inode(&s) {
            Ok(inode) => {
                tasks.spawn(crate::udp_drops::watch_socket(
                    inode,
                    src.source.name.clone(),
                    intake.clone(),
                    metrics.clone(),
                    stopped.clone(),
                ));
            }
            Err(e) => tracing::warn!(source = %src.source.name, error = %e,
                "kernel drops on this UDP socket cannot be counted"),
        }
        tasks.spawn(influx::run_udp(
            s,
            src.source.clone(),
            intake.clone(),
            stats,
            stop_on(stopped.clone()),
        ));
    }
    let mut influx_http_addrs = Vec::new();
    for src in &config.influx_http {
        let l = tokio::net::TcpListener::bind(src.listen)
            .await
            .map_err(bind_err("influx_http", src.listen))?;
        influx_http_addrs.push(
            l.local_addr()
                .map_err(bind_err("influx_http", src.listen))?,
        );
        let stats = Arc::new(SourceStats::default());
        metrics.guard.add_influx(&src.name, stats.clone());
        tasks.spawn(influx::run_http(
            l,
            src.clone(),
            intake.clone(),
            stats,
            stop_on(stopped.clone()),
        ));
    }
    for (src, marks) in config.mqtt.iter().zip(mqtt_marks) {
        let stats = Arc::new(crate::sources::mqtt::MqttStats::default());
        metrics.guard.add_mqtt(&src.name, stats.clone());
        tasks.spawn(crate::sources::mqtt::run(
            src.clone(),
            marks,
            intake.clone(),
            stats,
            stop_on(stopped.clone()),
        ));
    }
    let mut device_addrs = Vec::new();
    for src in &config.device_tcp_listen {
        let l = tokio::net::TcpListener::bind(src.listen)
            .await
            .map_err(bind_err("device_tcp_listen", src.listen))?;
        device_addrs.push(
            l.local_addr()
                .map_err(bind_err("device_tcp_listen", src.listen))?,
        );
        let source = DeviceSource::new(src.link.clone(), intake.clone(), registry.clone());
        metrics
            .guard
            .add_device(&source.config.name, source.stats.clone());
        let stop = stop_on(stopped.clone());
        tasks.spawn(async move {
            if let Err(e) = device::run_tcp_listener(l, &source, stop).await {
                tracing::error!(source = %source.config.name, error = %e, "device link stopped");
            }
        });
    }
    for src in &config.device_tcp_connect {
        let source = DeviceSource::new(src.link.clone(), intake.clone(), registry.clone());
        metrics
            .guard
            .add_device(&source.config.name, source.stats.clone());
        let (addr, stop) = (src.connect, stop_on(stopped.clone()));
        tasks.spawn(async move {
            if let Err(e) = device::run_tcp_client(addr, &source, stop).await {
                tracing::error!(source = %source.config.name, error = %e, "device link stopped");
            }
        });
    }
    for src in &config.device_serial {
        let source = DeviceSource::new(src.link.clone(), intake.clone(), registry.clone());
        metrics
            .guard
            .add_device(&source.config.name, source.stats.clone());
        let (path, baud, stop) = (src.path.clone(), src.baud, stop_on(stopped.clone()));
        tasks.spawn(async move {
            if let Err(e) = device::run_serial(&path, baud, &source, stop).await {
                tracing::error!(source = %source.config.name, error = %e, "device link stopped");
            }
        });
    }
    let mut admin_stop = stopped.clone();
    tasks.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    tracing::info!(
        admin = %admin_addr,
        collector = %address,
        journal = %journal_path.display(),
        epoch = format_args!("{epoch:016x}"),
        "agent started"
    );
    Ok(Running {
        admin_addr,
        metrics,
        journal_moved_aside: moved,
        intake,
        influx_tcp_addrs,
        influx_udp_addrs,
        influx_http_addrs,
        device_addrs,
        epoch,
        collector_terms,
        writer_handle: handle,
        stop,
        tasks,
        writer: writer_task,
    })
}
