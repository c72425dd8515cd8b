//! Storage sinks end to end, with the real binaries and real servers:
//! readings enter a real agent (Influx line protocol over TCP), reach a real
//! `ferry-collector run`, and come back exact from Prometheus'
//! `/api/v1/query_range`, from `psql` and from DuckDB reading the Parquet
//! files — through `kill -9` of the collector during delivery, and through
//! a server that is down for a while.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_collector::admin::Admin;
use ferry_tests::servers::{Postgres, Prometheus, duckdb};
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, http_get_with, stored, until};
use tokio::io::AsyncWriteExt;

const DEVICES: usize = 4;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The reading `i` of device `d`: `(ts_ms, value)`, values with two decimals.
fn reading(t0_ms: i64, d: usize, i: usize) -> (i64, f64) {
    let cents = ((i * 37 + d * 1000) % 5000) as i64 - 1000;
    (t0_ms + i as i64 * 1000, cents as f64 / 100.0)
}

fn series(d: usize) -> String {
    // The collector tags every stored series with its agent (the
    // certificate's name, "gw" here).
    format!("env_temp_c{{agent=\"gw\",device=\"d{d}\"}}")
}

/// What was sent: series → [(ts_ms, value)].
type Sent = BTreeMap<String, Vec<(i64, f64)>>;

struct Rig {
    site: Site,
    collector_toml: PathBuf,
    influx: SocketAddr,
    lake: PathBuf,
    agent: Option<Proc>,
    agent_toml: PathBuf,
    admin: SocketAddr,
    collector: Option<Proc>,
    runs: usize,
    http: Option<String>,
}

impl Rig {
    /// A site whose collector has the given `[sink.*]` tables, and an agent.
    async fn new(sinks: impl Fn(&Path) -> String) -> Self {
        let site = Site::new();
        let lake = site.dir.path().join("lake");
        let collector_toml = site.data.join("collector.toml");
        std::fs::write(
            &collector_toml,
            format!(
                "data_dir = \".\"\n[quic]\nlisten = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\n{}",
                site.quic,
                sinks(&lake)
            ),
        )
        .unwrap();
        let (influx, admin) = (free_tcp_port(), free_tcp_port());
        let agent_toml = site.agent_config(&format!(
            "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
             [journal]\nbatch_max_readings = 200\n\n\
             [[aggregate]]\nmetric = \"env_hum*\"\nperiod = \"10s\"\nlateness = \"0s\"\nsketch = true\n\n\
             [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
        ));
        let mut rig = Self {
            site,
            collector_toml,
            influx,
            lake,
            agent: None,
            agent_toml,
            admin,
            collector: None,
            runs: 0,
            http: None,
        };
        rig.start_collector().await;
        rig.start_agent().await;
        rig
    }

    /// (Re)starts the agent. After a collector's `kill -9` the agent would
    /// only notice the dead QUIC connection at its idle timeout (30 s);
    /// the kill test restarts it instead (its journal keeps everything).
    async fn start_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            a.kill9();
        }
        self.runs += 1;
        self.agent = Some(Proc::spawn(
            &binary("ferry-agent"),
            &["run", "--config", self.agent_toml.to_str().unwrap()],
            &self.site.dir.path().join(format!("agent{}.log", self.runs)),
        ));
        let admin = self.admin;
        until("agent up", || async move {
            http_get(admin, "/status").await.is_some()
        })
        .await;
    }

    async fn start_collector(&mut self) {
        self.runs += 1;
        let log = self
            .site
            .dir
            .path()
            .join(format!("collector{}.log", self.runs));
        self.collector = Some(Proc::spawn(
            &binary("ferry-collector"),
            &["run", "--config", self.collector_toml.to_str().unwrap()],
            &log,
        ));
        // Up: a new address in collector.http that answers.
        let file = self.site.data.join(ferry_collector::admin::ADDR_FILE);
        let old = self.http.clone();
        let mut up = None;
        for _ in 0..12_000 {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let text = text.trim().to_owned();
                if Some(&text) != old.as_ref()
                    && let Ok(sock) = text.parse()
                    && http_get(sock, "/healthz").await.is_some()
                {
                    up = Some(text);
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.http = Some(up.expect("collector HTTP up"));
    }

    fn kill_collector(&mut self) {
        if let Some(c) = self.collector.take() {
            c.kill9();
        }
    }

    fn http_addr(&self) -> SocketAddr {
        self.http.as_ref().unwrap().parse().unwrap()
    }

    /// Sends readings `from..to` of every device; waits until the
    /// collector stored `to` per device.
    async fn send(&self, t0_ms: i64, from: usize, to: usize, sent: &mut Sent) {
        let count = || async {
            stored(&self.site.data, "env_temp_c")
                .await
                .map(|s| s.iter().map(|x| x.1.len()).sum::<usize>())
        };
        let mut before = None;
        for _ in 0..12_000 {
            before = count().await;
            if before.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let total = before.expect("the collector answers queries") + (to - from) * DEVICES;
        let mut tcp = tokio::net::TcpStream::connect(self.influx).await.unwrap();
        let mut text = String::new();
        for i in from..to {
            for d in 0..DEVICES {
                let (ts, v) = reading(t0_ms, d, i);
                text.push_str(&format!("env,device=d{d} temp_c={v} {ts}\n"));
                sent.entry(series(d)).or_default().push((ts, v));
            }
        }
        tcp.write_all(text.as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
        until("readings stored", || async { count().await == Some(total) }).await;
    }

    /// The storage sinks' cursors and the event log's head, as the running
    /// collector shows them.
    async fn subscribers(&self) -> BTreeMap<String, (u64, u64, u64, u64)> {
        let Ok(admin) = Admin::connect(&self.site.data).await else {
            return BTreeMap::new();
        };
        admin
            .subscribers()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, (s.cursor, s.head, s.lag, s.skipped)))
            .collect()
    }

    /// Waits until the event log's head counts every batch stored (a
    /// storage sink runs from the start, so each has an entry) and every
    /// sink named has reached it.
    async fn caught_up(&self, names: &[&str]) {
        until("sinks caught up", || async {
            let Ok(admin) = Admin::connect(&self.site.data).await else {
                return false;
            };
            let Ok(agents) = admin.agents().await else {
                return false;
            };
            let stored: u64 = agents.iter().map(|a| a.batches).sum();
            let subs = self.subscribers().await;
            names.iter().all(|n| {
                subs.get(&format!("sink/{n}"))
                    .is_some_and(|&(cursor, head, _, _)| head == stored && cursor == head)
            })
        })
        .await;
    }

    async fn metrics(&self) -> String {
        // The API needs a token: the collector's own local admin token.
        let token = std::fs::read_to_string(self.site.data.join("admin.token")).unwrap_or_default();
        http_get_with(self.http_addr(), "/metrics", Some(token.trim()))
            .await
            .unwrap_or_default()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.agent.take();
        self.collector.take();
        if std::thread::panicking() {
            // Keep the logs of a failed run.
            let dir = std::mem::replace(&mut self.site.dir, tempfile::tempdir().unwrap());
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

fn sinks_config(prom: Option<&Prometheus>, pg: Option<&Postgres>, lake: Option<&Path>) -> String {
    let mut s = String::new();
    if let Some(p) = prom {
        s.push_str(&format!(
            "[sink.prom]\nkind = \"prometheus_remote_write\"\nurl = \"http://{}/api/v1/write\"\n\
             batch_linger = \"100ms\"\nmax_samples_per_send = 500\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n",
            p.addr
        ));
    }
    if let Some(pg) = pg {
        s.push_str(&format!(
            "[sink.pg]\nkind = \"postgres\"\ndsn = \"{}\"\nbatch_linger = \"50ms\"\nmax_rows = 300\n\
             backoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n",
            pg.dsn()
        ));
    }
    if let Some(dir) = lake {
        s.push_str(&format!(
            "[sink.lake]\nkind = \"parquet\"\ndir = \"{}\"\nroll_every = \"1s\"\n\
             backoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n",
            dir.display()
        ));
    }
    s
}

/// Every `env_temp_c` series Prometheus holds over the sent range, with
/// their samples.
async fn from_prometheus(prom: &Prometheus, t0_ms: i64, n: usize) -> Sent {
    prom.query_range("env_temp_c", t0_ms, t0_ms + (n as i64 - 1) * 1000, 1000)
        .await
        .into_iter()
        .map(|(labels, values)| {
            assert_eq!(
                labels.keys().map(String::as_str).collect::<Vec<_>>(),
                ["__name__", "agent", "device"],
                "labels as docs/prometheus.md names them"
            );
            (
                format!(
                    "env_temp_c{{agent=\"{}\",device=\"{}\"}}",
                    labels["agent"], labels["device"]
                ),
                values,
            )
        })
        .collect()
}

fn from_postgres(pg: &Postgres) -> Sent {
    let mut out = Sent::new();
    let rows = pg.psql(
        "SELECT s.name, r.ts_ns, r.value FROM ferry.readings r JOIN ferry.series s ON s.id = r.series_id ORDER BY s.name, r.ts_ns",
    );
    for line in rows.lines() {
        let mut f = line.split('|');
        let (name, ts, v) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        out.entry(name.to_owned())
            .or_default()
            .push((ts.parse::<i64>().unwrap() / 1_000_000, v.parse().unwrap()));
    }
    out
}

fn from_parquet(lake: &Path) -> Sent {
    let mut out = Sent::new();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.join("manifest.json")).unwrap()).unwrap();
    let listed: BTreeSet<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "readings")
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    // Every file on disk is one the manifest lists.
    let glob = format!("{}/readings/*/*.parquet", lake.display());
    let on_disk: BTreeSet<String> = duckdb(&format!("SELECT file FROM glob('{glob}')"))
        .into_iter()
        .map(|f| {
            f.strip_prefix(&format!("{}/", lake.display()))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        on_disk, listed,
        "the manifest lists exactly the files there"
    );
    for line in duckdb(&format!(
        "SELECT series, epoch_ns(ts), value FROM read_parquet('{glob}') ORDER BY series, ts"
    )) {
        let mut f = line.split('|');
        let (name, ts, v) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        out.entry(name.to_owned())
            .or_default()
            .push((ts.parse::<i64>().unwrap() / 1_000_000, v.parse().unwrap()));
    }
    out
}

/// A window as the collector stores it: `(series, start_ns)` →
/// `(len_ns, count, sum, min, max, first, last, p50, p90, p99)`.
type Windows = BTreeMap<(String, i64), (u64, u64, [f64; 6], [Option<f64>; 3])>;

async fn stored_windows(data: &Path) -> Windows {
    let admin = Admin::connect(data).await.unwrap();
    let res = admin
        .query(&ferry_collector::query::QueryParams {
            selector: Some("env_hum_pct".into()),
            from: Some("0".into()),
            to: Some("4000000000000000000".into()),
            step: None,
            kind: Some("aggregates".into()),
        })
        .await
        .unwrap();
    let mut out = Windows::new();
    for s in res {
        for w in s.windows {
            out.insert(
                (s.series.clone(), w.start_ns),
                (
                    w.len_ns,
                    w.count,
                    [w.sum, w.min, w.max, w.first, w.last, 0.0],
                    [w.p50, w.p90, w.p99],
                ),
            );
        }
    }
    out
}

fn opt(text: &str) -> Option<f64> {
    (!text.is_empty() && text != "None").then(|| text.parse().unwrap())
}

/// Parses `series|start|len|count|sum|min|max|first|last|p50|p90|p99` rows.
fn windows_of(rows: impl IntoIterator<Item = String>) -> Windows {
    rows.into_iter()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let n = |i: usize| f[i].parse::<f64>().unwrap();
            (
                (f[0].to_owned(), f[1].parse().unwrap()),
                (
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    [n(4), n(5), n(6), n(7), n(8), 0.0],
                    [opt(f[9]), opt(f[10]), opt(f[11])],
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_come_back_exact_from_prometheus_postgres_and_duckdb() {
    let prom = Prometheus::start(None).await;
    let pg = Postgres::start();
    let rig = Rig::new(|lake| sinks_config(Some(&prom), Some(&pg), Some(lake))).await;
    let t0 = now_ms() - 600_000;
    let n = 300;
    let mut sent = Sent::new();
    // Humidity in 10 s windows with quantile sketches (the agent's
    // [[aggregate]]): 60 readings per device, six windows, a little ahead
    // of the clock (a window whose end is past is closed already, and its
    // readings would go raw as late); one more reading per device pushes
    // each series past the sixth window's end, which closes it.
    let mut tcp = tokio::net::TcpStream::connect(rig.influx).await.unwrap();
    let ahead = now_ms() + 20_000;
    let w0 = ahead - ahead.rem_euclid(10_000);
    let mut text = String::new();
    for i in 0..60i64 {
        for d in 0..DEVICES {
            text.push_str(&format!(
                "env,device=d{d} hum_pct={}.{} {}\n",
                40 + (i * 7 + d as i64) % 30,
                i % 10,
                w0 + i * 1000
            ));
        }
    }
    for d in 0..DEVICES {
        text.push_str(&format!("env,device=d{d} hum_pct=50 {}\n", w0 + 70_000));
    }
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    until("six windows per device stored", || async {
        stored_windows(&rig.site.data).await.len() == 6 * DEVICES
    })
    .await;
    rig.send(t0, 0, n, &mut sent).await;
    rig.caught_up(&["prom", "pg", "lake"]).await;

    assert_eq!(from_prometheus(&prom, t0, n).await, sent, "Prometheus");
    // Aggregates, exactly as the collector stored them.
    let windows = stored_windows(&rig.site.data).await;
    let pg_windows = windows_of(pg.psql(
        "SELECT s.name, a.start_ns, a.len_ns, a.count, a.sum, a.min, a.max, a.first, a.last, a.p50, a.p90, a.p99 \
         FROM ferry.aggregates a JOIN ferry.series s ON s.id = a.series_id",
    ).lines().map(str::to_owned));
    assert_eq!(pg_windows, windows, "PostgreSQL aggregates");
    let lake_windows = windows_of(duckdb(&format!(
        "SELECT series, epoch_ns(start), len_ns, count, sum, min, max, first, last, p50, p90, p99 \
         FROM read_parquet('{}/aggregates/*/*.parquet')",
        rig.lake.display()
    )));
    assert_eq!(lake_windows, windows, "Parquet aggregates");
    // Prometheus: `_count`, `_sum`, `_min`, `_max` and quantiles at each
    // window's end.
    for (part, pick) in [
        ("env_hum_pct_count", 0usize),
        ("env_hum_pct_sum", 1),
        ("env_hum_pct_max", 3),
        ("env_hum_pct{quantile=\"0.9\"}", 5),
    ] {
        let got = prom.query_range(part, w0, w0 + 60_000, 10_000).await;
        assert_eq!(got.len(), DEVICES, "{part}");
        for (labels, values) in got {
            let series = format!(
                "env_hum_pct{{agent=\"{}\",device=\"{}\"}}",
                labels["agent"], labels["device"]
            );
            let want: Vec<(i64, f64)> = windows
                .iter()
                .filter(|((s, _), _)| *s == series)
                .map(|((_, start), (len, count, f, q))| {
                    let v = match pick {
                        0 => *count as f64,
                        1 => f[0],
                        3 => f[2],
                        _ => q[1].unwrap(),
                    };
                    ((start + *len as i64) / 1_000_000, v)
                })
                .collect();
            assert_eq!(values, want, "{part} of {series}");
        }
    }
    assert_eq!(from_postgres(&pg), sent, "PostgreSQL");
    assert_eq!(from_parquet(&rig.lake), sent, "Parquet through DuckDB");
    // The schema is documented: series with their tags as JSON.
    assert_eq!(
        pg.psql("SELECT metric, tags->>'device' FROM ferry.series WHERE metric = 'env_temp_c' ORDER BY id LIMIT 1")
            .trim(),
        "env_temp_c|d0"
    );
    let m = rig.metrics().await;
    // Delivered: readings, plus per window one row (PostgreSQL, Parquet)
    // or eight samples (count, sum, min, max, four quantiles).
    let w = windows.len();
    for (sink, delivered) in [
        ("prom", n * DEVICES + 8 * w),
        ("pg", n * DEVICES + w),
        ("lake", n * DEVICES + w),
    ] {
        let line = format!(
            "ferry_collector_sink_readings_total{{sink=\"{sink}\",outcome=\"delivered\"}} {delivered}"
        );
        assert!(m.contains(&line), "{line} in\n{m}");
        assert!(
            m.contains(&format!(
                "ferry_collector_fanout_lag{{subscriber=\"sink/{sink}\"}} 0"
            )),
            "lag of {sink}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_during_delivery_repeats_and_loses_nothing() {
    // No out-of-order window: the samples resent after a kill are refused
    // as out of order (or ignored as duplicates), never stored twice.
    let prom = Prometheus::start(None).await;
    let pg = Postgres::start();
    let mut rig = Rig::new(|lake| sinks_config(Some(&prom), Some(&pg), Some(lake))).await;
    let t0 = now_ms() - 2_400_000;
    let per_round = 250;
    let mut sent = Sent::new();
    // Kills at different points of delivery: PostgreSQL transactions of 300
    // rows, remote-write requests of 500 samples, Parquet files each second
    // (written a second after their period).
    let delays_ms = [0u64, 30, 120, 350, 800, 1300, 1900, 2600];
    for (round, delay) in delays_ms.iter().enumerate() {
        rig.send(t0, round * per_round, (round + 1) * per_round, &mut sent)
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(*delay)).await;
        rig.kill_collector();
        rig.start_collector().await;
        rig.start_agent().await;
    }
    rig.caught_up(&["prom", "pg", "lake"]).await;
    let n = delays_ms.len() * per_round;
    assert_eq!(sent.values().map(Vec::len).sum::<usize>(), n * DEVICES);
    assert_eq!(
        from_postgres(&pg),
        sent,
        "PostgreSQL: every reading exactly once"
    );
    assert_eq!(
        from_parquet(&rig.lake),
        sent,
        "Parquet: every reading exactly once"
    );
    assert_eq!(
        from_prometheus(&prom, t0, n).await,
        sent,
        "Prometheus: every sample"
    );
    // The cursors PostgreSQL and the manifest hold are the collector's.
    let subs = rig.subscribers().await;
    let pg_cursor: u64 = pg
        .psql("SELECT seq FROM ferry.cursors WHERE sink = 'pg'")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pg_cursor, subs["sink/pg"].0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.lake.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["cursor"].as_u64(), Some(subs["sink/lake"].0));
    for name in ["sink/prom", "sink/pg", "sink/lake"] {
        assert_eq!(subs[name].3, 0, "{name} skipped nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_server_is_down_shows_its_lag_and_catches_up() {
    let mut prom = Prometheus::start(None).await;
    let pg = Postgres::start();
    let rig = Rig::new(|_| sinks_config(Some(&prom), Some(&pg), None)).await;
    let t0 = now_ms() - 900_000;
    let mut sent = Sent::new();
    rig.send(t0, 0, 100, &mut sent).await;
    rig.caught_up(&["prom", "pg"]).await;

    prom.pause();
    pg.pause();
    rig.send(t0, 100, 400, &mut sent).await;
    // While down: the lag shows, in `subscribers` and /metrics, and the
    // retries count up.
    until("lag and retries visible", || async {
        let subs = rig.subscribers().await;
        let m = rig.metrics().await;
        ["prom", "pg"].iter().all(|s| {
            subs.get(&format!("sink/{s}"))
                .is_some_and(|&(_, _, lag, _)| lag > 0)
                && m.contains(&format!(
                    "ferry_collector_sink_retries_total{{sink=\"{s}\"}}"
                ))
                && !m.contains(&format!(
                    "ferry_collector_fanout_lag{{subscriber=\"sink/{s}\"}} 0\n"
                ))
        })
    })
    .await;
    let cli = std::process::Command::new(binary("ferry-collector"))
        .args(["subscribers", "--data-dir", rig.site.data.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("sink/pg")) && table.contains("DELIVERED"),
        "{table}"
    );

    prom.resume().await;
    pg.resume();
    rig.caught_up(&["prom", "pg"]).await;
    assert_eq!(from_postgres(&pg), sent, "PostgreSQL caught up");
    assert_eq!(
        from_prometheus(&prom, t0, 400).await,
        sent,
        "Prometheus caught up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_sinks_without_a_restart() {
    let pg = Postgres::start();
    let rig = Rig::new(|_| sinks_config(None, Some(&pg), None)).await;
    let t0 = now_ms() - 600_000;
    let reload = |rig: &Rig, sinks: String| {
        let text = std::fs::read_to_string(&rig.collector_toml).unwrap();
        let head = text.split("[sink.").next().unwrap().to_owned();
        std::fs::write(&rig.collector_toml, head + &sinks).unwrap();
        let out = std::process::Command::new(binary("ferry-collector"))
            .args(["reload", "--data-dir", rig.site.data.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut a = Sent::new();
    rig.send(t0, 0, 50, &mut a).await;
    rig.caught_up(&["pg"]).await;

    // Add a Parquet sink: it starts at the head (what is stored from now on).
    reload(&rig, sinks_config(None, Some(&pg), Some(&rig.lake)));
    until("sink/lake subscribed", || async {
        rig.subscribers().await.contains_key("sink/lake")
    })
    .await;
    let mut b = Sent::new();
    rig.send(t0, 50, 100, &mut b).await;
    rig.caught_up(&["pg", "lake"]).await;
    assert_eq!(
        from_parquet(&rig.lake),
        b,
        "the new sink has what came after it"
    );
    let mut ab = a.clone();
    for (k, v) in &b {
        ab.get_mut(k).unwrap().extend(v);
    }
    assert_eq!(from_postgres(&pg), ab);

    // Remove PostgreSQL: it no longer shows, and no longer holds the log.
    reload(&rig, sinks_config(None, None, Some(&rig.lake)));
    until("sink/pg gone", || async {
        !rig.subscribers().await.contains_key("sink/pg")
    })
    .await;
    let mut c = Sent::new();
    rig.send(t0, 100, 150, &mut c).await;
    rig.caught_up(&["lake"]).await;
    assert_eq!(from_postgres(&pg), ab, "a removed sink gets nothing more");

    // Back again: the batches stored while it was gone were trimmed from
    // the log (the Parquet sink had them): counted as skipped, and it
    // carries on from there.
    reload(&rig, sinks_config(None, Some(&pg), Some(&rig.lake)));
    let mut d = Sent::new();
    rig.send(t0, 150, 200, &mut d).await;
    rig.caught_up(&["pg", "lake"]).await;
    let subs = rig.subscribers().await;
    assert!(
        subs["sink/pg"].3 > 0,
        "the gap counted as skipped: {subs:?}"
    );
    let mut abd = ab.clone();
    for (k, v) in &d {
        abd.get_mut(k).unwrap().extend(v);
    }
    assert_eq!(from_postgres(&pg), abd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_servers_certificate() {
    let pg = Postgres::start();
    let certs = tempfile::tempdir().unwrap();
    let ca = pg.enable_tls(certs.path());
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    // A CA that did not sign the server's certificate.
    let other = tempfile::tempdir().unwrap();
    let stranger = Postgres::start();
    let wrong = stranger.enable_tls(other.path());
    let wrong_file = other.path().join("ca.pem");
    std::fs::write(&wrong_file, wrong).unwrap();
    let dsn = format!("{} sslmode=require", pg.dsn());
    let rig = Rig::new(|_| {
        format!(
            "[sink.pg]\nkind = \"postgres\"\ndsn = \"{dsn}\"\nca_file = \"{}\"\nbatch_linger = \"50ms\"\n\n\
             [sink.impostor]\nkind = \"postgres\"\ndsn = \"{dsn}\"\nschema = \"impostor\"\nca_file = \"{}\"\n\
             backoff_min = \"20ms\"\nbackoff_max = \"100ms\"\nlag_budget = {{ max = 100000, policy = \"skip\" }}\n",
            ca_file.display(),
            wrong_file.display()
        )
    })
    .await;
    let t0 = now_ms() - 600_000;
    let mut sent = Sent::new();
    rig.send(t0, 0, 100, &mut sent).await;
    rig.caught_up(&["pg"]).await;
    assert_eq!(from_postgres(&pg), sent);
    // The sink's connection is encrypted.
    assert_eq!(
        pg.psql(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'ferry-collector'"
        )
        .trim(),
        "t"
    );
    // The one trusting another CA never gets in: it retries, and lags.
    until("the impostor retries", || async {
        rig.metrics()
            .await
            .contains("ferry_collector_sink_retries_total{sink=\"impostor\"}")
    })
    .await;
    assert!(rig.subscribers().await["sink/impostor"].2 > 0);
    assert!(pg.try_psql("SELECT 1 FROM impostor.cursors").is_none());
}
