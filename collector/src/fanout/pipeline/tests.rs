//! Tests of the processor pipeline.

use super::*;
use crate::fanout::rules::SinkConfig;

const S: i64 = 1_000_000_000;

fn cfg(text: &str) -> ProcessorConfig {
    #[derive(Deserialize)]
    struct F {
        processor: ProcessorConfig,
    }
    let f: F = toml::from_str(text).unwrap();
    super::super::rules::validate(&f.processor, &SinkConfig::default()).unwrap();
    f.processor
}

const HR: &str = r#"
[[processor.threshold]]
name = "hr"
match = 'heart_rate_bpm{patient="p1"}'
above = 120
below = 40
for = "30s"
hysteresis = 5

[processor.offline]
after = "60s"
"#;

fn names() -> HashMap<u64, SeriesName> {
    let mut m = HashMap::new();
    for (id, patient) in [(1u64, "p1"), (2, "p2")] {
        let key = SeriesKey::new(
            "heart_rate_bpm",
            [("patient", patient), ("device", patient)],
        )
        .unwrap();
        m.insert(
            id,
            SeriesName {
                text: key.to_string(),
                key,
            },
        );
    }
    m
}

fn entry(series: u64, t0: i64, values: &[f64], stored_ns: i64) -> LogEntry {
    let readings: Vec<Reading> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| Reading {
            ts_ns: t0 + i as i64 * S,
            value: v,
        })
        .collect();
    let block = ferry_proto::batch::ReadingBlock::encode(0, &readings);
    LogEntry {
        agent: "gw".into(),
        stored_ns,
        chunks: vec![(series, ferry_proto::codec::to_vec(&block).unwrap())],
        ..LogEntry::default()
    }
}

#[test]
fn threshold_fires_and_resolves_across_entries_and_a_restore() {
    let c = cfg(HR);
    let mut p = Processors::new(&c);
    let names = names();
    let mut vals = vec![80.0; 10];
    vals.extend([130.0; 20]);
    let ev = p.handle(&entry(1, 0, &vals, 5 * S), &names, 7 * S).unwrap();
    assert_eq!(ev, vec![]);
    // Patient p2 out of range does not match the selector.
    assert_eq!(
        p.handle(&entry(2, 0, &[300.0; 60], 6 * S), &names, 7 * S)
            .unwrap(),
        vec![]
    );
    // Save and restore into a fresh set of processors (a restart).
    let saved = p.take_dirty();
    assert_eq!(saved.len(), 2);
    let mut q = Processors::new(&c);
    for (id, s) in &saved {
        assert!(q.restore(id, s).unwrap());
    }
    let ev = q
        .handle(&entry(1, 30 * S, &[130.0; 11], 8 * S), &names, 9 * S)
        .unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].state, AlertState::Firing);
    assert_eq!(ev[0].rule, "threshold/hr");
    assert_eq!(ev[0].subject, r#"heart_rate_bpm{device="p1",patient="p1"}"#);
    assert_eq!(
        (ev[0].ts_ns, ev[0].since_ns, ev[0].emitted_ns),
        (40 * S, 10 * S, 9 * S)
    );
    let ev = q
        .handle(&entry(1, 41 * S, &[118.0, 100.0], 10 * S), &names, 11 * S)
        .unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].state, AlertState::Resolved);
    assert_eq!(ev[0].ts_ns, 42 * S);
}

#[test]
fn offline_uses_the_collector_clock() {
    let mut p = Processors::new(&cfg(HR));
    let names = names();
    p.handle(&entry(1, 0, &[80.0], 100 * S), &names, 100 * S)
        .unwrap();
    assert_eq!(p.check(159 * S), vec![]);
    let ev = p.check(160 * S);
    let subjects: Vec<(&str, AlertState)> =
        ev.iter().map(|e| (e.subject.as_str(), e.state)).collect();
    assert_eq!(
        subjects,
        vec![
            ("agent=gw", AlertState::Offline),
            ("device=p1", AlertState::Offline)
        ]
    );
    let ev = p
        .handle(&entry(1, 200 * S, &[80.0], 200 * S), &names, 200 * S)
        .unwrap();
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|e| e.state == AlertState::Online));
}

#[test]
fn reload_keeps_state_of_unchanged_rules_only() {
    let mut p = Processors::new(&cfg(HR));
    let names = names();
    p.handle(&entry(1, 0, &[130.0; 20], S), &names, S).unwrap();
    // Same threshold rule, offline rule changed, a new anomaly rule.
    let changed = HR.replace("after = \"60s\"", "after = \"90s\"")
        + "\n[[processor.anomaly]]\nname = \"hr-z\"\nmatch = 'heart_rate_bpm'\n";
    let gone = p.reconfigure(&cfg(&changed));
    assert_eq!(gone, Vec::<String>::new());
    assert_eq!(
        p.rule_ids(),
        vec!["threshold/hr", "anomaly/hr-z", "offline/offline"]
    );
    // The threshold's `for` timer survived: 10 more seconds fire it.
    let ev = p
        .handle(&entry(1, 20 * S, &[130.0; 11], 2 * S), &names, 2 * S)
        .unwrap();
    assert_eq!(
        ev.iter().filter(|e| e.state == AlertState::Firing).count(),
        1
    );
    let gone = p.reconfigure(&cfg("[processor]\n"));
    assert_eq!(
        gone,
        vec!["anomaly/hr-z", "offline/offline", "threshold/hr"]
    );
    assert!(p.is_empty());
}

#[test]
fn rate_and_anomaly_rules_emit_through_the_pipeline() {
    let c = cfg(r#"
[[processor.rate]]
name = "storm"
match = 'pressure_hpa'
window = "10s"
per = "1s"
below = -1.0

[[processor.anomaly]]
name = "txn"
match = 'txn_amount'
warm_up = 10
"#);
    let mut p = Processors::new(&c);
    let mut names = HashMap::new();
    for (id, key) in [
        (
            7u64,
            SeriesKey::new("pressure_hpa", [("station", "s1")]).unwrap(),
        ),
        (
            8,
            SeriesKey::new("txn_amount", [("customer", "c1")]).unwrap(),
        ),
    ] {
        names.insert(
            id,
            SeriesName {
                text: key.to_string(),
                key,
            },
        );
    }
    // Pressure falls 2 units per second: the rate rule fires once.
    let falling: Vec<f64> = (0..5).map(|i| 1000.0 - 2.0 * i as f64).collect();
    let ev = p.handle(&entry(7, 0, &falling, S), &names, S).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].rule.as_str(), ev[0].state),
        ("rate/storm", AlertState::Firing)
    );
    assert_eq!((ev[0].value, ev[0].ts_ns), (-2.0, S));
    // Twenty usual transactions, then a jump: one anomaly event.
    let mut amounts: Vec<f64> = (0..20).map(|i| 50.0 + (i % 5) as f64).collect();
    amounts.push(5000.0);
    let ev = p
        .handle(&entry(8, 0, &amounts, 2 * S), &names, 2 * S)
        .unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].rule.as_str(), ev[0].state),
        ("anomaly/txn", AlertState::Anomaly)
    );
    assert_eq!((ev[0].value, ev[0].ts_ns), (5000.0, 20 * S));
    assert_eq!(ev[0].subject, r#"txn_amount{customer="c1"}"#);
}
