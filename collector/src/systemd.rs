//! The collector under systemd (`packaging/collector/ferry-collector.service`,
//! `Type=notify`, `WatchdogSec=`). Everything the service manager hears
//! comes from here; without `NOTIFY_SOCKET` each call does nothing.
//!
//! - [`ready`]: `READY=1` from [`crate::Collector::run_with_ready`]: the
//!   store is open, QUIC and HTTP are bound and served, and `collector.http`
//!   (how `ferry-collector reload`, the unit's `ExecReload`, finds the
//!   server) is written. `STATUS=` names both addresses.
//! - [`watchdog`]: `WATCHDOG=1` only after the store's writer thread, the
//!   loop that commits, has taken a ping from its queue
//!   ([`crate::Handle::writer_alive`]), twice per `WatchdogSec` (the
//!   schedule and the decisions: [`Watchdog`]). A writer
//!   stuck in a commit answers nothing, the pings stop, and systemd restarts
//!   the collector; nothing acknowledged is lost (acks follow commits).
//! - [`stopping`]: `STOPPING=1` when a stop begins.
//!
//! **Fault hook (tests only):** with `FERRY_FAULT_STALL_WRITER=<path>` in
//! the environment, the writer thread blocks for good at the first command
//! it takes after `<path>` exists ([`stall_writer_if_asked`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use ferry_clock::SystemClock;
use ferry_clock::watchdog::{self, Notify};
use sd_notify::NotifyState;

use crate::Handle;

/// The environment variable of the writer-stall fault hook.
pub const STALL_WRITER_ENV: &str = "FERRY_FAULT_STALL_WRITER";

/// Tells systemd the collector is ready, serving QUIC on `quic` and HTTP
/// on `http`.
pub fn ready(quic: SocketAddr, http: SocketAddr) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("running: quic {quic}, http {http}")),
    ]);
}

/// Tells systemd a stop has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Sends `WATCHDOG=1` while the store's writer answers, if systemd asked
/// for a watchdog (`WATCHDOG_USEC`); returns at once otherwise, or when the
/// writer has stopped. Run it as its own task; the loop and its decisions
/// are `ferry_clock::watchdog`'s (shared with the agent).
pub async fn watchdog(handle: Handle) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::debug!(?timeout, "systemd watchdog on");
    let alive = || handle.writer_alive();
    watchdog::run(timeout, &SystemClock, alive, |notify| match notify {
        Notify::Watchdog => send(&[NotifyState::Watchdog]),
        Notify::Withhold { waited } => tracing::error!(
            waited_ms = waited.as_millis() as u64,
            "the store writer has not answered: WATCHDOG=1 withheld, systemd restarts the collector when WatchdogSec runs out"
        ),
        // The writer is gone: the collector is stopping (`run` returns).
        Notify::Stop => {}
    })
    .await;
}

/// The fault hook of the module docs: blocks this thread for good once the
/// file named by `FERRY_FAULT_STALL_WRITER` exists. Called by the writer
/// thread for each command it takes.
pub fn stall_writer_if_asked() {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(path) = PATH.get_or_init(|| std::env::var_os(STALL_WRITER_ENV).map(PathBuf::from))
    else {
        return;
    };
    if path.exists() {
        tracing::warn!(
            "fault injection ({STALL_WRITER_ENV}): the store writer stalls here for good"
        );
        loop {
            std::thread::park();
        }
    }
}
