//! The agent binary faced with a corrupt journal and bad configuration.

use std::process::Command;

use ferry_tests::{Proc, binary, free_tcp_port, http_get, http_get_with, until};

fn bundle(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("collector");
    ferry_collector::init(&ferry_collector::InitOptions::new(&data)).unwrap();
    let bundle = dir.join("gw");
    ferry_collector::enroll(&data, "gw", &bundle).unwrap();
    bundle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_is_moved_aside_and_the_agent_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path());
    let admin = free_tcp_port();
    let mut text = std::fs::read_to_string(bundle.join("agent.toml")).unwrap();
    text.push_str(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n"
    ));
    std::fs::write(bundle.join("agent.toml"), text).unwrap();
    std::fs::create_dir_all(bundle.join("data")).unwrap();
    std::fs::write(
        bundle.join("data/journal.redb"),
        b"this is not a redb file, it is garbage".repeat(100),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let config = bundle.join("agent.toml");
    let agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &log,
    );
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    let aside: Vec<String> = std::fs::read_dir(bundle.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("journal.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("JOURNAL FAILED TO OPEN: moved aside"),
        "{logged}"
    );
    agent.kill9();
}

#[test]
fn bad_configs_are_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path());
    let config = bundle.join("agent.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    let check = |extra: &str| {
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let out = Command::new(binary("ferry-agent"))
            .args(["check-config", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let lines = base.lines().count();
    let (code, _, err) = check("[journal]\npolicy = \"drop_newest\"\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "agent.toml: TOML parse error at line {}",
            lines + 2
        )),
        "{err}"
    );
    assert!(
        err.contains("unknown variant `drop_newest`, expected `drop_oldest` or `backpressure`"),
        "{err}"
    );
    let (code, _, err) = check("[shiping]\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `shiping`"), "{err}");
    // The admin endpoint stays on loopback unless it has a token.
    let (code, _, err) = check("[admin]\nlisten = \"0.0.0.0:7412\"\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("admin.listen = \"0.0.0.0:7412\" is not a loopback address: set admin.token"),
        "{err}"
    );
    let (code, _, err) = check("[admin]\nlisten = \"0.0.0.0:7412\"\ntoken = \"short\"\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("admin.token: at least 16 characters"), "{err}");
    let (code, _, _) =
        check("[admin]\nlisten = \"0.0.0.0:7412\"\ntoken = \"0123456789abcdef0123\"\n");
    assert_eq!(code, Some(0));
    let (code, out, _) = check("");
    assert_eq!(code, Some(0));
    assert!(out.ends_with("agent.toml: ok\n"), "{out}");
}

/// With `[admin] token`, the admin endpoint answers only requests that
/// carry it (but /healthz); `ferry-agent status` sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path());
    let admin = free_tcp_port();
    let token = "0123456789abcdef0123456789abcdef";
    let mut text = std::fs::read_to_string(bundle.join("agent.toml")).unwrap();
    text.push_str(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n"
    ));
    std::fs::write(bundle.join("agent.toml"), text).unwrap();
    let config = bundle.join("agent.toml");
    let agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &dir.path().join("agent.log"),
    );
    until("agent up", || async {
        http_get(admin, "/healthz").await.is_some()
    })
    .await;
    for path in ["/status", "/metrics", "/buffer"] {
        assert!(
            http_get(admin, path).await.is_none(),
            "{path} without the token"
        );
        assert!(
            http_get_with(admin, path, Some("wrong-token-0123456789"))
                .await
                .is_none(),
            "{path} with a wrong token"
        );
        assert!(
            http_get_with(admin, path, Some(token)).await.is_some(),
            "{path} with the token"
        );
    }
    let out = Command::new(binary("ferry-agent"))
        .args(["status", "--json", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.is_object(), "{v}");
    agent.kill9();
}

/// A log filter the agent cannot read is a usage error naming the flag, not
/// a silent fallback.
#[test]
fn a_bad_log_filter_is_refused_by_name() {
    let run = |filter: &str| {
        let out = Command::new(binary("ferry-agent"))
            .args(["--log", filter, "check-config", "--config", "x.toml"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, err) = run("ferry_agent=loud");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid value 'ferry_agent=loud' for '--log <LOG>'"),
        "{err}"
    );
    assert!(
        err.contains("`loud` is not a level (off, error, warn, info, debug, trace)"),
        "{err}"
    );
    for bad in ["a=b=c", "[span]=info"] {
        assert_eq!(run(bad).0, Some(2), "{bad}");
    }
    // A good filter gets as far as the missing file, named.
    assert_eq!(
        run("warn,ferry_agent::shipper=debug"),
        (
            Some(1),
            "error: x.toml: cannot read the file: No such file or directory (os error 2)\n".into()
        )
    );
}
