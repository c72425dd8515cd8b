//! Tests of operators' access: routes and roles, credentials, tokens.

use super::gate::RefusalLog;
use super::*;

#[test]
fn every_route_needs_the_right_role() {
    use AuthMode::{OpenReads, Tokens};
    let cases = [
        ("GET", "/healthz", Tokens, None),
        ("GET", "/", Tokens, None),
        ("GET", "/ui/", Tokens, None),
        ("GET", "/ui/app.js", Tokens, None),
        ("GET", "/metrics", Tokens, Some(Role::Read)),
        ("GET", "/api/v1/query", Tokens, Some(Role::Read)),
        ("GET", "/api/v1/agents", Tokens, Some(Role::Read)),
        ("GET", "/api/v1/something-new", Tokens, Some(Role::Read)),
        ("GET", "/prometheus/api/v1/query", Tokens, Some(Role::Read)),
        (
            "POST",
            "/prometheus/api/v1/query_range",
            Tokens,
            Some(Role::Read),
        ),
        (
            "POST",
            "/api/v1/agents/gw-1/revoke",
            Tokens,
            Some(Role::Admin),
        ),
        ("POST", "/api/v1/reload", Tokens, Some(Role::Admin)),
        ("GET", "/api/v1/tokens", Tokens, Some(Role::Admin)),
        ("POST", "/api/v1/tokens", Tokens, Some(Role::Admin)),
        ("POST", "/api/v1/tokens/x/revoke", Tokens, Some(Role::Admin)),
        ("DELETE", "/api/v1/series", Tokens, Some(Role::Admin)),
        ("POST", "/ui/", Tokens, Some(Role::Admin)),
        ("GET", "/nope", Tokens, Some(Role::Read)),
        ("GET", "/metrics", OpenReads, None),
        ("POST", "/prometheus/api/v1/query", OpenReads, None),
        ("POST", "/api/v1/reload", OpenReads, Some(Role::Admin)),
        (
            "POST",
            "/api/v1/agents/gw-1/revoke",
            OpenReads,
            Some(Role::Admin),
        ),
        ("GET", "/api/v1/tokens", OpenReads, Some(Role::Admin)),
    ];
    for (method, path, mode, want) in cases {
        assert_eq!(
            required_role(method, path, mode),
            want,
            "{method} {path} {mode:?}"
        );
    }
}

#[test]
fn credentials_come_as_bearer_or_basic() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(presented(None), Presented::Nothing);
    assert_eq!(
        presented(Some(b"Bearer ferry_abc")),
        Presented::Token("ferry_abc".into())
    );
    assert_eq!(
        presented(Some(b"bearer   ferry_abc ")),
        Presented::Token("ferry_abc".into())
    );
    let basic = format!("Basic {}", b64("grafana:ferry_x"));
    assert_eq!(
        presented(Some(basic.as_bytes())),
        Presented::Token("ferry_x".into())
    );
    let user_only = format!("Basic {}", b64("ferry_y:"));
    assert_eq!(
        presented(Some(user_only.as_bytes())),
        Presented::Token("ferry_y".into())
    );
    assert!(matches!(
        presented(Some(b"Basic %%%")),
        Presented::Malformed(_)
    ));
    assert!(matches!(
        presented(Some(b"Digest x")),
        Presented::Malformed(_)
    ));
    assert!(matches!(
        presented(Some(b"Bearer")),
        Presented::Malformed(_)
    ));
}

#[test]
fn tokens_are_checked_by_hash_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::open(AuthMode::Tokens, dir.path()).unwrap();
    let local = gate.local_token();
    assert_eq!(read_local_token(dir.path()), Some(local));
    let reader = gate.create("grafana", Role::Read).unwrap();
    assert_eq!(reader.token.len(), TOKEN_LEN);
    assert!(reader.token.starts_with(TOKEN_PREFIX));
    // Stored hashed: the file never holds the token.
    let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
    assert!(!file.contains(&reader.token));
    assert!(file.contains(&hex(&Token::parse(&reader.token).unwrap().digest())));
    #[cfg(unix)]
    for f in [TOKENS_FILE, LOCAL_TOKEN_FILE] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let bearer = |t: &str| format!("Bearer {t}").into_bytes();

    assert_eq!(
        gate.check("GET", "/api/v1/query", None),
        Err(Refusal::NoCredentials { needed: Role::Read })
    );
    assert_eq!(
        gate.check("GET", "/api/v1/query", Some(&bearer(&reader.token))),
        Ok(Some("grafana".into()))
    );
    assert_eq!(
        gate.check("POST", "/api/v1/reload", Some(&bearer(&reader.token))),
        Err(Refusal::Forbidden {
            name: "grafana".into(),
            role: Role::Read,
            needed: Role::Admin
        })
    );
    assert_eq!(
        gate.check("POST", "/api/v1/reload", Some(&bearer(local.as_str()))),
        Ok(Some(LOCAL_NAME.into()))
    );
    let other = Token::generate().unwrap();
    assert_eq!(
        gate.check("GET", "/metrics", Some(&bearer(other.as_str()))),
        Err(Refusal::BadToken {
            why: "unknown or revoked".into()
        })
    );
    assert_eq!(
        gate.check("GET", "/metrics", Some(b"Bearer hunter2")),
        Err(Refusal::BadToken {
            why: "it does not start with ferry_".into()
        })
    );
    assert_eq!(gate.check("GET", "/healthz", None), Ok(None));

    assert!(matches!(
        gate.create("grafana", Role::Admin),
        Err(AuthError::Exists(_))
    ));
    assert!(matches!(
        gate.create(LOCAL_NAME, Role::Admin),
        Err(AuthError::BadName { .. })
    ));
    assert_eq!(gate.list().len(), 1);
    gate.revoke("grafana").unwrap();
    assert!(matches!(
        gate.check("GET", "/api/v1/query", Some(&bearer(&reader.token))),
        Err(Refusal::BadToken { .. })
    ));
    assert!(load(dir.path()).unwrap().is_empty());
    assert!(matches!(
        gate.revoke("grafana"),
        Err(AuthError::NotFound(_))
    ));

    // A restart reads the file and issues a new local credential.
    let admin = gate.create("ops", Role::Admin).unwrap();
    drop(gate);
    let gate = Gate::open(AuthMode::Tokens, dir.path()).unwrap();
    let local2 = gate.local_token();
    assert_ne!(local, local2);
    assert!(matches!(
        gate.check("GET", "/metrics", Some(&bearer(local.as_str()))),
        Err(Refusal::BadToken { .. })
    ));
    assert_eq!(
        gate.check("POST", "/api/v1/reload", Some(&bearer(&admin.token))),
        Ok(Some("ops".into()))
    );
}

#[test]
fn open_reads_still_guard_admin_actions() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::open(AuthMode::OpenReads, dir.path()).unwrap();
    assert_eq!(gate.check("GET", "/api/v1/query", None), Ok(None));
    assert_eq!(
        gate.check("POST", "/api/v1/agents/gw/revoke", None),
        Err(Refusal::NoCredentials {
            needed: Role::Admin
        })
    );
}

#[test]
fn token_text_is_checked() {
    let t = Token::generate().unwrap();
    assert_eq!(Token::parse(t.as_str()).unwrap(), t);
    assert!(Token::parse("ferry_123").is_err());
    assert!(Token::parse(&format!("ferry_{}", "G".repeat(64))).is_err());
    assert_eq!(format!("{t:?}"), "Token(ferry_…)");
}

#[test]
fn refusal_logs_are_rate_limited() {
    let mut log = RefusalLog::new(std::time::Duration::from_secs(10));
    let r = Refusal::NoCredentials { needed: Role::Read };
    assert_eq!(log.check(&r, 0), Some(0));
    assert_eq!(log.check(&r, 1), None);
    assert_eq!(log.check(&r, 2), None);
    let f = Refusal::BadToken { why: "x".into() };
    assert_eq!(log.check(&f, 3), Some(0));
    assert_eq!(log.check(&r, 10_000_000_000), Some(2));
}
