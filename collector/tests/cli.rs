//! The binary as an operator uses it: init, enroll, run, agents, query,
//! revoke (through the running server, then through the data directory),
//! graceful stop on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ferry-collector");

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_subcommand_explains_itself() {
    for sub in [
        "init",
        "enroll",
        "revoke",
        "agents",
        "run",
        "query",
        "series",
        "compact",
        "alerts",
        "subscribers",
        "reload",
        "drops",
        "token",
        "token create",
        "token list",
        "token revoke",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let help = ok(&args);
        assert!(help.contains("Usage: ferry-collector"), "{sub}: {help}");
    }
    let top = ok(&["--help"]);
    assert!(top.contains("UDP 7410"));
}

#[test]
fn operator_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&["init", "--data-dir", s(&data)]);
    let again = cli(&["init", "--data-dir", s(&data)]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("refusing to overwrite an existing certificate authority"),
        "{err}"
    );

    let empty = cli(&["agents", "--data-dir", s(dir.path())]);
    assert_eq!(
        String::from_utf8_lossy(&empty.stderr),
        format!(
            "Error: no certificate authority at {}: run `ferry-collector init` first\n",
            dir.path().display()
        )
    );
    assert!(!dir.path().join("ferry.redb").exists());

    let bundle = dir.path().join("gw-1");
    ok(&[
        "enroll",
        "gw-1",
        "--data-dir",
        s(&data),
        "--out",
        s(&bundle),
    ]);
    for f in ["agent.crt", "agent.key", "ca.crt", "agent.toml"] {
        assert!(bundle.join(f).exists(), "{f}");
    }
    let bad = cli(&[
        "enroll",
        "no/slash",
        "--data-dir",
        s(&data),
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("agent id \"no/slash\": only A-Z a-z 0-9 . _ - are allowed")
    );

    // Port 0 for both listeners; the CLI finds the server via collector.http.
    let config = data.join("collector.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("0.0.0.0:7410", "127.0.0.1:0")
        .replace("127.0.0.1:7411", "127.0.0.1:0");
    std::fs::write(&config, text).unwrap();
    let mut server = Command::new(BIN)
        .args(["run", "--config", s(&config), "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("collector running") {
            assert!(line.starts_with('{'), "JSON logs: {line}");
            break;
        }
    }

    let agents = ok(&["agents", "--data-dir", s(&data), "-f", "json"]);
    let v: serde_json::Value = serde_json::from_str(&agents).unwrap();
    assert_eq!(v[0]["id"], "gw-1");
    assert_eq!(v[0]["state"], "enrolled");
    let out = ok(&["revoke", "gw-1", "--data-dir", s(&data)]);
    assert!(
        out.starts_with("revoked gw-1 through the running collector at 127.0.0.1:"),
        "{out}"
    );
    let out = ok(&[
        "query",
        "temperature",
        "--from",
        "-1h",
        "--data-dir",
        s(&data),
        "-f",
        "csv",
    ]);
    assert_eq!(
        out,
        "SERIES,TIME,VALUE,WINDOW,COUNT,SUM,MIN,MAX,FIRST,LAST,P50,P90,P99\n"
    );
    let bad = cli(&["query", "t{a=b}", "--data-dir", s(&data)]);
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("answered 400: selector \"t{a=b}\" at byte 4"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Alert rules: SIGHUP applies them; so does `reload`; a bad file is
    // refused with its line and key and the running rules stay.
    let base = std::fs::read_to_string(&config).unwrap();
    let rules = "\n[[processor.threshold]]\nname = \"hot\"\nmatch = 'temperature'\nabove = 30\n\n[[sink.log]]\nname = \"log\"\n";
    std::fs::write(&config, format!("{base}{rules}")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("configuration reloaded") {
            assert!(line.contains("threshold/hot"), "{line}");
            break;
        }
    }
    let out = ok(&["reload", "--data-dir", s(&data)]);
    assert_eq!(
        out,
        format!(
            "reloaded {}\n  rules: threshold/hot\n  sinks: log\n",
            config.display()
        )
    );
    let bad_line = format!("{base}{rules}").lines().count() + 1;
    std::fs::write(&config, format!("{base}{rules}abve = 3\n")).unwrap();
    let bad = cli(&["reload", "--data-dir", s(&data)]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains(&format!("line {bad_line}")), "{err}");
    assert!(err.contains("unknown field `abve`"), "{err}");
    assert!(err.contains("the running configuration stays"), "{err}");
    std::fs::write(&config, format!("{base}{rules}")).unwrap();
    let mut subs = String::new();
    for _ in 0..3000 {
        subs = ok(&["subscribers", "--data-dir", s(&data), "-f", "csv"]);
        if subs.contains("sink/log") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        subs,
        "SUBSCRIBER,CURSOR,HEAD,LAG,BUDGET,POLICY,HANDLED,SKIPPED,DEAD,DELIVERED,REFUSED\n\
         processors,0,0,0,100000,backpressure,0,0,0,0,0\n\
         sink/log,0,0,0,100000,backpressure,0,0,0,0,0\n"
    );
    let out = ok(&[
        "alerts",
        "--state",
        "firing",
        "--data-dir",
        s(&data),
        "-f",
        "csv",
    ]);
    assert_eq!(out, "ID,TIME,RULE,STATE,SUBJECT,VALUE,MESSAGE\n");

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(server.wait().unwrap().success());
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("collector stopped")),
        "{rest:?}"
    );
    assert!(!data.join("collector.http").exists());

    // No server: nothing to reload; alerts come from the store.
    let bad = cli(&["reload", "--data-dir", s(&data)]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no collector is running"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let out = ok(&["alerts", "--data-dir", s(&data), "-f", "json"]);
    assert_eq!(out, "[]\n");

    // No server: the CLI opens the data directory itself.
    let out = ok(&["revoke", "gw-2", "--data-dir", s(&data)]);
    assert_eq!(out, "revoked gw-2 in the store (no collector running)\n");
    let out = ok(&["agents", "--data-dir", s(&data), "-f", "csv"]);
    assert_eq!(
        out,
        "AGENT,STATE,LAST SEEN,REMOTE,BATCHES,READINGS,LAST SEQ,DROPPED,REFUSED,EPOCH,RESETS,BACKLOG\n\
         gw-1,revoked,never,,0,0,-,0,0,-,0,-\n\
         gw-2,revoked,never,,0,0,-,0,0,-,0,-\n"
    );
}

/// Runs the binary with its stdout a pipe whose reader is already gone (as
/// `ferry-collector … | head` once `head` has what it wants): it must end
/// quietly, exit 0, nothing on stderr.
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn every_subcommand_is_quiet_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = s(&data);
    let bundle = dir.path().join("gw-1");
    let commands: Vec<Vec<&str>> = vec![
        vec!["init", "--data-dir", d],
        vec!["enroll", "gw-1", "--data-dir", d, "--out", s(&bundle)],
        vec!["agents", "--data-dir", d],
        vec!["agents", "--data-dir", d, "-f", "json"],
        vec!["series", "--data-dir", d, "-f", "csv"],
        vec!["query", "temperature", "--data-dir", d],
        vec!["query", "--data-dir", d, "-f", "json"],
        vec!["alerts", "--data-dir", d],
        vec!["subscribers", "--data-dir", d],
        vec!["drops", "--data-dir", d],
        vec!["drops", "--ledger", "--data-dir", d, "-f", "csv"],
        vec!["revoke", "gw-1", "--data-dir", d],
        vec!["compact", "--data-dir", d],
        vec!["--help"],
        vec!["query", "--help"],
    ];
    for args in &commands {
        let out = into_closed_pipe(args);
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).as_ref()
            ),
            (Some(0), ""),
            "{args:?}"
        );
    }
    // The commands did their work (only their printing was cut short).
    assert!(bundle.join("agent.crt").exists());
    let agents = ok(&["agents", "--data-dir", d, "-f", "csv"]);
    assert!(agents.contains("gw-1,revoked"), "{agents}");
}

/// `(status, body)` of a GET with an optional bearer token.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

/// Starts `ferry-collector run`; returns it and its HTTP address once it
/// runs.
fn start(config: &Path) -> (std::process::Child, String) {
    let mut server = Command::new(BIN)
        .args(["run", "--config", s(config)])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("collector running") {
            break;
        }
    }
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let data = config.parent().unwrap();
    let addr = std::fs::read_to_string(data.join("collector.http")).unwrap();
    (server, addr.trim().to_owned())
}

fn stop(mut server: std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.wait().unwrap().success());
}

#[test]
fn tokens_are_created_listed_and_revoked_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&["init", "--data-dir", s(&data)]);
    let config = data.join("collector.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("0.0.0.0:7410", "127.0.0.1:0")
        .replace("127.0.0.1:7411", "127.0.0.1:0");
    std::fs::write(&config, &text).unwrap();

    // No server: the CLI writes tokens.json itself (shown once, on stdout).
    let out = cli(&[
        "token",
        "create",
        "--role",
        "read",
        "--name",
        "grafana",
        "--data-dir",
        s(&data),
    ]);
    assert!(out.status.success());
    let grafana = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        grafana.starts_with("ferry_") && grafana.len() == 70,
        "{grafana}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "created token \"grafana\" (role read); it is shown this once, keep it now:\n"
    );
    let stored = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    assert!(!stored.contains(&grafana), "tokens are stored hashed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("tokens.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let dup = cli(&[
        "token",
        "create",
        "--role",
        "admin",
        "--name",
        "grafana",
        "--data-dir",
        s(&data),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&dup.stderr),
        "Error: a token named \"grafana\" exists: revoke it first or pick another name\n"
    );
    let bad = cli(&[
        "token",
        "create",
        "--role",
        "root",
        "--name",
        "x",
        "--data-dir",
        s(&data),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid value 'root' for '--role <ROLE>'")
    );

    // A running server: the CLI goes through it with admin.token.
    let (server, http) = start(&config);
    let local = std::fs::read_to_string(data.join("admin.token")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let ops = ok(&[
        "token",
        "create",
        "--role",
        "admin",
        "--name",
        "ops",
        "--data-dir",
        s(&data),
    ])
    .trim()
    .to_owned();
    let list = ok(&["token", "list", "--data-dir", s(&data), "-f", "csv"]);
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0], ["NAME", "ROLE", "CREATED"]);
    assert_eq!(
        rows[1..].iter().map(|r| (r[0], r[1])).collect::<Vec<_>>(),
        [("grafana", "read"), ("ops", "admin")]
    );
    assert!(!list.contains("ferry_"));

    // Unauthenticated: refused. The read token reads, not more.
    assert_eq!(http_get(&http, "/api/v1/agents", None).0, 401);
    assert_eq!(http_get(&http, "/api/v1/agents", Some(&grafana)).0, 200);
    assert_eq!(http_get(&http, "/api/v1/tokens", Some(&grafana)).0, 403);
    assert_eq!(http_get(&http, "/api/v1/tokens", Some(&ops)).0, 200);
    assert_eq!(http_get(&http, "/api/v1/tokens", Some(local.trim())).0, 200);

    // Revoked through the server: refused at once.
    assert_eq!(
        ok(&["token", "revoke", "grafana", "--data-dir", s(&data)]),
        "revoked token \"grafana\" (role read)\n"
    );
    let (status, body) = http_get(&http, "/api/v1/agents", Some(&grafana));
    assert_eq!(status, 401, "{body}");
    let gone = cli(&["token", "revoke", "grafana", "--data-dir", s(&data)]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("answered 404: no token named \"grafana\""),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );

    // A stranger's credential is not the local one: the CLI with a read
    // token from $FERRY_TOKEN cannot revoke.
    let reader = ok(&[
        "token",
        "create",
        "--role",
        "read",
        "--name",
        "viewer",
        "--data-dir",
        s(&data),
    ])
    .trim()
    .to_owned();
    let out = Command::new(BIN)
        .args(["revoke", "gw-9", "--data-dir", s(&data)])
        .env("FERRY_TOKEN", &reader)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "answered 403: forbidden: token \"viewer\" has the read role; POST /api/v1/agents/gw-9/revoke needs the admin role"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(server);
    assert!(!data.join("admin.token").exists());

    // Stopped: listed and revoked in the data directory.
    assert_eq!(
        ok(&["token", "revoke", "ops", "--data-dir", s(&data)]),
        "revoked token \"ops\" (role admin)\n"
    );
    let list = ok(&["token", "list", "--data-dir", s(&data), "-f", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "viewer");

    // A restart keeps them: ops stays revoked, viewer still reads.
    let (server, http) = start(&config);
    assert_eq!(http_get(&http, "/api/v1/agents", Some(&ops)).0, 401);
    assert_eq!(http_get(&http, "/api/v1/agents", Some(&reader)).0, 200);
    stop(server);
}

#[test]
fn open_reads_beyond_loopback_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&["init", "--data-dir", s(&data)]);
    let config = data.join("collector.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("0.0.0.0:7410", "127.0.0.1:0")
        .replace("127.0.0.1:7411", "0.0.0.0:0")
        .replace("auth = \"tokens\"", "auth = \"open_reads\"");
    std::fs::write(&config, text).unwrap();
    let out = cli(&["run", "--config", s(&config)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "Error: invalid configuration {}: http.listen = \"0.0.0.0:0\" is not a loopback address, and http.auth = \"open_reads\" would serve every reading to whoever can reach it: set http.auth = \"tokens\"",
            config.display()
        )),
        "{err}"
    );
    assert!(!data.join("collector.http").exists());
}

/// Without RUST_LOG, a one-shot command logs only warnings and errors
/// (`run` logs at info): on success its stderr is empty, whether it reads
/// the data directory or talks to a running collector.
#[test]
fn one_shot_commands_write_nothing_to_stderr_on_success() {
    let quiet = |args: &[&str]| -> String {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).as_ref()
            ),
            (Some(0), ""),
            "{args:?}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = s(&data);
    let bundle = dir.path().join("gw-1");
    quiet(&["init", "--data-dir", d]);
    quiet(&["enroll", "gw-1", "--data-dir", d, "--out", s(&bundle)]);
    let config = data.join("collector.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("0.0.0.0:7410", "127.0.0.1:0")
        .replace("127.0.0.1:7411", "127.0.0.1:0");
    std::fs::write(&config, text).unwrap();
    quiet(&["check-config", "--config", s(&config)]);
    quiet(&["agents", "--data-dir", d]);
    quiet(&["query", "--data-dir", d]);
    quiet(&["token", "list", "--data-dir", d]);

    let (server, _http) = start(&config);
    let agents = quiet(&["agents", "--data-dir", d, "-f", "csv"]);
    assert!(agents.contains("gw-1,enrolled"), "{agents}");
    let out = quiet(&["revoke", "gw-1", "--data-dir", d]);
    assert!(
        out.starts_with("revoked gw-1 through the running collector"),
        "{out}"
    );
    quiet(&["reload", "--data-dir", d]);
    quiet(&["drops", "--data-dir", d]);
    stop(server);
}
