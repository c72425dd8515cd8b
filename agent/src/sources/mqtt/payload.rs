//! Topic → series, and payloads → readings: pure functions of the config,
//! the topic, the payload and the receive time.

use std::collections::BTreeMap;

use ferry_proto::batch::Reading;
use ferry_proto::series::{SeriesError, SeriesKey};

use super::{MqttConfig, PayloadFormat, TopicParsing};
use crate::journal::SeriesReadings;
use crate::sources::line::{ChunkParser, KeyCache, LineSplitter, count_newlines};

/// Why a message stored nothing (each counted per source; see
/// [`Malformed::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Malformed {
    /// A line of a line protocol payload was rejected.
    LineProtocol,
    /// The payload is not JSON, or not a JSON object.
    Json,
    /// A configured JSON field is missing or not a number or boolean; or
    /// the payload has no numeric field at all.
    JsonField,
    /// The JSON timestamp is missing or not an integer in range.
    JsonTimestamp,
    /// A `value` payload is not a number.
    Number,
    /// The topic or a name made from it breaks Ferry's series rules.
    Series,
    /// The payload is larger than `max_message_bytes`.
    TooLarge,
}

impl Malformed {
    /// Every reason, in metric order.
    pub const ALL: [Malformed; 7] = [
        Self::LineProtocol,
        Self::Json,
        Self::JsonField,
        Self::JsonTimestamp,
        Self::Number,
        Self::Series,
        Self::TooLarge,
    ];

    /// The `reason` label of `ferry_agent_mqtt_malformed_total`.
    pub fn name(self) -> &'static str {
        match self {
            Self::LineProtocol => "line_protocol",
            Self::Json => "json",
            Self::JsonField => "json_field",
            Self::JsonTimestamp => "json_timestamp",
            Self::Number => "number",
            Self::Series => "series",
            Self::TooLarge => "too_large",
        }
    }
}

/// What one message turned into.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// Readings, grouped by series.
    pub readings: Vec<SeriesReadings>,
    /// Problems found (a line protocol payload may have some good lines).
    pub malformed: Vec<Malformed>,
    /// String fields skipped (line protocol payloads).
    pub strings_skipped: u64,
}

/// Does MQTT topic filter `filter` (`+`, `#`) match `topic`?
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The measurement, tags and field name a topic maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    /// The measurement.
    pub measurement: String,
    /// Tags from the topic (and `topic_tag`).
    pub tags: BTreeMap<String, String>,
    /// The field of a `value` payload.
    pub field: String,
}

/// Maps `topic` by the first matching `[[mqtt.topic_parsing]]` rule (or
/// the defaults); see the module docs of [`super`].
pub fn map_topic(cfg: &MqttConfig, topic: &str) -> TopicMap {
    let mut map = TopicMap {
        measurement: cfg.measurement.clone(),
        tags: BTreeMap::new(),
        field: "value".to_owned(),
    };
    if !cfg.topic_tag.is_empty() {
        map.tags.insert(cfg.topic_tag.clone(), topic.to_owned());
    }
    let Some(rule) = cfg
        .topic_parsing
        .iter()
        .find(|r| topic_matches(&r.topic, topic))
    else {
        return map;
    };
    let levels: Vec<&str> = topic.split('/').collect();
    let pick = |pattern: &str| -> Vec<(String, String)> {
        pattern
            .split('/')
            .zip(&levels)
            .filter(|(name, _)| !name.is_empty() && *name != "_")
            .map(|(name, level)| (name.to_owned(), (*level).to_owned()))
            .collect()
    };
    apply_rule(rule, &pick, &mut map);
    map
}

fn apply_rule(
    rule: &TopicParsing,
    pick: &dyn Fn(&str) -> Vec<(String, String)>,
    map: &mut TopicMap,
) {
    if let Some((_, level)) = pick(&rule.measurement).into_iter().next() {
        map.measurement = level;
    }
    for (name, level) in pick(&rule.tags) {
        map.tags.insert(name, level);
    }
    if let Some((_, level)) = pick(&rule.field).into_iter().next() {
        map.field = level;
    }
}

/// A metric or tag name from MQTT text: bytes outside Ferry's name
/// characters become `_` (topic levels often hold spaces or `+`-free
/// punctuation).
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Decodes one message; `now_ns` stamps readings without a timestamp.
pub fn decode(
    cfg: &MqttConfig,
    keys: &mut KeyCache,
    topic: &str,
    payload: &[u8],
    now_ns: i64,
) -> Decoded {
    match cfg.format {
        PayloadFormat::Line => decode_line(cfg, keys, topic, payload, now_ns),
        PayloadFormat::Json => decode_json(cfg, topic, payload, now_ns),
        PayloadFormat::Value => decode_value(cfg, topic, payload, now_ns),
    }
}

fn decode_line(
    cfg: &MqttConfig,
    keys: &mut KeyCache,
    topic: &str,
    payload: &[u8],
    now_ns: i64,
) -> Decoded {
    let mut parser = ChunkParser::new(cfg.precision, now_ns, &cfg.name, &cfg.device_tag, keys)
        .string_fields(cfg.string_fields);
    let mut splitter = LineSplitter::default();
    let (mut pos, mut no) = (0, 1);
    while pos < payload.len() {
        let rest = &payload[pos..];
        let (line, next, newlines) = match splitter.next_end(rest) {
            Some(end) => (&rest[..end], pos + end + 1, splitter.newlines()),
            None => (rest, payload.len(), count_newlines(rest)),
        };
        parser.push_line(no, line);
        no += 1 + newlines;
        pos = next;
    }
    let parsed = parser.finish();
    let mut out = Decoded {
        malformed: vec![Malformed::LineProtocol; parsed.errors.len()],
        strings_skipped: parsed.string_fields_skipped,
        ..Decoded::default()
    };
    if cfg.topic_tag.is_empty() {
        out.readings = parsed.readings;
        return out;
    }
    // The topic tag joins each line's own tags.
    for mut group in parsed.readings {
        let mut tags: Vec<(String, String)> = group
            .series
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect();
        if !tags.iter().any(|(k, _)| *k == cfg.topic_tag) {
            tags.push((cfg.topic_tag.clone(), topic.to_owned()));
        }
        match SeriesKey::new(
            group.series.metric.as_str(),
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ) {
            Ok(series) => {
                group.series = series;
                out.readings.push(group);
            }
            Err(_) => out.malformed.push(Malformed::Series),
        }
    }
    out
}

fn decode_value(cfg: &MqttConfig, topic: &str, payload: &[u8], now_ns: i64) -> Decoded {
    let text = std::str::from_utf8(payload).unwrap_or("").trim();
    let value = match text {
        "true" | "TRUE" | "True" => Some(1.0),
        "false" | "FALSE" | "False" => Some(0.0),
        _ => text.parse::<f64>().ok().filter(|v| v.is_finite()),
    };
    let Some(value) = value else {
        return Decoded {
            malformed: vec![Malformed::Number],
            ..Decoded::default()
        };
    };
    let map = map_topic(cfg, topic);
    let field = map.field.clone();
    readings_of(cfg, &map, [(field, value)], now_ns)
}

fn decode_json(cfg: &MqttConfig, topic: &str, payload: &[u8], now_ns: i64) -> Decoded {
    let fail = |m| Decoded {
        malformed: vec![m],
        ..Decoded::default()
    };
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(payload)
    else {
        return fail(Malformed::Json);
    };
    let doc = serde_json::Value::Object(doc);
    let ts = if cfg.json_timestamp.is_empty() {
        now_ns
    } else {
        let scaled = lookup(&doc, &cfg.json_timestamp)
            .and_then(serde_json::Value::as_i64)
            .and_then(|t| t.checked_mul(cfg.precision.nanos()));
        match scaled {
            Some(t) => t,
            None => return fail(Malformed::JsonTimestamp),
        }
    };
    let mut fields: Vec<(String, f64)> = Vec::new();
    if cfg.json_fields.is_empty() {
        flatten(&doc, "", &cfg.json_timestamp, &mut fields);
        if fields.is_empty() {
            return fail(Malformed::JsonField);
        }
    } else {
        for path in &cfg.json_fields {
            match lookup(&doc, path).and_then(number) {
                Some(v) => fields.push((path.replace('.', "_"), v)),
                None => return fail(Malformed::JsonField),
            }
        }
    }
    let map = map_topic(cfg, topic);
    readings_of(cfg, &map, fields, ts)
}

/// A JSON number or boolean as a value.
fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The value at dotted `path` (`env.temp`).
fn lookup<'v>(doc: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

/// Every numeric or boolean leaf of objects, named by its path joined
/// with `_`; `skip` (the timestamp's path) is left out.
fn flatten(v: &serde_json::Value, prefix: &str, skip: &str, out: &mut Vec<(String, f64)>) {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if path == skip {
                continue;
            }
            match number(child) {
                Some(x) => out.push((path.replace('.', "_"), x)),
                None => flatten(child, &path, skip, out),
            }
        }
    }
}

fn readings_of(
    cfg: &MqttConfig,
    map: &TopicMap,
    fields: impl IntoIterator<Item = (String, f64)>,
    ts_ns: i64,
) -> Decoded {
    let mut out = Decoded::default();
    let origin = map
        .tags
        .get(&cfg.device_tag)
        .cloned()
        .unwrap_or_else(|| cfg.name.clone());
    let tags: Vec<(String, String)> = map
        .tags
        .iter()
        .map(|(k, v)| (name_part(k), v.clone()))
        .collect();
    for (field, value) in fields {
        let metric = format!("{}_{}", name_part(&map.measurement), name_part(&field));
        let series: Result<SeriesKey, SeriesError> = SeriesKey::new(
            metric.as_str(),
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        match series {
            Ok(series) => out.readings.push(SeriesReadings {
                series,
                origin: origin.clone(),
                readings: vec![Reading { ts_ns, value }],
            }),
            Err(_) => {
                out.malformed.push(Malformed::Series);
                return Decoded {
                    readings: Vec::new(),
                    ..out
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::line::Precision;

    fn cfg(format: PayloadFormat) -> MqttConfig {
        MqttConfig {
            format,
            ..MqttConfig::default()
        }
    }

    /// `(series, origin, [(ts, value)])`.
    type Group = (String, String, Vec<(i64, f64)>);

    fn series(d: &Decoded) -> Vec<Group> {
        d.readings
            .iter()
            .map(|g| {
                (
                    g.series.to_string(),
                    g.origin.clone(),
                    g.readings.iter().map(|r| (r.ts_ns, r.value)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn topic_filters_match_as_mqtt_defines() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("#", "x"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/b", "a"));
    }

    #[test]
    fn topic_levels_become_measurement_tags_and_field() {
        let mut c = cfg(PayloadFormat::Value);
        c.topic_tag = String::new();
        c.topic_parsing = vec![TopicParsing {
            topic: "site/+/+/+".into(),
            measurement: "_/_/measurement/_".into(),
            tags: "_/site/_/_".into(),
            field: "_/_/_/field".into(),
        }];
        let d = decode(
            &c,
            &mut KeyCache::default(),
            "site/lab 2/env/temp",
            b" 21.5\n",
            7,
        );
        assert_eq!(d.malformed, []);
        assert_eq!(
            series(&d),
            [(
                r#"env_temp{site="lab 2"}"#.into(),
                "mqtt".into(),
                vec![(7, 21.5)]
            )]
        );
        // No rule matches: the defaults, and the topic tag.
        let d = decode(
            &cfg(PayloadFormat::Value),
            &mut KeyCache::default(),
            "x/y",
            b"true",
            7,
        );
        assert_eq!(
            series(&d),
            [(
                r#"mqtt_value{topic="x/y"}"#.into(),
                "mqtt".into(),
                vec![(7, 1.0)]
            )]
        );
        let d = decode(
            &cfg(PayloadFormat::Value),
            &mut KeyCache::default(),
            "x",
            b"21,5",
            7,
        );
        assert_eq!(d.malformed, [Malformed::Number]);
        assert!(d.readings.is_empty());
    }

    #[test]
    fn json_fields_by_path_with_an_optional_timestamp() {
        let mut c = cfg(PayloadFormat::Json);
        c.measurement = "zigbee".into();
        c.device_tag = "topic".into();
        let payload = br#"{"temperature": 21.25, "env": {"hum": 40, "ok": true}, "name": "x", "ts": 1700000000}"#;
        c.json_timestamp = "ts".into();
        c.precision = Precision::Seconds;
        let d = decode(&c, &mut KeyCache::default(), "z2m/plug", payload, 5);
        let ts = 1_700_000_000_000_000_000;
        assert_eq!(
            series(&d),
            [
                (
                    r#"zigbee_env_hum{topic="z2m/plug"}"#.into(),
                    "z2m/plug".into(),
                    vec![(ts, 40.0)]
                ),
                (
                    r#"zigbee_env_ok{topic="z2m/plug"}"#.into(),
                    "z2m/plug".into(),
                    vec![(ts, 1.0)]
                ),
                (
                    r#"zigbee_temperature{topic="z2m/plug"}"#.into(),
                    "z2m/plug".into(),
                    vec![(ts, 21.25)]
                ),
            ]
        );
        c.json_fields = vec!["env.hum".into()];
        let d = decode(&c, &mut KeyCache::default(), "t", payload, 5);
        assert_eq!(series(&d)[0].0, r#"zigbee_env_hum{topic="t"}"#);
        assert_eq!(d.readings.len(), 1);
        c.json_fields = vec!["name".into()];
        assert_eq!(
            decode(&c, &mut KeyCache::default(), "t", payload, 5).malformed,
            [Malformed::JsonField]
        );
        c.json_fields = Vec::new();
        assert_eq!(
            decode(
                &c,
                &mut KeyCache::default(),
                "t",
                br#"{"temperature": 1}"#,
                5
            )
            .malformed,
            [Malformed::JsonTimestamp]
        );
        assert_eq!(
            decode(&c, &mut KeyCache::default(), "t", b"[1]", 5).malformed,
            [Malformed::Json]
        );
        assert_eq!(
            decode(&c, &mut KeyCache::default(), "t", b"{", 5).malformed,
            [Malformed::Json]
        );
        c.json_timestamp = String::new();
        assert_eq!(
            decode(&c, &mut KeyCache::default(), "t", br#"{"s": "x"}"#, 5).malformed,
            [Malformed::JsonField]
        );
    }

    #[test]
    fn line_protocol_payloads_get_the_topic_tag() {
        let c = cfg(PayloadFormat::Line);
        let d = decode(
            &c,
            &mut KeyCache::default(),
            "telegraf/h1",
            b"cpu,host=h1 idle=97.5,state=\"ok\" 10\ncpu idle=x 11\n",
            5,
        );
        assert_eq!(
            series(&d),
            [(
                r#"cpu_idle{host="h1",topic="telegraf/h1"}"#.into(),
                "mqtt".into(),
                vec![(10, 97.5)]
            )]
        );
        assert_eq!(d.malformed, [Malformed::LineProtocol]);
        assert_eq!(d.strings_skipped, 1);
    }
}
