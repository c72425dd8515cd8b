//! Tests of the collector's certificate authority.

use super::tls::read_certs;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::*;

#[test]
fn agent_ids_follow_the_rule() {
    validate_agent_id("gw-01.site_a").unwrap();
    for (id, why) in [
        ("", "empty"),
        ("-x", "must start with a letter or digit"),
        ("a/b", "only A-Z a-z 0-9 . _ - are allowed"),
    ] {
        match validate_agent_id(id) {
            Err(PkiError::BadAgentId { why: w, .. }) => assert_eq!(w, why),
            other => panic!("{id:?}: {other:?}"),
        }
    }
}

#[test]
fn init_enroll_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&InitOptions::new(&data)).unwrap();
    assert!(matches!(
        init(&InitOptions::new(&data)),
        Err(PkiError::AlreadyInitialized(_))
    ));
    let bundle = enroll(&data, "gw-1", &dir.path().join("gw-1")).unwrap();
    let cert = read_certs(&bundle.cert).unwrap();
    assert_eq!(agent_id_of(&cert[0]).as_deref(), Some("gw-1"));
    assert_eq!(enrolled_agents(&data), vec!["gw-1".to_owned()]);
    let toml = fs::read_to_string(&bundle.config).unwrap();
    assert!(toml.contains("[collector]\n"));
    assert!(toml.contains("address = \"127.0.0.1:7410\"\n"));
    assert!(toml.contains("agent_id = \"gw-1\"\n"));
    assert!(matches!(
        enroll(&data, "gw-1", &dir.path().join("gw-1")),
        Err(PkiError::BundleExists(_))
    ));
    server_tls(&data, Arc::new(RevocationList::default())).unwrap();
    client_tls(&bundle.ca, &bundle.cert, &bundle.key).unwrap();
    let authority = Authority::load(&data).unwrap();
    let issued = authority.issue("gw-2", 30).unwrap();
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    assert_eq!(agent_id_of(&cert).as_deref(), Some("gw-2"));
    client_tls_pem(authority.ca_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    assert_eq!(enrolled_agents(&data), vec!["gw-1".to_owned()]);
    authority.record("gw-2", &issued.cert_pem).unwrap();
    assert_eq!(enrolled_agents(&data), ["gw-1", "gw-2"]);
}
