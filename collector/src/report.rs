//! The operator CLI's reports: agents, drops, series, query answers, alerts
//! subscribers and tokens as a table, CSV or JSON. Rendering only (the binary prints).

use std::fmt::Write as _;

use crate::admin::{AgentView, Drops};
use crate::auth::TokenView;
use crate::fanout::{AlertEvent, SubscriberView};
use crate::store::{SeriesInfo, SeriesResult};

/// How a report is printed.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Writes a report to stdout; an error when stdout is closed.
pub fn print(text: String) -> std::io::Result<()> {
    use std::io::Write as _;
    std::io::stdout().lock().write_all(text.as_bytes())
}

/// `ns` since the epoch as RFC 3339 (ms), or `never` for 0.
pub fn time_text(ns: i64) -> String {
    if ns == 0 {
        return "never".into();
    }
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_millis(st).to_string()
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let esc = |c: &str| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_owned()
        }
    };
    let _ = writeln!(out, "{}", header.join(","));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| esc(c)).collect();
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

fn render(
    format: Format,
    header: &[&str],
    rows: &[Vec<String>],
    json: impl FnOnce() -> String,
) -> String {
    match format {
        Format::Table => table(header, rows),
        Format::Csv => csv(header, rows),
        Format::Json => json() + "\n",
    }
}

/// `agents` in `format`.
pub fn agents(agents: &[AgentView], format: Format) -> String {
    let header = [
        "AGENT",
        "STATE",
        "LAST SEEN",
        "REMOTE",
        "BATCHES",
        "READINGS",
        "LAST SEQ",
        "DROPPED",
        "REFUSED",
        "EPOCH",
        "RESETS",
        "BACKLOG",
    ];
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.state.clone(),
                time_text(a.last_seen_ns),
                a.remote.clone(),
                a.batches.to_string(),
                a.readings.to_string(),
                a.last_seq.map_or("-".into(), |s| s.to_string()),
                a.dropped.to_string(),
                a.refused.to_string(),
                if a.epoch.is_empty() {
                    "-".into()
                } else {
                    a.epoch.clone()
                },
                a.journal_resets.to_string(),
                a.backlog_readings.map_or("-".into(), |b| b.to_string()),
            ]
        })
        .collect();
    render(format, &header, &rows, || {
        serde_json::to_string_pretty(agents).unwrap_or_default()
    })
}

/// `drops` in `format`: one row per agent, device and reason, or with
/// `ledger` one per agent (JSON holds both either way).
pub fn drops(drops: &Drops, ledger: bool, format: Format) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let json = || serde_json::to_string_pretty(drops).unwrap_or_default();
    if ledger {
        let rows: Vec<Vec<String>> = drops
            .ledgers
            .iter()
            .map(|l| {
                vec![
                    l.agent.clone(),
                    l.received.to_string(),
                    l.stored.to_string(),
                    l.dropped.to_string(),
                    l.refused.to_string(),
                    l.in_transit.to_string(),
                ]
            })
            .collect();
        let header = [
            "AGENT",
            "RECEIVED",
            "STORED",
            "DROPPED",
            "REFUSED",
            "IN TRANSIT",
        ];
        return render(format, &header, &rows, json);
    }
    let rows: Vec<Vec<String>> = drops
        .drops
        .iter()
        .map(|d| {
            vec![
                d.agent.clone(),
                dash(&d.device),
                d.reason.clone(),
                d.counted_by.clone(),
                d.readings.to_string(),
            ]
        })
        .collect();
    render(
        format,
        &["AGENT", "DEVICE", "REASON", "COUNTED BY", "READINGS"],
        &rows,
        json,
    )
}

/// `series` in `format`.
pub fn series(series: &[SeriesInfo], format: Format) -> String {
    let rows: Vec<Vec<String>> = series
        .iter()
        .map(|s| vec![s.id.to_string(), s.name.clone()])
        .collect();
    render(format, &["ID", "SERIES"], &rows, || {
        serde_json::to_string_pretty(series).unwrap_or_default()
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

/// `query` in `format`.
pub fn query(results: &[SeriesResult], format: Format) -> String {
    let header = [
        "SERIES", "TIME", "VALUE", "WINDOW", "COUNT", "SUM", "MIN", "MAX", "FIRST", "LAST", "P50",
        "P90", "P99",
    ];
    let mut rows = Vec::new();
    for r in results {
        for &(ts, v) in &r.readings {
            let mut row = vec![r.series.clone(), time_text(ts), v.to_string()];
            row.resize(header.len(), String::new());
            rows.push(row);
        }
        for w in &r.windows {
            rows.push(vec![
                r.series.clone(),
                time_text(w.start_ns),
                String::new(),
                humantime::format_duration(std::time::Duration::from_nanos(w.len_ns)).to_string(),
                w.count.to_string(),
                w.sum.to_string(),
                w.min.to_string(),
                w.max.to_string(),
                w.first.to_string(),
                w.last.to_string(),
                opt(w.p50),
                opt(w.p90),
                opt(w.p99),
            ]);
        }
    }
    render(format, &header, &rows, || {
        serde_json::to_string_pretty(results).unwrap_or_default()
    })
}

/// `alerts` in `format`.
pub fn alerts(alerts: &[AlertEvent], format: Format) -> String {
    let header = ["ID", "TIME", "RULE", "STATE", "SUBJECT", "VALUE", "MESSAGE"];
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                time_text(a.ts_ns),
                a.rule.clone(),
                a.state.as_str().to_owned(),
                a.subject.clone(),
                a.value.to_string(),
                a.message.clone(),
            ]
        })
        .collect();
    render(format, &header, &rows, || {
        serde_json::to_string_pretty(alerts).unwrap_or_default()
    })
}

/// `token list` in `format` (names, roles and creation times; never the
/// tokens).
pub fn tokens(tokens: &[TokenView], format: Format) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| vec![t.name.clone(), t.role.to_string(), time_text(t.created_ns)])
        .collect();
    render(format, &["NAME", "ROLE", "CREATED"], &rows, || {
        serde_json::to_string_pretty(tokens).unwrap_or_default()
    })
}

/// `subscribers` in `format`.
pub fn subscribers(subs: &[SubscriberView], format: Format) -> String {
    let header = [
        "SUBSCRIBER",
        "CURSOR",
        "HEAD",
        "LAG",
        "BUDGET",
        "POLICY",
        "HANDLED",
        "SKIPPED",
        "DEAD",
        "DELIVERED",
        "REFUSED",
    ];
    let rows: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.cursor.to_string(),
                s.head.to_string(),
                s.lag.to_string(),
                s.lag_budget.to_string(),
                format!("{:?}", s.policy).to_lowercase(),
                s.handled.to_string(),
                s.skipped.to_string(),
                s.dead_letters.to_string(),
                s.delivered.to_string(),
                s.refused.to_string(),
            ]
        })
        .collect();
    render(format, &header, &rows, || {
        serde_json::to_string_pretty(subs).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_csv_quotes_what_needs_it() {
        let rows = vec![
            vec!["a".to_owned(), "x,y".to_owned()],
            vec!["long name".to_owned(), "say \"hi\"".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "V"], &rows),
            "ID         V\na          x,y\nlong name  say \"hi\"\n"
        );
        assert_eq!(
            csv(&["ID", "V"], &rows),
            "ID,V\na,\"x,y\"\nlong name,\"say \"\"hi\"\"\"\n"
        );
        assert_eq!(time_text(0), "never");
        assert_eq!(time_text(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }
}
