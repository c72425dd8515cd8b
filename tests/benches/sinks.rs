//! Storage sinks benchmark: how fast each sink delivers a backlog, and what
//! it costs the collector in CPU, next to what ingesting the same readings
//! cost (the baseline, measured in the same run).
//!
//! Per sink, on a fresh collector (release binaries) with only that sink
//! configured: the target is made unavailable (Prometheus and PostgreSQL
//! stopped, the Parquet directory's path taken by a file), a real agent
//! ships `SERIES × PER_SERIES` readings which the collector stores (the
//! ingest phase), then the target comes back and the sink delivers the
//! backlog (the delivery phase). Each phase's wall time and the collector's
//! CPU time (`/proc/<pid>/stat`) are measured; the target's content is then
//! counted, and the run fails on any reading lost, refused or repeated.
//!
//! ```sh
//! cargo build --release --bins && cargo bench -p ferry-tests --bench sinks
//! ```

use std::time::{Duration, Instant};

use ferry_collector::admin::Admin;
use ferry_tests::servers::{Postgres, Prometheus, duckdb};
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get};
use tokio::io::AsyncWriteExt;

const SERIES: usize = 1000;
const PER_SERIES: usize = 1000;
const N: u64 = (SERIES * PER_SERIES) as u64;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command (which may hold spaces) closed by ')'.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ
}

async fn wait<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Phase {
    secs: f64,
    cpu: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        N as f64 / self.secs
    }
    fn cpu_per_million(&self) -> f64 {
        self.cpu / (N as f64 / 1e6)
    }
}

enum Target<'a> {
    Prometheus(&'a mut Prometheus),
    Postgres(&'a Postgres),
    Parquet,
}

/// One sink's run: ingest phase with the target away, then delivery.
async fn run(name: &str, target: &mut Target<'_>) -> (Phase, Phase, u64) {
    let site = Site::new();
    let lake = site.dir.path().join("lake");
    let sink = match target {
        Target::Prometheus(p) => format!(
            "[sink.{name}]\nkind = \"prometheus_remote_write\"\nurl = \"http://{}/api/v1/write\"\nbackoff_min = \"20ms\"\nbackoff_max = \"100ms\"\n",
            p.addr
        ),
        Target::Postgres(pg) => format!(
            "[sink.{name}]\nkind = \"postgres\"\ndsn = \"{}\"\nbackoff_min = \"20ms\"\nbackoff_max = \"100ms\"\n",
            pg.dsn()
        ),
        Target::Parquet => format!(
            "[sink.{name}]\nkind = \"parquet\"\ndir = \"{}\"\nroll_every = \"1s\"\nbackoff_min = \"20ms\"\nbackoff_max = \"100ms\"\n",
            lake.display()
        ),
    };
    let toml = site.data.join("collector.toml");
    std::fs::write(
        &toml,
        format!(
            "data_dir = \".\"\n[quic]\nlisten = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\n{sink}",
            site.quic
        ),
    )
    .unwrap();
    // The target away.
    match target {
        Target::Prometheus(p) => p.pause(),
        Target::Postgres(pg) => pg.pause(),
        Target::Parquet => std::fs::write(&lake, b"not a directory yet").unwrap(),
    }
    let collector = Proc::spawn(
        &binary("ferry-collector"),
        &["run", "--config", toml.to_str().unwrap()],
        &site.dir.path().join("collector.log"),
    );
    let pid = collector.0.id();
    let addr_file = site.data.join(ferry_collector::admin::ADDR_FILE);
    wait("collector up", Duration::from_secs(60), || async {
        match std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            Some(a) => http_get(a, "/healthz").await.is_some(),
            None => false,
        }
    })
    .await;
    let (influx, admin_addr) = (free_tcp_port(), free_tcp_port());
    let agent_toml = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin_addr}\"\n\n\
         [journal]\nbudget = \"2 GiB\"\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let _agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", agent_toml.to_str().unwrap()],
        &site.dir.path().join("agent.log"),
    );
    wait("agent up", Duration::from_secs(60), || async {
        http_get(admin_addr, "/status").await.is_some()
    })
    .await;

    // Ingest phase.
    let t0 = now_ms() - 3_600_000;
    let mut text = String::with_capacity(48 * N as usize);
    for i in 0..PER_SERIES {
        for s in 0..SERIES {
            let cents = (i * 7 + s * 13) % 10_000;
            text.push_str(&format!(
                "bench,sensor=s{s:04} value={}.{:02} {}\n",
                cents / 100,
                cents % 100,
                t0 + i as i64 * 1000
            ));
        }
    }
    let admin = Admin::connect(&site.data).await.expect("admin");
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    drop(text);
    let stored = || async {
        admin
            .agents()
            .await
            .map(|a| a.iter().map(|x| x.readings).sum::<u64>())
            .unwrap_or(0)
    };
    wait("every reading stored", Duration::from_secs(600), || async {
        stored().await == N
    })
    .await;
    let ingest = Phase {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds(pid) - cpu0,
    };

    // Delivery phase: the target is back.
    let key = format!("sink/{name}");
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    match target {
        Target::Prometheus(p) => p.resume().await,
        Target::Postgres(pg) => pg.resume(),
        Target::Parquet => std::fs::remove_file(&lake).unwrap(),
    }
    let done = || async {
        let subs = admin.subscribers().await.unwrap_or_default();
        subs.into_iter()
            .find(|s| s.name == key)
            .filter(|s| s.head > 0 && s.cursor == s.head)
            .map(|s| s.refused + s.skipped)
    };
    wait(
        "the backlog delivered",
        Duration::from_secs(900),
        || async { done().await.is_some() },
    )
    .await;
    let refused = done().await.unwrap_or(u64::MAX);
    let deliver = Phase {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds(pid) - cpu0,
    };
    // What the target holds.
    let held = match target {
        Target::Prometheus(p) => {
            let end = t0 + PER_SERIES as i64 * 1000;
            let r = p
                .query_range("sum(count_over_time(bench_value[2h]))", end, end, 1000)
                .await;
            r.first()
                .and_then(|s| s.1.first())
                .map_or(0, |v| v.1 as u64)
        }
        Target::Postgres(pg) => pg
            .psql("SELECT count(*) FROM ferry.readings")
            .trim()
            .parse()
            .unwrap(),
        Target::Parquet => duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}/readings/*/*.parquet')",
            lake.display()
        ))[0]
            .parse()
            .unwrap(),
    };
    drop(collector);
    assert_eq!(
        (held, refused),
        (N, 0),
        "{name}: every reading delivered once, none refused or skipped"
    );
    (ingest, deliver, held)
}

fn line(label: &str, p: &Phase, held: Option<u64>) {
    println!(
        "  {label:<24} {:>8} readings in {:>6.2} s {:>9.0} readings/s   collector {:>5.2} core-s per million{}",
        N,
        p.secs,
        p.rate(),
        p.cpu_per_million(),
        held.map_or(String::new(), |h| format!("   target holds {h}"))
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for bin in ["ferry-collector", "ferry-agent"] {
            let _ = binary(bin);
        }
        let mut prom = Prometheus::start(None).await;
        let pg = Postgres::start();
        println!(
            "ferry storage sinks benchmark ({SERIES} series × {PER_SERIES} readings = {N} readings; \
             real agent → collector (release); each sink delivers the stored backlog once its target is back)"
        );
        let mut results = Vec::new();
        for (name, mut target) in [
            ("prometheus_remote_write", Target::Prometheus(&mut prom)),
            ("postgres", Target::Postgres(&pg)),
            ("parquet", Target::Parquet),
        ] {
            let (ingest, deliver, held) = run(name.split('_').next().unwrap(), &mut target).await;
            line(&format!("{name}:"), &deliver, Some(held));
            results.push((name, ingest, deliver));
        }
        println!("  baseline (the same readings' ingest, agent → collector, durable, in the same runs):");
        for (name, ingest, _) in &results {
            line(&format!("  before {name}:"), ingest, None);
        }
    });
}
