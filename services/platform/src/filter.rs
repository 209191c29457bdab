//! The contract's `EventFilter`, checked and turned into the store's: what
//! ListEvents, AggregateEvents and TailEvents (query) and subscriptions
//! (admin, dispatch) filter by.

use std::time::SystemTime;

use tonic::Status;
use tributary_proto::json::{pointer_tokens, value_to_json};
use tributary_proto::v1::EventFilter;
use tributary_proto::validate::FieldViolation;
use tributary_store::events;

use crate::status as pstatus;

/// Checks a filter and turns it into the store's; payload matches become
/// containment documents (`/a/b = 1` → `{"a":{"b":1}}`).
pub fn store_filter(filter: &EventFilter) -> Result<events::EventFilter, Status> {
    let mut violations = Vec::new();
    let time =
        |field: &str, ts: &Option<prost_types::Timestamp>, violations: &mut Vec<FieldViolation>| {
            ts.as_ref().and_then(|t| match SystemTime::try_from(*t) {
                Ok(t) => Some(t),
                Err(e) => {
                    violations.push(FieldViolation {
                        field: format!("filter.{field}"),
                        description: format!("is not a valid timestamp: {e}"),
                    });
                    None
                }
            })
        };
    // PostgreSQL text cannot hold NUL: such a string can match nothing, and
    // PostgreSQL would refuse the statement.
    let texts = filter
        .event_types
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("filter.event_types[{i}]"), t))
        .chain([
            ("filter.source".to_owned(), &filter.source),
            ("filter.user_id".to_owned(), &filter.user_id),
            ("filter.session_id".to_owned(), &filter.session_id),
        ]);
    for (field, text) in texts {
        if text.contains('\0') {
            violations.push(FieldViolation {
                field,
                description: "must not contain a NUL character".into(),
            });
        }
    }
    let occurred_after = time("occurred_after", &filter.occurred_after, &mut violations);
    let occurred_before = time("occurred_before", &filter.occurred_before, &mut violations);
    let mut payload_contains = Vec::with_capacity(filter.payload_matches.len());
    for (i, m) in filter.payload_matches.iter().enumerate() {
        let field = format!("filter.payload_matches[{i}]");
        let Some(value) = &m.value else {
            violations.push(FieldViolation {
                field: format!("{field}.value"),
                description: "is required".into(),
            });
            continue;
        };
        let value = match value_to_json(value) {
            Ok(v) => v,
            Err(e) => {
                violations.push(FieldViolation {
                    field: format!("{field}.value"),
                    description: e.to_string(),
                });
                continue;
            }
        };
        match containment(&m.path, value) {
            Ok(doc) => payload_contains.push(doc),
            Err(why) => violations.push(FieldViolation {
                field: format!("{field}.path"),
                description: why,
            }),
        }
    }
    if !violations.is_empty() {
        return Err(pstatus::invalid_argument(&violations));
    }
    let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    Ok(events::EventFilter {
        event_types: filter.event_types.clone(),
        source: non_empty(&filter.source),
        user_id: non_empty(&filter.user_id),
        session_id: non_empty(&filter.session_id),
        occurred_after,
        occurred_before,
        payload_contains,
    })
}

fn containment(path: &str, value: serde_json::Value) -> Result<serde_json::Value, String> {
    let tokens = pointer_tokens(path)?;
    Ok(tokens.into_iter().rev().fold(value, |inner, key| {
        let mut map = serde_json::Map::new();
        map.insert(key, inner);
        serde_json::Value::Object(map)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_unescape_and_nest() {
        assert_eq!(
            pointer_tokens("/a~1b/c~0d"),
            Ok(vec!["a/b".into(), "c~d".into()])
        );
        assert!(pointer_tokens("a").is_err());
        assert!(pointer_tokens("").is_err());
        assert!(pointer_tokens("/a//b").is_err());
        assert!(pointer_tokens("/a~2").is_err());
        assert_eq!(
            containment("/order/country", serde_json::json!("DE")),
            Ok(serde_json::json!({"order": {"country": "DE"}}))
        );
    }
}
