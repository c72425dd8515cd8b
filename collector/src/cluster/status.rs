//! `ferry-collector cluster status`: the log's state as a table or JSON.

use super::log::{Log, LogError, LogStatus};
use crate::config::ClusterConfig;

/// Connects to the log `config` names and reads its state.
pub async fn read(config: &ClusterConfig) -> Result<LogStatus, LogError> {
    let log = super::nats::JetStream::connect(config).await?;
    log.status().await
}

/// `s` as one JSON object.
pub fn json(s: &LogStatus) -> serde_json::Value {
    let consumers: Vec<_> = s
        .consumers
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "pending": c.pending, "ack_pending": c.ack_pending,
                "redelivered": c.redelivered, "ack_floor": c.ack_floor,
            })
        })
        .collect();
    serde_json::json!({
        "stream": s.stream, "records": s.records, "bytes": s.bytes,
        "last_position": s.last_position, "replicas": s.replicas,
        "nodes": s.nodes, "consumers": consumers,
    })
}

/// `s` as text: the stream, its nodes, a table of consumers.
pub fn table(s: &LogStatus) -> String {
    let mut out = format!(
        "stream {}: {} records, {} bytes, last position {}, {} replicas\n",
        s.stream, s.records, s.bytes, s.last_position, s.replicas
    );
    if !s.nodes.is_empty() {
        out.push_str(&format!("nodes: {}\n", s.nodes.join(", ")));
    }
    out.push_str(&format!(
        "{:<24} {:>10} {:>12} {:>12} {:>12}\n",
        "CONSUMER", "PENDING", "ACK_PENDING", "REDELIVERED", "ACK_FLOOR"
    ));
    for c in &s.consumers {
        out.push_str(&format!(
            "{:<24} {:>10} {:>12} {:>12} {:>12}\n",
            c.name, c.pending, c.ack_pending, c.redelivered, c.ack_floor
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::log::ConsumerLag;
    use super::*;

    #[test]
    fn renders_the_stream_and_each_consumer() {
        let s = LogStatus {
            stream: "FERRY".into(),
            records: 10,
            bytes: 1000,
            last_position: 10,
            replicas: 3,
            nodes: vec!["n0 (leader)".into(), "n1 (current)".into()],
            consumers: vec![ConsumerLag {
                name: "w1".into(),
                pending: 2,
                ack_pending: 1,
                redelivered: 0,
                ack_floor: 7,
            }],
        };
        let t = table(&s);
        assert!(t.starts_with("stream FERRY: 10 records, 1000 bytes, last position 10, 3 replicas\nnodes: n0 (leader), n1 (current)\nCONSUMER"), "{t}");
        assert!(t.lines().last().unwrap().starts_with("w1 "), "{t}");
        let j = json(&s);
        assert_eq!(j["consumers"][0]["pending"], 2);
        assert_eq!(j["replicas"], 3);
    }
}
