//! The operator API is authenticated: without a token, reads, revoke and
//! reload are refused (401) and nothing happens; a read token queries but
//! gets 403 on admin actions; an admin token does everything; refusals are
//! counted in /metrics. `open_reads` opens reads on loopback only, never
//! admin actions; a non-loopback bind with it is refused at start.

mod common;

use common::{Agent, Fixture, base_ns, batch};
use ferry_collector::auth::Role;
use ferry_collector::{Collector, Config};
use ferry_proto::session::Ack;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `(status, head, body)` of one HTTP/1.1 request.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn live(server: &common::Running, agent: &str) -> bool {
    server.handle.live().iter().any(|c| c.agent == agent)
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn unauthenticated_requests_are_refused_and_roles_are_enforced() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    assert_eq!(
        agent.send(&batch(1, base_ns(), &["a"], 3)).await.unwrap(),
        Ack::stored(1)
    );
    let admin = server.admin();
    let reader = admin.create_token("dash", Role::Read).await.unwrap();
    let operator = admin.create_token("ops", Role::Admin).await.unwrap();
    let read = format!("Bearer {}", reader.token);
    let full = format!("Bearer {}", operator.token);
    let http = server.http;

    // No credentials: 401 with a JSON error naming what to send, for
    // reads and admin actions alike; nothing is revoked or reloaded.
    for (method, path, role) in [
        ("GET", "/api/v1/query?match=temperature&from=0", "read"),
        ("GET", "/api/v1/agents", "read"),
        ("GET", "/metrics", "read"),
        ("GET", "/prometheus/api/v1/query?query=1", "read"),
        ("POST", "/prometheus/api/v1/query?query=1", "read"),
        ("POST", "/api/v1/agents/gw-1/revoke", "admin"),
        ("POST", "/api/v1/reload", "admin"),
        ("GET", "/api/v1/tokens", "admin"),
        ("POST", "/api/v1/tokens?name=x&role=admin", "admin"),
    ] {
        let (status, head, body) = call(http, method, path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(
            head.contains("www-authenticate: Bearer realm=\"ferry-collector\""),
            "{head}"
        );
        let path_only = path.split('?').next().unwrap();
        assert_eq!(
            error_of(&body),
            format!(
                "authentication required: {method} {path_only} needs a token with the {role} role; \
                 send `Authorization: Bearer <token>` (or basic auth with the token as the password). \
                 Create one with `ferry-collector token create --role {role} --name NAME`"
            )
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errorType"], "unauthorized");
    }
    assert!(live(&server, "gw-1"));
    assert!(server.handle.store().revoked().unwrap().is_empty());

    // A token that is not one: 401 too.
    let (status, _, body) = call(http, "GET", "/api/v1/agents", Some("Bearer hunter2")).await;
    assert_eq!(status, 401);
    assert_eq!(
        error_of(&body),
        "the token is not valid: it does not start with ferry_"
    );

    // The read role: queries, the Prometheus API (bearer or basic auth, as
    // Grafana sends them) and /metrics; 403 on admin actions.
    let (status, _, body) = call(
        http,
        "GET",
        "/api/v1/query?match=temperature&from=0",
        Some(&read),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["readings"].as_array().unwrap().len(), 3);
    let (status, _, body) = call(
        http,
        "GET",
        "/prometheus/api/v1/query?query=count(temperature)",
        Some(&basic("grafana", &reader.token)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"success\""), "{body}");
    let (status, _, _) = call(
        http,
        "POST",
        "/prometheus/api/v1/query?query=1",
        Some(&read),
    )
    .await;
    assert_eq!(status, 200);
    for (method, path) in [
        ("POST", "/api/v1/agents/gw-1/revoke"),
        ("POST", "/api/v1/reload"),
        ("GET", "/api/v1/tokens"),
    ] {
        let (status, _, body) = call(http, method, path, Some(&read)).await;
        assert_eq!(status, 403, "{method} {path}");
        assert_eq!(
            error_of(&body),
            format!(
                "forbidden: token \"dash\" has the read role; {method} {path} needs the admin role"
            )
        );
    }
    assert!(live(&server, "gw-1"));

    // The admin role: everything.
    let (status, _, body) = call(http, "GET", "/api/v1/tokens", Some(&full)).await;
    assert_eq!(status, 200);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["dash", "ops"]);
    assert!(!body.contains(&reader.token));
    let (status, _, body) = call(http, "POST", "/api/v1/reload", Some(&full)).await;
    // Started without a file: the reload itself is refused, after auth.
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("started without a configuration file"));
    let (status, _, body) = call(http, "POST", "/api/v1/agents/gw-1/revoke", Some(&full)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["changed"],
        true
    );
    agent.conn.closed().await;

    // A revoked token is refused at once.
    let (status, _, _) = call(http, "POST", "/api/v1/tokens/dash/revoke", Some(&full)).await;
    assert_eq!(status, 200);
    let (status, _, body) = call(http, "GET", "/api/v1/agents", Some(&read)).await;
    assert_eq!(status, 401);
    assert_eq!(
        error_of(&body),
        "the token is not valid: unknown or revoked"
    );

    // Open: the health check and the page's files.
    for path in ["/healthz", "/ui/", "/ui/app.js"] {
        assert_eq!(call(http, "GET", path, None).await.0, 200, "{path}");
    }

    // Every refusal is counted.
    let (_, _, metrics) = call(http, "GET", "/metrics", Some(&full)).await;
    for line in [
        "ferry_collector_http_refused_total{reason=\"no_credentials\"} 9\n",
        "ferry_collector_http_refused_total{reason=\"bad_token\"} 2\n",
        "ferry_collector_http_refused_total{reason=\"forbidden\"} 3\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn open_reads_keep_admin_actions_closed() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let mut config = fx.config();
    config.http.auth = ferry_collector::auth::AuthMode::OpenReads;
    let server = common::Running::start(config).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let (status, _, _) = call(server.http, "GET", "/api/v1/agents", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = call(server.http, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let (status, _, body) = call(server.http, "POST", "/api/v1/agents/gw-1/revoke", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(live(&server, "gw-1"));
    // The CLI's way: the local admin credential.
    assert!(server.admin().revoke("gw-1").await.unwrap().changed);
    agent.conn.closed().await;
    server.stop().await;
}

#[tokio::test]
async fn open_reads_beyond_loopback_are_refused_at_start() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config.http.auth = ferry_collector::auth::AuthMode::OpenReads;
    config.http.listen = "0.0.0.0:0".parse().unwrap();
    let err = Collector::bind(config).await.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "invalid configuration: http.listen = \"0.0.0.0:0\" is not a loopback address, and \
             http.auth = \"open_reads\" would serve every reading to whoever can reach it"
        ),
        "{err}"
    );
    // With tokens (the default) any address is fine.
    let mut config = Config::for_data_dir(&fx.data);
    config.http.listen = "0.0.0.0:0".parse().unwrap();
    let server = common::Running::start(config).await;
    server.stop().await;
}
