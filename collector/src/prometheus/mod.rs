//! Ferry's readings as Prometheus sees them: one naming rule shared by the
//! `prometheus_remote_write` sink and the Prometheus-compatible query API,
//! so a dashboard works against either (docs/prometheus.md).

pub mod naming;
