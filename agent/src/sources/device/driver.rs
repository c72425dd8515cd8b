//! The tokio drivers: one link over a byte stream ([`run_link`]), and the
//! streams that reconnect with [`Backoff`](ferry_clock::Backoff): TCP client,
//! TCP listener, serial port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::serial::MAX_SERIAL_FRAME;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::intake::{Intake, SubmitError};
use crate::journal::CommitReport;

use ferry_clock::{Backoff, Clock, SystemClock, until};

use crate::sources::conn::{Deadlines, LogLimit};

use super::*;

/// Everything the drivers share: settings, the journal intake, the device
/// registry, counters and the clock. Cheap to clone.
#[derive(Clone)]
pub struct DeviceSource {
    /// Settings.
    pub config: Arc<DeviceLinkConfig>,
    /// Where work goes.
    pub intake: Intake,
    /// What is known of each device.
    pub registry: DeviceRegistry,
    /// Counters.
    pub stats: Arc<DeviceStats>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DeviceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSource")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl DeviceSource {
    /// A source with the system clock, fresh counters and `registry`
    /// (seed it with [`DeviceRegistry::from_journal`]).
    pub fn new(config: DeviceLinkConfig, intake: Intake, registry: DeviceRegistry) -> Self {
        Self {
            config: Arc::new(config),
            intake,
            registry,
            stats: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same source with another clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn link(&self) -> GatewayLink {
        GatewayLink::new(
            self.config.clone(),
            self.registry.clone(),
            self.stats.clone(),
        )
    }
}

/// Why a link stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The device closed the stream (EOF).
    Closed,
    /// The shutdown future completed.
    Shutdown,
    /// No byte came for [`DeviceLinkConfig::idle_timeout_ms`].
    Idle,
}

/// Why a driver failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Reading or writing the stream failed.
    #[error("device link I/O: {0}")]
    Io(#[from] io::Error),
    /// The journal writer is gone: the agent is shutting down.
    #[error("the journal writer has stopped")]
    IntakeClosed,
}

pub(super) type CommitFuture =
    Pin<Box<dyn Future<Output = Result<CommitReport, SubmitError>> + Send>>;

/// Drives one [`GatewayLink`] over `stream` until the device closes it, an
/// I/O error, or `shutdown`. Reads go on while a commit is in flight; the
/// next commit starts when it returns.
pub async fn run_link<S>(
    stream: S,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<LinkEnd, LinkError>
where
    S: AsyncRead + AsyncWrite,
{
    let mut link = source.link();
    let end = drive_link(stream, source, shutdown, &mut link).await;
    link.handle_closed();
    end
}

async fn drive_link<S>(
    stream: S,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
    link: &mut GatewayLink,
) -> Result<LinkEnd, LinkError>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 4 * MAX_SERIAL_FRAME];
    let mut commit: Option<CommitFuture> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    let idle = Duration::from_millis(source.config.idle_timeout_ms);
    let mut deadlines = Deadlines::new(source.clock.now_ns(), Some(idle), None);
    loop {
        let mut wrote = false;
        while let Some(msg) = link.poll_transmit() {
            wr.write_all(&encode_downlink(&msg)).await?;
            wrote = true;
        }
        if wrote {
            wr.flush().await?;
        }
        if commit.is_none()
            && let Some(work) = link.poll_work()
        {
            let intake = source.intake.clone();
            commit = Some(Box::pin(async move { intake.submit(work).await }));
        }
        let committed = async {
            match commit.as_mut() {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        let wait = deadlines.due().map(|due| until(source.clock.now_ns(), due));
        let timeout = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(LinkEnd::Shutdown),
            () = timeout => {
                if deadlines.expired(source.clock.now_ns()).is_some() {
                    DeviceStats::inc(&source.stats.idle_timeouts);
                    return Ok(LinkEnd::Idle);
                }
            }
            result = committed => {
                commit = None;
                if matches!(result, Err(SubmitError::Shutdown)) {
                    return Err(LinkError::IntakeClosed);
                }
                link.handle_commit(source.clock.now_ns(), result.as_ref());
            }
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(LinkEnd::Closed);
                }
                let now = source.clock.now_ns();
                deadlines.handle_bytes(now, true, false);
                link.handle_bytes(now, &buf[..n]);
            }
        }
    }
}

/// Opens streams with `open` and runs [`run_link`] on each, waiting with
/// exponential backoff between attempts, until `shutdown` or the journal
/// writer stops.
async fn reconnecting<S, F, Fut>(
    what: &str,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
    mut open: F,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite,
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut backoff = Backoff::new(
        Duration::from_millis(source.config.reconnect_min_ms.max(1)),
        Duration::from_millis(source.config.reconnect_max_ms),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let opened = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            s = open() => s,
        };
        match opened {
            Ok(stream) => {
                DeviceStats::inc(&source.stats.connections);
                tracing::info!(source = %source.config.name, "device link {what} open");
                backoff.reset();
                match run_link(stream, source, shutdown.as_mut()).await {
                    Ok(LinkEnd::Shutdown) => return Ok(()),
                    Ok(LinkEnd::Closed) => {
                        tracing::warn!(source = %source.config.name, "device link {what} closed; reconnecting");
                    }
                    Ok(LinkEnd::Idle) => {
                        tracing::warn!(source = %source.config.name, idle_timeout_ms = source.config.idle_timeout_ms,
                            "device link {what} silent too long; reopening");
                    }
                    Err(LinkError::IntakeClosed) => return Err(LinkError::IntakeClosed),
                    Err(LinkError::Io(e)) => {
                        tracing::warn!(source = %source.config.name, "device link {what}: {e}; reconnecting");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(source = %source.config.name, "device link {what}: {e}; retrying");
            }
        }
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Connects to a board's UART socket at `addr` (QEMU's `-chardev
/// socket,server=on`) and reconnects with backoff whenever it drops, until
/// `shutdown`. Returns an error only when the journal writer stops.
pub async fn run_tcp_client(
    addr: SocketAddr,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    let what = format!("tcp {addr}");
    reconnecting(&what, source, shutdown, || TcpStream::connect(addr)).await
}

/// Accepts boards that connect to the gateway (QEMU's `-chardev
/// socket,server=off`), one link per connection and at most
/// [`DeviceLinkConfig::max_connections`] at once (more are closed at once),
/// until `shutdown`.
pub async fn run_tcp_listener(
    listener: TcpListener,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut links = tokio::task::JoinSet::new();
    let mut limit_log = LogLimit::new(Duration::from_millis(source.config.warn_interval_ms));
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(done) = links.join_next(), if !links.is_empty() => {
                if let Ok(Err(LinkError::IntakeClosed)) = done {
                    break Err(LinkError::IntakeClosed);
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Per-connection failures (e.g. reset before accept).
                        tracing::warn!(source = %source.config.name, "device link accept: {e}");
                        continue;
                    }
                };
                if links.len() >= source.config.max_connections {
                    DeviceStats::inc(&source.stats.connections_refused);
                    if let Some(held_back) = limit_log.event(source.clock.now_ns()) {
                        tracing::warn!(
                            source = %source.config.name,
                            %peer,
                            held_back,
                            "device link: {} connections open; refusing another ({held_back} more since the last message)",
                            links.len()
                        );
                    }
                    continue;
                }
                DeviceStats::inc(&source.stats.connections);
                let source = source.clone();
                let mut stop = stop_rx.clone();
                links.spawn(async move {
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let end = run_link(stream, &source, stopped).await;
                    match &end {
                        Ok(_) => tracing::info!(source = %source.config.name, %peer, "device link closed"),
                        Err(e) => tracing::warn!(source = %source.config.name, %peer, "device link: {e}"),
                    }
                    end
                });
            }
        }
    };
    let _ = stop_tx.send(true);
    while links.join_next().await.is_some() {}
    result
}

/// Reads a device on serial port `path` at `baud` (8N1), reopening the
/// port with backoff when it fails or disappears (USB unplug), until
/// `shutdown`.
pub async fn run_serial(
    path: &str,
    baud: u32,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    use tokio_serial::SerialPortBuilderExt as _;
    let what = format!("serial {path}");
    reconnecting(&what, source, shutdown, || {
        let opened = tokio_serial::new(path, baud)
            .open_native_async()
            .map_err(io::Error::from);
        std::future::ready(opened)
    })
    .await
}
