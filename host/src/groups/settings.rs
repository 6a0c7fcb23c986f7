//! A consumer group's settings, as clients send them (`PUT /subscriptions/{group}`) and as
//! they are kept.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{EventFilter, GlobalPosition, category_of};

/// Most events one poll may lease.
pub const MAX_POLL: usize = 1000;
/// Longest a poll may wait, in milliseconds.
pub const MAX_WAIT_MS: u64 = 30_000;
const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
const MAX_ACK_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
const DEFAULT_MAX_DELIVERIES: u32 = 10;
const MAX_MAX_DELIVERIES: u32 = 1000;

/// Which events a group receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The whole log.
    All,
    /// One stream.
    Stream(String),
    /// Every stream of a category (the part of the name before its first `-`).
    Category(String),
}

/// Where a new group starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The beginning of the log.
    Beginning,
    /// The log's head when the group is created: only events appended afterwards.
    End,
    /// This position.
    Position(GlobalPosition),
}

/// The order in which a group hands events out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Any order, as many at once as workers ask for.
    None,
    /// Each stream's events in revision order, at most one of a stream's events in flight.
    Stream,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    pub source: Source,
    /// Only events of these types (`None`: every type).
    pub types: Option<Vec<String>>,
    pub start: Start,
    pub ack_timeout_ms: u64,
    pub max_deliveries: u32,
    pub ordering: Ordering,
}

impl GroupSettings {
    /// Reads the body of `PUT /subscriptions/{group}`: unknown fields and wrong types are
    /// refused with a sentence saying what is expected.
    ///
    /// # Errors
    /// What is wrong with the body.
    pub fn from_json(body: &Value) -> Result<Self, String> {
        let Some(fields) = body.as_object() else {
            return Err("the body must be a JSON object of group settings".into());
        };
        const KNOWN: [&str; 6] = [
            "source",
            "types",
            "from",
            "ack_timeout_ms",
            "max_deliveries",
            "ordering",
        ];
        if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "unknown setting {unknown:?}; a group takes {}",
                KNOWN.join(", ")
            ));
        }
        let source = match fields.get("source") {
            None => Source::All,
            Some(value) => parse_source(value)?,
        };
        let types = match fields.get("types") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut types = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(t) if !t.is_empty() => types.push(t.to_owned()),
                        _ => return Err("types must be a list of non-empty strings".into()),
                    }
                }
                if types.is_empty() {
                    return Err("types must name at least one event type (or be left out)".into());
                }
                Some(types)
            }
            Some(_) => return Err("types must be a list of event types".into()),
        };
        let start = match fields.get("from") {
            None => Start::Beginning,
            Some(Value::String(s)) if s == "start" => Start::Beginning,
            Some(Value::String(s)) if s == "end" => Start::End,
            Some(value) => match value.as_u64() {
                Some(position) => Start::Position(position),
                None => {
                    return Err(format!(
                        "from must be \"start\", \"end\" or a position, not {value}"
                    ));
                }
            },
        };
        let ack_timeout_ms = bounded(
            fields.get("ack_timeout_ms"),
            "ack_timeout_ms",
            DEFAULT_ACK_TIMEOUT_MS,
            1,
            MAX_ACK_TIMEOUT_MS,
        )?;
        let max_deliveries = bounded(
            fields.get("max_deliveries"),
            "max_deliveries",
            u64::from(DEFAULT_MAX_DELIVERIES),
            1,
            u64::from(MAX_MAX_DELIVERIES),
        )? as u32;
        let ordering = match fields.get("ordering") {
            None => Ordering::None,
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|_| format!("ordering must be \"none\" or \"stream\", not {value}"))?,
        };
        Ok(Self {
            source,
            types,
            start,
            ack_timeout_ms,
            max_deliveries,
            ordering,
        })
    }

    /// The settings as clients see them.
    pub fn to_json(&self) -> Value {
        json!({
            "source": match &self.source {
                Source::All => json!("all"),
                Source::Stream(s) => json!({"stream": s}),
                Source::Category(c) => json!({"category": c}),
            },
            "types": self.types,
            "from": match self.start {
                Start::Beginning => json!("start"),
                Start::End => json!("end"),
                Start::Position(p) => json!(p),
            },
            "ack_timeout_ms": self.ack_timeout_ms,
            "max_deliveries": self.max_deliveries,
            "ordering": self.ordering,
        })
    }

    /// Whether the group receives an event of `event_type` in `stream`.
    pub fn admits(&self, stream: &str, event_type: &str) -> bool {
        let from_source = match &self.source {
            Source::All => true,
            Source::Stream(s) => s == stream,
            Source::Category(c) => c == category_of(stream),
        };
        from_source
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t == event_type))
    }

    /// The same selection as a log filter (the stream itself is checked by [`Self::admits`]).
    pub fn filter(&self) -> EventFilter {
        EventFilter {
            event_types: self.types.clone(),
            categories: match &self.source {
                Source::Category(c) => Some(vec![c.clone()]),
                _ => None,
            },
        }
    }
}

fn parse_source(value: &Value) -> Result<Source, String> {
    const EXPECTED: &str =
        "source must be \"all\", {\"stream\": \"<name>\"} or {\"category\": \"<name>\"}";
    match value {
        Value::String(s) if s == "all" => Ok(Source::All),
        Value::Object(fields) if fields.len() == 1 => {
            let (key, name) = fields.iter().next().expect("one field");
            let Some(name) = name.as_str().filter(|n| !n.is_empty()) else {
                return Err(format!("{EXPECTED}; the name must be a non-empty string"));
            };
            match key.as_str() {
                "stream" => {
                    crate::store::StreamName::parse(name)
                        .map_err(|why| format!("source: {why}"))?;
                    Ok(Source::Stream(name.to_owned()))
                }
                "category" if !name.contains('-') => Ok(Source::Category(name.to_owned())),
                "category" => Err(format!(
                    "a category is the part of a stream name before its first '-', so {name:?} cannot be one"
                )),
                _ => Err(EXPECTED.into()),
            }
        }
        _ => Err(format!("{EXPECTED}, not {value}")),
    }
}

fn bounded(
    value: Option<&Value>,
    name: &str,
    default: u64,
    low: u64,
    high: u64,
) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (low..=high).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name} must be an integer from {low} to {high}, not {v}"
            )),
        },
    }
}

/// Checks a group name: the same rule as module names.
///
/// # Errors
/// A sentence saying what is allowed.
pub fn validate_name(name: &str) -> Result<(), String> {
    crate::modules::validate_name(name)
        .map_err(|_| format!("group name {name:?} is not valid: use 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_defaults_and_refuse_what_they_do_not_know() {
        let s = GroupSettings::from_json(&json!({})).unwrap();
        assert_eq!(s.source, Source::All);
        assert_eq!(s.ack_timeout_ms, 30_000);
        assert_eq!(s.max_deliveries, 10);
        assert_eq!(s.ordering, Ordering::None);
        let s = GroupSettings::from_json(&json!({"source": {"category": "order"}, "types": ["OrderPlaced"], "from": "end", "ordering": "stream"})).unwrap();
        assert!(s.admits("order-1", "OrderPlaced"));
        assert!(!s.admits("order-1", "OrderPaid"));
        assert!(!s.admits("account-1", "OrderPlaced"));
        assert_eq!(s.start, Start::End);
        for bad in [
            json!([]),
            json!({"source": "some"}),
            json!({"source": {"stream": ""}}),
            json!({"source": {"category": "a-b"}}),
            json!({"types": "x"}),
            json!({"types": []}),
            json!({"from": -1}),
            json!({"ack_timeout_ms": 0}),
            json!({"max_deliveries": "3"}),
            json!({"ordering": "random"}),
            json!({"colour": 1}),
        ] {
            assert!(GroupSettings::from_json(&bad).is_err(), "{bad}");
        }
        let round = GroupSettings::from_json(&s.to_json()).unwrap();
        assert_eq!(round, s);
    }
}
