//! `ferry-agent watch`: a live summary, refreshed every second.
//!
//! [`Watch`] is the screen's state, sans-IO: it takes the agent's
//! [`Status`] and the collector's query answer ([`SeriesResult`], the type
//! the collector serializes) with the time they were read, computes rates,
//! and renders text. [`run`] fetches and prints.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_clock::Clock;
use ferry_proto::query::SeriesResult;

use crate::cli::http_get;
use crate::metrics::Status;

/// Series shown at most.
const MAX_ROWS: usize = 30;

/// The screen.
#[derive(Debug)]
pub struct Watch {
    agent_id: String,
    admin: SocketAddr,
    collector: Option<SocketAddr>,
    /// The latest status and when it was read.
    last: Option<(i64, Status)>,
    /// Readings per second in and acknowledged, between the last two reads.
    rates: (f64, f64),
    answering: bool,
    series: Option<Vec<SeriesResult>>,
}

impl Watch {
    /// A screen for agent `agent_id` (admin endpoint `admin`), with the
    /// collector's HTTP API at `collector` if given.
    pub fn new(agent_id: &str, admin: SocketAddr, collector: Option<SocketAddr>) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            admin,
            collector,
            last: None,
            rates: (0.0, 0.0),
            answering: false,
            series: None,
        }
    }

    /// The agent's status read at `now`, or `None` if it did not answer.
    pub fn handle_status(&mut self, now: i64, status: Option<Status>) {
        let Some(s) = status else {
            self.answering = false;
            return;
        };
        self.rates = match &self.last {
            Some((t, prev)) => {
                let dt = (now.saturating_sub(*t) as f64 / 1e9).max(1e-3);
                (
                    s.readings_in.saturating_sub(prev.readings_in) as f64 / dt,
                    s.readings_out.saturating_sub(prev.readings_out) as f64 / dt,
                )
            }
            None => (0.0, 0.0),
        };
        self.answering = true;
        self.last = Some((now, s));
    }

    /// The collector's answer for the last 30 s, or `None` if it did not
    /// answer.
    pub fn handle_series(&mut self, series: Option<Vec<SeriesResult>>) {
        self.series = series.map(|mut rows| {
            // Real and emulated boards first, then simulated devices.
            rows.sort_by_key(|r| r.tag("device").is_some_and(|d| d.starts_with("sim-")));
            rows
        });
    }

    /// The screen as text (with the escape that clears the terminal).
    pub fn render(&self) -> String {
        let mut screen = String::from("\x1b[2J\x1b[H");
        match (&self.last, self.answering) {
            (Some((_, s)), true) => self.agent(&mut screen, s),
            _ => {
                let _ = writeln!(screen, "agent not answering on {} (starting?)", self.admin);
            }
        }
        if let Some(addr) = self.collector {
            let _ = writeln!(
                screen,
                "\ncollector query API: http://{addr}/api/v1/query?match=temperature&from=-5m"
            );
            match &self.series {
                Some(rows) => series(&mut screen, rows),
                None => _ = writeln!(screen, "collector not answering on {addr}"),
            }
        }
        let _ = writeln!(screen, "\nCtrl-C stops.");
        screen
    }

    fn agent(&self, screen: &mut String, s: &Status) {
        let link = if s.connected {
            "connected"
        } else {
            "DISCONNECTED"
        };
        let _ = writeln!(screen, "ferry-agent {}  collector {link}", self.agent_id);
        let (rate_in, rate_out) = self.rates;
        let _ = writeln!(
            screen,
            "readings/s in {rate_in:>9.0}   acked/s {rate_out:>9.0}"
        );
        let oldest = s
            .oldest_unacked_age_s
            .map_or("-".to_string(), |a| format!("{a:.1} s"));
        let _ = writeln!(
            screen,
            "backlog {} readings in {} batches (+{} not batched), oldest {oldest}   journal {:.1} of {:.0} MiB",
            s.outbox_readings,
            s.outbox_batches,
            s.pending_readings,
            s.journal_bytes as f64 / 1048576.0,
            s.journal_budget as f64 / 1048576.0
        );
        let dropped: u64 = s.dropped.iter().map(|d| d.2).sum();
        let _ = writeln!(screen, "dropped {dropped}");
    }
}

fn series(screen: &mut String, rows: &[SeriesResult]) {
    let devices: BTreeSet<String> = rows.iter().filter_map(|r| r.tag("device")).collect();
    let _ = writeln!(
        screen,
        "{} devices, {} series with data in the last 30 s; latest values:",
        devices.len(),
        rows.len()
    );
    for r in rows.iter().take(MAX_ROWS) {
        let Some((_, v)) = r.latest() else { continue };
        let windows = if r.windows.is_empty() {
            String::new()
        } else {
            format!("  ({} windows)", r.windows.len())
        };
        let _ = writeln!(screen, "  {v:>10.2}  {}{windows}", r.series);
    }
}

/// Refreshes the screen every second until Ctrl-C. `admin_token` is the
/// agent's `[admin] token`; the collector's API needs a read token, taken
/// from `$FERRY_TOKEN`.
pub async fn run(
    agent_id: &str,
    admin: SocketAddr,
    admin_token: Option<&str>,
    collector: Option<SocketAddr>,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let mut watch = Watch::new(agent_id, admin, collector);
    let collector_token = std::env::var("FERRY_TOKEN").ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let status = http_get(admin, "/status", admin_token)
            .await
            .ok()
            .and_then(|b| serde_json::from_str::<Status>(&b).ok());
        watch.handle_status(clock.now_ns(), status);
        if let Some(addr) = collector {
            let rows = http_get(
                addr,
                "/api/v1/query?from=-30s&kind=all",
                collector_token.as_deref(),
            )
            .await
            .ok()
            .and_then(|b| serde_json::from_str::<Vec<SeriesResult>>(&b).ok());
            watch.handle_series(rows);
        }
        // A reader that went away (`| head`) ends the command: the error
        // reaches `main`, which exits quietly on a broken pipe.
        crate::cli::print_out(&watch.render())?;
    }
}

#[cfg(test)]
mod tests {
    use ferry_clock::SEC;
    use ferry_proto::query::WindowRow;

    use super::*;

    fn status(readings_in: u64, readings_out: u64) -> Status {
        Status {
            connected: true,
            journal_bytes: 0,
            journal_budget: 1 << 20,
            oldest_unacked_age_s: Some(1.5),
            outbox_batches: 1,
            outbox_readings: 10,
            pending_readings: 2,
            readings_in,
            readings_out,
            dropped: vec![("a".into(), 1, 3), ("b".into(), 2, 4)],
            disk_full: false,
        }
    }

    fn row(series: &str, last: f64, windows: usize) -> SeriesResult {
        SeriesResult {
            series: series.into(),
            readings: vec![(1, last)],
            windows: (0..windows)
                .map(|_| WindowRow {
                    start_ns: 0,
                    len_ns: 1,
                    count: 1,
                    sum: 0.0,
                    min: 0.0,
                    max: 0.0,
                    first: 0.0,
                    last: 0.0,
                    p50: None,
                    p90: None,
                    p99: None,
                })
                .collect(),
        }
    }

    #[test]
    fn watch_reads_the_collectors_json_old_and_new() {
        // Times and values as strings (NaN and infinities included)...
        let new = r#"[{"series":"t","readings":[["1700000000123456789","21.5"],["1700000000123456790","NaN"]],"windows":[{"start_ns":"5","len_ns":"10","count":2,"sum":"1","min":"0","max":"1","first":"0","last":"-Inf","p50":null,"p90":null,"p99":"+Inf"}]}]"#;
        let rows: Vec<SeriesResult> = serde_json::from_str(new).unwrap();
        assert_eq!(rows[0].readings[0], (1_700_000_000_123_456_789, 21.5));
        assert!(rows[0].readings[1].1.is_nan());
        assert_eq!(rows[0].windows[0].start_ns, 5);
        assert_eq!(rows[0].windows[0].last, f64::NEG_INFINITY);
        assert_eq!(rows[0].windows[0].p99, Some(f64::INFINITY));
        // ...or as numbers, from an older collector.
        let old = r#"[{"series":"t","readings":[[1700000000123456000,21.5]],"windows":[{"start_ns":5,"len_ns":10,"count":2,"sum":1.0,"min":0.0,"max":1.0,"first":0.0,"last":1.5,"p50":null,"p90":null,"p99":null}]}]"#;
        let rows: Vec<SeriesResult> = serde_json::from_str(old).unwrap();
        assert_eq!(rows[0].readings[0], (1_700_000_000_123_456_000, 21.5));
        assert_eq!(rows[0].windows[0].start_ns, 5);
        assert_eq!(rows[0].latest(), Some((1_700_000_000_123_456_000, 21.5)));
    }

    #[test]
    fn rates_are_the_change_over_the_time_between_reads() {
        let admin = SocketAddr::from(([127, 0, 0, 1], 7400));
        let mut w = Watch::new("gw-1", admin, None);
        w.handle_status(10 * SEC, Some(status(100, 50)));
        assert!(
            w.render()
                .contains("readings/s in         0   acked/s         0")
        );
        w.handle_status(12 * SEC, Some(status(1100, 450)));
        let screen = w.render();
        assert!(
            screen.contains("ferry-agent gw-1  collector connected"),
            "{screen}"
        );
        assert!(
            screen.contains("readings/s in       500   acked/s       200"),
            "{screen}"
        );
        assert!(screen.contains("oldest 1.5 s"));
        assert!(screen.contains("dropped 7\n"));
        w.handle_status(13 * SEC, None);
        assert!(w.render().contains("agent not answering on 127.0.0.1:7400"));
    }

    #[test]
    fn devices_are_counted_by_tag_and_simulated_ones_listed_last() {
        let admin = SocketAddr::from(([127, 0, 0, 1], 7400));
        let collector = SocketAddr::from(([127, 0, 0, 1], 7411));
        let mut w = Watch::new("gw-1", admin, Some(collector));
        assert!(
            w.render()
                .contains("collector not answering on 127.0.0.1:7411")
        );
        w.handle_series(Some(vec![
            row("temperature{device=\"sim-1\"}", 1.0, 0),
            row("temperature{device=\"0a1b\",sensor=\"x\"}", 21.5, 2),
            row("humidity{device=\"0a1b\"}", 40.0, 0),
        ]));
        let screen = w.render();
        assert!(
            screen.contains("2 devices, 3 series with data in the last 30 s"),
            "{screen}"
        );
        let board = screen.find("21.50  temperature{device=\"0a1b\"").unwrap();
        let sim = screen.find("1.00  temperature{device=\"sim-1\"}").unwrap();
        assert!(board < sim, "boards first: {screen}");
        assert!(screen.contains("(2 windows)"));
    }
}
