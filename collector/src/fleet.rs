//! The operator's fleet view: the devices and health JSON endpoints, and
//! the fleet page (plain HTML, CSS and JavaScript compiled into the
//! binary with `include_str!`: no build step, no separate server).
//!
//! - `GET /api/v1/devices`: every `(agent, device)` the store has series
//!   of (the series tag `device`), its newest reading or window, its
//!   series, and what the agent reported dropped for it, by reason;
//! - `GET /api/v1/health`: every health total agents reported, with the
//!   reason's name;
//! - `GET /` → `/ui/`: the page (`ui/index.html`, `ui/app.js`,
//!   `ui/style.css`), which reads the JSON API like any other client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use serde::{Deserialize, Serialize};

use crate::prometheus::naming::AGENT;
use crate::server::{ReportedStatus, Shared};

/// The series tag that names a device.
pub const DEVICE_TAG: &str = "device";

/// One device of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The agent (certificate identity) that sent its readings.
    pub agent: String,
    /// The device id (the `device` tag).
    pub device: String,
    /// Newest reading or window end, ns since the epoch (a string in JSON).
    #[serde(with = "crate::json::ns")]
    pub last_seen_ns: i64,
    /// Its series, in Prometheus text form.
    pub series: Vec<String>,
    /// Readings reported dropped for it, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Its firmware name and version, from its agent's newest status
    /// report (null: not reported since this collector started).
    #[serde(default)]
    pub firmware: Option<String>,
    /// Whether its device link was up at that report (null: not reported).
    #[serde(default)]
    pub link_up: Option<bool>,
}

/// One health total an agent reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// The agent.
    pub agent: String,
    /// The device id or source name it is about.
    pub source: String,
    /// The kind (`ferry_proto::health`).
    pub kind: u16,
    /// Its name: `journal_full`, `device_ring`, `late`, `rejected_input`,
    /// `queue_full`, `rejected_batch`, `received`, `memory_budget`,
    /// `skipped_string_fields` (any other name `ferry_proto::health::name`
    /// knows), or `kind_<n>`.
    pub reason: String,
    /// Total.
    pub total: u64,
}

/// The name of a health kind.
pub fn reason(kind: u16) -> String {
    health::name(kind).map_or_else(|| format!("kind_{kind}"), Into::into)
}

/// Health totals as views.
pub fn health_views(totals: Vec<(String, String, u16, u64)>) -> Vec<HealthView> {
    totals
        .into_iter()
        .map(|(agent, source, kind, total)| HealthView {
            agent,
            source,
            kind,
            reason: reason(kind),
            total,
        })
        .collect()
}

/// Devices from the series dictionary, the newest data of each series and
/// the health totals (every kind but `received` counts as dropped).
///
/// Devices the agents' status reports name are listed too (with their
/// firmware), even before their first reading is stored.
pub fn device_views(
    keys: &[(u64, SeriesKey)],
    last_seen: &HashMap<u64, i64>,
    health: &[HealthView],
    statuses: &HashMap<String, ReportedStatus>,
) -> Vec<DeviceView> {
    let mut by: BTreeMap<(String, String), DeviceView> = BTreeMap::new();
    let blank = |agent: &str, device: &str| DeviceView {
        agent: agent.to_owned(),
        device: device.to_owned(),
        last_seen_ns: 0,
        series: Vec::new(),
        dropped: BTreeMap::new(),
        firmware: None,
        link_up: None,
    };
    for (id, key) in keys {
        let (Some(agent), Some(device)) = (key.tag(AGENT), key.tag(DEVICE_TAG)) else {
            continue;
        };
        let view = by
            .entry((agent.to_owned(), device.to_owned()))
            .or_insert_with(|| blank(agent, device));
        view.series.push(key.to_string());
        if let Some(t) = last_seen.get(id) {
            view.last_seen_ns = view.last_seen_ns.max(*t);
        }
    }
    for (agent, reported) in statuses {
        for d in &reported.status.devices {
            let view = by
                .entry((agent.clone(), d.device.clone()))
                .or_insert_with(|| blank(agent, &d.device));
            view.firmware = Some(d.firmware.clone());
            view.link_up = Some(d.connected);
            view.last_seen_ns = view.last_seen_ns.max(d.last_seen_ns);
        }
    }
    for h in health {
        if h.kind == health::RECEIVED {
            continue;
        }
        if let Some(view) = by.get_mut(&(h.agent.clone(), h.source.clone())) {
            *view.dropped.entry(h.reason.clone()).or_default() += h.total;
        }
    }
    by.into_values().collect()
}

/// The routes: the two endpoints and the page.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/health", get(health_totals))
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn devices(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store.clone();
    let statuses = shared.statuses();
    let answer = tokio::task::spawn_blocking(move || {
        let keys = store.series_keys()?;
        let ids: Vec<u64> = keys
            .iter()
            .filter(|(_, k)| k.tag(DEVICE_TAG).is_some())
            .map(|(id, _)| *id)
            .collect();
        let last = store.last_seen(&ids)?;
        let health = health_views(store.health()?);
        Ok::<_, crate::StoreError>(device_views(&keys, &last, &health, &statuses))
    })
    .await;
    match answer {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn health_totals(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.health()).await {
        Ok(Ok(v)) => Json(health_views(v)).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_group_series_by_agent_and_device() {
        let k = |m: &str, agent: &str, dev: &str| {
            SeriesKey::new(m, [(AGENT, agent), (DEVICE_TAG, dev)]).unwrap()
        };
        let keys = vec![
            (1, k("t", "gw", "d1")),
            (2, k("h", "gw", "d1")),
            (3, k("t", "gw2", "d1")),
            (4, SeriesKey::new("cpu", [(AGENT, "gw")]).unwrap()),
        ];
        let last = HashMap::from([(1, 10), (2, 30), (3, 5)]);
        let health = health_views(vec![
            ("gw".into(), "d1".into(), health::DROPPED_DEVICE_RING, 4),
            ("gw".into(), "d1".into(), health::RECEIVED, 100),
            ("gw".into(), "influx".into(), health::REJECTED_INPUT, 2),
        ]);
        let v = device_views(&keys, &last, &health, &HashMap::new());
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].agent.as_str(), v[0].device.as_str()), ("gw", "d1"));
        assert_eq!(v[0].last_seen_ns, 30);
        assert_eq!(v[0].series.len(), 2);
        assert_eq!(v[0].dropped, BTreeMap::from([("device_ring".into(), 4)]));
        assert_eq!((v[1].agent.as_str(), v[1].last_seen_ns), ("gw2", 5));
        assert_eq!(health[2].reason, "rejected_input");
        assert_eq!((v[0].firmware.as_deref(), v[0].link_up), (None, None));
    }

    #[test]
    fn status_reports_add_firmware_and_devices_without_series() {
        use ferry_proto::session::{AgentStatus, DeviceStatus};
        let keys = vec![(
            1,
            SeriesKey::new("t", [(AGENT, "gw"), (DEVICE_TAG, "d1")]).unwrap(),
        )];
        let last = HashMap::from([(1, 10)]);
        let device = |id: &str, fw: &str, up: bool, seen: i64| DeviceStatus {
            device: id.into(),
            firmware: fw.into(),
            link_version: 1,
            connected: up,
            last_seen_ns: seen,
        };
        let statuses = HashMap::from([(
            "gw".to_owned(),
            ReportedStatus {
                received_ns: 100,
                status: AgentStatus {
                    devices: vec![
                        device("d1", "ferry-fw 0.1.0", true, 7),
                        device("d2", "ferry-fw 0.2.0", false, 50),
                    ],
                    ..AgentStatus::default()
                },
            },
        )]);
        let v = device_views(&keys, &last, &[], &statuses);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].device.as_str(), v[0].firmware.as_deref(), v[0].link_up),
            ("d1", Some("ferry-fw 0.1.0"), Some(true))
        );
        assert_eq!((v[0].last_seen_ns, v[0].series.len()), (10, 1));
        assert_eq!(
            (v[1].device.as_str(), v[1].firmware.as_deref(), v[1].link_up),
            ("d2", Some("ferry-fw 0.2.0"), Some(false))
        );
        assert_eq!((v[1].last_seen_ns, v[1].series.len()), (50, 0));
    }
}
