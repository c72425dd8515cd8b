//! Ferry's readings as Prometheus sees them: one naming rule shared by the
//! `prometheus_remote_write` sink and the Prometheus-compatible query API,
//! so a dashboard works against either (docs/prometheus.md).
//!
//! # Layout
//! - [`naming`]: how a stored series becomes Prometheus series (the rule);
//! - [`value`]: label sets, samples, results and their JSON form;
//! - [`source`]: the [`SeriesSource`](source::SeriesSource) trait the engine
//!   reads through, an in-memory source, query bounds;
//! - [`eval`]: the PromQL engine (sans-IO, over any source);
//! - [`functions`]: `rate`, `*_over_time` and the other functions;
//! - [`store_source`]: the store as a series source;
//! - `api`: the HTTP endpoints under `/prometheus/api/v1/`.

pub(crate) mod api;
pub mod eval;
pub mod functions;
pub mod naming;
pub mod source;
pub mod store_source;
pub mod value;
