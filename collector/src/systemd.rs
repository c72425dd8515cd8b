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
use std::time::Duration;

use ferry_clock::{Clock, SystemClock, until};
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
/// writer has stopped. Run it as its own task; the decisions are
/// [`Watchdog`]'s.
pub async fn watchdog(handle: Handle) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::debug!(?timeout, "systemd watchdog on");
    let clock = SystemClock;
    let mut dog = Watchdog::new(timeout, clock.now_ns());
    loop {
        tokio::time::sleep(until(clock.now_ns(), dog.poll_probe())).await;
        let deadline = dog.handle_probe_sent(clock.now_ns());
        let probe = tokio::select! {
            alive = handle.writer_alive() => if alive { Probe::Answered } else { Probe::WriterGone },
            _ = tokio::time::sleep(until(clock.now_ns(), deadline)) => Probe::TimedOut,
        };
        match dog.handle_probe(clock.now_ns(), probe) {
            Notify::Watchdog => send(&[NotifyState::Watchdog]),
            // The writer is gone: the collector is stopping.
            Notify::Stop => return,
            Notify::Withhold { waited } => tracing::error!(
                waited_ms = waited.as_millis() as u64,
                "the store writer has not answered: WATCHDOG=1 withheld, systemd restarts the collector when WatchdogSec runs out"
            ),
        }
    }
}

/// How a probe of the store writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The writer took the ping.
    Answered,
    /// The writer is gone.
    WriterGone,
    /// No answer by the probe's deadline.
    TimedOut,
}

/// What to tell systemd after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// `WATCHDOG=1`.
    Watchdog,
    /// Nothing, and log that the writer stalls (it waited this long).
    Withhold {
        /// How long the probe waited.
        waited: Duration,
    },
    /// Nothing more: the writer has stopped.
    Stop,
}

/// The watchdog's schedule, sans-IO: a probe of the store writer twice per
/// `WatchdogSec` (as sd_watchdog_enabled(3) advises), each given half a
/// period to be answered, the next half a period after the last ended;
/// `WATCHDOG=1` only for an answer, so a stalled writer stops the pings and
/// systemd restarts the collector. (The agent's `systemd::Watchdog` is the
/// same schedule around its journal writer.)
#[derive(Debug)]
pub struct Watchdog {
    every: Duration,
    next_probe: i64,
    sent: Option<i64>,
}

impl Watchdog {
    /// For `WatchdogSec = timeout`, started at `now`: the first probe at once.
    pub fn new(timeout: Duration, now: i64) -> Self {
        Self {
            every: timeout / 2,
            next_probe: now,
            sent: None,
        }
    }

    /// When to send the next probe.
    pub fn poll_probe(&self) -> i64 {
        self.next_probe
    }

    /// A probe went out at `now`: its answer's deadline.
    pub fn handle_probe_sent(&mut self, now: i64) -> i64 {
        self.sent = Some(now);
        ferry_clock::after(now, self.every)
    }

    /// The probe ended at `now`: what to tell systemd; the next probe goes
    /// out half a period later.
    pub fn handle_probe(&mut self, now: i64, probe: Probe) -> Notify {
        let sent = self.sent.take().unwrap_or(now);
        self.next_probe = ferry_clock::after(now, self.every);
        match probe {
            Probe::Answered => Notify::Watchdog,
            Probe::WriterGone => Notify::Stop,
            Probe::TimedOut => Notify::Withhold {
                waited: until(sent, now),
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = ferry_clock::SEC;
    const T0: i64 = 1_700_000_000 * S;

    #[test]
    fn the_writer_is_probed_twice_per_period_and_each_answer_notified() {
        let mut w = Watchdog::new(Duration::from_secs(10), T0);
        assert_eq!(w.poll_probe(), T0, "the first probe at once");
        assert_eq!(
            w.handle_probe_sent(T0),
            T0 + 5 * S,
            "half a period to answer"
        );
        assert_eq!(w.handle_probe(T0 + 1, Probe::Answered), Notify::Watchdog);
        assert_eq!(w.poll_probe(), T0 + 5 * S + 1);
        let sent = w.poll_probe();
        w.handle_probe_sent(sent);
        assert_eq!(w.handle_probe(sent + 2, Probe::Answered), Notify::Watchdog);
        assert_eq!(w.poll_probe(), sent + 2 + 5 * S);
    }

    #[test]
    fn a_stalled_writer_gets_no_ping_until_it_answers_again() {
        let mut w = Watchdog::new(Duration::from_secs(10), T0);
        let mut notified = Vec::new();
        let mut now = T0;
        // Stalled for three probes (15 s: past WatchdogSec, systemd
        // restarts the collector), then answering.
        for probe in [
            Probe::TimedOut,
            Probe::TimedOut,
            Probe::TimedOut,
            Probe::Answered,
        ] {
            assert!(w.poll_probe() >= now);
            now = w.poll_probe();
            let deadline = w.handle_probe_sent(now);
            let ended = if probe == Probe::TimedOut {
                deadline
            } else {
                now
            };
            notified.push(w.handle_probe(ended, probe));
            now = ended;
        }
        let withheld = Notify::Withhold {
            waited: Duration::from_secs(5),
        };
        assert_eq!(notified, [withheld, withheld, withheld, Notify::Watchdog]);
        assert_eq!(
            now,
            T0 + 30 * S,
            "each timeout is followed by half a period"
        );
    }

    #[test]
    fn a_gone_writer_stops_the_watchdog() {
        let mut w = Watchdog::new(Duration::from_secs(2), T0);
        w.handle_probe_sent(T0);
        assert_eq!(w.handle_probe(T0, Probe::WriterGone), Notify::Stop);
    }
}
