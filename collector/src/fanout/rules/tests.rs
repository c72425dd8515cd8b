//! Tests of the rule and sink configs.

use crate::Config;

/// Every TOML example in docs/alerts.md parses and validates.
#[test]
fn documented_configurations_are_valid() {
    let doc = include_str!("../../../../docs/alerts.md");
    let mut blocks = 0;
    for part in doc.split("```toml\n").skip(1) {
        let block = part.split("```").next().unwrap();
        let config: Config = toml::from_str(block)
            .unwrap_or_else(|e| panic!("docs/alerts.md block {blocks}: {e}\n{block}"));
        config.validate().unwrap();
        blocks += 1;
    }
    assert_eq!(blocks, 3);
}

#[test]
fn bad_rules_are_explained_with_their_line() {
    let err = |text: &str| toml::from_str::<Config>(text).unwrap_err().to_string();
    let e = err("[[processor.threshold]]\nname = \"t\"\nmatch = 'x'\n");
    assert!(
        e.contains("line 1") && e.contains("give `above`, `below` or both"),
        "{e}"
    );
    let e = err("[[processor.threshold]]\nname = \"t\"\nmatch = 'x{a=b}'\nabove = 1\n");
    assert!(e.contains("match: selector"), "{e}");
    let e = err("[[processor.threshold]]\nname = \"t\"\nmatch = 'x'\nabove = 1\nbelow = 2\n");
    assert!(e.contains("must stay under"), "{e}");
    let e = err("[[processor.anomaly]]\nname = \"a\"\nmatch = 'x'\nalpha = 2\n");
    assert!(e.contains("`alpha` must be in (0, 1]"), "{e}");
    let e = err("[processor.offline]\nafter = \"0s\"\n");
    assert!(e.contains("must be positive"), "{e}");
    let e = err("[[sink.webhook]]\nname = \"w\"\nurl = \"https://x/y\"\n");
    assert!(e.contains("only http:// URLs"), "{e}");
    let c: Config = toml::from_str("[[sink.log]]\nname = \"bad name\"\n").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("sink.log: name \"bad name\": use 1 to 64"),
        "{e}"
    );
    let c: Config = toml::from_str(
        "[[sink.log]]\nname = \"x\"\n[[sink.webhook]]\nname = \"x\"\nurl = \"http://h/\"\n",
    )
    .unwrap();
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "invalid configuration: sink.log: name \"x\" is used by two sinks; names must be unique"
    );
}

#[test]
fn webhook_urls_split_into_authority_and_path() {
    let c: Config = toml::from_str(
        "[[sink.webhook]]\nname = \"a\"\nurl = \"http://example.org/hook?x=1\"\n\
         [[sink.webhook]]\nname = \"b\"\nurl = \"http://127.0.0.1:9000\"\n",
    )
    .unwrap();
    let w = &c.sink.webhook;
    assert_eq!(
        (w[0].authority.as_str(), w[0].path.as_str()),
        ("example.org:80", "/hook?x=1")
    );
    assert_eq!(
        (w[1].authority.as_str(), w[1].path.as_str()),
        ("127.0.0.1:9000", "/")
    );
}
