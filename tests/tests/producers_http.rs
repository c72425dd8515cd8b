//! The InfluxDB HTTP write API on the real agent binary, driven by the real
//! `influxdb-client` library (PyPI, `scripts/producers.sh`): Points of every
//! field type written in synchronous mode come back exact from the
//! collector's query API; a gzip v1 `/write` is stored; a bad line gets an
//! InfluxDB-shaped 400 and the good lines of the same body are stored.

use std::process::Command;

use ferry_tests::producers::{ApiCollector, producers_python};
use ferry_tests::{Site, free_tcp_port, http_get_with, run_agent, until};

const N: usize = 600;
const TOKEN: &str = "producer-token-0123456789";

/// Writes with influxdb-client, then gzip to v1 and a body with a bad line
/// with urllib; prints one JSON object with the answers.
const SCRIPT: &str = r#"
import gzip, json, sys, urllib.request, urllib.error
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

url, token, t0, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {}
with InfluxDBClient(url=url, token=token, org="ferry") as client:
    write = client.write_api(write_options=SYNCHRONOUS)
    points = []
    for i in range(n):
        points.append(
            Point("env")
            .tag("room", "r%d" % (i % 3))
            .field("temp", 20.0 + i / 8)
            .field("ratio", i * 0.1)
            .field("count", i * 1000003 - 2**40)
            .field("ok", i % 2 == 0)
            .field("status", "fine %d, \"quoted\"" % i)
            .time(t0 + i, WritePrecision.NS)
        )
    # Two synchronous writes: each returns after the agent's 204.
    write.write(bucket="b", record=points[: n // 2])
    write.write(bucket="b", record=points[n // 2 :])
    out["client"] = "ok"

def post(path, body, headers):
    req = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

t0_s = t0 // 10**9
lines = "".join("gz,host=h%d value=%d.25 %d\n" % (i % 2, i, t0_s + i) for i in range(100))
out["v1_gzip"] = post("/write?db=telegraf&precision=s&u=telegraf&p=" + token,
                      gzip.compress(lines.encode()), {"Content-Encoding": "gzip"})
out["v1_no_token"] = post("/write?db=telegraf", b"gz value=1 1\n", {})
bad = "mixed f=1 %d\nmixed f=oops %d\nmixed f=3 %d\n" % (t0_s + 1, t0_s + 2, t0_s + 3)
out["bad"] = post("/api/v2/write?org=ferry&bucket=b&precision=s", bad.encode(),
                  {"Authorization": "Token " + token})
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_client_writes_come_back_exact_and_bad_lines_get_influxdb_errors() {
    let python = producers_python();
    let site = Site::new();
    let collector = ApiCollector::start(&site).await;
    let (write_api, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[influx_http]]\nlisten = \"{write_api}\"\ntokens = [\"{TOKEN}\"]\n"
    ));
    let dir = site.dir.path();
    let _agent = run_agent(&config, admin, &dir.join("agent.log")).await;

    // An hour ago, whole seconds (the collector takes the last 30 days).
    let t0: i64 = (ferry_collector::now_ns() / 1_000_000_000 - 3600) * 1_000_000_000;
    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(format!("http://{write_api}"))
        .arg(TOKEN)
        .arg(t0.to_string())
        .arg(N.to_string())
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "the producer script failed:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers["client"], "ok");
    assert_eq!(answers["v1_gzip"][0], 204, "{answers}");
    assert_eq!(answers["v1_no_token"][0], 401, "{answers}");
    assert_eq!(
        answers["v1_no_token"][1],
        r#"{"error":"authorization failed"}"#
    );
    assert_eq!(answers["bad"][0], 400, "{answers}");
    let bad: serde_json::Value = serde_json::from_str(answers["bad"][1].as_str().unwrap()).unwrap();
    assert_eq!(bad["code"], "invalid");
    assert_eq!(
        bad["message"],
        format!(
            "unable to parse 'mixed f=oops {}' (line 2): column 9: field \"f\" has invalid \
             value \"oops\" (expected a float, an integer like 12i, an unsigned like 12u, or a \
             boolean)",
            t0 / 1_000_000_000 + 2
        )
    );

    // Every numeric value of every field type, exact; the string field
    // skipped; nothing else.
    type Value = fn(usize) -> f64;
    let expected: [(&str, Value); 4] = [
        ("env_temp", |i| 20.0 + i as f64 / 8.0),
        ("env_ratio", |i| i as f64 * 0.1),
        ("env_count", |i| (i as i64 * 1_000_003 - (1 << 40)) as f64),
        ("env_ok", |i| if i % 2 == 0 { 1.0 } else { 0.0 }),
    ];
    for (metric, value) in expected {
        until(&format!("{metric} stored"), || async {
            collector.count(metric).await == N
        })
        .await;
        let series = collector.raw(metric).await.unwrap();
        assert_eq!(series.len(), 3, "{metric}: one series per room");
        for s in &series {
            let room: usize = s.series[s.series.find("room=\"r").unwrap() + 7..][..1]
                .parse()
                .unwrap();
            let want: Vec<(i64, f64)> = (0..N)
                .filter(|i| i % 3 == room)
                .map(|i| (t0 + i as i64, value(i)))
                .collect();
            assert_eq!(s.readings, want, "{}", s.series);
        }
    }
    assert_eq!(collector.count("env_status").await, 0);

    // The gzip v1 body: 100 readings, seconds precision.
    until("gzip lines stored", || async {
        collector.count("gz_value").await == 100
    })
    .await;
    let mut gz: Vec<(i64, f64)> = collector
        .raw("gz_value")
        .await
        .unwrap()
        .into_iter()
        .flat_map(|s| s.readings)
        .collect();
    gz.sort_by_key(|r| r.0);
    let want: Vec<(i64, f64)> = (0..100)
        .map(|i| (t0 + i * 1_000_000_000, i as f64 + 0.25))
        .collect();
    assert_eq!(gz, want);

    // The partial write: the good lines of the refused body are stored.
    until("good lines of the bad body stored", || async {
        collector.count("mixed_f").await == 2
    })
    .await;
    let mixed = collector.raw("mixed_f").await.unwrap();
    assert_eq!(
        mixed[0].readings,
        [(t0 + 1_000_000_000, 1.0), (t0 + 3_000_000_000, 3.0)]
    );

    // The skipped string fields and the bad line reached the collector as
    // the listener's counts.
    until("the listener's counts at the collector", || async {
        let Some(body) =
            http_get_with(collector.http, "/api/v1/drops", Some(&collector.token)).await
        else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let count = |reason: &str| -> u64 {
            v["drops"].as_array().map_or(0, |rows| {
                rows.iter()
                    .filter(|r| r["reason"] == reason && r["device"] == "influx_http")
                    .filter_map(|r| r["readings"].as_u64())
                    .sum()
            })
        };
        count("skipped_string_fields") == N as u64 && count("rejected_input") == 1
    })
    .await;
    collector.running.stop().await;
}
