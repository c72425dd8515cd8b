//! Nobody gets in unauthenticated: unknown, self-signed, expired and
//! revoked client certificates are refused; a revoked agent's open
//! connection is closed.

mod common;

use std::path::Path;

use common::{Agent, Fixture, base_ns, batch, client_config, hello};
use ferry_collector::admin::Admin;
use ferry_proto::session::{Ack, PROTOCOL_VERSION, close};
use rcgen::{CertificateParams, DnType, KeyPair};

/// What an agent observes when the server refuses its certificate: TLS 1.3
/// clients learn about it after their own handshake finished, so either the
/// handshake or the first stream fails with the server's TLS alert.
async fn refused(server_quic: std::net::SocketAddr, config: quinn::ClientConfig) -> String {
    match Agent::connect_with(server_quic, config).await {
        Err(e) => e.to_string(),
        Ok(agent) => {
            agent.hello(hello(PROTOCOL_VERSION)).await.unwrap_err();
            agent.conn.closed().await.to_string()
        }
    }
}

fn write_self_signed(dir: &Path, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    let c = dir.join("self.crt");
    let k = dir.join("self.key");
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test]
async fn unknown_self_signed_expired_and_revoked_certificates_are_refused() {
    let fx = Fixture::new();
    let good = fx.enroll("gw-1");
    let expired = fx.enroll_with("gw-old", -1);
    let revoked = fx.enroll("gw-bad");
    // The store is not open yet: revoke through the data directory.
    let admin = Admin::connect(&fx.data).await.unwrap();
    assert!(matches!(admin, Admin::Local { .. }));
    assert!(admin.revoke("gw-bad").await.unwrap().changed);
    drop(admin);

    let server = fx.start().await;
    let other = Fixture::new();
    let stranger = other.enroll("gw-1");
    let (self_crt, self_key) = write_self_signed(fx.dir.path(), "gw-1");

    let cases = [
        (
            "another CA",
            client_config(&good.ca, &stranger.cert, &stranger.key),
            "aborted by peer: the cryptographic handshake failed: error 51: invalid peer certificate: BadSignature",
        ),
        (
            "self-signed",
            client_config(&good.ca, &self_crt, &self_key),
            "aborted by peer: the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer",
        ),
        (
            "expired",
            client_config(&expired.ca, &expired.cert, &expired.key),
            "aborted by peer: the cryptographic handshake failed: error 45: invalid peer certificate: certificate expired: ",
        ),
        (
            "revoked",
            client_config(&revoked.ca, &revoked.cert, &revoked.key),
            "aborted by peer: the cryptographic handshake failed: error 44: invalid peer certificate: Revoked",
        ),
    ];
    for (what, config, want) in cases {
        let got = refused(server.quic, config).await;
        // The expiry message goes on with the times involved.
        assert!(got.starts_with(want), "{what}: {got}");
    }
    let m = server.handle.metrics().render();
    assert!(
        m.contains("ferry_collector_bad_input_total{kind=\"handshake\"} 4\n"),
        "{m}"
    );

    // Everyone else is still served.
    let (agent, _) = Agent::session(server.quic, &good).await;
    assert_eq!(
        agent.send(&batch(1, base_ns(), &["a"], 2)).await.unwrap(),
        Ack::stored(1)
    );
    let states: Vec<(String, String)> = server
        .admin()
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.id, a.state))
        .collect();
    assert_eq!(
        states,
        [
            ("gw-1".to_owned(), "connected".to_owned()),
            ("gw-bad".to_owned(), "revoked".to_owned()),
            ("gw-old".to_owned(), "enrolled".to_owned()),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn revoking_closes_the_open_connection_and_refuses_reconnects() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let bystander = fx.enroll("gw-2");
    let server = fx.start().await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let (other, _) = Agent::session(server.quic, &bystander).await;
    assert_eq!(
        agent.send(&batch(1, base_ns(), &["a"], 2)).await.unwrap(),
        Ack::stored(1)
    );

    // The CLI finds the running server through the data directory.
    let admin = Admin::connect(&fx.data).await.unwrap();
    assert!(matches!(admin, Admin::Remote(r) if r.addr == server.http && r.token.is_some()));
    let r = admin.revoke("gw-1").await.unwrap();
    assert_eq!((r.changed, r.closed), (true, 1));

    let reason = agent.conn.closed().await;
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close::REVOKED.into());
            assert_eq!(&c.reason[..], b"agent revoked");
        }
        other => panic!("unexpected close: {other}"),
    }
    let err = refused(
        server.quic,
        client_config(&bundle.ca, &bundle.cert, &bundle.key),
    )
    .await;
    assert_eq!(
        err,
        "aborted by peer: the cryptographic handshake failed: error 44: invalid peer certificate: Revoked"
    );
    // Revoking again changes nothing; the bystander is untouched.
    assert!(!admin.revoke("gw-1").await.unwrap().changed);
    assert_eq!(
        other.send(&batch(1, base_ns(), &["b"], 2)).await.unwrap(),
        Ack::stored(1)
    );
    server.stop().await;

    // Revocation is durable.
    let server = fx.start().await;
    let err = refused(
        server.quic,
        client_config(&bundle.ca, &bundle.cert, &bundle.key),
    )
    .await;
    assert!(err.ends_with("invalid peer certificate: Revoked"), "{err}");
    server.stop().await;
}
