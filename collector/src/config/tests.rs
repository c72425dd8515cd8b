//! Tests of the collector's configuration: the written default parses back to
//! `Config::default()`, the packaged file matches it, and values out of range
//! are refused with a message naming the key.

use super::*;

#[test]
fn default_toml_parses_to_defaults() {
    let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
    let d = Config::default();
    assert_eq!(parsed.quic.listen, d.quic.listen);
    assert_eq!(parsed.http.listen, d.http.listen);
    assert_eq!(parsed.http.auth, d.http.auth);
    assert_eq!(parsed.query, d.query);
    assert_eq!(parsed.limits.max_past, d.limits.max_past);
    assert_eq!(parsed.quic.idle_timeout, d.quic.idle_timeout);
    assert_eq!(parsed.quic.keep_alive, d.quic.keep_alive);
    assert_eq!(parsed.limits.max_dedupe_ranges, d.limits.max_dedupe_ranges);
    assert_eq!(
        parsed.limits.max_epochs_per_agent,
        d.limits.max_epochs_per_agent
    );
    assert_eq!(parsed.storage.raw_retention, d.storage.raw_retention);
    assert_eq!(
        parsed.storage.max_batches_per_commit,
        d.storage.max_batches_per_commit
    );
    parsed.validate().unwrap();
}

/// The Debian package's /etc/ferry-collector/collector.toml is this
/// file with its own header and data_dir: the rest must not drift.
#[test]
fn packaged_config_is_the_default_with_the_state_directory() {
    let packaged = include_str!("../../../packaging/collector/collector.toml");
    let tail = |s: &'static str| &s[s.find("\n[quic]\n").expect("a [quic] table")..];
    assert!(
        tail(packaged) == tail(DEFAULT_TOML),
        "packaging/collector/collector.toml differs from DEFAULT_TOML after [quic]: copy DEFAULT_TOML's text from [quic] on into it"
    );
    let parsed: Config = toml::from_str(packaged).unwrap();
    assert_eq!(parsed.data_dir, PathBuf::from("/var/lib/ferry-collector"));
    parsed.validate().unwrap();
}

#[test]
fn open_reads_beyond_loopback_are_refused() {
    let c: Config =
        toml::from_str("[http]\nlisten = \"0.0.0.0:7411\"\nauth = \"open_reads\"\n").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("http.listen = \"0.0.0.0:7411\" is not a loopback address"),
        "{e}"
    );
    let c: Config = toml::from_str("[http]\nlisten = \"0.0.0.0:7411\"\n").unwrap();
    c.validate().unwrap();
    let c: Config =
        toml::from_str("[http]\nlisten = \"[::1]:7411\"\nauth = \"open_reads\"\n").unwrap();
    c.validate().unwrap();
}

#[test]
fn unknown_keys_are_named() {
    let err = toml::from_str::<Config>("[limits]\nmax_conections = 3\n").unwrap_err();
    assert!(err.to_string().contains("max_conections"), "{err}");
}
