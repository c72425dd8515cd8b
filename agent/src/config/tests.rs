//! Tests of `agent.toml`: defaults, sizes and durations, relative paths, and
//! errors that name the file, the line and the key.

use super::*;

const COLLECTOR: &str = "[collector]\naddress = \"127.0.0.1:7410\"\nserver_name = \"localhost\"\nca = \"ca.crt\"\ncert = \"agent.crt\"\nkey = \"agent.key\"\nagent_id = \"gw-1\"\n";

#[test]
fn defaults_and_sizes() {
    let c = Config::parse(COLLECTOR, "agent.toml", PathBuf::from("/etc/ferry")).unwrap();
    assert_eq!(c.journal.budget, 1 << 30);
    assert_eq!(
        c.resolve(&c.collector.ca),
        PathBuf::from("/etc/ferry/ca.crt")
    );
    assert_eq!(parse_size("512 MiB"), Some(512 << 20));
    assert_eq!(parse_size("2GiB"), Some(2 << 30));
    assert_eq!(parse_size("12 parsecs"), None);
}

#[test]
fn memory_budget_and_connection_limits() {
    let c = Config::parse(COLLECTOR, "agent.toml", PathBuf::new()).unwrap();
    assert_eq!(c.agent.memory_budget, None);
    assert_eq!(
        c.agent.memory_budget(c.journal.cache),
        8 << 20,
        "a 32 MiB agent with a 4 MiB page cache"
    );
    let text = format!(
        "{COLLECTOR}[agent]\nmemory_budget = \"8 MiB\"\n\n[journal]\ncache = \"8 MiB\"\n\n\
         [[influx_tcp]]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"1m\"\nline_timeout = \"0s\"\n"
    );
    let c = Config::parse(&text, "agent.toml", PathBuf::new()).unwrap();
    assert_eq!(c.agent.memory_budget(c.journal.cache), 8 << 20);
    let tcp = &c.influx_tcp[0].source;
    assert_eq!(tcp.idle_timeout, Duration::from_secs(60));
    assert_eq!(tcp.line_timeout, Duration::ZERO);
    assert_eq!(tcp.max_connections, 64);
    let text = format!("{COLLECTOR}[agent]\nmemory_budget = \"a lot\"\n");
    let e = Config::parse(&text, "agent.toml", PathBuf::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("memory_budget") && e.contains("not a size"),
        "{e}"
    );
}

/// The Debian package's /etc/ferry-agent/agent.toml is valid and says
/// what the unit expects.
#[test]
fn packaged_config_parses() {
    let text = include_str!("../../../packaging/agent/agent.toml");
    let c = Config::parse(text, "agent.toml", PathBuf::from("/etc/ferry-agent")).unwrap();
    assert_eq!(c.agent.data_dir, PathBuf::from("/var/lib/ferry-agent"));
    assert_eq!(
        c.resolve(&c.collector.key),
        PathBuf::from("/etc/ferry-agent/agent.key")
    );
    assert_eq!(c.influx_tcp.len(), 1);
    assert_eq!(c.journal.budget, JournalSection::default().budget);
    assert_eq!(c.admin.listen, AdminSection::default().listen);
    // The commented examples parse too, once uncommented.
    let examples: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            (l.starts_with('[') && l.ends_with(']'))
                || l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let all = format!("{COLLECTOR}{examples}");
    let c = Config::parse(&all, "examples", PathBuf::new()).unwrap();
    assert_eq!(
        (c.influx_udp.len(), c.device_serial.len(), c.aggregate.len()),
        (1, 1, 1)
    );
}

#[test]
fn errors_name_file_line_and_key() {
    let text = format!("{COLLECTOR}[journal]\nbudget = \"lots\"\n");
    let e = Config::parse(&text, "agent.toml", PathBuf::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("agent.toml: TOML parse error at line 9, column 10"),
        "{e}"
    );
    assert!(e.contains("\"lots\" is not a size"), "{e}");
    let text = format!("{COLLECTOR}[shipping]\nordre = \"newest_first\"\n");
    let e = Config::parse(&text, "agent.toml", PathBuf::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 9") && e.contains("unknown field `ordre`"),
        "{e}"
    );
    let text = format!("{COLLECTOR}[[aggregate]]\nmetric = \"t*\"\nperiod = \"0s\"\n");
    let e = Config::parse(&text, "agent.toml", PathBuf::new())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "agent.toml: aggregate[0].period: must be longer than zero"
    );
    let e = Config::parse("[agent]\n", "a.toml", PathBuf::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `collector`"), "{e}");
}
