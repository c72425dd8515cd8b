//! The agent under systemd (`packaging/agent/ferry-agent.service`,
//! `Type=notify`, `WatchdogSec=`). Everything the service manager hears
//! comes from here; without `NOTIFY_SOCKET` each call does nothing.
//!
//! - [`ready`]: `READY=1` once [`crate::run::start`] has returned, that is
//!   once the journal is open and every listener (admin endpoint, line
//!   protocol, device links) is bound, with a `STATUS=` naming the addresses.
//!   A unit ordered `After=ferry-agent.service` finds the ports open.
//! - [`watchdog`]: `WATCHDOG=1` only after a round trip through the journal
//!   writer, the loop that commits: each half `WatchdogSec` the writer is
//!   asked for its counters, and only its answer is passed on. A writer
//!   stuck in a commit (a hung disk, a deadlock) answers nothing, the pings
//!   stop, and systemd kills and restarts the agent; the journal makes the
//!   restart lose nothing that was acknowledged.
//! - [`stopping`]: `STOPPING=1` when a stop begins.
//!
//! **Fault hook (tests only):** with `FERRY_FAULT_STALL_WRITER=<path>` in
//! the environment, the writer blocks for good at its first commit after
//! `<path>` exists ([`stall_writer_if_asked`]). Nothing else reads it, and
//! without the variable the check costs one `OnceLock` read per commit.

use std::path::PathBuf;
use std::sync::OnceLock;

use ferry_clock::SystemClock;
use ferry_clock::watchdog::{self, Notify};

use sd_notify::NotifyState;

use crate::run::Running;
use crate::writer::WriterHandle;

/// The environment variable of the writer-stall fault hook.
pub const STALL_WRITER_ENV: &str = "FERRY_FAULT_STALL_WRITER";

/// What `STATUS=` says once the agent runs: its bound addresses.
pub fn status_line(running: &Running) -> String {
    let mut parts = vec![format!("admin {}", running.admin_addr)];
    let listeners = [
        ("influx_tcp", &running.influx_tcp_addrs),
        ("influx_udp", &running.influx_udp_addrs),
        ("device_tcp_listen", &running.device_addrs),
    ];
    for (what, addrs) in listeners {
        parts.extend(addrs.iter().map(|a| format!("{what} {a}")));
    }
    format!("running: {}", parts.join(", "))
}

/// Tells systemd the agent is ready (see the module docs).
pub fn ready(running: &Running) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(running)),
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

/// Sends `WATCHDOG=1` while the journal writer answers, if systemd asked
/// for a watchdog (`WATCHDOG_USEC`); returns at once otherwise, or when the
/// writer has stopped. Run it as its own task; the loop and its decisions
/// are `ferry_clock::watchdog`'s (shared with the collector).
pub async fn watchdog(writer: WriterHandle) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::debug!(?timeout, "systemd watchdog on");
    let alive = || async { writer.stats().await.is_some() };
    watchdog::run(timeout, &SystemClock, alive, |notify| match notify {
        Notify::Watchdog => send(&[NotifyState::Watchdog]),
        Notify::Withhold { waited } => tracing::error!(
            waited_ms = waited.as_millis() as u64,
            "the journal writer has not answered: WATCHDOG=1 withheld, systemd restarts the agent when WatchdogSec runs out"
        ),
        // The writer is gone: the agent is stopping (`run` returns).
        Notify::Stop => {}
    })
    .await;
}

/// The fault hook of the module docs: blocks this thread for good once
/// the file named by `FERRY_FAULT_STALL_WRITER` exists. Called by the
/// journal writer right before each commit.
pub fn stall_writer_if_asked() {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(path) = PATH.get_or_init(|| std::env::var_os(STALL_WRITER_ENV).map(PathBuf::from))
    else {
        return;
    };
    if path.exists() {
        tracing::warn!(
            "fault injection ({STALL_WRITER_ENV}): the journal writer stalls here for good"
        );
        loop {
            std::thread::park();
        }
    }
}
