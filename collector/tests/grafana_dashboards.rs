//! The Grafana dashboards in docs/grafana use only PromQL the engine
//! evaluates: every panel and variable query, its variables filled in,
//! runs without an error over series shaped as Ferry exports them.

use ferry_collector::prometheus::eval::{Engine, parse};
use ferry_collector::prometheus::source::MemorySource;
use ferry_collector::prometheus::value::{Series, labels_of};
use serde_json::Value;

fn source() -> MemorySource {
    let mut series = Vec::new();
    for name in [
        "temperature",
        "humidity",
        "temperature_count",
        "temperature_min",
        "temperature_max",
        "temperature_sum",
        "humidity_count",
    ] {
        for device in ["d1", "d2"] {
            series.push(Series {
                labels: labels_of([
                    ("__name__", name),
                    ("agent", "gw"),
                    ("device", device),
                    ("sensor", "sht4x"),
                ]),
                samples: (0..60).map(|i| (i * 10_000, 20.0 + i as f64)).collect(),
            });
        }
    }
    series.push(Series {
        labels: labels_of([
            ("__name__", "temperature"),
            ("agent", "gw"),
            ("device", "d1"),
            ("quantile", "0.99"),
        ]),
        samples: vec![(300_000, 25.0)],
    });
    MemorySource { series }
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().unwrap().to_owned());
                } else {
                    exprs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_evaluates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana");
    let mut checked = 0;
    for file in ["ferry-fleet.json", "ferry-device.json"] {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let mut queries = Vec::new();
        exprs(&v["panels"], &mut queries);
        assert!(!queries.is_empty(), "{file}: no queries");
        for q in queries {
            let filled = q
                .replace("${metric}", "temperature")
                .replace("$metric", "temperature")
                .replace("$agent", "gw")
                .replace("$device", "d1")
                .replace("$__rate_interval", "1m");
            let expr = parse(&filled).unwrap_or_else(|e| panic!("{file}: {q}: {e}"));
            Engine::default()
                .range(&source(), &expr, 0, 600_000, 15_000)
                .unwrap_or_else(|e| panic!("{file}: {q}: {e}"));
            checked += 1;
        }
        for var in v["templating"]["list"].as_array().unwrap() {
            let q = var["query"]["query"].as_str().unwrap();
            assert!(q.starts_with("label_values("), "{file}: {q}");
            if let Some(sel) = q
                .strip_prefix("label_values(")
                .and_then(|s| s.rsplit_once(','))
                .map(|(s, _)| s)
            {
                let filled = sel.replace("$agent", "gw").replace("$device", "d1");
                parse(&filled).unwrap_or_else(|e| panic!("{file}: {q}: {e}"));
            }
        }
    }
    assert!(checked >= 10, "{checked} queries");
}
