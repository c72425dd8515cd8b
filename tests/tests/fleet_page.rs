//! The fleet page in a real browser: `ferry-collector run` with a
//! threshold rule, a real `ferry-agent` with the emulated board
//! (firmware/boards/mps2-an386 in qemu-system-arm) on its device link and
//! a line-protocol producer; then Debian's headless Chromium, driven by
//! playwright-core (tests/browser/fleet_page.mjs), loads `/ui/`, is asked
//! for a token (the API needs one: a read token made with `ferry-collector
//! token create`; a wrong one is refused), and checks the agent, the
//! board's device, the firing alert and the board's chart against the JSON
//! API, and saves screenshots at desktop and phone widths under
//! target/artifacts/fleet/.
//!
//! Needs qemu-system-arm, the cross-built image, chromium, node and
//! `npm ci` in tests/browser: scripts/test.sh provides them all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, http_get_with, until};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const DEVICE: &str = "c0ffee00fee1cafe";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require(what: &str, ok: bool, how: &str) {
    assert!(ok, "{what} is missing: {how} (scripts/test.sh does)");
}

async fn api(addr: std::net::SocketAddr, path: &str, token: &str) -> Value {
    let body = http_get_with(addr, path, Some(token))
        .await
        .unwrap_or_else(|| panic!("GET {path} failed"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_shows_agents_devices_alerts_and_a_chart() {
    let elf = std::env::var_os("FERRY_MPS2_ELF").map_or_else(
        || repo().join("target/thumbv7em-none-eabihf/firmware/ferry-mps2-an386"),
        PathBuf::from,
    );
    require(
        "the board image",
        elf.is_file(),
        "scripts/firmware.sh build",
    );
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    require(
        "qemu-system-arm",
        runs("qemu-system-arm", "--version"),
        "apt-get install qemu-system-arm",
    );
    require(
        "chromium",
        Path::new("/usr/bin/chromium").is_file(),
        "apt-get install chromium",
    );
    require("node", runs("node", "--version"), "install Node.js");
    let browser = repo().join("tests/browser");
    require(
        "playwright-core",
        browser.join("node_modules/playwright-core").is_dir(),
        "npm ci --prefix tests/browser",
    );

    let site = Site::new();
    let dir = site.dir.path();
    let collector_toml = site.data.join("collector.toml");
    std::fs::write(
        &collector_toml,
        format!(
            r#"data_dir = "."
[quic]
listen = "{quic}"
[http]
listen = "127.0.0.1:0"

[[processor.threshold]]
name = "boiler-hot"
match = 'boiler_temp_c'
above = 90
for = "1s"
"#,
            quic = site.quic
        ),
    )
    .unwrap();
    let collector = Proc::spawn(
        &binary("ferry-collector"),
        &["run", "--config", collector_toml.to_str().unwrap()],
        &dir.join("collector.log"),
    );
    let addr_file = site.data.join(ferry_collector::admin::ADDR_FILE);
    let mut http = None;
    for _ in 0..12_000 {
        if let Some(a) = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|t| t.trim().parse::<std::net::SocketAddr>().ok())
            && http_get(a, "/healthz").await.is_some()
        {
            http = Some(a);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let http = http.expect("the collector's HTTP API never answered");
    // The API needs a token: a read token, as an operator makes one.
    let out = Command::new(binary("ferry-collector"))
        .args([
            "token",
            "create",
            "--role",
            "read",
            "--name",
            "fleet-page",
            "--data-dir",
        ])
        .arg(&site.data)
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let token = token.as_str();
    assert!(
        http_get(http, "/api/v1/agents").await.is_none(),
        "the API answered without a token"
    );

    let (link, influx, admin) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let agent_toml = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[device_tcp_listen]]\nlisten = \"{link}\"\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", agent_toml.to_str().unwrap()],
        &dir.join("agent.log"),
    );
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;

    let semihosting = format!(
        "enable=on,target=native,arg=ferry,arg=device={DEVICE},arg=boot=1,arg=period=20,arg=window=200,\
         arg=resend=300,arg=heartbeat=500,arg=exit_after=120000"
    );
    let qemu = Proc(
        Command::new("qemu-system-arm")
            .args([
                "-machine",
                "mps2-an386",
                "-cpu",
                "cortex-m4",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .args(["-semihosting-config", &semihosting])
            .args([
                "-chardev",
                &format!(
                    "socket,id=s0,host=127.0.0.1,port={},server=off,reconnect=1",
                    link.port()
                ),
            ])
            .args(["-serial", "chardev:s0", "-kernel"])
            .arg(&elf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.log")).unwrap())
            .spawn()
            .expect("start qemu-system-arm"),
    );
    until("the board's device and 20 windows stored", || async {
        http_get_with(http, "/api/v1/devices", Some(token))
            .await
            .is_some_and(|b| {
                let v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
                v.as_array()
                    .is_some_and(|ds| ds.iter().any(|d| d["device"] == DEVICE))
            })
            && http_get_with(
                http,
                &format!(
                    "/api/v1/query?{}&from=-15m",
                    serde_urlencoded_pair("match", &format!("temperature{{device=\"{DEVICE}\"}}"))
                ),
                Some(token),
            )
            .await
            .is_some_and(|b| {
                let v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
                v[0]["windows"].as_array().is_some_and(|w| w.len() >= 20)
            })
    })
    .await;

    // A boiler over its limit for a second: the rule fires.
    let now_ms = ferry_collector::now_ns() / 1_000_000;
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let lines = format!(
        "boiler,device=boiler-1 temp_c=70 {}\nboiler,device=boiler-1 temp_c=95.5 {}\nboiler,device=boiler-1 temp_c=96.25 {}\n",
        now_ms - 3000,
        now_ms - 2000,
        now_ms - 500
    );
    tcp.write_all(lines.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    until("the alert fired", || async {
        http_get_with(http, "/api/v1/alerts?state=firing", Some(token))
            .await
            .is_some_and(|b| b.contains("boiler-hot"))
    })
    .await;

    // The board stops; once the agent has shipped everything the values
    // the page shows hold still.
    qemu.kill9();
    until("agent outbox empty", || async {
        http_get(admin, "/status").await.is_some_and(|b| {
            let v: Value = serde_json::from_str(&b).unwrap();
            v["outbox_readings"] == 0 && v["pending_readings"] == 0
        })
    })
    .await;

    // The agent's next status report (every 10 s) says so, and names the
    // board's firmware.
    let drained_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    until("the agent reported its empty backlog", || async {
        let agents = api(http, "/api/v1/agents", token).await;
        agents.as_array().unwrap().iter().any(|a| {
            a["id"] == "gw"
                && a["backlog_readings"] == 0
                && a["status_ns"]
                    .as_str()
                    .and_then(|t| t.parse::<u128>().ok())
                    .is_some_and(|t| t > drained_ns)
        })
    })
    .await;

    let agents = api(http, "/api/v1/agents", token).await;
    let devices = api(http, "/api/v1/devices", token).await;
    let firmware = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == DEVICE)
        .map(|d| d["firmware"].clone());
    assert_eq!(
        firmware,
        Some(json!(concat!("ferry-fw ", env!("CARGO_PKG_VERSION")))),
        "the board's firmware, from the agent's status report: {devices}"
    );
    let board: Vec<Value> = devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["device"] == DEVICE || d["device"] == "boiler-1")
        .cloned()
        .collect();
    assert_eq!(board.len(), 2, "{devices}");
    for d in &board {
        assert_eq!(d["agent"], "gw", "every series carries its agent: {d}");
    }
    let alerts = api(http, "/api/v1/alerts?state=firing", token).await;
    let alert = alerts.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        alert["subject"],
        r#"boiler_temp_c{agent="gw",device="boiler-1"}"#
    );
    let series = board.iter().find(|d| d["device"] == DEVICE).unwrap()["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .find(|s| s.starts_with("temperature") && s.contains("sht4x"))
        .expect("the board's SHT4x temperature series");
    let query = format!(
        "/api/v1/query?{}",
        serde_urlencoded_pair("match", &series) + "&from=-15m"
    );
    let chart = api(http, &query, token).await;
    let windows = chart[0]["windows"].clone();
    assert!(windows.as_array().unwrap().len() >= 20);
    let expected = json!({
        "agents": agents,
        "devices": board,
        "alert": alert,
        "series": series,
        "windows": windows,
    });
    let expected_path = dir.join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();

    let shots = repo().join("target/artifacts/fleet");
    let shots_dir = shots.clone();
    let page = format!("http://{http}/ui/");
    let script = browser.join("fleet_page.mjs");
    let token_arg = token.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(page)
            .arg(&expected_path)
            .arg(&shots_dir)
            .arg(token_arg)
            .current_dir(&browser)
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    for shot in ["fleet-desktop.png", "fleet-phone.png"] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot}: {len} bytes");
    }
    drop(agent);
    drop(collector);
}

/// `name=value`, URL-encoded.
fn serde_urlencoded_pair(name: &str, value: &str) -> String {
    let mut out = format!("{name}=");
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
