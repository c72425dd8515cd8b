//! Wiring: the journal, its writer, the sources, the shipper and the admin
//! endpoint, started from a [`Config`] and stopped together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadOnlyDatabase};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{CompressionName, Config, Order};
use crate::intake::Intake;
use crate::journal::{CommitError, Journal, JournalConfig, JournalStats};
use crate::limits::MemoryBudget;
use crate::metrics::{AgentMetrics, Counter};
use crate::shipper::{self, ShipperConfig};
use crate::sources::device::{self, DeviceRegistry, DeviceSource};
use crate::sources::influx::{self, SourceStats};
use crate::writer::Writer;

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

/// Why the journal could not be opened. Only [`OpenError::Corrupt`] and
/// [`OpenError::Format`] say something about the file itself; `run` moves
/// only such a file aside ([`open_or_quarantine`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the journal's lock.
    #[error(
        "journal {}: another ferry-agent is running on this journal (it is locked); nothing was changed",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The journal was not closed cleanly and a read-only open cannot
    /// repair it (`ferry-agent run` does, as it starts).
    #[error(
        "journal {}: not closed cleanly; `ferry-agent run` repairs it as it starts (a read-only command does not)",
        path.display()
    )]
    NeedsRecovery {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a readable journal (truncated, damaged, not redb).
    #[error("journal {}: corrupt: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A journal of another on-disk format (or redb file format).
    #[error("journal {}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The formats.
        message: String,
    },
    /// The operating system refused (permissions, a missing directory, a
    /// full disk): nothing says the file is damaged.
    #[error("journal {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl OpenError {
    /// True when the file itself is unreadable as a journal: the only case
    /// in which `run` moves it aside.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Format { .. })
    }

    fn from_io(path: &Path, e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            // A file shorter than its header says, or bytes that are not redb's.
            ErrorKind::UnexpectedEof | ErrorKind::InvalidData => Self::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }

    fn from_storage(path: &Path, e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Io(e) => Self::from_io(path, e),
            other => Self::Corrupt {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }

    fn from_database(path: &Path, e: redb::DatabaseError) -> Self {
        use redb::DatabaseError as D;
        let path_buf = path.to_path_buf();
        match e {
            D::DatabaseAlreadyOpen | D::LockProtocolMismatch => Self::Locked { path: path_buf },
            D::RepairAborted => Self::NeedsRecovery { path: path_buf },
            D::UpgradeRequired(v) => Self::Format {
                path: path_buf,
                message: format!("redb file format {v}: this build cannot read it"),
            },
            D::Storage(e) => Self::from_storage(path, e),
            other => Self::Corrupt {
                path: path_buf,
                message: other.to_string(),
            },
        }
    }

    fn from_redb(path: &Path, e: redb::Error) -> Self {
        let path_buf = path.to_path_buf();
        match e {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                Self::Locked { path: path_buf }
            }
            redb::Error::RepairAborted => Self::NeedsRecovery { path: path_buf },
            redb::Error::Io(e) => Self::from_io(path, e),
            redb::Error::UpgradeRequired(v) => Self::Format {
                path: path_buf,
                message: format!("redb file format {v}: this build cannot read it"),
            },
            other => Self::Corrupt {
                path: path_buf,
                message: other.to_string(),
            },
        }
    }

    fn from_commit(path: &Path, e: CommitError) -> Self {
        match e {
            CommitError::Storage(e) => Self::from_redb(path, e),
            e @ CommitError::Format { .. } => Self::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
            other => Self::Corrupt {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }
}

/// Opens (or creates) the journal at `path` for writing. Moves nothing:
/// every failure comes back typed ([`OpenError`]).
pub fn open_journal(
    path: &Path,
    config: JournalConfig,
    cache: usize,
) -> Result<Journal, OpenError> {
    let db = Database::builder()
        .set_cache_size(cache)
        .create(path)
        .map_err(|e| OpenError::from_database(path, e))?;
    let mut journal = Journal::open(db, config).map_err(|e| OpenError::from_commit(path, e))?;
    journal.set_compressor(Box::new(crate::shipper::Zstd));
    Ok(journal)
}

/// Opens the existing journal at `path` read-only: nothing in the data
/// directory is written, created or moved (`status` and `buffer inspect`
/// on a stopped agent). A journal another process holds is
/// [`OpenError::Locked`]; one not closed cleanly is
/// [`OpenError::NeedsRecovery`] (a read-only open does not repair).
pub fn open_journal_read_only(path: &Path) -> Result<ReadOnlyDatabase, OpenError> {
    Database::builder()
        .set_cache_size(1 << 20)
        .open_read_only(path)
        .map_err(|e| OpenError::from_database(path, e))
}

/// Journal counters of the journal at `path`, read-only
/// ([`open_journal_read_only`]).
pub fn stats_in(path: &Path, config: &JournalConfig) -> Result<JournalStats, OpenError> {
    let db = open_journal_read_only(path)?;
    crate::journal::stats_in(&db, config).map_err(|e| OpenError::from_commit(path, e))
}

/// What waits per series in the journal at `path`, read-only
/// ([`open_journal_read_only`]).
pub fn inspect_in(path: &Path) -> Result<Vec<(String, u64, u64)>, OpenError> {
    let db = open_journal_read_only(path)?;
    crate::journal::inspect_in(&db, Some(&crate::shipper::Zstd))
        .map_err(|e| OpenError::from_commit(path, e))
}

/// `run`'s open: [`open_journal`], and when the file is corrupt (and only
/// then: never when it is locked or the OS refused), it is moved aside to
/// `<path>.corrupt-<unix seconds>`, reported loudly, and replaced by a
/// fresh journal (a new epoch), so the agent keeps accepting data.
pub fn open_or_quarantine(
    path: &Path,
    config: JournalConfig,
    cache: usize,
) -> Result<(Journal, Option<PathBuf>), StartError> {
    match open_journal(path, config.clone(), cache) {
        Ok(j) => Ok((j, None)),
        Err(first) if first.is_corrupt() => {
            let secs = ferry_clock::now_ns() / 1_000_000_000;
            let aside = path.with_extension(format!("redb.corrupt-{secs}"));
            tracing::error!(
                journal = %path.display(),
                moved_to = %aside.display(),
                error = %first,
                "JOURNAL FAILED TO OPEN: moved aside (it is corrupt), starting with an empty journal (a new epoch)"
            );
            // What the journal held, as of its last commit (kept beside it,
            // since the file cannot say).
            let ledger_file = crate::salvage::ledger_path(path);
            let ledger = crate::salvage::read_ledger(&ledger_file);
            std::fs::rename(path, &aside).map_err(|e| StartError::Journal {
                path: path.to_path_buf(),
                message: format!("{first}; and moving it aside failed: {e}"),
            })?;
            if ledger_file.exists() {
                let _ = std::fs::rename(&ledger_file, crate::salvage::ledger_path(&aside));
            }
            let mut j = open_journal(path, config, cache).map_err(|e| StartError::Journal {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            salvage_into(&mut j, &aside, ledger)?;
            Ok((j, Some(aside)))
        }
        Err(e) => Err(StartError::Open(e)),
    }
}

/// Ships what is still readable in the quarantined journal at `aside` and
/// counts the rest as dropped (health kind 10), per its `ledger`
/// ([`crate::salvage`]), in the new journal `journal`.
fn salvage_into(
    journal: &mut Journal,
    aside: &Path,
    ledger: Option<crate::journal::Ledger>,
) -> Result<(), StartError> {
    let failed = |message: String| StartError::Journal {
        path: aside.to_path_buf(),
        message,
    };
    let Some(ledger) = ledger else {
        tracing::error!(
            journal = %aside.display(),
            "the quarantined journal has no ledger file: what it held is unknown, nothing is salvaged and no loss can be counted"
        );
        return Ok(());
    };
    let found =
        crate::salvage::scan(aside, &ledger).map_err(|e| failed(format!("salvaging it: {e}")))?;
    tracing::error!(
        journal = %aside.display(),
        epoch = ledger.epoch,
        held = ledger.held,
        batches = found.batches.len(),
        salvaged = found.readings,
        lost = found.lost,
        lost_health = ?found.lost_health,
        "salvaged the quarantined journal: its readable batches are shipped as they were; the readings not found are counted as dropped (corrupt_journal)"
    );
    journal
        .import_salvaged(found.batches, found.lost, &found.lost_health)
        .map_err(|e| failed(format!("taking in what was salvaged from it: {e}")))
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
            Box::new(move || {
                open_journal(&path, journal_config.clone(), cache).map_err(|e| e.to_string())
            })
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
